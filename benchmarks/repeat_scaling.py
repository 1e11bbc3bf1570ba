"""Whether stacking repeats lowers the time per repeat: steady seconds per experiment-round of
the fast engine at several numbers of stacked repeats, measured in alternating pairs.

engine_speed.py gives `fast1_s` and `fast10_s` from one process each; on a 2-core guest two
processes of the same work differ by 3-5 % (and drift by more over an hour), as much as the
difference sought. This script measures each width in a fresh process, several times, in
alternating order (1, 10, then 10, 1, ...), so that drift falls on both sides, and prints the
ratio of every pair and their median. Each process trains the paper configuration (m = 10%,
precision `auto`, no update recording) for `--skip` + `--rounds` rounds and times the rounds
after the first `--skip` (the round's own clock, from the engine's per-round callback): the
steady cost a 200-round run pays per round, without its first round's allocations.

    python benchmarks/repeat_scaling.py [--dataset cifar10] [--widths 1,10] [--pairs 3]
        [--rounds 3] [--skip 1]

Prints one line per measurement and `RESULT dataset=... ratio_median=...` (time per repeat at
the last width over the first; below 1: stacking pays). Run it on an idle machine and name
the CPU beside any number quoted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def _worker(spec: dict) -> dict:
    from flcore import Config
    from flcore.data import load_dataset
    from flcore.runs.runner import train_stack
    from flcore.sim.device import resolve_precision

    data = load_dataset(spec["dataset"], progress=False)
    cfg = Config(dataset=spec["dataset"], m=0.1, rounds=spec["skip"] + spec["rounds"],
                 repeats=spec["width"])  # fmt: skip
    stamps = [time.perf_counter()]
    train_stack([cfg], store=None, data=data, on_round=lambda _r: stamps.append(time.perf_counter()))
    per_round = [b - a for a, b in zip(stamps, stamps[1:])]
    steady = per_round[spec["skip"] :]
    return {"per_repeat_s": sum(steady) / len(steady) / spec["width"],
            "rounds_s": per_round, "precision": resolve_precision(cfg.precision, "cpu")}  # fmt: skip


def _measure(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="cifar10", choices=("fmnist", "cifar10"))
    p.add_argument("--widths", default="1,10", help="numbers of stacked repeats, comma-separated")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per measurement")
    p.add_argument("--skip", type=int, default=1, help="untimed first rounds per measurement")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(_worker(json.loads(a.worker))))
        return
    try:
        widths = [int(w) for w in a.widths.split(",")]
    except ValueError:
        p.error(f"--widths {a.widths!r}: give numbers of repeats as integers, e.g. 1,10")
    if len(widths) < 2 or min(widths) < 1:
        p.error(f"--widths {a.widths!r}: give at least two numbers of repeats, each >= 1, e.g. 1,10")
    if a.pairs < 1 or a.rounds < 1 or a.skip < 0:
        p.error(f"--pairs {a.pairs} --rounds {a.rounds} --skip {a.skip}: "
                "give --pairs and --rounds >= 1 and --skip >= 0")  # fmt: skip

    from flcore.sim.device import cpu_name

    load = os.getloadavg()[0]
    print(f"# CPU: {cpu_name()}, {os.cpu_count()} cores; {a.dataset} paper setting, m = 10%, "
          f"{a.rounds} timed rounds after {a.skip} per measurement; load average {load:.2f}", flush=True)  # fmt: skip
    if load > 0.5:
        print("# WARNING: the machine is not idle: the ratios below are not evidence", flush=True)
    per = {w: [] for w in widths}
    ratios = []
    for i in range(a.pairs):
        order = widths if i % 2 == 0 else widths[::-1]
        got = {}
        for w in order:
            r = _measure({"dataset": a.dataset, "width": w, "rounds": a.rounds, "skip": a.skip})
            got[w] = r["per_repeat_s"]
            per[w].append(r["per_repeat_s"])
            print(f"pair {i + 1} width {w:3d} ({r['precision']}): {r['per_repeat_s']:.3f} s per experiment-round  "
                  f"rounds {' '.join(f'{s:.2f}' for s in r['rounds_s'])} s", flush=True)  # fmt: skip
        ratios.append(got[widths[-1]] / got[widths[0]])
        print(f"pair {i + 1}: width {widths[-1]} / width {widths[0]} = {ratios[-1]:.3f}", flush=True)
    med = {w: statistics.median(v) for w, v in per.items()}
    print(f"RESULT dataset={a.dataset} cpu={cpu_name().replace(' ', '')} "
          + " ".join(f"median_s_{w}={med[w]:.3f}" for w in widths)
          + f" ratio_median={statistics.median(ratios):.3f} ratio_min={min(ratios):.3f} "
          f"ratio_max={max(ratios):.3f} pairs={a.pairs}")  # fmt: skip


if __name__ == "__main__":
    main()
