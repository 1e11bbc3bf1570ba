"""`python -m flcore reproduce`: execute the workbook's notebooks with papermill.

    python -m flcore reproduce --profile quick|paper [--only 01,03] [--device auto|cpu|cuda]

Each notebook `notebooks/NN_*.ipynb` runs with `params/<profile>/NN_*.yaml` into
`reports/<profile>/` (the executed notebook plus an HTML export); figures and tables go to
`figures/<profile>/`. Runs are shared through the result store, so the clean baseline that
01, 02 and 03 use trains once. A failing notebook stops the command with the cell and the
error; what finished before it stays.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILES = ("quick", "paper")  # every notebook has a YAML in these; other params/<name>/ folders
# (e.g. params/defense-cifar/) are extra profiles that run the notebooks they have a YAML for


def profiles(root: Path = REPO_ROOT) -> list[str]:
    """The profiles: params/<name>/ folders holding notebook YAML files (quick and paper first)."""
    extra = sorted(p.name for p in (root / "params").iterdir()
                   if p.is_dir() and p.name not in PROFILES and any(p.glob("[0-9][0-9]_*.yaml")))  # fmt: skip
    return list(PROFILES) + extra


class ParameterError(ValueError):
    """A parameter file names a parameter that the notebook does not have."""


def notebooks(root: Path = REPO_ROOT) -> list[Path]:
    """The workbook's numbered notebooks (01_… onward; 00_explore is interactive only)."""
    return sorted(p for p in (root / "notebooks").glob("[0-9][0-9]_*.ipynb") if not p.name.startswith("00"))


def notebook_parameters(path: Path) -> dict:
    """The names and default values of the notebook's `parameters` cell (read with `ast`:
    papermill's own inspection skips lines whose comments it cannot parse)."""
    import ast

    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            out = {}
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    out[node.targets[0].id] = ast.literal_eval(node.value)
            return out
    raise ParameterError(f"{path.name}: no cell tagged 'parameters'")


def load_parameters(yaml_path: Path | None, notebook: Path, **extra) -> dict:
    """Parameters from a YAML file (may be absent) plus `extra`, checked against the notebook.

    Raises ParameterError naming an unknown parameter and the closest known one (papermill
    itself would only warn and run with the default).
    """
    import yaml

    params = {}
    if yaml_path is not None and yaml_path.exists():
        params = yaml.safe_load(yaml_path.read_text()) or {}
        if not isinstance(params, dict):
            raise ParameterError(f"{yaml_path}: expected a mapping of parameter names to values")
    params.update({k: v for k, v in extra.items() if v is not None})
    known = notebook_parameters(notebook)
    for name in params:
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            where = f"{yaml_path}" if yaml_path is not None else "parameters"
            raise ParameterError(f"{where}: unknown parameter {name!r} for {notebook.name}{hint} "
                                 f"(its parameters: {', '.join(known)})")  # fmt: skip
    return params


def export_html(executed: Path) -> Path:
    import nbconvert
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    body, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    html = executed.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return html


def _failed_cell(executed: Path) -> str:
    """The source and error of the first cell with an error output in an executed notebook."""
    import nbformat

    try:
        nb = nbformat.read(str(executed), as_version=4)
    except Exception:  # noqa: BLE001 - the notebook may not have been written
        return ""
    for i, c in enumerate(nb.cells):
        for o in c.get("outputs", []):
            if o.get("output_type") == "error":
                return (f"cell {i}:\n{c.source}\n--> {o.get('ename')}: {o.get('evalue')}")
    return ""


