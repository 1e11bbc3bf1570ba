"""Mid-training checkpoints (flcore.runs.checkpoint): a stopped stack resumes at its last saved
round and gives the numbers of one that never stopped, bit for bit; real training, real kills."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_sweep import TINY, assert_same_entry, env, needs_fmnist

import flcore.runs.sweep as S
from flcore.runs.checkpoint import (
    CHECKPOINT_DIR,
    CHECKPOINT_ENV,
    Checkpoint,
    checkpoint_files,
    every_s,
)
from flcore.runs.runner import store_key, train_stack
from flcore.runs.store import Store

REPO = Path(__file__).resolve().parents[1]
pytestmark = [needs_fmnist, pytest.mark.usefixtures("one_thread")]

ROUNDS = 6
# plain FedAvg; and what carries state from round to round besides the models: the PCA
# defense's history and blocked set, the participants' own momentum and learning-rate
# schedule (client_state="persistent"), the recorded updates
CASES = {
    "fedavg": {**TINY, "rounds": ROUNDS, "repeats": 2, "m": [0.0, 0.2]},
    "pca-persistent": {**TINY, "rounds": ROUNDS, "repeats": 2, "m": [0.3, 0.5], "src": 4, "tgt": 6,
                       "k": 5, "client_state": "persistent", "record_updates": "source",
                       "defense": "pca",  # acting from round 1: it excludes someone in rounds 1-3
                       "defense_params": {"min_rows": 4, "min_silhouette": 0.0, "start_round": 1,
                                          "rounds_from": 1}},
}


class _Stop(Exception):
    pass


def _stop_after(rnd: int):
    def hook(done: int) -> None:
        if done >= rnd:
            raise _Stop(done)

    return hook


def _checkpoints(store: Path) -> list[Path]:
    return checkpoint_files(store / CHECKPOINT_DIR)


@pytest.mark.parametrize("case", sorted(CASES))
def test_stopped_stack_resumes_bit_for_bit(tmp_path, monkeypatch, case):
    cfgs = S.expand(CASES[case])
    train_stack(cfgs, store=tmp_path / "whole")  # never stopped (no checkpoint is due)
    assert _checkpoints(tmp_path / "whole") == []

    monkeypatch.setenv(CHECKPOINT_ENV, "0")  # save after every round
    stopped = tmp_path / "stopped"
    with pytest.raises(_Stop):
        train_stack(cfgs, store=stopped, on_round=_stop_after(3))
    (ckpt,) = _checkpoints(stopped)
    assert torch.load(ckpt, weights_only=False)["round"] == 3
    assert Store(stopped).keys() == []  # nothing half-written reaches the store

    seen: list[int] = []
    train_stack(cfgs, store=stopped, on_round=seen.append)
    assert seen == [3, 4, 5, 6]  # credited rounds 1-3 at once, trained only 4-6
    assert _checkpoints(stopped) == []  # removed once every member is stored
    whole, resumed = Store(tmp_path / "whole"), Store(stopped)
    for c in cfgs:
        a, b = whole.get(store_key(c)), resumed.get(store_key(c))
        if c.defense:  # the defense's state before the stop shapes what follows
            assert (a.frames["excluded"]["round"] <= 3).any()
        assert_same_entry(a, b)
        assert a.meta["resumed_after"] == 0 and b.meta["resumed_after"] == 3


def test_unusable_checkpoints_are_set_aside(tmp_path, monkeypatch):
    """A damaged file, or one of other configurations, is moved aside with a warning and the
    stack trains from round 1; it is never resumed."""
    monkeypatch.setenv(CHECKPOINT_ENV, "0")
    cfgs = S.expand({**TINY, "rounds": 3, "m": [0.0, 0.2]})
    store = tmp_path / "results"
    Store(store)
    path = Checkpoint(store, [store_key(c) for c in cfgs]).path
    path.parent.mkdir()
    path.write_bytes(b"not a checkpoint")
    old, fresh = (path.with_name(f".tmp-{path.stem}-{pid}.pt") for pid in (1, 2))  # saves cut by kills
    for p in (old, fresh):
        p.write_bytes(b"half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    seen: list[int] = []
    with pytest.warns(UserWarning, match="cannot be resumed"):
        train_stack(cfgs, store=store, on_round=seen.append)
    assert seen == [1, 2, 3]
    assert not old.exists() and fresh.exists()  # an hour-old one is removed; a recent one may be live
    fresh.unlink()
    assert [p.name for p in path.parent.iterdir()][0].startswith(path.stem + ".unreadable-")

    other = tmp_path / "other"
    with pytest.raises(_Stop):  # a checkpoint of the first config alone ...
        train_stack(cfgs[:1], store=other, on_round=_stop_after(2))
    (src,) = _checkpoints(other)
    dst = Checkpoint(other, [store_key(c) for c in cfgs]).path
    src.rename(dst)  # ... under the name of the two-config stack
    seen.clear()
    with pytest.warns(UserWarning, match="belongs to other configurations"):
        train_stack(cfgs, store=other, on_round=seen.append)
    assert seen == [1, 2, 3]


@pytest.mark.parametrize("raw", ["soon", "-5", "nan"])
def test_bad_checkpoint_interval_is_named(monkeypatch, raw):
    monkeypatch.setenv(CHECKPOINT_ENV, raw)
    with pytest.raises(ValueError, match=f"{CHECKPOINT_ENV}='{raw}'.*number >= 0"):
        every_s()


def test_sigkilled_sweep_resumes_mid_stack(tmp_path):
    """A sweep process killed by SIGKILL in the middle of its only stack: the re-run starts
    at the saved round, not at round 1, and stores the numbers of an uninterrupted run."""
    rounds = 40
    grid = tmp_path / "grid.yaml"
    grid.write_text("\n".join(["base:"] + [f"  {k}: {v}" for k, v in TINY.items() if k != "rounds"]
                              + [f"  rounds: {rounds}", "m: [0.0, 0.2]"]) + "\n")  # fmt: skip
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "flcore", "sweep", str(grid), "--results", str(results),
           "--threads", "1", "--quiet"]  # fmt: skip
    run_env = {**env(), CHECKPOINT_ENV: "0"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        saved = 0
        while time.monotonic() < deadline and proc.poll() is None and saved < 3:
            files = _checkpoints(results)
            if files:
                try:
                    saved = torch.load(files[0], weights_only=False)["round"]
                except Exception:  # being replaced this instant: read it again
                    pass
            time.sleep(0.05)
        assert proc.poll() is None and saved >= 3, proc.stderr.read().decode()[-2000:]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert Store(results).keys() == []
    (ckpt,) = _checkpoints(results)
    at_kill = torch.load(ckpt, weights_only=False)["round"]
    assert 3 <= at_kill < rounds

    out = subprocess.run(cmd, cwd=REPO, env=run_env, capture_output=True, text=True, timeout=180,
                         check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    cfgs = S.expand({**TINY, "rounds": rounds, "m": [0.0, 0.2]})
    train_stack(cfgs, store=tmp_path / "whole")
    for c in cfgs:
        b = Store(results).get(store_key(c))
        assert b.meta["resumed_after"] == at_kill
        assert_same_entry(Store(tmp_path / "whole").get(store_key(c)), b)
    assert _checkpoints(results) == []


def test_checkpoint_travels_with_the_export(tmp_path, monkeypatch):
    """A stack stopped on one machine resumes on another from the committed export: the export
    carries its checkpoint, the import puts it back unless the store's own is further on, and
    once the stack is stored the next export drops it."""
    from flcore.runs.export import export_runs, import_runs

    monkeypatch.setenv(CHECKPOINT_ENV, "0")
    cfgs = S.expand({**TINY, "rounds": 4, "m": [0.0, 0.2]})
    keys = [store_key(c) for c in cfgs]
    here, there, folder = tmp_path / "here", tmp_path / "there", tmp_path / "runs"
    with pytest.raises(_Stop):
        train_stack(cfgs, store=here, on_round=_stop_after(2))
    (real,) = checkpoint_files(here / CHECKPOINT_DIR)
    cut = real.with_name(f".tmp-{real.stem}-99.pt")  # a save a kill stopped before its rename
    cut.write_bytes(real.read_bytes())
    assert checkpoint_files(here / CHECKPOINT_DIR) == [real]
    assert export_runs(here, keys, folder)["checkpoints"] == 1
    assert [p.name for p in (folder / "checkpoints").iterdir()] == [real.name]
    assert export_runs(here, keys[:1], tmp_path / "other")["checkpoints"] == 0  # not of that plan
    assert import_runs(folder, there)["checkpoints"] == 1
    seen: list[int] = []
    train_stack(cfgs, store=there, on_round=seen.append)
    assert seen == [2, 3, 4]
    with pytest.raises(_Stop):  # here, the stack goes on to round 3 ...
        train_stack(cfgs, store=here, on_round=_stop_after(3))
    assert import_runs(folder, here)["checkpoints"] == 0  # ... so the export's round 2 is not taken
    assert torch.load(_checkpoints(here)[0], weights_only=False)["round"] == 3
    ex = export_runs(there, keys, folder)
    assert ex["runs"] == 2 and ex["checkpoints"] == 0  # stored now: the checkpoint is gone
    assert list((folder / "checkpoints").glob("*.pt")) == []


def test_export_reads_a_checkpoint_header_without_loading_it_and_skips_a_damaged_one(tmp_path, monkeypatch):
    """`header` maps the file (its keys, first repeats and round, without reading the tensors)
    and answers None for a cut or foreign file, which is then neither exported nor imported."""
    from flcore.runs.checkpoint import header

    monkeypatch.setenv(CHECKPOINT_ENV, "0")
    cfgs = S.expand({**TINY, "rounds": 3})
    with pytest.raises(_Stop):
        train_stack(cfgs, store=tmp_path, on_round=_stop_after(2))
    (path,) = _checkpoints(tmp_path)
    assert header(path) == {"keys": [store_key(c) for c in cfgs], "first": None, "round": 2}
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    other = tmp_path / "other.pt"
    other.write_bytes(b"not a checkpoint")
    assert header(cut) is None and header(other) is None


def test_cpu_seconds_leave_out_the_time_the_process_did_not_run(tmp_path, monkeypatch):
    """`meta["cpu_s"]` is the CPU time the stack's process spent training it, so time in which
    the process did not run (here: sleeping between rounds, as a process stopped with SIGSTOP
    does not run) is in `wall_s` but not in `cpu_s`; it carries across a checkpoint, and a
    stack resumed from a checkpoint that did not record it says None rather than a part."""
    import time as clock

    def nap(_done: int) -> None:
        clock.sleep(0.5)

    cfgs = S.expand({**TINY, "rounds": 4, "m": [0.2]})
    key = store_key(cfgs[0])
    train_stack(cfgs, store=tmp_path / "whole", on_round=nap)
    meta = Store(tmp_path / "whole").get(key).meta
    assert 0 < meta["cpu_s"] and meta["wall_s"] - meta["cpu_s"] >= 1.6  # 4 naps of 0.5 s

    monkeypatch.setenv(CHECKPOINT_ENV, "0")
    stopped = tmp_path / "stopped"

    def nap_then_stop(done: int) -> None:
        nap(done)
        _stop_after(2)(done)

    with pytest.raises(_Stop):
        train_stack(cfgs, store=stopped, on_round=nap_then_stop)
    (ckpt,) = _checkpoints(stopped)
    saved = torch.load(ckpt, weights_only=False)
    assert 0 < saved["cpu_s"] < saved["wall_s"]
    train_stack(cfgs, store=stopped, on_round=nap)
    meta = Store(stopped).get(key).meta
    assert meta["cpu_s"] > saved["cpu_s"] and meta["wall_s"] - meta["cpu_s"] >= 1.6

    older = tmp_path / "older"  # a checkpoint saved before checkpoints recorded CPU time
    with pytest.raises(_Stop):
        train_stack(cfgs, store=older, on_round=_stop_after(2))
    (ckpt,) = _checkpoints(older)
    state = torch.load(ckpt, weights_only=False)
    del state["cpu_s"]
    torch.save(state, ckpt)
    train_stack(cfgs, store=older)
    meta = Store(older).get(key).meta
    assert meta["cpu_s"] is None and meta["resumed_after"] == 2 and meta["wall_s"] > 0


@pytest.mark.parametrize("where", ["in-process", "dask"])
def test_stacks_stopped_part_way_train_first_and_count_only_their_rest(tmp_path, monkeypatch, where):
    """A compute starts with the stacks a stopped compute left furthest along (then the others
    in plan order), in this process and on Dask, so that a compute stopped again soon has
    stored what it had nearly done; the dry run's estimate counts only their rounds left."""
    import flcore.runs.compute as cp

    monkeypatch.setenv(CHECKPOINT_ENV, "0")
    monkeypatch.setattr(cp, "_cpu_busy_share", lambda: 0.0)  # keep the calibration: same rates twice
    cfgs = S.expand({**TINY, "rounds": 4, "m": [0.0, 0.1, 0.2]})
    keys = [store_key(c) for c in cfgs]
    store = tmp_path / "store"
    fresh = cp.estimate(cp.plan(cfgs, store, max_federations=1), store, 1)
    for c, at in ((cfgs[1], 1), (cfgs[2], 3)):
        with pytest.raises(_Stop):
            train_stack([c], store=store, on_round=_stop_after(at))
    p = cp.plan(cfgs, store, max_federations=1)
    assert [store_key(s[0]) for s in p.stacks] == keys  # plan order
    assert [cp.saved_share(s, p, store) for s in p.stacks] == [0.0, 0.25, 0.75]
    assert [store_key(s[0]) for s in cp.resume_order(p.stacks, p, store)] == keys[::-1]
    resumed = cp.estimate(p, store, 1)
    assert resumed["serial_seconds"] == pytest.approx(fresh["serial_seconds"] * (1 + 0.75 + 0.25) / 3)

    order: list[str] = []
    on_stack = lambda stack: order.append(store_key(stack[0]))  # noqa: E731
    if where == "dask":
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as lc, Client(lc) as client:  # fmt: skip
            cp.compute(cfgs, str(store), client, threads=1, max_federations=1, progress=False, on_stack=on_stack)
    else:
        cp.compute(cfgs, str(store), threads=1, max_federations=1, progress=False, on_stack=on_stack)
    assert order == keys[::-1]
    assert sorted(Store(store).keys()) == sorted(keys) and _checkpoints(store) == []
