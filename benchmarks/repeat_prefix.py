"""Whether a run extended by more repeats equals, bit for bit, the same run trained at once, in
the precisions this machine trains in (fp64 is pinned by tests/test_extend.py).

A configuration whose first repeats are stored trains only the missing ones, in a stack of
another width than a run of all its repeats at once would use; in fp32 and bf16 the kernels
could in principle round differently at another width. This script trains, for each dataset
and precision, a short configuration with `--repeats` repeats at once, and the same one as
`--first` stored repeats extended to `--repeats`, and compares every array and frame.

    python benchmarks/repeat_prefix.py [--datasets fmnist,cifar10] [--precisions fp32,bf16]
        [--first 3] [--repeats 10] [--rounds 3] [--threads 1]

Prints one line per case: EQUAL ... identical=True|False max_abs_diff=...
"""

from __future__ import annotations

import argparse
import tempfile


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="fmnist,cifar10")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--first", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    datasets = a.datasets.split(",")
    precisions = a.precisions.split(",")
    for d in datasets:
        if d not in ("fmnist", "cifar10"):
            p.error(f"--datasets: {d!r} is not fmnist or cifar10")
    for q in precisions:
        if q not in ("fp32", "bf16", "fp64"):
            p.error(f"--precisions: {q!r} is not fp32, bf16 or fp64")
    if not 1 <= a.first < a.repeats or a.rounds < 1 or a.threads < 1:
        p.error(f"--first {a.first} --repeats {a.repeats} --rounds {a.rounds} --threads {a.threads}: "
                "give 1 <= first < repeats, rounds >= 1 and threads >= 1")

    import numpy as np
    import torch

    from flcore import Config
    from flcore.data import load_dataset
    from flcore.runs.runner import run
    from flcore.sim.device import cpu_name

    torch.set_num_threads(a.threads)
    print(f"# CPU: {cpu_name()}  torch {torch.__version__}  threads {a.threads}")
    for d in datasets:
        data = load_dataset(d, progress=False)
        for q in precisions:
            cfg = Config(dataset=d, m=0.2, rounds=a.rounds, repeats=a.repeats, precision=q,
                         n_train=5000, n_test=1000, record_updates="source")  # fmt: skip
            whole = run(cfg, store=None, data=data, progress=False)
            with tempfile.TemporaryDirectory() as tmp:
                run(cfg.replace(repeats=a.first), store=tmp, data=data, progress=False)
                ext = run(cfg, store=tmp, data=data, progress=False)
            assert ext.meta.get("extended_from") == a.first
            same = (np.array_equal(whole.confusion, ext.confusion) and np.array_equal(whole.updates, ext.updates)
                    and whole.rounds.equals(ext.rounds) and whole.recall.equals(ext.recall))  # fmt: skip
            diff = float(np.nanmax(np.abs(whole.updates - ext.updates)))
            print(f"EQUAL dataset={d} precision={q} first={a.first} repeats={a.repeats} rounds={a.rounds} "
                  f"identical={same} max_abs_update_diff={diff:.3g}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
