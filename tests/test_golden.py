"""Golden numbers: a code change that alters the numbers must bump the numerics version.

The result store's key cannot see the code, only the configuration; it hashes
`flcore.core.numerics.NUMERICS_VERSION` too. These tests recompute the tiny real
Fashion-MNIST cases of `tools/golden.py` and fail when their numbers differ from
`tests/golden.json`, so changing the numbers (a default applied at run time, the model's
initialisation, a random stream, an engine) without bumping the version fails here.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

import flcore.core.numerics as numerics
from flcore.core.numerics import NUMERICS_VERSION

REPO = Path(__file__).resolve().parents[1]


def _load_tool():
    spec = importlib.util.spec_from_file_location("flcore_golden_tool", REPO / "tools" / "golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


golden = _load_tool()
GOLDEN = golden.load()
HOW = (
    "If the change of the numbers is intended: " + golden.BUMP + ". That gives every stored "
    "run a new store key, so results computed by the old code are never served as current."
)
# every case takes about a second on 2 idle cores (7 s for all), so none is marked slow;
# the case the check-has-teeth test reruns with a changed default:
FAST_CASE = "label_flip"


def test_golden_file_matches_the_numerics_version():
    assert GOLDEN.get("numerics_version") == NUMERICS_VERSION, (
        f"tests/golden.json was recorded for numerics_version {GOLDEN.get('numerics_version')}, "
        f"the code says NUMERICS_VERSION = {NUMERICS_VERSION}: regenerate the golden numbers "
        "with `python tools/golden.py --write` (bump the version only when the numbers change)"
    )
    assert set(GOLDEN["cases"]) == set(golden.CASES), (
        "tests/golden.json and tools/golden.py name different cases: rerun "
        "`python tools/golden.py --write` (after bumping NUMERICS_VERSION if numbers changed)"
    )


@pytest.mark.parametrize("name", list(golden.CASES))
def test_golden_numbers_unchanged(fmnist, name):
    diff = golden.compare(GOLDEN["cases"], golden.compute(fmnist, [name]))
    assert not diff, (
        f"The numbers of golden case {name!r} changed under NUMERICS_VERSION = "
        f"{NUMERICS_VERSION}:\n  " + "\n  ".join(diff) + "\n" + HOW
    )


def test_the_check_catches_a_changed_default_applied_at_run_time(fmnist, monkeypatch):
    """A default outside Config (the BatchNorm momentum) is invisible to the config key;
    the golden comparison must report it."""
    import flcore.sim.models as models

    monkeypatch.setattr(models, "BN_MOMENTUM", 0.5)
    diff = golden.compare(GOLDEN["cases"], golden.compute(fmnist, [FAST_CASE]))
    assert diff and all(d.startswith(f"{FAST_CASE}: ") for d in diff)
    assert any("predicted" in d or "correct" in d for d in diff)


def test_compare_is_exact_for_integers_and_relative_for_losses():
    case = {"correct": [[1, 2]], "predicted": [[3, 4]], "train_loss": [[1.234567891, None]],
            "excluded": [[0, 1, 5]]}  # fmt: skip
    ref = {"c": case}
    assert golden.compare(ref, {"c": dict(case)}) == []
    near = dict(case, train_loss=[[1.234567891 * (1 + 1e-11), None]])
    assert golden.compare(ref, {"c": near}) == []
    far = dict(case, train_loss=[[1.234567891 * (1 + 1e-8), None]])
    assert golden.compare(ref, {"c": far})[0].startswith("c: train_loss")
    assert golden.compare(ref, {"c": dict(case, train_loss=[[1.234567891, 0.5]])})
    assert golden.compare(ref, {"c": dict(case, correct=[[1, 3]])})[0].startswith("c: correct")
    assert golden.compare(ref, {"c": dict(case, excluded=[])})[0].startswith("c: excluded")
    assert golden.compare(ref, {"new": case}) == ["new: no golden numbers recorded"]
    assert golden._loss(math.pi) == 3.141592654 and golden._loss(float("nan")) is None


def test_write_refuses_other_numbers_under_the_same_version(tmp_path, monkeypatch):
    path = tmp_path / "golden.json"
    cases = {n: dict(c) for n, c in GOLDEN["cases"].items()}
    golden.write(cases, path)
    golden.write(cases, path)  # the same numbers: fine
    changed = {**cases, FAST_CASE: dict(cases[FAST_CASE], excluded=[[0, 1, 2]])}
    with pytest.raises(ValueError, match="bump flcore.core.numerics.NUMERICS_VERSION first"):
        golden.write(changed, path)
    assert golden.load(path)["cases"] == cases
    monkeypatch.setattr(numerics, "NUMERICS_VERSION", NUMERICS_VERSION + 1)
    golden.write(changed, path)  # after the bump
    assert golden.load(path) == {"numerics_version": NUMERICS_VERSION + 1, "cases": changed}


def test_store_key_hashes_the_numerics_version(monkeypatch):
    from flcore.config import Config
    from flcore.runs import sweep
    from flcore.runs.runner import store_key

    cfg = golden.config(FAST_CASE)
    before, task = store_key(cfg), sweep._task_key(None, cfg)
    assert sweep.store_key(cfg) == before and sweep._local_key(cfg) == before
    assert sweep._task_key(before, cfg) == f"flcore-run-{before}"
    monkeypatch.setattr(numerics, "NUMERICS_VERSION", NUMERICS_VERSION + 1)
    assert store_key(cfg) != before and sweep.store_key(cfg) == store_key(cfg)
    assert sweep._task_key(None, cfg) != task
    assert store_key(Config(**golden.BASE)) == store_key(cfg)  # label_flip is the base
