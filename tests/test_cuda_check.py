"""benchmarks/cuda_check.py refuses bad arguments before any work, naming the value and the fix.

Its GPU half needs a GPU and is not run here; its CPU half (the fp64 equality check) takes
about a minute on 2 cores and is run by hand (`--device cpu`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cuda_check.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (("--device", "cpu", "--sizes", "30,x"), ["--sizes '30,x'", "e.g. 30,240"]),
        (("--device", "cpu", "--sizes", "0"), ["--sizes '0'", "at least 1"]),
        (("--device", "cpu", "--rounds", "0"), ["--rounds 0", "must be positive"]),
        (("--device", "cpu", "--budget-s", "-5"), ["--budget-s -5.0", "must be positive"]),
    ],
)
def test_bad_arguments_are_refused_before_any_work(args, names):
    r = _run(*args)
    assert r.returncode != 0
    assert "EQUAL" not in r.stdout and "RESULT" not in r.stdout  # nothing was measured
    for n in names:
        assert n in r.stderr, r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
def test_cuda_without_a_gpu_says_how_to_check_the_script():
    r = _run("--device", "cuda")
    assert r.returncode != 0
    assert "no CUDA device here" in r.stderr and "--device cpu" in r.stderr


def test_determinism_check_refuses_bad_arguments_before_any_work():
    script = SCRIPT.with_name("cuda_determinism.py")
    r = subprocess.run([sys.executable, str(script), "--device", "cpu", "--precisions", "fp16"],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode != 0 and "DETERMINISM" not in r.stdout
    assert "--precisions 'fp16'" in r.stderr and "auto, fp32, bf16, fp64" in r.stderr
