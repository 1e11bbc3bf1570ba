"""How far the participants' updates lie from the previous aggregate: the scale that centered
clipping's radius tau (and any norm threshold) must be chosen against.

It trains FedAvg with a probe registered as an aggregation rule (the extension API of
docs/EXTENDING.md): each round it records, per federation and participant, the distance
||x_i - v|| of the participant's whole flattened update x_i from the previous round's
aggregate v (zero in the first round, as centered clipping starts), then returns the plain
mean. It prints the quantiles of those distances, honest and malicious apart.

    python benchmarks/update_norms.py [--n-train 2500] [--n-test 1000] [--warm-start 40]
                                      [--rounds 3] [--repeats 2] [--m 0.3]

The defaults are notebook 08's quick setting (Fashion-MNIST 4->6).
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from flcore import Config
from flcore.defenses.aggregators import AGGREGATORS, Aggregator, fedavg
from flcore.runs.runner import run

RECORDS: list[tuple[int, int, float]] = []  # (federation, participant, distance)
_FEDS = itertools.count()


@AGGREGATORS.register
class NormProbe(Aggregator):
    """FedAvg that records each update's distance from the previous aggregate."""

    name, stateful = "norm_probe", True

    def init(self, num_participants, out_dim, like):
        return {"v": None, "fed": next(_FEDS)}

    def __call__(self, rows, *, weights=None, state=None, ids=None, out_rows=None):
        x = rows.double()
        v = state["v"] if state["v"] is not None else x.new_zeros(x.shape[1])
        for i, d in zip(ids.tolist(), (x - v).norm(dim=1).tolist()):
            RECORDS.append((state["fed"], int(i), d))
        out = fedavg(rows)
        state["v"] = out.double().clone()
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fmnist")
    p.add_argument("--n-train", type=int, default=2500)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--warm-start", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--m", type=float, default=0.3)
    a = p.parse_args()
    cfg = Config(dataset=a.dataset, m=a.m, rounds=a.rounds, repeats=a.repeats, n_train=a.n_train,
                 n_test=a.n_test, warm_start=a.warm_start, aggregator="norm_probe", eval_every=a.rounds)  # fmt: skip
    res = run(cfg, store=None, progress=False)  # nothing stored: the probe must see every round
    rec = np.array(RECORDS)
    mal = np.array([int(p) in set(res.malicious[int(f)].tolist()) for f, p, _ in rec])
    print(f"# {cfg.dataset}, n_train={a.n_train}, warm_start={a.warm_start}, {a.rounds} rounds x {a.repeats} "
          f"repeats, m={a.m}: ||x_i - v|| over {len(rec)} participant-rounds")  # fmt: skip
    for label, sel in (("honest", ~mal), ("malicious", mal)):
        if sel.any():
            q = np.quantile(rec[sel, 2], [0.1, 0.5, 0.9])
            print(f"{label:10s} n={sel.sum():3d}  p10 {q[0]:.4f}  median {q[1]:.4f}  p90 {q[2]:.4f}")


if __name__ == "__main__":
    main()
