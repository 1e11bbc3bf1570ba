"""Page faults and round time of a stack in a process started as Dask's nanny starts workers.

Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in every worker's environment, so glibc gives
freed memory back to the kernel at once, and the engine's megabyte-sized tensors come back
page fault by page fault. This script trains paper-fmnist's stack (Fashion-MNIST, full data,
N = 50, k = 5, batch 4, 3 federations, fp32, one thread) for a few rounds in a fresh process
with that environment, once as it is and once after `flcore.sim.device.keep_freed_memory()`
(which the runner calls before every training), and prints minor page faults and seconds per round of each.

    python benchmarks/page_faults.py [--rounds 3]

Fault counts do not depend on what else runs; the times do: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _worker(rounds: int, keep: bool) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from flcore import Config
    from flcore.runs.runner import load_data, resolved
    from flcore.sim.device import keep_freed_memory
    from flcore.sim.engine import simulate
    from flcore.sim.plan import make_plan

    kept = keep_freed_memory() if keep else False

    def minflt() -> int:
        with open("/proc/self/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[7])

    class Clock:
        def __init__(self) -> None:
            self.t, self.f = [time.perf_counter()], [minflt()]

        def update(self, n: int = 1) -> None:
            self.t.append(time.perf_counter())
            self.f.append(minflt())

    cfg = resolved(Config(dataset="fmnist", m=0.1, src=1, tgt=3, rounds=rounds + 1, repeats=3, precision="fp32",
                          eval_classes=(1, 3)))  # fmt: skip
    clock = Clock()
    simulate(cfg, make_plan(cfg, load_data(cfg, None, None)), clock)
    # round 1 warms up; the last round also evaluates every class (left out where there is another)
    timed = slice(1, -1) if rounds > 1 else slice(1, None)
    return {"kept": kept, "faults": float(np.mean(np.diff(clock.f)[timed])),
            "s_per_round": float(np.mean(np.diff(clock.t)[timed]))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds after one warm-up round (at least 1)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(_worker(**json.loads(a.worker))))
        return
    if a.rounds < 1:
        sys.exit(f"error: --rounds {a.rounds}: give at least 1")
    from flcore.sim.device import cpu_id

    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}  # as Dask's nanny
    print(f"# CPU: {cpu_id()}; paper-fmnist stack (3 federations, 1 thread), MALLOC_TRIM_THRESHOLD_=65536")
    out = {}
    for keep in (False, True):
        r = subprocess.run([sys.executable, __file__, "--worker", json.dumps({"rounds": a.rounds, "keep": keep})],
                           env=env, capture_output=True, text=True, check=True)  # fmt: skip
        out[keep] = json.loads(r.stdout.strip().splitlines()[-1])
        o = out[keep]
        print(f"  keep_freed_memory {'on ' if keep else 'off'} (set: {o['kept']}): "
              f"{o['faults']:,.0f} page faults and {o['s_per_round']:.2f} s per round")  # fmt: skip
    print(f"RESULT faults_off={out[False]['faults']:.0f} faults_on={out[True]['faults']:.0f} "
          f"time_ratio_off_on={out[False]['s_per_round'] / out[True]['s_per_round']:.2f}")


if __name__ == "__main__":
    main()
