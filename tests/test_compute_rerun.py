"""A stack task that Dask runs again after its result was stored trains nothing.

Dask reruns a finished task whose worker it loses while the client still holds its future (a
worker restarted after missing its heartbeats, say after the compute was paused with SIGSTOP).
Two guards, each pinned here: `run_stack` finds every member stored and returns, and `compute`
releases each future as soon as its stack is stored, so that the scheduler forgets the task and
cannot schedule the rerun at all."""

from __future__ import annotations

import pytest

from flcore import Config
from flcore.runs.compute import run_stack
from flcore.runs.runner import store_key
from flcore.runs.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_stored_stack_is_not_trained_again(tmp_path):
    base = Config(dataset="fmnist", rounds=2, repeats=1, num_participants=10, k=2, n_train=200,
                  n_test=100, precision="fp32", seed=0)  # fmt: skip
    cfgs = [base.replace(m=0.0), base.replace(m=0.2)]
    store = str(tmp_path / "store")
    rounds = []
    keys = run_stack([c.to_dict() for c in cfgs], store, progress=rounds.append)
    assert keys == [store_key(c) for c in cfgs]
    assert rounds == [0.5, 1.0]  # trained: one report per round
    st = Store(store)
    manifests = {k: (st.path / k / "MANIFEST.json").read_bytes() for k in keys}
    mtimes = {k: (st.path / k / "MANIFEST.json").stat().st_mtime_ns for k in keys}

    rounds.clear()
    assert run_stack([c.to_dict() for c in cfgs], store, progress=rounds.append) == keys
    assert rounds == []  # nothing trained
    assert {k: (st.path / k / "MANIFEST.json").read_bytes() for k in keys} == manifests
    assert {k: (st.path / k / "MANIFEST.json").stat().st_mtime_ns for k in keys} == mtimes

    # one member missing: the whole stack trains again (its numbers must not depend on which
    # stack-mates were stored before), and only the missing member is written
    assert st.delete(keys[1])
    run_stack([c.to_dict() for c in cfgs], store, progress=rounds.append)
    assert rounds == [0.5, 1.0]
    assert (st.path / keys[0] / "MANIFEST.json").read_bytes() == manifests[keys[0]]
    assert Store(store).has(keys[1])


def test_compute_on_dask_releases_each_stack_once_stored(tmp_path):
    """The other half: once a stack is stored, the scheduler forgets its task, so no later loss
    of a worker can make Dask run it again (the scheduler holds a task while a client holds its
    future)."""
    import time

    from distributed import Client, LocalCluster

    from flcore.runs.compute import _stack_key, compute

    base = Config(dataset="fmnist", rounds=2, repeats=1, num_participants=10, k=2, n_train=200,
                  n_test=100, precision="fp32", seed=0)  # fmt: skip
    cfgs = [base.replace(m=0.0), base.replace(m=0.2)]
    held: dict[str, bool] = {}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as client:  # fmt: skip

        def on_stack(stack):
            key = _stack_key(stack)
            deadline = time.monotonic() + 10  # the release reaches the scheduler asynchronously
            while client.run_on_scheduler(lambda dask_scheduler, k=key: k in dask_scheduler.tasks):
                if time.monotonic() > deadline:
                    held[key] = True
                    return
                time.sleep(0.05)
            held[key] = False

        stats = compute(cfgs, str(tmp_path / "store"), client, threads=1, max_federations=1,
                        progress=False, on_stack=on_stack)  # fmt: skip
    assert stats["stacks"] == 2 and stats["computed"] == 2
    assert len(held) == 2 and not any(held.values()), f"tasks still held after storing: {held}"
