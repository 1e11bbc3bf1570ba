"""Seconds per experiment-round of the fast engine for one configuration, and the page faults
it took: a quick A/B probe for a change to the engine (engine_speed.py is the full benchmark).

    python benchmarks/round_time.py [--dataset cifar10] [--repeats 10] [--rounds 2] [--record source]

The paper configuration (m = 10%, precision `auto`), after a one-round warm-up of one repeat.
The first rounds of a wide stack include the process's memory growth (its page faults), so
compare like with like. Run it on an idle machine, alternate A and B, and name the CPU.
"""

from __future__ import annotations

import argparse
import resource
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="cifar10", choices=("fmnist", "cifar10"))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--record", default="source", choices=("none", "source", "all"))
    a = p.parse_args()
    if a.repeats < 1 or a.rounds < 1:
        p.error(f"--repeats {a.repeats} --rounds {a.rounds}: give both as integers >= 1")

    from flcore import Config
    from flcore.data import load_dataset
    from flcore.runs.runner import run
    from flcore.sim.device import cpu_name

    data = load_dataset(a.dataset, progress=False)
    cfg = Config(dataset=a.dataset, m=0.1, rounds=a.rounds, repeats=a.repeats, record_updates=a.record)
    run(cfg.replace(rounds=1, repeats=1, record_updates="none"), store=None, data=data, progress=False)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = time.perf_counter()
    run(cfg, store=None, data=data, progress=False)
    dt = time.perf_counter() - t
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    n = a.repeats * a.rounds
    print(f"# CPU: {cpu_name()}")
    print(f"RESULT dataset={a.dataset} repeats={a.repeats} rounds={a.rounds} record={a.record} "
          f"s_per_exp_round={dt / n:.3f} page_faults_per_exp_round={faults / n:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
