"""Golden numbers: a handful of tiny real runs (Fashion-MNIST, and one of CIFAR-10) whose
numbers are pinned.

    python tools/golden.py            # recompute and compare with tests/golden.json
    python tools/golden.py --write    # record them (after bumping NUMERICS_VERSION)

Each case is a 2-round, 2-repeat federation of 10 participants (k = 5, 30 % malicious) on
200 training and 100 test images, in fp64 on the CPU with the fast engine, so it is
deterministic to far below the tolerances. A case records, per repeat, the final round's
confusion matrix summed per class (`correct`: its diagonal, `predicted`: its column sums),
the per-round `train_loss` (10 significant digits) and the `excluded` participants
([repeat, round, participant] of a defense).

The numbers a configuration produces are part of the result store's key only through
`flcore.core.numerics.NUMERICS_VERSION` and the dataset's revision
(`flcore.core.numerics.DATASET_REVISIONS`). `tests/test_golden.py` fails when these numbers
change, and `--write` refuses to record new numbers of a case under the version and revision
the file already has for it: a change of the numbers must bump one of them, which gives the
stored runs it concerns new keys.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python tools/golden.py` from a checkout
    sys.path.insert(0, str(REPO))

GOLDEN = REPO / "tests" / "golden.json"
LOSS_DIGITS = 10  # significant digits of a recorded train_loss
LOSS_REL = 1e-9  # relative tolerance of a train_loss comparison

BASE = dict(dataset="fmnist", m=0.3, rounds=2, repeats=2, num_participants=10, k=5,
            n_train=200, n_test=100, precision="fp64", device="cpu", engine="fast")  # fmt: skip
PCA_PARAMS = {"start_round": 1, "rounds_from": 1, "min_rows": 4, "min_silhouette": -1.0}
CASES: dict[str, dict] = {
    "label_flip": {},
    "random_flip": {"attack": "random_flip"},
    "many_to_one": {"attack": "many_to_one"},
    "pca": {"defense": "pca", "defense_params": PCA_PARAMS},
    "foolsgold": {"aggregator": "foolsgold"},
    "warm_start": {"warm_start": 1},
    "dirichlet": {"partition": "dirichlet"},
    "cifar10": {"dataset": "cifar10"},
}

BUMP = ("bump flcore.core.numerics.NUMERICS_VERSION first (or, for a change confined to one "
        "dataset's code path, its entry of DATASET_REVISIONS), then regenerate the golden "
        "numbers with `python tools/golden.py --write`")  # fmt: skip


def config(name: str):
    """The `Config` of golden case `name`."""
    from flcore.config import Config

    return Config(**{**BASE, **CASES[name]})


def _loss(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else float(f"{x:.{LOSS_DIGITS}g}")


def case_numbers(result) -> dict:
    """What a golden case records of a `Result`."""
    final = result.confusion[:, -1]  # [repeats, C, C] (true, predicted) of the last evaluation
    rounds = result.rounds.sort_values(["repeat", "round"])
    losses = [[_loss(v) for v in g["train_loss"]] for _, g in rounds.groupby("repeat", sort=True)]
    excluded = []
    if result.excluded is not None:
        excluded = [[int(r), int(t), int(p)] for r, t, p in
                    result.excluded[["repeat", "round", "participant"]].itertuples(index=False)]
    return {
        "correct": [[int(v) for v in m.diagonal()] for m in final],
        "predicted": [[int(v) for v in m.sum(0)] for m in final],
        "train_loss": losses,
        "excluded": excluded,
    }


def compute(data=None, names=None) -> dict[str, dict]:
    """Run the golden cases (all, or `names`) without a store; {name: case_numbers}.

    `data`: {dataset name: loaded dataset} (each dataset a case needs and `data` lacks is
    loaded here), or one loaded dataset for cases of its own dataset."""
    from flcore.data import load_dataset
    from flcore.runs.runner import run

    names = list(names or CASES)
    if data is not None and not isinstance(data, dict):
        data = {data.name: data}
    data = dict(data or {})
    out = {}
    for n in names:
        cfg = config(n)
        if cfg.dataset not in data:
            data[cfg.dataset] = load_dataset(cfg.dataset, download=False, progress=False)
        out[n] = case_numbers(run(cfg, store=None, data=data[cfg.dataset], progress=False))
    return out


def revisions() -> dict[str, int]:
    """The numerics revision of each dataset the cases use (`DATASET_REVISIONS`, 0 if absent)."""
    from flcore.core.numerics import dataset_revision

    return {ds: dataset_revision(ds) for ds in sorted({config(n).dataset for n in CASES})}


def _close(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=LOSS_REL, abs_tol=0.0)


def compare(golden: dict[str, dict], computed: dict[str, dict]) -> list[str]:
    """Differences between golden cases and computed ones (only the cases in `computed`):
    integers exactly, train losses to `LOSS_REL`; [] when they agree."""
    out = []
    for name, got in computed.items():
        want = golden.get(name)
        if want is None:
            out.append(f"{name}: no golden numbers recorded")
            continue
        for field in ("correct", "predicted", "excluded"):
            if want.get(field) != got[field]:
                out.append(f"{name}: {field} {got[field]} != golden {want.get(field)}")
        wl, gl = want.get("train_loss", []), got["train_loss"]
        if [len(r) for r in wl] != [len(r) for r in gl] or not all(
            _close(a, b) for wr, gr in zip(wl, gl) for a, b in zip(wr, gr)
        ):
            out.append(f"{name}: train_loss {gl} != golden {wl} (rel tol {LOSS_REL:g})")
    return out


def load(path: Path = GOLDEN) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write(computed: dict[str, dict], path: Path = GOLDEN) -> str:
    """Record `computed` under the current NUMERICS_VERSION and dataset revisions; refuses
    (ValueError) to change the numbers of a case whose version and dataset revision the file
    already has."""
    from flcore.core.numerics import NUMERICS_VERSION

    revs = revisions()
    if path.exists():
        old = load(path)
        if old.get("numerics_version") == NUMERICS_VERSION:
            old_revs = old.get("dataset_revisions", {})
            same = {n: c for n, c in computed.items()
                    if old_revs.get(config(n).dataset, 0) == revs[config(n).dataset]}  # fmt: skip
            diff = compare(old.get("cases", {}), same)
            diff = [d for d in diff if not d.endswith("no golden numbers recorded")]
            if diff:
                raise ValueError(
                    f"{path} holds numerics_version {NUMERICS_VERSION} with other numbers:\n  "
                    + "\n  ".join(diff) + f"\nThe numbers changed: {BUMP}."
                )
    doc = {"numerics_version": NUMERICS_VERSION, "dataset_revisions": revs, "cases": computed}
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    path.write_text(text, encoding="utf-8")
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true", help="record the numbers in tests/golden.json")
    p.add_argument("--path", type=Path, default=GOLDEN)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    computed = compute()
    took = time.perf_counter() - t0
    if a.write:
        try:
            write(computed, a.path)
        except ValueError as e:
            print(e, file=sys.stderr)
            return 1
        print(f"wrote {a.path} ({len(computed)} cases, {took:.1f} s)")
        return 0
    from flcore.core.numerics import NUMERICS_VERSION

    golden = load(a.path)
    diff = compare(golden["cases"], computed)
    if golden.get("numerics_version") != NUMERICS_VERSION:
        diff.insert(0, f"{a.path} has numerics_version {golden.get('numerics_version')}, the "
                       f"code {NUMERICS_VERSION}: regenerate it with `python tools/golden.py --write`")  # fmt: skip
    if golden.get("dataset_revisions") != revisions():
        diff.insert(0, f"{a.path} has dataset_revisions {golden.get('dataset_revisions')}, the "
                       f"code {revisions()}: regenerate it with `python tools/golden.py --write`")  # fmt: skip
    for line in diff:
        print(line, file=sys.stderr)
    print(f"{len(computed)} cases, {took:.1f} s: {'differ' if diff else 'match'}")
    return 1 if diff else 0


if __name__ == "__main__":
    raise SystemExit(main())
