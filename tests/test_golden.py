"""Golden numbers: a code change that alters the numbers must bump the numerics version.

The result store's key cannot see the code, only the configuration; it hashes
`flcore.core.numerics.NUMERICS_VERSION` and the dataset's numerics revision too. These tests
recompute the tiny real Fashion-MNIST and CIFAR-10 cases of `tools/golden.py` and fail when
their numbers differ from `tests/golden.json`, so changing the numbers (a default applied at
run time, the model's initialisation, a random stream, an engine) without bumping the version
(or the dataset's revision) fails here.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

import flcore.core.numerics as numerics
from flcore.core.numerics import DATASET_REVISIONS, NUMERICS_VERSION

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
    assert GOLDEN.get("dataset_revisions") == golden.revisions(), (
        f"tests/golden.json was recorded for dataset revisions {GOLDEN.get('dataset_revisions')}, "
        f"the code says {golden.revisions()} (flcore.core.numerics.DATASET_REVISIONS): regenerate "
        "the golden numbers with `python tools/golden.py --write`"
    )
    assert set(GOLDEN["cases"]) == set(golden.CASES), (
        "tests/golden.json and tools/golden.py name different cases: rerun "
        "`python tools/golden.py --write` (after bumping NUMERICS_VERSION if numbers changed)"
    )


@pytest.mark.parametrize("name", list(golden.CASES))
def test_golden_numbers_unchanged(request, name):
    data = request.getfixturevalue(golden.config(name).dataset)  # the fmnist or cifar10 fixture
    diff = golden.compare(GOLDEN["cases"], golden.compute(data, [name]))
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
    assert golden.load(path) == {"numerics_version": NUMERICS_VERSION + 1, "cases": changed,
                                 "dataset_revisions": golden.revisions()}


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


def test_write_takes_new_numbers_of_a_dataset_whose_revision_was_bumped(tmp_path, monkeypatch):
    """A change confined to one dataset bumps its revision: the golden file then takes that
    dataset's new numbers, and still refuses changed numbers of the other datasets."""
    path = tmp_path / "golden.json"
    cases = {n: dict(c) for n, c in GOLDEN["cases"].items()}
    golden.write(cases, path)
    cifar = dict(cases["cifar10"], excluded=[[0, 1, 2]])
    with pytest.raises(ValueError, match="DATASET_REVISIONS"):
        golden.write({**cases, "cifar10": cifar}, path)
    monkeypatch.setitem(DATASET_REVISIONS, "cifar10", DATASET_REVISIONS.get("cifar10", 0) + 1)
    with pytest.raises(ValueError, match=f"{FAST_CASE}: excluded"):  # fmnist: unchanged revision
        golden.write({**cases, "cifar10": cifar, FAST_CASE: dict(cases[FAST_CASE], excluded=[[0, 1, 2]])}, path)
    golden.write({**cases, "cifar10": cifar}, path)
    doc = golden.load(path)
    assert doc["cases"]["cifar10"] == cifar and doc["dataset_revisions"]["cifar10"] == DATASET_REVISIONS["cifar10"]


def test_a_dataset_revision_changes_only_that_datasets_keys(monkeypatch, tmp_path):
    """Bumping CIFAR-10's revision gives CIFAR-10 runs new keys, keeps Fashion-MNIST's, and a
    stored CIFAR-10 run of the old revision drops out of `Store.table()` as stale."""
    from flcore.config import Config
    from flcore.runs.runner import store_key
    from flcore.runs.store import Store

    fm, cf = golden.config(FAST_CASE), golden.config("cifar10")
    assert "numerics_revision" not in fm.key_dict()
    assert cf.key_dict()["numerics_revision"] == DATASET_REVISIONS["cifar10"]
    assert Config.from_dict(cf.key_dict()) == cf  # a stored key_dict reads back
    st = Store(tmp_path / "store")
    frame = {"final": __import__("pandas").DataFrame({"repeat": [0], "accuracy": [50.0]})}
    st.put(store_key(cf), cf.key_dict(), frame, {}, {"status": "ok"})
    st.put(store_key(fm), fm.key_dict(), frame, {}, {"status": "ok"})
    assert len(st.table()) == 2
    before_fm, before_cf = store_key(fm), store_key(cf)
    monkeypatch.setitem(DATASET_REVISIONS, "cifar10", DATASET_REVISIONS["cifar10"] + 1)
    assert store_key(fm) == before_fm and store_key(cf) != before_cf
    assert list(st.table()["dataset"]) == ["fmnist"]
    assert len(st.table(include_stale=True)) == 2
