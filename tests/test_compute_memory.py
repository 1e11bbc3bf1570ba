"""Training keeps the memory it frees (`keep_freed_memory`, called by the runner): Dask's nanny starts workers with
MALLOC_TRIM_THRESHOLD_=65536, under which every megabyte-sized tensor the engine allocates
comes back from the kernel page fault by page fault (benchmarks/page_faults.py)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from flcore.sim.device import keep_freed_memory

SCRIPT = """
import sys, threading
import torch
from flcore.sim.device import keep_freed_memory

def minflt():
    with open("/proc/self/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])

def work(out):
    if sys.argv[1] == "1":
        assert keep_freed_memory()
    for _ in range(3):
        (torch.empty(2_000_000).fill_(1.0) * 2).sum()
    f0 = minflt()
    for _ in range(50):  # 8 MB tensors, allocated and freed as a training step does
        (torch.empty(2_000_000).fill_(1.0) * 2).sum()
    out.append(minflt() - f0)

out = []
t = threading.Thread(target=work, args=(out,))  # a Dask task runs in a worker thread
t.start(); t.join()
print(out[0])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not keep_freed_memory(), reason="glibc's mallopt only")
def test_a_task_keeps_freed_memory_under_dasks_trim_threshold():
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    faults = {}
    for keep in ("0", "1"):
        r = subprocess.run([sys.executable, "-c", SCRIPT, keep], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        faults[keep] = int(r.stdout.strip().splitlines()[-1])
    # without it, each 8 MB tensor is 2,048 fresh pages; with it, the heap is mostly reused
    # (measured here: 195,401 and 29,308 faults; a real stack: 3.5 million and 14,186 a round)
    assert faults["0"] > 50_000, faults
    assert faults["1"] < faults["0"] / 4, faults


def test_keep_freed_memory_is_set_once_and_on_glibc():
    first = keep_freed_memory()
    assert keep_freed_memory() is first
    # on glibc both mallopt calls must succeed; a False here would also have skipped the test
    # above silently, so this is the one that notices
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert first is True
