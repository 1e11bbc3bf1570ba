"""Sweeps: grid expansion, resumable in-process sweeps, determinism, and the Dask bar test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import flcore.runs.sweep as S
from flcore.config import Config, ConfigError
from flcore.runs.store import Store

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "params" / "sweeps" / "fmnist_m_grid.yaml"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not (FMNIST / "t10k-labels-idx1-ubyte.gz").exists(),
                                  reason="Fashion-MNIST not installed (make data)")  # fmt: skip

# tiny Fashion-MNIST configurations: about a second each on one core
TINY = {
    "dataset": "fmnist",
    "num_participants": 10,
    "k": 2,
    "rounds": 2,
    "repeats": 1,
    "n_train": 500,
    "n_test": 200,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def assert_same_entry(a, b) -> None:
    """Two store entries hold identical numbers (meta such as wall time may differ)."""
    assert a.config == b.config
    assert set(a.frames) == set(b.frames) and set(a.arrays) == set(b.arrays)
    for name in a.frames:
        pd.testing.assert_frame_equal(a.frames[name], b.frames[name], check_exact=True)
    for name in a.arrays:
        assert np.array_equal(a.arrays[name], b.arrays[name], equal_nan=True), name
    assert a.meta["status"] == b.meta["status"]


def wait_for_entries(proc, path: Path, n: int, timeout: float, poll: float = 0.05) -> None:
    """Wait while `proc` runs until the store at `path` holds at least `n` entries (or timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and len(Store(path).keys()) >= n:
            return
        time.sleep(poll)


def entry_ids(path: Path) -> dict[str, tuple]:
    """key -> (inode, manifest bytes): changes if an entry is rewritten."""
    st = Store(path)
    return {k: ((path / k).stat().st_ino, (path / k / "MANIFEST.json").read_bytes()) for k in st}


# ------------------------------------------------------------------------------------------
# grids
# ------------------------------------------------------------------------------------------


def test_expand_product_base_zip_and_dedup():
    grid = {"base": {"rounds": 3, "n_train": 500}, "m": [0, 0.1, 0.1], "zip": {"src": [4, 6], "tgt": [6, 0]},
            "num_participants": 10, "k": 2, "description": "free text"}  # fmt: skip
    cfgs = S.expand(grid)
    assert len(cfgs) == 4  # 2 distinct m x 2 zipped pairs; the duplicate 0.1 is dropped
    assert [(c.m, c.src, c.tgt) for c in cfgs] == [
        (0.0, 4, 6),
        (0.0, 6, 0),
        (0.1, 4, 6),
        (0.1, 6, 0),
    ]
    assert all(c.rounds == 3 and c.n_train == 500 and c.k == 2 for c in cfgs)
    assert isinstance(cfgs[0].m, float)  # m: 0 and m: 0.0 are one configuration, one store key
    assert S.store_key(cfgs[0]) == S.store_key(Config(m=0.0, rounds=3, n_train=500,
                                                      num_participants=10, k=2))  # fmt: skip
    # several zip groups
    two = S.expand({"zip": [{"src": [4, 6], "tgt": [6, 0]}, {"m": [0.1, 0.2], "seed": [1, 2]}]})
    assert [(c.src, c.m, c.seed) for c in two] == [
        (4, 0.1, 1),
        (4, 0.2, 2),
        (6, 0.1, 1),
        (6, 0.2, 2),
    ]


def test_load_grid_reads_exponents_as_numbers(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text("lr: [1e-3, 2.5E-2]\nm: 0\n")
    grid = S.load_grid(p)
    assert grid["lr"] == [0.001, 0.025]
    assert [c.lr for c in S.expand(p)] == [0.001, 0.025]


def test_example_grid_has_16_configurations():
    cfgs = S.expand(S.load_grid(EXAMPLE))
    assert len(cfgs) == 16
    assert {c.dataset for c in cfgs} == {"fmnist"} and {c.rounds for c in cfgs} == {2}


def test_bad_grid_point_names_the_point():
    with pytest.raises(ConfigError, match=r"grid point \(m=1\.5\).*m=1\.5.*\[0, 1\]"):
        S.expand({"m": [0.1, 1.5]})


@needs_fmnist
def test_module_is_callable(tmp_path):
    import flcore

    assert flcore.sweep is S.sweep  # flcore.sweep(...) is the sweep function
    df = flcore.sweep(Config(**TINY), store=tmp_path, progress=False)
    assert len(df) == 1 and df["status"].iloc[0] == "ok"


# ------------------------------------------------------------------------------------------
# in-process sweeps
# ------------------------------------------------------------------------------------------


@needs_fmnist
def test_sweep_table_resume_and_engine_key(tmp_path):
    grid = {**TINY, "repeats": 2, "m": [0.0, 0.2], "src": [4, 1], "tgt": 6}
    info: dict = {}
    df = S.sweep(grid, store=tmp_path, progress=False, info=info)
    assert info["configs"] == 4 and info["computed"] == 4 and info["stored"] == 0
    assert len(df) == 4 * 2 and df["key"].nunique() == 4
    for col in ("m", "src", "tgt", "key", "status", "repeat", "accuracy", "source_recall",
                "target_recall", "diverged"):  # fmt: skip
        assert col in df.columns, col
    assert df["accuracy"].between(0, 100).all() and (df["status"] == "ok").all()
    # the keys are the ones engine.run writes (same resolution of device and precision)
    assert sorted(df["key"].unique()) == Store(tmp_path).keys()

    before = entry_ids(tmp_path)
    info2: dict = {}
    df2 = S.sweep(grid, store=tmp_path, progress=False, info=info2)
    assert info2["computed"] == 0 and info2["stored"] == 4
    assert entry_ids(tmp_path) == before  # nothing rewritten
    pd.testing.assert_frame_equal(df.drop(columns="wall_s"), df2.drop(columns="wall_s"))

    # one more value of m: only the 2 new configurations run
    info3: dict = {}
    df3 = S.sweep({**grid, "m": [0.0, 0.2, 0.4]}, store=tmp_path, progress=False, info=info3)
    assert info3["computed"] == 2 and len(df3) == 12
    assert all(entry_ids(tmp_path)[k] == v for k, v in before.items())


@needs_fmnist
def test_determinism_across_runs(tmp_path):
    cfgs = S.expand({**TINY, "repeats": 2, "m": [0.0, 0.3]})
    S.sweep(cfgs, store=tmp_path / "a", progress=False)
    S.sweep(cfgs, store=tmp_path / "b", progress=False)
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    assert a.keys() == b.keys() and len(a.keys()) == 2
    for k in a:
        assert_same_entry(a.get(k), b.get(k))


# ------------------------------------------------------------------------------------------
# The bar: 16 Fashion-MNIST configurations on a 2-process LocalCluster, killed and resumed
# ------------------------------------------------------------------------------------------


@needs_fmnist
def test_local_cluster_sweep_killed_and_resumed_matches_in_process(tmp_path):
    cfgs = S.expand(S.load_grid(EXAMPLE))
    assert len(cfgs) == 16
    ref_path, path = tmp_path / "in-process", tmp_path / "cluster"
    # stacks of 2 configurations (4 federations): 8 tasks, stored one stack at a time
    S.sweep(cfgs, store=ref_path, progress=False, max_federations=4)

    # one torch thread per task, as in this process (the thread count changes fp32 rounding)
    cmd = [sys.executable, "-m", "flcore", "sweep", str(EXAMPLE), "--local-cluster", "2",
           "--results", str(path), "--quiet", "--threads", "1", "--max-federations", "4"]  # fmt: skip
    # own session: the kill takes the sweep and its worker processes down together, as a crash would
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    try:
        wait_for_entries(proc, path, 3, timeout=150)
        assert proc.poll() is None, (
            "the sweep finished (or failed) before it could be killed: "
            + proc.stderr.read().decode()[-2000:]
        )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = entry_ids(path)
    assert 3 <= len(before) < 16, len(before)

    out = subprocess.run(
        cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=240, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{len(before)} already stored, {16 - len(before)} computed" in out.stdout

    st = Store(path)
    assert st.verify_all() == {k: "ok" for k in st}
    assert len(st.keys()) == 16 and sorted(st.keys()) == sorted(Store(ref_path).keys())
    now = entry_ids(path)
    assert all(now[k] == v for k, v in before.items()), (
        "an entry stored before the kill was recomputed"
    )
    ref = Store(ref_path)
    for k in st:
        assert_same_entry(st.get(k), ref.get(k))


def test_local_cluster_leaves_this_process_environment_as_it_was(monkeypatch):
    """A LocalCluster's nannies set OMP_NUM_THREADS=1 (and more) in the starting process for the
    workers to inherit, and leave it set: a render after `reproduce --local-cluster N` would run
    its kernels' BLAS on one thread, and round the defense's PCA differently from a render
    without a cluster. `_client` hands the variables to the workers and puts them back."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    before = dict(os.environ)
    with S._client(None, 1) as client:
        # the worker has them (Dask's choice, kept): the variables really were set here
        assert client.submit(os.environ.get, "OMP_NUM_THREADS", pure=False).result() == "1"
    assert dict(os.environ) == before, {n: os.environ.get(n) for n in names}


def test_local_cluster_starts_beside_another_on_the_dashboard_port():
    """Two computes on one machine (a background compute and a sweep, say) each start a
    LocalCluster; Dask's default dashboard port 8787 would then be taken for the second, which
    warns. `_client` asks for a free port instead: with 8787 held, no warning and a cluster that
    computes."""
    import socket
    import warnings

    with socket.socket() as held:
        try:
            held.bind(("127.0.0.1", 8787))
        except OSError:
            pass  # already held by another process: the same situation
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*already in use")  # Dask's "Port 8787 is already in use"
            with S._client(None, 1) as client:
                assert client.submit(sum, [1, 2], pure=False).result() == 3
