"""Sweeps: a grid of configurations run in-process or on a Dask cluster, resumable.

A *grid* is a mapping of `Config` fields. A list value is swept (the product of all lists is
taken), any other value is fixed::

    base: {dataset: fmnist, rounds: 200, repeats: 10}   # fixed fields (optional)
    m: [0.0, 0.02, 0.04, 0.1]                           # swept
    zip: {src: [4, 6, 1], tgt: [6, 0, 3]}               # swept together, not crossed
    strategy: random                                    # fixed

gives 4 × 3 = 12 configurations. `zip` may also be a list of such groups. `name` and
`description` are free text for the reader. Every expanded configuration is validated before
anything runs, and a bad one is reported with the grid point it came from.

`sweep(grid)` runs every configuration that is not yet in the result store and returns the
table of the whole grid: one row per configuration × repeat, the config columns and the
final metrics. Finished configurations are never run again, so an interrupted sweep resumes
where it stopped. Pending configurations train as `run_many` stacks them (configurations
that differ only in the attack and selection share one stacked model; `flcore.runs.compute`),
and with `executor=` a `dask.distributed.Client` each stack is one task (retried on failure;
a task on a worker that dies is rescheduled by Dask), the workers writing to the shared store.

`flcore.sweep(grid)` is this module's `sweep(grid)`.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from flcore import __version__
from flcore.config import Config, ConfigError, suggest

__all__ = ["GridError", "expand", "load_grid", "store_key", "sweep", "table"]

RESERVED = ("base", "zip", "name", "description")
# fields that hold real numbers: `m: 0` and `m: 0.0` must be one configuration (one store key)
FLOAT_FIELDS = ("m", "lr", "momentum", "lr_gamma", "beta", "alpha")
FINAL_COLUMNS = ("repeat", "accuracy", "source_recall", "target_recall", "diverged")


class GridError(ConfigError):
    """A sweep grid is malformed; the message names the key or value and the fix."""


# ------------------------------------------------------------------------------------------
# Grids
# ------------------------------------------------------------------------------------------


def _check_field(name: Any, where: str) -> None:
    valid = Config.field_names()
    if name not in valid:
        allowed = [*valid, *RESERVED] if where == "grid" else valid
        raise GridError(
            f"unknown key {name!r} in the {where}{suggest(name, allowed)} "
            f"(valid: {', '.join(allowed)})"
        )


def _values(name: str, v: Any, where: str) -> list:
    if isinstance(v, (list, tuple)):
        if len(v) == 0:
            raise GridError(f"{where}: {name}=[] is an empty list, so the grid would be empty; "
                            f"give at least one value or drop {name!r}")  # fmt: skip
        return list(v)
    return [v]


def _zip_groups(z: Any) -> list[dict[str, list]]:
    groups = z if isinstance(z, list) else [z]
    out = []
    for g in groups:
        if not isinstance(g, Mapping) or not g:
            raise GridError(f"zip: {g!r} must be a non-empty mapping of field -> list of values, "
                            "e.g. zip: {src: [4, 6], tgt: [6, 0]}")  # fmt: skip
        lists = {}
        for name, v in g.items():
            _check_field(name, "zip group")
            if not isinstance(v, (list, tuple)):
                raise GridError(f"zip: {name}={v!r} must be a list (fields in a zip group vary "
                                "together); move fixed values to base:")  # fmt: skip
            lists[name] = _values(name, v, "zip")
        lengths = {n: len(v) for n, v in lists.items()}
        if len(set(lengths.values())) != 1:
            raise GridError(f"zip: the lists of one group must have equal lengths, got {lengths}")
        out.append(lists)
    return out


def _coerce(d: dict) -> dict:
    out = dict(d)
    for name in FLOAT_FIELDS:
        v = out.get(name)
        if isinstance(v, int) and not isinstance(v, bool):
            out[name] = float(v)
    return out


def expand(grid: Mapping) -> list[Config]:
    """Every configuration of `grid` (see the module docstring), validated, duplicates dropped.

    Raises `GridError` (a `ConfigError`) for an unknown key (naming the closest valid one), an
    empty grid or list, a malformed `zip`, or an invalid configuration (naming its grid point).
    """
    if isinstance(grid, (str, os.PathLike)):
        return expand(load_grid(grid))
    if not isinstance(grid, Mapping):
        raise GridError(f"a grid must be a mapping of config fields to values, got "
                        f"{type(grid).__name__}")  # fmt: skip
    if not grid:
        raise GridError("the grid is empty: give at least one config field, e.g. {'m': [0.0, 0.1]}")
    for name in grid:
        if name not in RESERVED:
            _check_field(name, "grid")
    base = grid.get("base") or {}
    if not isinstance(base, Mapping):
        raise GridError(f"base: {base!r} must be a mapping of config fields to fixed values")
    for name in base:
        _check_field(name, "base")
    overlap = set(base) & set(grid)
    if overlap:
        raise GridError(f"{min(overlap)!r} is given both in base: and at the top level; keep one")
    axes: list[list[dict]] = []
    seen = set(base)
    for name, v in grid.items():
        if name in RESERVED:
            continue
        seen.add(name)
        axes.append([{name: x} for x in _values(name, v, "grid")])
    if "zip" in grid and grid["zip"] is not None:
        for g in _zip_groups(grid["zip"]):
            dup = seen & set(g)
            if dup:
                raise GridError(f"{min(dup)!r} appears in a zip group and elsewhere in the "
                                "grid; keep one")  # fmt: skip
            seen |= set(g)
            n = len(next(iter(g.values())))
            axes.append([{name: vals[i] for name, vals in g.items()} for i in range(n)])

    configs, keys = [], set()
    for point in itertools.product(*axes):
        d = dict(base)
        for part in point:
            d.update(part)
        d = _coerce(d)
        try:
            cfg = Config.from_dict(d)
        except ConfigError as e:
            swept = {k: v for part in point for k, v in part.items()}
            at = ", ".join(f"{k}={v!r}" for k, v in swept.items()) or "the base values"
            raise GridError(f"grid point ({at}): {e}") from None
        except TypeError as e:  # e.g. a value of a type the dataclass cannot take at all
            raise GridError(f"grid point {d}: {e}") from None
        k = repr(sorted(cfg.to_dict().items()))
        if k not in keys:
            keys.add(k)
            configs.append(cfg)
    return configs


def _yaml_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    # YAML 1.1 reads 1e-3 as a string; accept the exponent forms people write for rates.
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"""),
        list("-+0123456789"),
    )
    return Loader


