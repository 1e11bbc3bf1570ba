"""What per-round evaluation costs, and what `eval_classes` saves.

Fashion-MNIST, paper configuration (N=50, k=5, batch 4), m = 10%, 10 repeats batched, fast
engine, precision "auto". Prints seconds per experiment-round (one repeat x one round) for:

  final_only     eval_every = rounds (evaluate the last round only)
  every_round    evaluate all 10,000 test images every round
  source_only    every round, but rounds before the last only the source class's 1,000
                 images (`eval_classes=[src]`; the last round is always whole)

Timings mean something only on an idle machine (the script warns otherwise).

    python benchmarks/eval_cost.py [--rounds 6]
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=10)
    a = ap.parse_args()
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.2f}: other processes share the cores; timings are not meaningful")

    from flcore import Config
    from flcore.data import load_dataset
    from flcore.runs.runner import run
    from flcore.sim.device import cpu_name, resolve_precision

    data = load_dataset("fmnist", progress=False)
    base = Config(m=0.1, rounds=a.rounds, repeats=a.repeats)
    run(base.replace(rounds=1, repeats=1), store=None, data=data, progress=False)  # warm-up
    modes = {"final_only": dict(eval_every=a.rounds), "every_round": dict(eval_every=1),
             "source_only": dict(eval_every=1, eval_classes=[base.src])}  # fmt: skip
    out = {}
    for name, kw in modes.items():
        t = time.perf_counter()
        run(base.replace(**kw), store=None, data=data, progress=False)
        out[name] = (time.perf_counter() - t) / (a.rounds * a.repeats)
        print(f"{name:12s} {out[name]:.3f} s/experiment-round", flush=True)
    print(f"CPU: {cpu_name()}, precision {resolve_precision('auto', 'cpu')}")
    print(f"RESULT every_round/final_only={out['every_round'] / out['final_only']:.2f} "
          f"source_only/final_only={out['source_only'] / out['final_only']:.2f}")


if __name__ == "__main__":
    main()
