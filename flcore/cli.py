"""Command line: `python -m flcore <command>` (also installed as `flcore`).

  run        one experiment configuration (all its repeats); prints a summary table
  reproduce  plans, computes and renders a profile's notebooks (flcore.studies.reproduce)
  report     docs/REPRODUCTION.md from a profile's stored runs (flcore.studies.report)
  sweep      a grid of configurations, in-process or on Dask (flcore.runs.sweep)

`run` takes every Config field as an option (`--m 0.3`, `--attack random_flip`,
`--aggregator-params '{beta: 0.2}'`), as `--set key=value`, or from a YAML file
(`flcore run config.yaml`); values are read as YAML. A bad value exits with code 2 and one
line naming it and the fix, before any data is loaded or anything is stored.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import sys
import typing
import warnings
from pathlib import Path

from flcore.attacks import ATTACKS
from flcore.config import Config, ConfigError, suggest
from flcore.core.errors import MeanEquivalentWarning
from flcore.data import DATASETS
from flcore.defenses import AGGREGATORS, DEFENSES

# command -> (module, function); modules are imported only when their command runs
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("flcore.cli", "cmd_run"),
    "reproduce": ("flcore.studies.reproduce", "cmd_reproduce"),
    "sweep": ("flcore.runs.sweep", "cmd_sweep"),
    "report": ("flcore.studies.report", "cmd_report"),
}

_HELP = {
    "dataset": lambda: "a registered dataset: " + " | ".join(DATASETS.names()),
    "m": "malicious fraction in [0, 1] (0.1 = 10%)",
    "src": "source class (its recall is reported; label_flip flips it to tgt)",
    "tgt": "target class",
    "k": "participants selected per round",
    "strategy": "random | early | late | availability",
    "alpha": "malicious availability (strategy availability)",
    "attack": lambda: "a registered attack: " + " | ".join(ATTACKS.names()),
    "attack_params": "the attack's options as YAML, e.g. '{fraction: 0.5}'",
    "defense": lambda: "a registered defense: " + " | ".join(DEFENSES.names()) + " (none: no defense)",
    "defense_params": "the defense's options as YAML, e.g. '{rule: direction}'",
    "aggregator": lambda: "a registered rule: " + " | ".join(AGGREGATORS.names()),
    "aggregator_params": "the rule's options as YAML, e.g. '{beta: 0.2}'",
    "n_train": "class-balanced training subset (default: all)",
    "n_test": "class-balanced test subset (default: all)",
    "device": "auto | cpu | cuda",
    "precision": "auto | fp32 | bf16 | fp64",
    "engine": "fast | reference",
}


def _field_types() -> dict[str, typing.Any]:
    return typing.get_type_hints(Config)


def parse_value(name: str, text: str):
    """A command-line value for Config field `name`, read as YAML ('none'/'null' -> None);
    numbers YAML leaves as strings ('1e-3') become numbers where the field takes them."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"--{name.replace('_', '-')} {text!r}: not a valid YAML value ({e.problem})") from None
    if isinstance(value, str) and value.lower() == "none":
        value = None
    hint = str(_field_types().get(name, ""))
    if isinstance(value, str) and ("float" in hint or "int" in hint):
        for conv in (int, float):
            try:
                return conv(value)
            except ValueError:
                pass
    return value


def _add_config_arguments(p: argparse.ArgumentParser) -> None:
    """One `--field-name VALUE` option per Config field (defaults: the Config's own)."""
    g = p.add_argument_group("configuration (every Config field; values are YAML)")
    for f in dataclasses.fields(Config):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = _HELP.get(f.name, f.name)
        text = text() if callable(text) else text
        g.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, metavar="VALUE", default=None,
                       help=f"{text} (default: {default!r})".replace("%", "%%"))  # argparse formats help with %
    g.add_argument("--set", dest="set_", action="append", default=[], metavar="KEY=VALUE",
                   help="any Config field, e.g. --set lr=0.01 (repeatable)")  # fmt: skip


def config_from_args(a: argparse.Namespace) -> Config:
    """The Config of a parsed command line: the YAML file's fields, then the options."""
    d: dict = {}
    if getattr(a, "config_file", None):
        d.update(_read_config_file(a.config_file))
    names = Config.field_names()
    for f in names:
        text = getattr(a, f, None)
        if text is not None:
            d[f] = parse_value(f, text)
    for item in a.set_:
        key, eq, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise ConfigError(f"--set {item!r}: give KEY=VALUE, e.g. --set lr=0.01")
        if key not in names:
            raise ConfigError(f"--set {item!r}: unknown config field {key!r}{suggest(key, names)}")
        d[key] = parse_value(key, text)
    return Config.from_dict(d)


def _read_config_file(path: str) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such config file; give a YAML file of Config fields "
                          f"(e.g. 'm: 0.1' on a line), or drop it to use the options alone")  # fmt: skip
    try:
        d = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: holds a {type(d).__name__}; a config file is a mapping of "
                          f"Config fields, e.g. 'dataset: fmnist'")  # fmt: skip
    return d


def cmd_run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m flcore run", description="Run one experiment configuration.")
    p.add_argument("config_file", nargs="?", default=None, help="optional YAML file of Config fields")
    _add_config_arguments(p)
    p.add_argument("--results", default="results", help="result store directory (default: results)")
    p.add_argument("--no-store", action="store_true", help="do not read or write the result store")
    p.add_argument("--data-root", default=None, help="dataset folder (searched before $FLCORE_DATA and the well-known places)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    cfg = config_from_args(a)  # every value checked here, before any data or store is touched
    from flcore.runs.runner import run

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
        return 0
    c = res.config
    attack = c.attack + (f" {c.attack_params}" if c.attack_params else "")
    print(f"{c.dataset}  m={c.m:g} ({c.num_malicious} of {c.num_participants} malicious)  "
          f"{attack}  {c.src}->{c.tgt}  strategy={c.strategy}"
          + (f" alpha={c.alpha:g}" if c.alpha is not None else "")
          + (f"  defense={c.defense}" if c.defense else "")
          + (f"  aggregator={c.aggregator}" if c.aggregator != "fedavg" else "")
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


def _warn_once() -> None:
    """A grid makes the same Config many times; its MeanEquivalentWarning is shown once per
    command. (Python's own once-per-line and "once" rules do not hold here: any library that
    changes the warning filters resets the registries they rely on.)"""
    shown: set[str] = set()
    show = warnings.showwarning

    def show_once(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, MeanEquivalentWarning):
            if str(message) in shown:
                return
            shown.add(str(message))
        show(message, category, filename, lineno, file, line)

    warnings.showwarning = show_once


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command {name!r}{suggest(name, COMMANDS)}; commands: {', '.join(sorted(COMMANDS))}",
              file=sys.stderr)  # fmt: skip
        return 2
    from flcore.data import DatasetFormatError, DatasetNotFoundError
    from flcore.runs.store import StoreError

    _warn_once()
    module, func = COMMANDS[name]
    try:
        return getattr(importlib.import_module(module), func)(rest) or 0
    except (ConfigError, StoreError, DatasetNotFoundError, DatasetFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
