"""Peak resident memory of the same training, run several times: how far it spreads, and where
the memory sits ([heap], other anonymous mappings, libraries).

    python benchmarks/rss_spread.py [--dataset fmnist] [--repeats 10] [--runs 5] [--no-aslr]

Each run is a fresh process training the paper configuration (m = 10%, precision `auto`,
every update recorded, as `engine_speed.py`'s fast10) for 2 rounds after a one-round warm-up.
`--no-aslr` starts each process under `setarch -R` (address-space randomisation off), to tell
whether the spread follows the address-space layout rather than the work done.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

_CHILD = r"""
import re, sys
from flcore import Config
from flcore.data import load_dataset
from flcore.runs.runner import run

dataset, repeats = sys.argv[1], int(sys.argv[2])
data = load_dataset(dataset, progress=False)
cfg = Config(dataset=dataset, m=0.1, rounds=2, repeats=repeats, precision="auto", record_updates="all")
run(cfg.replace(rounds=1, repeats=1, record_updates="none"), store=None, data=data, progress=False)
run(cfg, store=None, data=data, progress=False)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
where, cur = {}, None
for line in open("/proc/self/smaps"):
    f = line.split()
    if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
        name = f[5] if len(f) > 5 else "anon"
        cur = "libraries" if name.startswith("/") else name
    elif f[0] == "Rss:":
        where[cur] = where.get(cur, 0) + int(f[1])
print(f"peak_rss_mb={hwm // 1024} heap_mb={where.get('[heap]', 0) // 1024} "
      f"anon_mb={where.get('anon', 0) // 1024} libraries_mb={where.get('libraries', 0) // 1024}")
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fmnist", choices=("fmnist", "cifar10"))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--no-aslr", action="store_true", help="run each process under setarch -R")
    a = p.parse_args()
    prefix = ["setarch", "-R"] if a.no_aslr else []
    peaks = []
    for i in range(a.runs):
        out = subprocess.run([*prefix, sys.executable, "-c", _CHILD, a.dataset, str(a.repeats)],
                             check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]  # fmt: skip
        peaks.append(int(re.search(r"peak_rss_mb=(\d+)", out).group(1)))
        print(f"run {i + 1}: {out}", flush=True)
    print(f"RESULT dataset={a.dataset} repeats={a.repeats} aslr={'off' if a.no_aslr else 'on'} runs={a.runs} "
          f"peak_rss_mb_min={min(peaks)} peak_rss_mb_max={max(peaks)}")  # fmt: skip


if __name__ == "__main__":
    main()
