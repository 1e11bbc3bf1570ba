"""The package's layering: a lower layer never imports a higher one, and `import flcore`
stays light (no scikit-learn, matplotlib, Dask or papermill)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "flcore"

# bottom to top; a module may import its own layer's package and any lower layer
LAYERS = [
    ("core",),
    ("data",),
    ("attacks", "defenses"),
    ("config",),
    ("sim",),
    ("runs",),
    ("studies",),
    ("explore",),
    ("cli",),
    ("__main__",),
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _part(module: str) -> str | None:
    """'flcore.sim.engine' -> 'sim'; the package root itself -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "flcore" else None


def _module_name(path: Path, pkg: Path = PKG) -> str:
    rel = path.relative_to(pkg.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, pkg: Path = PKG) -> list[tuple[int, str]]:
    """(line, imported flcore module) of every import statement, top-level or not."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _module_name(path, pkg)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("flcore")]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:  # relative import
                base = here.split(".")[: len(here.split(".")) - node.level + (path.name == "__init__.py")]
                mod = ".".join(base + ([mod] if mod else []))
            if mod == "flcore":  # from flcore import x: x is a subpackage (or the root's own names)
                out += [(node.lineno, f"flcore.{a.name}") for a in node.names]
            elif mod.startswith("flcore."):
                out.append((node.lineno, mod))
    return out


def layer_violations(pkg: Path = PKG) -> list[str]:
    bad = []
    for path in sorted(pkg.rglob("*.py")):
        mod = _module_name(path, pkg)
        own = _part(mod)
        if own is None:  # flcore/__init__.py: the public face, imports lazily
            continue
        if own not in RANK:
            bad.append(f"{path.relative_to(pkg.parent)}: {own!r} is in no layer of LAYERS")
            continue
        for line, target in _imports(path, pkg):
            other = _part(target)
            if other is None or other == own or other not in RANK:
                continue
            if RANK[other] > RANK[own] or (RANK[other] == RANK[own]):
                bad.append(f"{path.relative_to(pkg.parent)}:{line}: {own} (layer {RANK[own]}) imports "
                           f"{target} (layer {RANK[other]})")
    return bad


def test_no_lower_layer_imports_a_higher_one():
    assert layer_violations() == []


def test_every_subpackage_has_a_layer():
    dirs = [p for p in PKG.iterdir() if p.is_dir() and p.name != "__pycache__"]
    assert all((d / "__init__.py").exists() for d in dirs), "a folder without __init__.py is not installed"
    parts = {p.name for p in dirs}
    parts |= {p.stem for p in PKG.glob("*.py") if p.stem != "__init__"}
    assert parts <= set(RANK), f"not in LAYERS: {sorted(parts - set(RANK))}"


def _fake_package(root: Path, files: dict[str, str]) -> Path:
    """A throw-away flcore/ tree: {relative path: source}; every folder gets an __init__.py."""
    pkg = root / "flcore"
    for rel, text in files.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for d in [pkg, *(p for p in pkg.rglob("*") if p.is_dir())]:
        (d / "__init__.py").touch()
    return pkg


def test_the_check_catches_an_upward_import(tmp_path):
    """The checker itself: a core module importing the simulator is reported."""
    pkg = _fake_package(tmp_path, {
        "core/bad.py": "def f():\n    from flcore.sim import engine\n",
        "sim/ok.py": "from flcore.core import errors\n",
        "core/sideways.py": "from flcore.data import specs\n",
    })  # fmt: skip
    found = layer_violations(pkg)
    assert len(found) == 2
    assert any("core/bad.py:2" in v and "flcore.sim" in v for v in found)
    assert any("core/sideways.py:1" in v for v in found)


def test_same_layer_packages_do_not_import_each_other(tmp_path):
    pkg = _fake_package(tmp_path, {"attacks/x.py": "import flcore.defenses.base\n", "defenses/y.py": ""})
    assert len(layer_violations(pkg)) == 1


@pytest.mark.parametrize("statement", ["import flcore", "from flcore import Config"])
def test_import_flcore_is_light(statement):
    code = (f"{statement}, sys; print(sorted(m for m in ('sklearn', 'matplotlib', 'distributed', "
            f"'dask', 'papermill') if m in sys.modules))") if statement == "import flcore" else (
            f"import sys; {statement}; print(sorted(m for m in ('sklearn', 'matplotlib', "
            f"'distributed', 'dask', 'papermill') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lazy_names_resolve():
    import flcore

    assert callable(flcore.run) and callable(flcore.run_many) and callable(flcore.sweep)
    assert flcore.Result.__name__ == "Result"
    with pytest.raises(AttributeError):
        flcore.no_such_name  # noqa: B018


def test_modules_find_the_repository_root():
    """Paths computed from a module's own location survive the layout (subpackages)."""
    from flcore.data import loading
    from flcore.studies import experiments, reproduce

    for root in (reproduce.REPO_ROOT, experiments.REPO_ROOT, loading._PROJECT_ROOT):
        assert (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir(), root
