"""Fault behaviour with real processes: killed sweeps, killed Dask workers, divergence, damage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_sweep import TINY, assert_same_entry, entry_ids, env, needs_fmnist, wait_for_entries

import flcore.runs.sweep as S
from flcore.runs.runner import run
from flcore.runs.store import Store, StoreWarning

REPO = Path(__file__).resolve().parents[1]
pytestmark = [needs_fmnist, pytest.mark.usefixtures("one_thread")]



def write_grid(path: Path, **swept) -> Path:
    lines = ["base:"] + [f"  {k}: {v}" for k, v in TINY.items()]
    lines += [f"{k}: {list(v)}" for k, v in swept.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_sigkill_sweep_process_then_resume(tmp_path):
    grid = write_grid(tmp_path / "grid.yaml", m=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "flcore", "sweep", str(grid), "--results", str(results),
           "--threads", "1", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_for_entries(proc, results, 2, timeout=120, poll=0.02)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = entry_ids(results)
    assert 2 <= len(before) < 8

    out = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=180,
                         check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    # every configuration computed exactly once: the ones stored before the kill were skipped
    assert f"{len(before)} already stored, {8 - len(before)} computed" in out.stdout
    st = Store(results)
    assert len(st.keys()) == 8
    assert st.verify_all() == dict.fromkeys(st.keys(), "ok")
    now = entry_ids(results)
    assert all(now[k] == v for k, v in before.items())


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as lc, Client(lc) as client:  # fmt: skip
        yield client


def test_killed_dask_worker_does_not_lose_the_sweep(tmp_path, cluster):
    client = cluster
    cfgs = S.expand({**TINY, "m": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]})
    results = tmp_path / "results"
    pids = client.run(os.getpid)
    killed: dict = {}

    def executing(dask_worker):
        return [str(ts.key) for ts in dask_worker.state.executing]

    def killer():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            try:
                busy = client.run(executing)
            except Exception:  # noqa: BLE001 - a worker may be mid-restart
                busy = {}
            for addr, keys in busy.items():
                if keys and addr in pids:
                    # a task is a stack: "flcore-stack-<first config's key>-<configs>"
                    key = keys[0].removeprefix("flcore-stack-").rsplit("-", 1)[0]
                    killed.update(addr=addr, key=key, stored=(results / key).exists())
                    os.kill(pids[addr], signal.SIGKILL)
                    return
            time.sleep(0.02)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    df = S.sweep(cfgs, store=results, executor=client, progress=False)
    t.join(5)
    assert killed, "no task was seen executing"
    assert not killed["stored"], "the worker was killed after its task finished"
    assert df["key"].nunique() == 6 and len(df) == 6
    st = Store(results)
    assert killed["key"] in st and st.verify_all() == dict.fromkeys(st.keys(), "ok")
    # the killed worker was replaced by its nanny
    deadline = time.monotonic() + 60
    while len(client.scheduler_info()["workers"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert killed["addr"] not in client.scheduler_info()["workers"]


def test_dask_result_equals_in_process(tmp_path, cluster):
    cfgs = S.expand({**TINY, "repeats": 2, "m": [0.0, 0.3]})
    S.sweep(cfgs, store=tmp_path / "dask", executor=cluster, progress=False)
    S.sweep(cfgs, store=tmp_path / "local", progress=False)
    a, b = Store(tmp_path / "dask"), Store(tmp_path / "local")
    assert a.keys() == b.keys() and len(a.keys()) == 2
    for k in a.keys():  # noqa: SIM118
        assert_same_entry(a.get(k), b.get(k))


def test_divergence_is_recorded_and_excluded(tmp_path):
    # lr=2 with momentum 0.9 blows up some repeats (and not others); lr=10 all of them
    grid = {**TINY, "rounds": 3, "repeats": 3, "momentum": 0.9, "lr": [2.0, 10.0, 0.001]}
    df = S.sweep(grid, store=tmp_path, progress=False)
    by_lr = {lr: g for lr, g in df.groupby("lr")}
    assert (by_lr[10.0]["status"] == "diverged").all() and by_lr[10.0]["diverged"].all()
    assert (by_lr[0.001]["status"] == "ok").all() and not by_lr[0.001]["diverged"].any()
    for lr in (2.0, 10.0):
        res = run(S.expand({**grid, "lr": lr})[0], store=tmp_path, progress=False)  # from the store
        assert res.meta["status"] == "diverged" and res.meta["diverged_repeats"]
        for j, g in res.rounds.groupby("repeat"):
            flags = g.sort_values("round")["diverged"].to_numpy()
            if j in res.meta["diverged_repeats"]:
                first = int(np.argmax(flags))  # recorded at a round, and from then on
                assert flags[first:].all() and not flags[:first].any()
                assert np.isnan(g.sort_values("round")["accuracy"].to_numpy()[first:]).all()
            else:
                assert not flags.any()
        final = res.final()
        ok = final[~final["diverged"]]
        summ = res.summary()
        assert summ.loc["accuracy", "runs"] == len(ok) == 3 - len(res.meta["diverged_repeats"])
        if len(ok):
            assert summ.loc["accuracy", "mean"] == pytest.approx(ok["accuracy"].mean())
            assert np.isfinite(summ.loc["accuracy", "mean"])


def test_damaged_entry_is_detected_and_recomputed(tmp_path):
    grid = {**TINY, "m": [0.0, 0.2]}
    S.sweep(grid, store=tmp_path, progress=False)
    st = Store(tmp_path)
    victim, other = st.keys()
    original = st.get(victim)
    before_other = entry_ids(tmp_path)[other]
    p = tmp_path / victim / "rounds.parquet"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    p.write_bytes(bytes(data))

    info: dict = {}
    with pytest.warns(StoreWarning, match=f"{victim}.*checksum mismatch for rounds.parquet"):
        df = S.sweep(grid, store=tmp_path, progress=False, info=info)
    assert info["computed"] == 1 and info["stored"] == 1
    assert len(df) == 2
    assert any(q.name.startswith(victim) for q in (tmp_path / "_quarantine").iterdir())
    assert_same_entry(Store(tmp_path).get(victim), original)  # recomputed, same numbers
    assert entry_ids(tmp_path)[other] == before_other


class _Recorder:
    """A stand-in for the compute bar: records every advance."""

    def __init__(self, total: int) -> None:
        self.total, self.steps = total, []

    def update(self, n: int = 1) -> None:
        self.steps.append(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


@pytest.mark.parametrize("where", ["in-process", "dask"])
def test_compute_bar_advances_every_round(tmp_path, monkeypatch, cluster, where):
    """The compute bar moves as rounds finish, not only when a whole stack is stored: from
    this process, and from Dask workers through their per-round events."""
    import flcore.runs.compute as cp

    bars: list[_Recorder] = []
    monkeypatch.setattr(cp, "_bar", lambda progress, total: bars.append(_Recorder(total)) or bars[-1])
    cfgs = S.expand({**TINY, "rounds": 6, "repeats": 2, "m": [0.0, 0.2]})  # one stack of 2 configs
    stats = cp.compute(cfgs, tmp_path / "results", None if where == "in-process" else cluster, threads=1)
    (bar,) = bars
    assert stats["stacks"] == 1 and bar.total == 2 * 6 * 2
    assert sum(bar.steps) == bar.total and all(n > 0 for n in bar.steps)
    if where == "in-process":
        assert bar.steps == [4] * 6  # 2 configs x 2 repeats per round
    else:  # events travel asynchronously: at least one came before the stack was stored
        assert len(bar.steps) > 1, bar.steps


def test_local_cluster_survives_a_pause_of_the_whole_compute():
    """A LocalCluster started by `sweep`/`reproduce` has no worker time-to-live: with Dask's
    default (5 minutes) a compute paused with kill -STOP for longer had every worker declared
    dead on kill -CONT and its stacks in flight cancelled (seen on 2026-12-05: two restarts
    in one evening, each losing the rounds since the last checkpoint)."""
    import dask
    import distributed  # noqa: F401 - loads its configuration defaults

    assert dask.config.get("distributed.scheduler.worker-ttl") is not None  # Dask's default
    with S._client(None, 1) as client:
        scheduler = client.cluster.scheduler
        assert scheduler.worker_ttl is None
        assert "worker-ttl" not in scheduler.periodic_callbacks
        assert client.submit(os.getpid).result() != os.getpid()  # a real worker process
    # the setting is the cluster's only: the global configuration is left as it was
    assert dask.config.get("distributed.scheduler.worker-ttl") is not None
