"""How many stacks to compute at once on this machine: throughput of P processes × T threads.

`reproduce --local-cluster P` runs P stacks at once, each with the profile's torch threads.
Whether that pays depends on the machine: P processes on P cores that share one physical
core's execution units, or its caches and memory bandwidth, slow each other down. This script
trains the same stack (paper-fmnist's: Fashion-MNIST, full data, N = 50, k = 5, batch 4,
3 federations stacked, fp32) in P fresh processes at once with T torch threads each, for a few
rounds after one warm-up round, and prints the machine's throughput in experiment-rounds per
second for every layout asked for, and each layout's throughput relative to the first.

    python benchmarks/concurrency.py [--layouts 1x1,2x1,1x2] [--rounds 4] [--federations 3]
    python benchmarks/concurrency.py --dataset cifar10 --precision auto --layouts 1x2,2x1 --total-federations 10

`--dataset cifar10` trains the CIFAR-10 paper setting instead (batch 10). `--total-federations
N` splits the same N federations over each layout's P processes (N/P each) instead of giving
every process `--federations`: whether a stack of N repeats runs faster as one process on all
cores or as P single-threaded stacks of N/P.

Run it on an idle machine; name the CPU beside any number you quote.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _worker(rounds: int, federations: int, threads: int, start_at: float, dataset: str = "fmnist",
            precision: str = "fp32") -> dict:
    import torch

    torch.set_num_threads(threads)
    from flcore import Config
    from flcore.runs.runner import load_data, resolved
    from flcore.sim.device import keep_freed_memory
    from flcore.sim.engine import simulate
    from flcore.sim.plan import make_plan

    keep_freed_memory()  # as the runner does before every training
    cfg = resolved(Config(dataset=dataset, m=0.1, src=1, tgt=3, rounds=rounds + 1, repeats=federations,
                          precision=precision, eval_classes=(1, 3)))  # fmt: skip
    plan = make_plan(cfg, load_data(cfg, None, None))

    class Clock:
        def __init__(self) -> None:
            self.t: list[float] = []

        def update(self, n: int = 1) -> None:
            self.t.append(time.perf_counter())

    while time.time() < start_at:  # every process starts its rounds together
        time.sleep(0.01)
    clock = Clock()
    simulate(cfg, plan, clock)
    return {"s_per_round": (clock.t[-1] - clock.t[0]) / rounds}  # rounds 2.. (round 1 warms up)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layouts", default="1x1,2x1,1x2", help="PxT: P processes at once, T torch threads each")
    p.add_argument("--rounds", type=int, default=4, help="timed rounds after one warm-up round")
    p.add_argument("--federations", type=int, default=3, help="federations stacked per process")
    p.add_argument("--total-federations", type=int, help="split N federations over each layout's P processes")
    p.add_argument("--dataset", default="fmnist", choices=("fmnist", "cifar10"))
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        spec = json.loads(a.worker)
        print(json.dumps(_worker(**spec)))
        return

    from flcore.sim.device import cpu_id

    layouts = []
    for item in a.layouts.split(","):
        try:
            n_proc, n_thr = (int(v) for v in item.lower().split("x"))
        except ValueError:
            sys.exit(f"error: --layouts {item!r}: give PxT, e.g. 2x1 (P processes, T threads each)")
        if n_proc < 1 or n_thr < 1:
            sys.exit(f"error: --layouts {item!r}: P and T must be at least 1")
        layouts.append((n_proc, n_thr))
    if a.rounds < 1 or a.federations < 1:
        sys.exit("error: --rounds and --federations must be at least 1")
    if a.total_federations is not None:
        for n_proc, _ in layouts:
            if a.total_federations < n_proc or a.total_federations % n_proc:
                sys.exit(f"error: --total-federations {a.total_federations} does not split evenly over "
                         f"{n_proc} processes: give a multiple of every layout's P")  # fmt: skip
    from flcore.sim.device import resolve_precision

    precision = resolve_precision(a.precision, "cpu")
    per_stack = (f"{a.total_federations} federations split over the processes" if a.total_federations
                 else f"{a.federations} federations per stack")  # fmt: skip
    print(f"# CPU: {cpu_id()}, {os.cpu_count()} cores; {a.dataset} paper setting, {precision}, {per_stack}, "
          f"{a.rounds} timed rounds after one warm-up")  # fmt: skip
    base = None
    for n_proc, n_thr in layouts:
        env = {**os.environ, "OMP_NUM_THREADS": str(n_thr)}
        # the processes load data first; they start training together some seconds later
        start_at = time.time() + 25
        feds = a.total_federations // n_proc if a.total_federations else a.federations
        spec = json.dumps({"rounds": a.rounds, "federations": feds, "threads": n_thr, "start_at": start_at,
                           "dataset": a.dataset, "precision": precision})  # fmt: skip
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", spec], env=env, stdout=subprocess.PIPE,
                                  text=True) for _ in range(n_proc)]  # fmt: skip
        outs = [json.loads(pr.communicate()[0].strip().splitlines()[-1]) for pr in procs]
        # each process: federations x 1 round per s_per_round; the machine: their sum
        rate = sum(feds / o["s_per_round"] for o in outs)
        base = base or rate
        per = " ".join(f"{o['s_per_round']:.2f}" for o in outs)
        print(f"RESULT layout={n_proc}x{n_thr} exp_rounds_per_s={rate:.3f} relative={rate / base:.2f} "
              f"s_per_stack_round=[{per}]")  # fmt: skip


if __name__ == "__main__":
    main()
