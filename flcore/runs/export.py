"""A compact, committable copy of stored runs, and its import into a result store.

An export is a folder of Parquet files (pyarrow, zstd):

    runs.parquet            one row per run: key, the store's numerics key version, the
                            resolved configuration and metadata (JSON) and, for queries, the
                            study columns (dataset, src, tgt, m, strategy, alpha, break_round,
                            rounds, repeats, seed, precision, client_state, attack, defense,
                            aggregator)
    frame_<name>.parquet    each stored frame (rounds, recall, final, excluded), all runs
                            concatenated, with a `key` column
    arrays.parquet          each stored array (confusion matrices, selections, malicious
                            sets, recorded updates): key, name, dtype, shape, raw bytes
    checkpoints/<id>.pt     the store's mid-training checkpoints of stacks of these runs
                            (flcore.runs.checkpoint): a stack stopped part-way on one machine
                            resumes at its saved round on the next

`import_runs(folder, store)` writes every run whose key this code still computes for its
configuration into the store; a run exported by code with other numbers (another numerics
or flcore version, another default) has another key and is skipped as stale, never
served. So a long computation continues on a fresh machine from its last committed export,
and anyone re-renders its figures without training. It also puts back each exported
checkpoint that is further on than the store's own (a checkpoint is only ever resumed by the
configurations it was saved for).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from flcore import __version__
from flcore.config import Config
from flcore.runs.checkpoint import checkpoint_files, header

__all__ = ["export_runs", "import_runs"]

RUNS_FILE = "runs.parquet"
CHECKPOINTS = "checkpoints"
ARRAYS_FILE = "arrays.parquet"
FRAME_PREFIX = "frame_"
_STUDY_COLUMNS = ("dataset", "src", "tgt", "m", "strategy", "alpha", "break_round", "rounds",
                  "repeats", "seed", "precision", "client_state", "attack", "defense", "aggregator")  # fmt: skip


def _write(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    df.to_parquet(tmp, engine="pyarrow", compression="zstd", index=False)
    os.replace(tmp, path)  # a reader never sees half a file


def export_runs(store, keys, folder) -> dict:
    """Write the stored runs `keys` (missing ones are skipped) to `folder`, with the store's
    checkpoints of stacks made of `keys` that are not stored yet; returns counts.

    The files are replaced as a whole (written beside, then renamed), so an export
    interrupted mid-way leaves the previous one readable."""
    from flcore.core.numerics import key_version
    from flcore.runs.store import Store

    st = Store(store)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    runs, frames, arrays = [], {}, []
    for key in dict.fromkeys(keys):
        e = st.get(key)
        if e is None:
            continue
        row = {"key": key, "key_version": key_version(__version__),
               "config": json.dumps(e.config, sort_keys=True), "meta": json.dumps(e.meta, sort_keys=True)}  # fmt: skip
        row |= {c: e.config.get(c) for c in _STUDY_COLUMNS}
        runs.append(row)
        for name, df in e.frames.items():
            frames.setdefault(name, []).append(df.assign(key=key))
        for name, a in e.arrays.items():
            a = np.ascontiguousarray(a)
            arrays.append({"key": key, "name": name, "dtype": a.dtype.str, "shape": list(a.shape),
                           "data": a.tobytes()})  # fmt: skip
    runs_df = pd.DataFrame(runs)
    if len(runs_df):
        runs_df["alpha"] = runs_df["alpha"].astype(float)
    for name, parts in frames.items():
        _write(pd.concat(parts, ignore_index=True), folder / f"{FRAME_PREFIX}{name}.parquet")
    _write(pd.DataFrame(arrays, columns=["key", "name", "dtype", "shape", "data"]), folder / ARRAYS_FILE)
    _write(runs_df, folder / RUNS_FILE)  # last: it lists what the other files hold
    n_ckpt = _export_checkpoints(st, set(keys), {r["key"] for r in runs}, folder / CHECKPOINTS)
    size = sum(p.stat().st_size for p in folder.glob("*.parquet"))
    size += sum(p.stat().st_size for p in checkpoint_files(folder / CHECKPOINTS))
    return {"runs": len(runs), "checkpoints": n_ckpt, "bytes": size, "folder": str(folder)}


def _copy(src: Path, dst: Path) -> None:
    import shutil

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _export_checkpoints(st, keys: set, stored: set, dest: Path) -> int:
    """Mirror into `dest` the store's checkpoints whose stacks are made of `keys` and not
    wholly stored; a file in `dest` for a stack now stored, or no longer checkpointed, goes."""
    from flcore.runs.checkpoint import CHECKPOINT_DIR

    keep = {}
    for p in checkpoint_files(st.path / CHECKPOINT_DIR):
        info = header(p)
        if info is not None and set(info["keys"]) <= keys and not set(info["keys"]) <= stored:
            keep[p.name] = p
    for name, p in keep.items():
        _copy(p, dest / name)
    for p in checkpoint_files(dest):
        if p.name not in keep:
            p.unlink()
    return len(keep)


def import_runs(folder, store) -> dict:
    """Put every run of the export `folder` that is current for this code into `store`.

    Returns {runs, imported, present, stale, checkpoints}: runs already in the store are left
    as they are; a run whose configuration this code keys differently (other numbers) is
    skipped; `checkpoints` counts the exported checkpoints put into the store because it had
    none of their stack, or one saved at an earlier round.
    """
    from flcore.runs.runner import store_key
    from flcore.runs.store import Store

    folder = Path(folder)
    if not (folder / RUNS_FILE).exists():
        raise FileNotFoundError(f"{folder}: no {RUNS_FILE}; not an flcore export "
                                "(flcore.runs.export.export_runs writes one)")  # fmt: skip
    st = Store(store)
    runs = pd.read_parquet(folder / RUNS_FILE)
    stats = {"runs": len(runs), "imported": 0, "present": 0, "stale": 0,
             "checkpoints": _import_checkpoints(folder / CHECKPOINTS, st)}  # fmt: skip
    if not len(runs):
        return stats
    frames = {p.name[len(FRAME_PREFIX):-len(".parquet")]: pd.read_parquet(p)
              for p in sorted(folder.glob(f"{FRAME_PREFIX}*.parquet"))}  # fmt: skip
    frames = {n: dict(tuple(df.groupby("key", sort=False))) for n, df in frames.items()}
    arrays = pd.read_parquet(folder / ARRAYS_FILE)
    arrays = dict(tuple(arrays.groupby("key", sort=False)))
    for r in runs.itertuples(index=False):
        config = json.loads(r.config)
        try:
            current = store_key(Config.from_dict(config)) == r.key
        except Exception:  # noqa: BLE001 - a field this code no longer has: not current
            current = False
        if not current:
            stats["stale"] += 1
            continue
        if st.get(r.key) is not None:
            stats["present"] += 1
            continue
        fr = {n: g[r.key].drop(columns="key").reset_index(drop=True) for n, g in frames.items() if r.key in g}
        ar = {}
        for a in arrays[r.key].itertuples(index=False) if r.key in arrays else ():
            ar[a.name] = np.frombuffer(a.data, dtype=np.dtype(a.dtype)).reshape(tuple(a.shape)).copy()
        st.put(r.key, config, fr, ar, json.loads(r.meta))
        stats["imported"] += 1
    return stats


def _import_checkpoints(src: Path, st) -> int:
    from flcore.runs.checkpoint import CHECKPOINT_DIR

    n = 0
    for p in checkpoint_files(src):
        theirs = header(p)
        if theirs is None or all(st.has(k) for k in theirs["keys"]):
            continue
        dst = st.path / CHECKPOINT_DIR / p.name
        ours = header(dst) if dst.exists() else None
        if ours is None or ours["round"] < theirs["round"]:
            _copy(p, dst)
            n += 1
    return n
