"""More repeats on top of stored ones: a configuration whose first repeats are stored (the same
configuration with fewer repeats) trains only the others, and the result is the one a run of
all its repeats at once gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flcore import Config
from flcore.runs import compute as cp
from flcore.runs import runner
from flcore.runs.checkpoint import Checkpoint, stack_id
from flcore.runs.runner import prefix_repeats, run, run_many, store_key
from flcore.runs.store import Store


def tiny(**kw):
    base = dict(dataset="fmnist", m=0.3, rounds=3, repeats=2, num_participants=10, k=3, n_train=800,
                n_test=200, record_updates="all", keep_model=True, precision="fp64")  # fmt: skip
    base.update(kw)
    return Config(**base)


@pytest.fixture
def trained(monkeypatch):
    """The repeats each simulation trains, in call order."""
    seen: list[list[int]] = []
    real = runner.simulate

    def spy(cfg, plan, progress=None, feds=None, checkpoint=None):
        seen.append([j for _, _, j in feds] if feds is not None else list(range(cfg.repeats)))
        return real(cfg, plan, progress, feds=feds, checkpoint=checkpoint)

    monkeypatch.setattr(runner, "simulate", spy)
    return seen


CASES = {
    # the silhouette gate off, so that the defense acts on runs this small
    "pca": dict(defense="pca", defense_params=dict(start_round=2, rounds_from=1, min_rows=6, min_silhouette=0.0)),
    "persistent": dict(client_state="persistent", lr_step=1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_more_repeats_train_only_the_missing_ones_and_equal_a_run_of_all(fmnist, tmp_path, trained, case):
    short = tiny(**CASES[case])
    run(short, store=tmp_path, data=fmnist, progress=False)
    long = short.replace(repeats=4)
    ext = run(long, store=tmp_path, data=fmnist, progress=False)
    assert trained == [[0, 1], [2, 3]]  # the second run trained repeats 2 and 3 only
    assert ext.meta["extended_from"] == 2
    fresh = run(long, store=None, data=fmnist, progress=False)
    for name in ("confusion", "selected", "malicious", "updates", "eval_rounds"):
        np.testing.assert_array_equal(getattr(ext, name), getattr(fresh, name), err_msg=name)
    for name in fresh.model:
        np.testing.assert_array_equal(ext.model[name], fresh.model[name], err_msg=name)
    pd.testing.assert_frame_equal(ext.rounds, fresh.rounds)
    pd.testing.assert_frame_equal(ext.recall, fresh.recall)
    if fresh.excluded is not None:
        reps = set(fresh.excluded["repeat"])
        assert reps & {0, 1} and reps & {2, 3}  # someone excluded in the stored half and in the new one
        pd.testing.assert_frame_equal(ext.excluded, fresh.excluded)
    # stored whole under its own key: read back as it was, without training
    again = run(long, store=tmp_path, data=fmnist, progress=False)
    assert len(trained) == 3 and again.meta["extended_from"] == 2
    pd.testing.assert_frame_equal(again.rounds, fresh.rounds)
    # the stored time is both trainings'
    first = Store(tmp_path).get(store_key(short)).meta["wall_s"]
    assert ext.meta["wall_s"] > first


def test_the_longest_stored_prefix_is_extended_and_stacks_count_only_missing_repeats(fmnist, tmp_path, trained):
    run(tiny(repeats=1), store=tmp_path, data=fmnist, progress=False)
    run(tiny(repeats=3), store=tmp_path, data=fmnist, progress=False)
    assert trained == [[0], [1, 2]]  # 3 repeats extend the stored 1
    st = Store(tmp_path)
    assert prefix_repeats(tiny(repeats=5), st) == 3
    assert prefix_repeats(tiny(repeats=5, m=0.1), st) == 0  # another configuration
    assert prefix_repeats(tiny(repeats=5, engine="reference"), st) == 0
    # the plan of a compute: two extensions, each stacked and counted by its missing repeats
    cfgs = [tiny(repeats=5), tiny(repeats=5, m=0.1), tiny(repeats=4)]
    p = cp.plan(cfgs, tmp_path)
    assert [p.to_train(c) for c in p.configs] == [2, 5, 1]
    assert p.pending_rounds == 3 * (2 + 5 + 1)
    trained.clear()
    out = run_many(cfgs, store=tmp_path, data=fmnist, progress=False)
    assert sorted(len(t) for t in trained) == [8]  # one stack: 2 + 5 + 1 federations
    assert [r.meta.get("extended_from") for r in out] == [3, None, 3]


def test_an_extensions_checkpoint_is_its_own(tmp_path):
    keys = ["a" * 64, "b" * 64]
    assert stack_id(keys) == stack_id(keys, [0, 0])  # the id of a whole training is unchanged
    assert stack_id(keys, [3, 0]) != stack_id(keys)
    whole, ext = Checkpoint(tmp_path, keys, every=0), Checkpoint(tmp_path, keys, every=0, first=[3, 0])
    assert whole.path != ext.path
    ext.save({"round": 4, "e": 4})
    # a file of the extension copied over the whole training's is refused, not resumed
    whole.path.parent.mkdir(parents=True, exist_ok=True)
    ext.path.rename(whole.path)
    with pytest.warns(UserWarning, match="other repeats"):
        assert whole.load("cpu") is None


@pytest.mark.parametrize("args, named", [(["--first", "10"], "--first 10"), (["--datasets", "mnist"], "'mnist'"),
                                         (["--precisions", "fp16"], "'fp16'")])  # fmt: skip
def test_repeat_prefix_benchmark_refuses_bad_arguments_before_any_work(args, named):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "repeat_prefix.py"
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and named in out.stderr, out.stderr
