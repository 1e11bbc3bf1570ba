"""Does the fast engine give the same numbers twice on one GPU?

    python benchmarks/cuda_determinism.py [--device cuda] [--datasets fmnist,cifar10]
        [--precisions auto,fp32] [--n-train 10000] [--rounds 3] [--repeats 4]

For each dataset and precision it trains the same configuration (a 20% label flip, N = 50,
k = 5, the paper's batch size, a class-balanced subset) twice in this process and compares the
two results bit for bit: every per-round metric and the confusion matrices. It does so twice:
with PyTorch's defaults, then with cuDNN's deterministic mode and
`torch.use_deterministic_algorithms(True, warn_only=True)`, printing the operations PyTorch
warns are nondeterministic and the time of each run. One `DETERMINISM ...` line per case.

On a CPU (`--device cpu`) it checks the script itself.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

# cuBLAS is deterministic only with a fixed workspace, set before CUDA starts
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _same(a, b) -> tuple[bool, float]:
    import numpy as np

    fa, fb = a.rounds.select_dtypes("number"), b.rounds.select_dtypes("number")
    if list(fa.columns) != list(fb.columns) or fa.shape != fb.shape:
        return False, float("nan")
    x, y = fa.to_numpy(dtype=float), fb.to_numpy(dtype=float)
    diff = float(np.nanmax(np.abs(x - y))) if x.size else 0.0
    same = bool(np.array_equal(x, y, equal_nan=True)) and bool(
        np.array_equal(a.confusion, b.confusion)
    )
    return same, diff


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--datasets", default="fmnist,cifar10")
    p.add_argument("--precisions", default="auto,fp32")
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=4)
    a = p.parse_args()
    bad = [x for x in a.precisions.split(",") if x not in ("auto", "fp32", "bf16", "fp64")]
    if bad or min(a.n_train, a.rounds, a.repeats) < 1:
        raise SystemExit(f"error: --precisions {a.precisions!r} (each of auto, fp32, bf16, fp64), "
                         f"--n-train {a.n_train}, --rounds {a.rounds} and --repeats {a.repeats} "
                         "(each at least 1)")  # fmt: skip

    import torch

    from flcore import Config
    from flcore.data import load_dataset
    from flcore.runs.runner import run
    from flcore.sim.device import resolve_precision

    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda: no CUDA device here; use --device cpu to check "
                         "the script")  # fmt: skip
    name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    print(f"# device {a.device}: {name}; torch {torch.__version__}", flush=True)
    for mode in ("default", "deterministic"):
        if mode == "deterministic":
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
            torch.use_deterministic_algorithms(True, warn_only=True)
        for ds in a.datasets.split(","):
            data = load_dataset(ds, progress=False)
            for prec in a.precisions.split(","):
                cfg = Config(dataset=ds, m=0.2, rounds=a.rounds, repeats=a.repeats,
                             n_train=a.n_train, n_test=2000, device=a.device, precision=prec)  # fmt: skip
                out, secs, seen = [], [], set()
                for _ in range(2):
                    with warnings.catch_warnings(record=True) as w:
                        warnings.simplefilter("always")
                        t = time.perf_counter()
                        out.append(run(cfg, store=None, data=data, progress=False))
                        if a.device == "cuda":
                            torch.cuda.synchronize()
                        secs.append(time.perf_counter() - t)
                    seen |= {str(x.message).splitlines()[0][:160] for x in w
                             if "determinis" in str(x.message)}  # fmt: skip
                same, diff = _same(*out)
                print(f"DETERMINISM dataset={ds} precision={resolve_precision(prec, a.device)} "
                      f"mode={mode} identical={same} max_round_metric_diff={diff:.3g} "
                      f"run_s={secs[0]:.2f},{secs[1]:.2f}", flush=True)  # fmt: skip
                for s in sorted(seen):
                    print(f"#   warned: {s}", flush=True)


if __name__ == "__main__":
    main()