def load_grid(path: str | os.PathLike) -> dict:
    """Read a grid from a YAML file (see the module docstring); the grid is checked by `expand`."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GridError(f"grid file {p} not found (looked in {p.resolve().parent})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GridError(f"grid file {p} cannot be read: {e}") from None
    try:
        grid = yaml.load(text, Loader=_yaml_loader())  # a SafeLoader subclass
    except yaml.YAMLError as e:
        raise GridError(f"grid file {p} is not valid YAML: {e}") from None
    if grid is None:
        raise GridError(
            f"grid file {p} is empty: give at least one config field, e.g. m: [0.0, 0.1]"
        )
    if not isinstance(grid, dict):
        raise GridError(
            f"grid file {p} must hold a mapping of config fields, got {type(grid).__name__}"
        )
    return grid


def _as_configs(grid_or_configs) -> list[Config]:
    if isinstance(grid_or_configs, Config):
        return [grid_or_configs]
    if isinstance(grid_or_configs, (Mapping, str, os.PathLike)):
        return expand(grid_or_configs)
    if isinstance(grid_or_configs, Iterable):
        out = []
        for c in grid_or_configs:
            out.append(c if isinstance(c, Config) else Config.from_dict(_coerce(dict(c))))
        if not out:
            raise GridError("no configurations given: the list is empty")
        return out
    raise GridError(f"expected a grid mapping, a YAML path or a list of Config, got "
                    f"{type(grid_or_configs).__name__}")  # fmt: skip


# ------------------------------------------------------------------------------------------
# Keys and tables
# ------------------------------------------------------------------------------------------


def store_key(cfg: Config) -> str:
    """The store key `flcore.runs.runner.run` uses for `cfg` on this machine."""
    from flcore.runs.runner import store_key as engine_store_key

    return engine_store_key(cfg)


def _local_key(cfg: Config) -> str | None:
    try:
        return store_key(cfg)
    except RuntimeError:  # e.g. device="cuda" on a client without a GPU: the worker decides
        return None


def _flat(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, list):
            out[f"{prefix}{k}"] = tuple(v)
        else:
            out[f"{prefix}{k}"] = v
    return out


def table(store, keys: Iterable[str]) -> pd.DataFrame:
    """One row per configuration × repeat for the given store keys (verified entries only).

    Columns: the stored (resolved) config, `key`, `status` ("ok" or "diverged": some repeat
    diverged, see the `diverged` column), `wall_s`, then the final round's `repeat`,
    `accuracy`, `source_recall`, `target_recall` (%) and `diverged`.
    """
    from flcore.runs.store import Store

    st = store if hasattr(store, "get") else Store(store)
    parts = []
    for key in keys:
        entry = st.get(key)
        if entry is None or "final" not in entry.frames:
            continue
        final = entry.frames["final"]
        cols = {**_flat(entry.config), "key": key, "status": entry.meta.get("status"),
                "wall_s": entry.meta.get("wall_s")}  # fmt: skip
        df = pd.DataFrame({name: [value] * len(final) for name, value in cols.items()})
        parts.append(pd.concat([df, final.reset_index(drop=True)], axis=1))
    if not parts:
        return pd.DataFrame(
            columns=[*Config.field_names(), "key", "status", "wall_s", *FINAL_COLUMNS]
        )
    return pd.concat(parts, ignore_index=True, sort=False)


# ------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------


def _run_one(
    cfg_dict: dict, store: str, data_root, threads: int | None, progress: bool = False
) -> dict:
    """Run (or load) one configuration into `store`; returns {key, status, computed, ...}.

    This is the Dask task; it only takes plain values so it pickles anywhere.
    """
    import torch

    from flcore.runs.runner import run

    if threads:
        torch.set_num_threads(int(threads))
    cfg = Config.from_dict(cfg_dict)
    key = store_key(cfg)
    from flcore.runs.store import Store

    st = Store(store)
    existed = st.has(key)
    t0 = time.perf_counter()
    res = run(cfg, store=store, data_root=data_root, progress=progress)
    return {
        "key": key,
        "status": res.meta.get("status"),
        "computed": not existed,
        "wall_s": time.perf_counter() - t0,
        "pid": os.getpid(),
    }


def _task_key(key: str | None, cfg: Config) -> str:
    """The Dask task name: the store key, or (device not resolvable here, the worker decides)
    the same hash of the unresolved config, with the same flcore and numerics versions."""
    if key is None:
        from flcore.core.numerics import key_version
        from flcore.runs.store import config_key

        key = config_key(cfg.key_dict(), key_version(__version__))
    return f"flcore-run-{key}"


def sweep(
    grid_or_configs,
    store: str | os.PathLike = "results",
    executor=None,
    progress: bool = True,
    *,
    data_root: str | os.PathLike | None = None,
    retries: int = 2,
    threads: int | None = None,
    max_federations: int | None = None,
    info: dict | None = None,
) -> pd.DataFrame:
    """Run every configuration of a grid that is not yet stored; return the grid's table.

    grid_or_configs: a grid mapping, a YAML path, or a list of `Config` / dicts.
    store:     the result store directory; with an executor it must be a path every worker
               can reach (a shared file system).
    executor:  None (in-process) or a `dask.distributed.Client`. Pending configurations are
               trained as `run_many` stacks them (`flcore.runs.compute`): one task per stack.
    retries:   Dask retries of a task that raised (a task whose worker died is rescheduled by
               Dask itself, up to `distributed.scheduler.allowed-failures` times).
    threads:   torch threads per stack (default: this process's torch setting, on the
               workers too, so a stack gives the same numbers here and on a worker).
    max_federations: at most this many federations per stack (default: the dataset's cap).
    info:      if a dict, filled with counts: configs, stored (found already stored),
               computed, diverged, and the store path.

    Returns `table(store, keys)`: one row per configuration × repeat. The first
    configuration that fails (after retries) stops the sweep with its original exception;
    everything finished is stored, so running the sweep again resumes.
    """
    from flcore.runs.store import Store

    configs = _as_configs(grid_or_configs)
    store = os.fspath(store)
    st = Store(store)  # a missing or read-only directory fails here, before any training
    keys = [_local_key(c) for c in configs]
    # a verifying read: a damaged entry is quarantined here and so recomputed
    todo = [i for i, k in enumerate(keys) if k is None or st.get(k) is None]
    pending = [(configs[i], keys[i]) for i in todo]
    stats = {"configs": len(configs), "stored": len(configs) - len(pending), "computed": 0,
             "store": os.path.abspath(store)}  # fmt: skip

    # configs this machine can key are computed as stacks (flcore.runs.compute, as run_many
    # batches them); one whose device only a worker can resolve runs as a task of its own
    here = [(i, c) for i, (c, k) in zip(todo, pending) if k is not None]
    there = [(i, (c, k)) for i, (c, k) in zip(todo, pending) if k is None]
    all_keys = list(keys)
    if here:
        from flcore.runs.compute import compute

        compute([c for _, c in here], store, executor, threads=threads, data_root=data_root,
                retries=retries, progress=progress, max_federations=max_federations)  # fmt: skip
        stats["computed"] += len(here)
    if there:
        rest = [p for _, p in there]
        if executor is None:
            out_keys = _run_local(rest, store, data_root, threads, progress, stats)
        else:
            out_keys = _run_dask(executor, rest, store, data_root, retries, threads, progress, stats)
        for (i, _), k in zip(there, out_keys):
            all_keys[i] = k
    result = table(st, all_keys)
    stats["diverged"] = (
        int(result.groupby("key")["status"].first().eq("diverged").sum()) if len(result) else 0
    )
    stats["rows"] = len(result)
    missing = [k for k in all_keys if k not in set(result["key"])]
    if missing:  # pragma: no cover - a finished run always leaves a verified entry
        raise RuntimeError(f"{len(missing)} configurations finished but have no verified entry in "
                           f"{store}: {missing[:5]}; rerun the sweep to recompute them")  # fmt: skip
    if info is not None:
        info.update(stats)
    return result


def _bar(progress: bool, total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="config", disable=not progress,
                dynamic_ncols=True)  # fmt: skip


def _run_local(pending, store, data_root, threads, progress, stats) -> list[str]:
    import torch

    before = torch.get_num_threads()
    out = []
    with _bar(progress, stats["configs"], stats["stored"], "sweep") as bar:
        try:
            for cfg, _ in pending:
                r = _run_one(cfg.to_dict(), store, data_root, threads, progress=progress)
                out.append(r["key"])
                stats["computed"] += r["computed"]
                bar.update(1)
        finally:
            if threads:
                torch.set_num_threads(before)
    return out


def _run_dask(client, pending, store, data_root, retries, threads, progress, stats) -> list[str]:
    from distributed import as_completed

    futures = []
    for cfg, key in pending:
        futures.append(client.submit(_run_one, cfg.to_dict(), os.path.abspath(store), data_root,
                                     threads or 1, key=_task_key(key, cfg), pure=False,
                                     retries=retries))  # fmt: skip
    index = {f.key: i for i, f in enumerate(futures)}
    out: list[str | None] = [None] * len(futures)
    with _bar(progress, stats["configs"], stats["stored"], "sweep (dask)") as bar:
        try:
            for fut in as_completed(futures):
                try:
                    r = fut.result()
                except BaseException as e:
                    cfg = pending[index[fut.key]][0]
                    if hasattr(e, "add_note"):
                        e.add_note(f"flcore.sweep: configuration {_short(cfg)} failed; the sweep "
                                   f"stopped. Finished configurations are stored in {store}; "
                                   "rerun to resume.")  # fmt: skip
                    raise
                out[index[fut.key]] = r["key"]
                stats["computed"] += r["computed"]
                bar.update(1)
        finally:
            pending_futs = [f for f in futures if not f.done()]
            if pending_futs:
                client.cancel(pending_futs)
    return out  # type: ignore[return-value]


def _short(cfg: Config) -> str:
    d, ref = cfg.to_dict(), Config(dataset=cfg.dataset).to_dict()
    return "(" + ", ".join(f"{k}={v!r}" for k, v in d.items() if v != ref.get(k)) + ")"


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------


def cmd_sweep(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m flcore sweep",
        description="Run every configuration of a grid (YAML) not yet in the result store.",
    )
    p.add_argument("grid", help="grid YAML file, e.g. params/sweeps/fmnist_m_grid.yaml")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="a running Dask scheduler, e.g. tcp://host:8786")  # fmt: skip
    where.add_argument("--local-cluster", type=int, metavar="N",
                       help="start a Dask LocalCluster of N worker processes on 127.0.0.1")  # fmt: skip
    p.add_argument("--results", default="results", help="result store directory (default: results)")
    p.add_argument(
        "--data-root", default=None, help="dataset folder (else $FLCORE_DATA, well-known places)"
    )
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per configuration (default: in-process torch's own "
                        "setting; on Dask 1 per task)")  # fmt: skip
    p.add_argument(
        "--retries", type=int, default=2, help="Dask retries of a failed task (default 2)"
    )
    p.add_argument("--max-federations", type=int, default=None, metavar="N",
                   help="at most N federations per stack (default: the dataset's cap)")
    p.add_argument(
        "--dry-run", action="store_true", help="list the configurations and what is stored"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if a.local_cluster is not None and a.local_cluster < 1:
        p.error(f"--local-cluster {a.local_cluster}: give at least 1 worker process")
    if a.threads is not None and a.threads < 1:
        p.error(f"--threads {a.threads}: give at least 1 thread")
    if a.max_federations is not None and a.max_federations < 1:
        p.error(f"--max-federations {a.max_federations}: give at least 1")

    from flcore.data import DatasetFormatError, DatasetNotFoundError
    from flcore.runs.store import Store, StoreError

    try:
        configs = expand(load_grid(a.grid))
        if a.dry_run:
            st = Store(a.results)
            for c in configs:
                k = _local_key(c)
                print(f"{'stored ' if k and st.get(k) else 'pending'}  {k or '?':16s}  {_short(c)}")
            return 0
        info: dict = {}
        t0 = time.perf_counter()
        st = Store(a.results)
        anything_to_do = any(k is None or st.get(k) is None for k in map(_local_key, configs))
        if (a.scheduler or a.local_cluster) and anything_to_do:
            with _client(a.scheduler, a.local_cluster) as client:
                print(f"dask scheduler: {client.scheduler.address}", file=sys.stderr)
                df = sweep(configs, a.results, executor=client, progress=not a.quiet,
                           data_root=a.data_root, retries=a.retries, threads=a.threads, info=info,
                           max_federations=a.max_federations)  # fmt: skip
        else:
            df = sweep(configs, a.results, progress=not a.quiet, data_root=a.data_root,
                       threads=a.threads, info=info, max_federations=a.max_federations)  # fmt: skip
    except (StoreError, DatasetNotFoundError, DatasetFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _print_summary(a.grid, df, info, time.perf_counter() - t0)
    return 0


class _client:
    """A Dask client on an existing scheduler or on a LocalCluster started (and closed) here.

    A LocalCluster's nannies set OMP_NUM_THREADS, MKL_NUM_THREADS, OPENBLAS_NUM_THREADS = 1 and
    MALLOC_TRIM_THRESHOLD_ in this process's environment, for the workers to inherit, and leave
    them there. Everything started later would inherit them too: the notebooks' kernels of a
    render would run NumPy's BLAS on one thread and round the defense's PCA differently from a
    render without a cluster. The environment is therefore put back as it was on exit."""

    def __init__(self, address: str | None, n_workers: int | None):
        self.address, self.n_workers, self.cluster = address, n_workers, None

    def __enter__(self):
        import dask
        from distributed import Client, LocalCluster

        self._environ = dict(os.environ)
        if self.address:
            self.client = Client(self.address)
        else:
            # dashboard on a free port (":0"): a second compute on the same machine then finds
            # no port taken (the dashboard itself is served only where bokeh is installed).
            # No worker time-to-live: the scheduler, workers and nannies of a LocalCluster share
            # this machine, so a pause of the whole compute (kill -STOP on its process group, a
            # laptop's sleep) stops them all, and with Dask's default of 5 minutes the scheduler
            # would declare every worker dead on resume, cancel the stacks in flight and restart
            # them from their checkpoints. A worker that dies is still noticed by its nanny.
            with dask.config.set({"distributed.scheduler.worker-ttl": None}):
                self.cluster = LocalCluster(n_workers=self.n_workers, threads_per_worker=1,
                                            processes=True, host="127.0.0.1",
                                            dashboard_address=":0")  # fmt: skip
            self.client = Client(self.cluster)
        return self.client

    def __exit__(self, *exc):
        try:
            self.client.close()
            if self.cluster is not None:
                self.cluster.close()
        finally:
            os.environ.clear()
            os.environ.update(self._environ)


def _print_summary(grid, df: pd.DataFrame, info: dict, wall: float) -> None:
    print(f"sweep {grid}: {info['configs']} configurations: {info['stored']} already stored, "
          f"{info['computed']} computed, {info['diverged']} with diverged repeats  [{wall:.1f} s]")  # fmt: skip
    if len(df):
        ok = df[~df["diverged"].astype(bool)]
        varying = [c for c in Config.field_names() if c in df and df[c].astype(str).nunique() > 1]
        if varying and len(ok):
            g = ok.groupby(varying, dropna=False)[["accuracy", "source_recall"]]
            summ = g.mean().round(2)
            summ["runs"] = g.size()
            with pd.option_context("display.max_rows", 40, "display.width", 120):
                print(summ.to_string())
    print(f"results: {info['store']}  (flcore.runs.store.open({info['store']!r}).table())")
