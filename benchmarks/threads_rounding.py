"""Does the torch thread count change the numbers? The same tiny Fashion-MNIST stack (2
configurations x 2 repeats, 2 rounds, 2,000 / 500 images, fp32) trained with 1 and with 2
threads, each in its own process; prints the largest difference of the per-round metrics.

    python benchmarks/threads_rounding.py
"""

from __future__ import annotations

import json
import subprocess
import sys

WORKER = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[1]))
from flcore import Config
from flcore.runs.runner import run_many
cfgs = [Config(dataset="fmnist", m=m, rounds=2, repeats=2, n_train=2000, n_test=500, precision="fp32")
        for m in (0.0, 0.2)]
rs = run_many(cfgs, store=None, progress=False)
print(json.dumps([r.rounds[["accuracy", "train_loss"]].to_numpy().tolist() for r in rs]))
"""


def main() -> None:
    import numpy as np

    out = {}
    for t in (1, 2):
        p = subprocess.run([sys.executable, "-c", WORKER, str(t)], capture_output=True, text=True, check=True)
        out[t] = np.array(json.loads(p.stdout.strip().splitlines()[-1]), dtype=float)
    d = np.abs(out[1] - out[2])
    print(f"RESULT max_abs_diff_accuracy_pp={np.nanmax(d[..., 0]):.4g} "
          f"max_abs_diff_train_loss={np.nanmax(d[..., 1]):.4g} identical={bool(np.nanmax(d) == 0)}")


if __name__ == "__main__":
    main()