def execute(profile: str, only: list[str] | None = None, device: str | None = None,
            root: Path = REPO_ROOT, params_dir: Path | None = None, reports_dir: Path | None = None,
            extra: dict | None = None, log=print) -> list[Path]:  # fmt: skip
    """Run the notebooks of a profile; returns the files written. Raises on the first failure."""
    import papermill

    params_dir = params_dir or root / "params" / profile
    # a seed other than the profile's: outputs go to <profile>-seed<N>, never over the profile's
    seed = (extra or {}).get("seed")
    out_name = profile if seed is None else f"{profile}-seed{seed}"
    reports_dir = reports_dir or root / "reports" / out_name
    nbs = notebooks(root)
    if profile not in PROFILES:  # an extra profile runs the notebooks it has parameters for
        nbs = [p for p in nbs if (params_dir / f"{p.stem}.yaml").exists()]
    if only:
        unknown = [o for o in only if not any(p.name.startswith(o) for p in nbs)]
        if unknown:
            raise ParameterError(f"--only {','.join(unknown)}: no such notebook (have: "
                                 f"{', '.join(p.name.split('_')[0] for p in nbs)})")  # fmt: skip
        nbs = [p for p in nbs if any(p.name.startswith(o) for o in only)]
    # check every parameter file before running anything
    plan = []
    for nb in nbs:
        y = params_dir / f"{nb.stem}.yaml"
        plan.append((nb, load_parameters(y, nb, device=device, **{**(extra or {}), "profile": out_name})))
    reports_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    figures = root / "figures" / out_name
    before = {p: p.stat().st_mtime for p in figures.glob("*")} if figures.exists() else {}
    t_all = time.perf_counter()
    for i, (nb, params) in enumerate(plan, 1):
        target = reports_dir / nb.name
        log(f"[{i}/{len(plan)}] {nb.name} ...", end="", flush=True)
        t0 = time.perf_counter()
        try:
            papermill.execute_notebook(str(nb), str(target), parameters=params, cwd=str(root),
                                       progress_bar=False, kernel_name="python3")  # fmt: skip
        except papermill.PapermillExecutionError as e:
            log(f" FAILED after {time.perf_counter() - t0:.0f} s")
            cell = _failed_cell(target)
            raise RuntimeError(f"{nb.name} failed (partial output: {target})\n"
                               f"{cell or e.ename + ': ' + e.evalue}") from None  # fmt: skip
        except Exception as e:  # noqa: BLE001 - e.g. a dead kernel: report it like a failed cell
            log(f" FAILED after {time.perf_counter() - t0:.0f} s")
            raise RuntimeError(f"{nb.name} failed (partial output: {target}): "
                               f"{type(e).__name__}: {e}") from None  # fmt: skip
        html = export_html(target)
        written += [target, html]
        log(f" done in {time.perf_counter() - t0:.0f} s")
    if figures.exists():
        written += sorted(p for p in figures.glob("*") if before.get(p) != p.stat().st_mtime)
    log(f"all {len(plan)} notebooks in {time.perf_counter() - t_all:.0f} s")
    return written


def cmd_reproduce(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m flcore reproduce",
                                description="Execute the workbook's notebooks with papermill.")  # fmt: skip
    p.add_argument("--profile", default="quick", choices=profiles(),
                   help="quick: minutes on a CPU; paper: the paper's full setting (GPU/cluster); "
                        "others: the params/<name>/ folders, running the notebooks they have")  # fmt: skip
    p.add_argument("--seed", type=int, default=None,
                   help="run with this seed instead of the profile's (a fresh-seed check); "
                        "outputs go to figures/<profile>-seed<N>/ and reports/<profile>-seed<N>/")  # fmt: skip
    p.add_argument("--only", default=None, help="comma-separated notebook numbers, e.g. 01,03")
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"),
                   help="override the notebooks' device parameter")  # fmt: skip
    a = p.parse_args(argv)
    only = [o.strip() for o in a.only.split(",") if o.strip()] if a.only else None
    try:
        if a.seed is not None and a.seed < 0:
            raise ParameterError(f"--seed {a.seed}: the seed must be >= 0")
        written = execute(a.profile, only, a.device, extra={"seed": a.seed} if a.seed is not None else None)
    except (ParameterError, RuntimeError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    print("written:")
    for w in written:
        try:
            print(f"  {w.relative_to(REPO_ROOT)}")
        except ValueError:
            print(f"  {w}")
    return 0
