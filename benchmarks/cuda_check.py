"""The fast engine on a GPU: equal to the reference, and how fast at the paper's setting.

    python benchmarks/cuda_check.py [--device cuda] [--datasets fmnist,cifar10] [--rounds 2]

1. Equality: the fast (stacked) engine against the sequential reference engine in fp64 on
   the device, on a small real configuration per dataset (2 repeats, a 10% label flip, 2
   rounds, a class-balanced 1,000 / 500 image subset): the largest difference of the
   per-round losses and whether the confusion matrices are identical. Prints `EQUAL ...`.
2. Speed: seconds per experiment-round (one federation x one round) of the paper's setting
   (full data, N = 50, k = 5, the paper's batch size, precision "auto", every repeat
   evaluated on the whole test set every round) for 1, 30 and the largest number of stacked
   federations that fits in memory (doubling from 30 until the device runs out of memory),
   with the peak GPU memory of each. Prints `RESULT ...` lines.

On a CPU (`--device cpu`) it runs too, as a check of the script itself; the speed part is
then `benchmarks/engine_speed.py`'s business, so it stops after the equality check unless
`--speed` is given.
"""

from __future__ import annotations

import argparse
import time


def equality(dataset: str, device: str) -> dict:
    import numpy as np

    from flcore import Config
    from flcore.runs.runner import run

    base = Config(dataset=dataset, m=0.1, rounds=2, repeats=2, n_train=1000, n_test=500,
                  precision="fp64", device=device)  # fmt: skip
    fast = run(base, store=None, progress=False)
    ref = run(base.replace(engine="reference"), store=None, progress=False)
    loss_f = fast.rounds["train_loss"].to_numpy(dtype=float)
    loss_r = ref.rounds["train_loss"].to_numpy(dtype=float)
    return {"max_loss_diff": float(np.nanmax(np.abs(loss_f - loss_r))),
            "confusion_equal": bool(np.array_equal(fast.confusion, ref.confusion))}  # fmt: skip


def speed(dataset: str, device: str, G: int, rounds: int, data) -> dict:
    import torch

    from flcore import Config
    from flcore.runs.runner import run

    cfg = Config(dataset=dataset, m=0.1, rounds=rounds, repeats=G, device=device)
    run(cfg.replace(rounds=1), store=None, data=data, progress=False)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    run(cfg, store=None, data=data, progress=False)
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
    return {"s_per_exp_round": dt / (rounds * G), "peak_mb": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--datasets", default="fmnist,cifar10")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per measurement")
    p.add_argument("--max-federations", type=int, default=480, help="stop doubling here")
    p.add_argument("--speed", action="store_true", help="time on a CPU too")
    a = p.parse_args()

    import torch

    from flcore.data import load_dataset
    from flcore.sim.device import cpu_name

    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda: no CUDA device here (torch.cuda.is_available() is "
                         "False); run it on a GPU machine, or --device cpu to check the script")  # fmt: skip
    name = torch.cuda.get_device_name() if a.device == "cuda" else cpu_name()
    print(f"# device {a.device}: {name}; torch {torch.__version__}")
    for ds in a.datasets.split(","):
        eq = equality(ds, a.device)
        print(f"EQUAL dataset={ds} device={a.device} fp64 max_loss_diff={eq['max_loss_diff']:.3g} "
              f"confusion_equal={eq['confusion_equal']}", flush=True)  # fmt: skip
        if a.device == "cpu" and not a.speed:
            continue
        data = load_dataset(ds, progress=False)
        sizes, G = [1, 30], 60
        while G <= a.max_federations:
            sizes.append(G)
            G *= 2
        for G in sizes:
            try:
                r = speed(ds, a.device, G, a.rounds, data)
            except (torch.cuda.OutOfMemoryError, MemoryError):
                print(f"# {ds}: {G} federations do not fit", flush=True)
                if a.device == "cuda":
                    torch.cuda.empty_cache()
                break
            print(f"RESULT dataset={ds} device={a.device} gpu={name.replace(' ', '_')} federations={G} "
                  f"s_per_exp_round={r['s_per_exp_round']:.4f} peak_gpu_mb={r['peak_mb']:.0f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
