"""The fast engine on a GPU: equal to the reference, and how fast at the paper's setting.

    python benchmarks/cuda_check.py [--device cuda] [--datasets fmnist,cifar10] [--rounds 2]
        [--max-federations 7680] [--budget-s 0] [--precision auto] [--sizes 30,240]
        [--no-equality]

1. Equality: the fast (stacked) engine against the sequential reference engine in fp64 on
   the device, on a small real configuration per dataset (2 repeats, a 10% label flip, 2
   rounds, a class-balanced 1,000 / 500 image subset): the largest difference of the
   per-round losses and whether the confusion matrices are identical. Prints `EQUAL ...`.
2. Speed: seconds per experiment-round (one federation x one round) of the paper's setting
   (full data, N = 50, k = 5, the paper's batch size, precision "auto", every repeat
   evaluated on the whole test set every round) for 1, 30 and the largest number of stacked
   federations that fits in memory (doubling from 30 until the device runs out of memory, or
   `--max-federations`, or the time budget `--budget-s` stops it), with the peak GPU memory
   of each. Prints `RESULT ...` lines, and an `ESTIMATE` of how many federations 90% of the
   GPU's memory holds, linear in the last two peaks (an extrapolation, not a measurement).

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


def speed(dataset: str, device: str, G: int, rounds: int, data, precision: str = "auto") -> dict:
    import torch

    from flcore import Config
    from flcore.runs.runner import run

    cfg = Config(dataset=dataset, m=0.1, rounds=rounds, repeats=G, device=device,
                 precision=precision)  # fmt: skip
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
    from flcore.sim.device import resolve_precision

    return {"s_per_exp_round": dt / (rounds * G), "peak_mb": peak,
            "precision": resolve_precision(precision, device)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--datasets", default="fmnist,cifar10")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per measurement")
    p.add_argument("--max-federations", type=int, default=7680, help="stop doubling here")
    p.add_argument("--budget-s", type=float, default=0.0,
                   help="seconds for the whole script (0: none); the doubling stops before a "
                        "measurement predicted to overrun a dataset's share of what is left")  # fmt: skip
    p.add_argument("--speed", action="store_true", help="time on a CPU too")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="the speed part's precision (auto: bf16 where the GPU has it)")  # fmt: skip
    p.add_argument("--sizes", default="",
                   help="comma-separated federation counts to time instead of 1, 30 and doubling")  # fmt: skip
    p.add_argument("--no-equality", action="store_true", help="skip the fp64 equality check")
    a = p.parse_args()
    if a.rounds < 1 or a.max_federations < 1 or a.budget_s < 0:
        raise SystemExit(f"error: --rounds {a.rounds}, --max-federations {a.max_federations} and "
                         f"--budget-s {a.budget_s} must be positive (budget 0 = none)")  # fmt: skip

    import torch

    from flcore.data import load_dataset
    from flcore.sim.device import cpu_name

    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda: no CUDA device here (torch.cuda.is_available() is "
                         "False); run it on a GPU machine, or --device cpu to check the script")  # fmt: skip
    t_start = time.perf_counter()
    name = torch.cuda.get_device_name() if a.device == "cuda" else cpu_name()
    total_mb = (torch.cuda.get_device_properties(0).total_memory / 2**20 if a.device == "cuda"
                else float("nan"))  # fmt: skip
    print(f"# device {a.device}: {name}; torch {torch.__version__}; memory {total_mb:.0f} MiB")
    datasets = a.datasets.split(",")
    try:
        fixed = [int(x) for x in a.sizes.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(
            f"error: --sizes {a.sizes!r}: give federation counts, e.g. 30,240"
        ) from None
    if any(g < 1 for g in fixed):
        raise SystemExit(f"error: --sizes {a.sizes!r}: every federation count must be at least 1")
    for i, ds in enumerate(datasets):
        t = time.perf_counter()
        if not a.no_equality:
            eq = equality(ds, a.device)
            print(f"EQUAL dataset={ds} device={a.device} fp64 max_loss_diff={eq['max_loss_diff']:.3g} "
                  f"confusion_equal={eq['confusion_equal']} check_s={time.perf_counter() - t:.1f}",
                  flush=True)  # fmt: skip
        if a.device == "cpu" and not a.speed:
            continue
        data = load_dataset(ds, progress=False)
        # this dataset's share of the time left (the datasets after it get theirs)
        deadline = (float("inf") if not a.budget_s else
                    time.perf_counter() + (a.budget_s - (time.perf_counter() - t_start))
                    / (len(datasets) - i))  # fmt: skip
        sizes, G = [1, 30], 60
        while G <= a.max_federations:
            sizes.append(G)
            G *= 2
        sizes = fixed or sizes
        done: list[tuple[int, dict]] = []
        for G in sizes:
            # a warm-up round and the timed rounds, each at least as dear as the last size's
            if done:
                g0, r0 = done[-1]
                predicted = r0["s_per_exp_round"] * g0 * (1 + a.rounds) * max(1.0, G / g0)
                if time.perf_counter() + predicted > deadline:
                    print(f"# {ds}: {G} federations not tried: predicted {predicted:.0f} s, beyond "
                          f"the time budget (--budget-s {a.budget_s:g})", flush=True)  # fmt: skip
                    break
            try:
                r = speed(ds, a.device, G, a.rounds, data, a.precision)
            except (torch.cuda.OutOfMemoryError, MemoryError):
                print(f"# {ds}: {G} federations do not fit", flush=True)
                if a.device == "cuda":
                    torch.cuda.empty_cache()
                break
            done.append((G, r))
            print(f"RESULT dataset={ds} device={a.device} gpu={name.replace(' ', '_')} federations={G} "
                  f"precision={r['precision']} "
                  f"s_per_exp_round={r['s_per_exp_round']:.5f} s_per_round={r['s_per_exp_round'] * G:.3f} "
                  f"peak_gpu_mb={r['peak_mb']:.0f}", flush=True)  # fmt: skip
        if a.device == "cuda" and len(done) >= 2:
            (g1, r1), (g2, r2) = done[-2], done[-1]
            per = (r2["peak_mb"] - r1["peak_mb"]) / (g2 - g1)
            if per > 0:
                fit = int((0.9 * total_mb - (r2["peak_mb"] - per * g2)) / per)
                print(f"ESTIMATE dataset={ds} gpu_mb_per_federation={per:.2f} "
                      f"federations_in_90pct_of_memory={fit} (linear in the last two peaks; "
                      f"largest measured {g2})", flush=True)  # fmt: skip
    print(f"# total {time.perf_counter() - t_start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
