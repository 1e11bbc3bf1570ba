"""Where one round of the fast engine spends its time: torch.profiler over one round of the
paper configuration with several stacked repeats, ops sorted by self CPU time.

    python benchmarks/profile_round.py [--dataset cifar10] [--repeats 10] [--rows 14]

Run it on an idle machine; the profiler itself adds about a quarter to the round's time.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="cifar10", choices=("fmnist", "cifar10"))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--rows", type=int, default=14)
    a = p.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from flcore import Config
    from flcore.data import load_dataset
    from flcore.runs.runner import run
    from flcore.sim.device import cpu_name

    data = load_dataset(a.dataset, progress=False)
    cfg = Config(dataset=a.dataset, m=0.1, rounds=1, repeats=a.repeats, record_updates="source")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        run(cfg, store=None, data=data, progress=False)
        wall = time.perf_counter() - t0
    print(f"# CPU: {cpu_name()}  torch {torch.__version__}  threads {torch.get_num_threads()}")
    print(f"# {a.dataset}: one round, {a.repeats} stacked repeats, {wall:.1f} s under the profiler")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows, max_name_column_width=40))


if __name__ == "__main__":
    main()
