"""Command line: `python -m flcore <command>`.

  run        one experiment configuration (all its repeats); prints a summary table
  reproduce  executes the notebooks with papermill (see flcore.reproduce)
  sweep      a grid of configurations (see flcore.sweep)
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from flcore.config import Config, ConfigError

COMMANDS: dict[str, callable] = {}


def command(name):
    def deco(fn):
        COMMANDS[name] = fn
        return fn

    return deco


def _add_config_arguments(p: argparse.ArgumentParser) -> None:
    d = Config()
    p.add_argument("--dataset", default=d.dataset, help="fmnist | cifar10")
    p.add_argument("--m", type=float, default=d.m, help="malicious fraction in [0, 1] (0.1 = 10%%)")
    p.add_argument("--src", type=int, default=d.src, help="source class (flipped from)")
    p.add_argument("--tgt", type=int, default=d.tgt, help="target class (flipped to)")
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--num-participants", type=int, default=d.num_participants)
    p.add_argument("--k", type=int, default=d.k, help="participants per round")
    p.add_argument("--strategy", default=d.strategy, help="random | early | late | availability")
    p.add_argument("--alpha", type=float, default=None, help="malicious availability (strategy availability)")
    p.add_argument("--break-round", type=int, default=d.break_round)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--n-train", type=int, default=None, help="class-balanced training subset")
    p.add_argument("--n-test", type=int, default=None, help="class-balanced test subset")
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--aggregator", default=d.aggregator)
    p.add_argument("--defense", default=None)
    p.add_argument("--record-updates", default=d.record_updates)
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda")
    p.add_argument("--precision", default=d.precision, help="auto | fp32 | bf16 | fp64")
    p.add_argument("--engine", default=d.engine, help="fast | reference")


def _config_from_args(a: argparse.Namespace) -> Config:
    names = set(Config.field_names())
    return Config.from_dict({k: v for k, v in vars(a).items() if k in names})


@command("run")
def cmd_run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m flcore run", description="Run one experiment configuration.")
    _add_config_arguments(p)
    p.add_argument("--results", default="results", help="result store directory (default: results)")
    p.add_argument("--no-store", action="store_true", help="do not read or write the result store")
    p.add_argument("--data-root", default=None, help="dataset folder (else $FLCORE_DATA, well-known places)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    cfg = _config_from_args(a)
    from flcore.engine import run

    res = run(cfg, store=None if a.no_store else a.results, data_root=a.data_root, progress=not a.quiet)
    summ = res.summary()
    if a.json:
        out = {
            "config": res.config.to_dict(),
            "summary": {row: {c: _num(summ.loc[row, c]) for c in summ.columns} for row in summ.index},
            "final": res.final().to_dict(orient="records"),
            "meta": res.meta,
        }
        print(json.dumps(out, indent=2, default=str))
    else:
        c = res.config
        print(f"{c.dataset}  m={c.m:g} ({c.num_malicious} of {c.num_participants} malicious)  "
              f"{c.src}->{c.tgt}  strategy={c.strategy}"
              + (f" alpha={c.alpha:g}" if c.alpha is not None else "")
              + f"  rounds={c.rounds}  repeats={c.repeats}  [{res.meta['device']}, {res.meta['precision']}, "
              f"{res.meta['wall_s']:.1f} s]")  # fmt: skip
        for row, label in (("accuracy", "final M_acc (%)"), ("source_recall", "final source recall (%)"),
                           ("target_recall", "final target recall (%)")):  # fmt: skip
            m, s, n = summ.loc[row, "mean"], summ.loc[row, "std"], int(summ.loc[row, "runs"])
            std = f" ± {s:.2f}" if n > 1 else ""
            print(f"  {label:26s} {m:7.2f}{std}   (n={n})")
        if res.meta.get("status") == "diverged":
            print(f"  diverged repeats (excluded): {res.meta['diverged_repeats']}")
        if not a.no_store:
            print(f"  results: {a.results}/")
    return 0


def _num(x):
    x = float(x)
    return x if math.isfinite(x) else None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # commands registered by other modules
    for mod in ("flcore.reproduce", "flcore.sweep"):
        try:
            __import__(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        from flcore.config import suggest

        print(f"unknown command {name!r}{suggest(name, COMMANDS)}; commands: {', '.join(sorted(COMMANDS))}",
              file=sys.stderr)  # fmt: skip
        return 2
    from flcore.data import DatasetFormatError, DatasetNotFoundError
    from flcore.store import StoreError

    try:
        return COMMANDS[name](rest) or 0
    except (ConfigError, StoreError, DatasetNotFoundError, DatasetFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
