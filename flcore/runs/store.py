"""Crash-safe, content-addressed result store.

One *entry* per experiment configuration, stored as a directory ``<store>/<key>/``::

    config.json      the normalised configuration (JSON)
    meta.json        small JSON dict: flcore version, wall time, status ("ok", "diverged", ...)
    <frame>.parquet  one Parquet file (pyarrow) per pandas DataFrame, e.g. final.parquet
    arrays.npz       all numpy arrays (plain .npz, loaded with ``allow_pickle=False``)
    MANIFEST.json    written LAST: sha256 + size of every file, store schema version, the
                     flcore and numerics versions that wrote the entry, frame specs

The frames of the runner's entries are ``rounds``, ``recall``, ``final`` (one row per repeat)
and, with a defense, ``excluded``: ``<store>/*/final.parquet`` can be read directly by DuckDB or
``pd.read_parquet`` (docs/RELIABILITY.md, "Querying a store").

Crash safety
------------
``put`` writes everything into ``<store>/.tmp-<key>-<pid>-<random>/``, fsyncs every file,
writes ``MANIFEST.json`` last, fsyncs it and the directory, then ``os.rename``s the directory
to ``<store>/<key>/`` and fsyncs the store directory.  A reader therefore sees either no
entry or a complete one; a killed writer leaves only a ``.tmp-*`` directory, which
``keys()`` ignores and a later ``Store(...)`` removes once it is older than
``stale_tmp_age`` seconds (default one hour).

Renaming a directory onto an existing non-empty directory fails, so two processes putting
the same key concurrently end with exactly one entry: the loser verifies the winner's entry,
discards its own temp dir and returns.  No locks are used.

``get(key)`` (with ``verify=True``) recomputes every checksum.  A damaged entry (checksum or
size mismatch, missing file, unreadable manifest, unparsable content) is moved aside to
``<store>/_quarantine/<key>-<timestamp>/``, a :class:`StoreWarning` is emitted and ``None``
is returned so the caller recomputes.  A damaged entry is never returned.

Old entries
-----------
An entry whose manifest has an older store schema (``SCHEMA_VERSION``; schema 1 held CSV
frames) is *stale*: ``keys()``, ``has()``, ``get()`` and ``table()`` treat it as absent, so
it is never served and its configuration is recomputed; a ``put`` of the same key moves it to
``<store>/_stale/<key>-<timestamp>/``.  An entry of a *newer* schema raises
:class:`StoreError` ("upgrade flcore").  ``table()`` also leaves out, by default, entries
written by another flcore or numerics version (``flcore.core.numerics``): their keys can
never be asked for by this code.

DataFrame round trip
--------------------
Frames are written with ``DataFrame.to_parquet(engine="pyarrow")``; pandas' metadata in the
file restores column dtypes and labels and a non-default index (a ``RangeIndex`` is kept as
metadata only, any other index is stored as columns).  Exact: numpy bool/int/uint/float
(float bits, ``nan``/``inf``/``-0.0`` included), ``datetime64`` (tz-naive or aware),
``timedelta64``, pandas ``str``/``string`` (with pandas' default storage), nullable
``Int*``/``UInt*``/``Float*``/``boolean``, ``category`` with str categories, str or int
column labels.  ``object`` columns may hold only ``str`` and missing values; they come back
as ``object`` columns whose missing values are all ``None`` (Parquet has one null, so
``None``, ``nan`` and ``pd.NA`` there are not told apart).  ``put`` reads every frame file
back: a column or index whose dtype would not be restored (a categorical of numbers, an
object column of numbers, complex numbers, ...) raises :class:`StoreError` at ``put`` time
rather than being silently altered.

Config keys
-----------
:func:`config_key` hashes the normalised config plus a version string (the runner passes the
flcore version and the numerics version, ``flcore.runs.runner.store_key``).  Normalisation:
tuples and lists -> lists, numpy scalars/arrays -> Python values, ``os.PathLike`` -> str,
mapping keys -> str.  Floats are kept as floats and serialised by ``repr`` (so ``0.1`` and
``float("0.1")`` and ``0.10000000000000001`` are the same value and the same key).
``1`` (int) and ``1.0`` (float) are DIFFERENT values and give DIFFERENT keys, because their
JSON forms differ and a config that says ``lr=1`` is not byte-identical to ``lr=1.0``;
normalise numeric types in the config builder if you want them merged.  ``True`` is not ``1``.

This module imports pyarrow only inside the functions that need it, and ``import flcore``
does not import this module (pandas itself loads pyarrow, when installed, on ``import pandas``).
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import stat
import time
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flcore import __version__
from flcore.core.numerics import NUMERICS_VERSION, dataset_revision

__all__ = [
    "SCHEMA_VERSION",
    "CorruptEntryError",
    "Entry",
    "Store",
    "StoreError",
    "StoreWarning",
    "config_key",
    "normalise",
    "open",
]

SCHEMA_VERSION = 2  # 1: CSV frames with a hand-written codec; 2: Parquet frames
MANIFEST = "MANIFEST.json"
CONFIG_FILE = "config.json"
META_FILE = "meta.json"
ARRAYS_FILE = "arrays.npz"
FRAME_SUFFIX = ".parquet"
QUARANTINE = "_quarantine"
STALE = "_stale"
TMP_PREFIX = ".tmp-"
DEFAULT_STALE_TMP_AGE = 3600.0

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_RESERVED_FRAME_NAMES = {"MANIFEST", "config", "meta", "arrays"}
_CHUNK = 1 << 20

_open = builtins.open  # the module defines its own ``open`` below

# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------


class StoreError(RuntimeError):
    """A store operation failed; the message names the path and how to fix it."""


class CorruptEntryError(StoreError):
    """An entry on disk is damaged (bad checksum, missing file, unreadable manifest...)."""


class StoreWarning(UserWarning):
    """Emitted when a damaged entry is quarantined."""


def _os_error(exc: OSError, action: str, path: os.PathLike | str) -> StoreError:
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        msg = (
            f"No space left on device while {action} {path}: {exc}. Nothing was stored. "
            "Free disk space (or point the store at a larger disk) and rerun."
        )
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        msg = (
            f"Permission denied while {action} {path}: {exc}. Make the directory writable "
            "(e.g. `chmod u+w`) or choose another store path."
        )
    else:
        msg = f"I/O error while {action} {path}: {exc}."
    return StoreError(msg)


# --------------------------------------------------------------------------------------
# config normalisation and keys
# --------------------------------------------------------------------------------------


def normalise(obj: Any, _where: str = "config") -> Any:
    """Return a JSON-able copy of ``obj`` with canonical Python types.

    tuples -> lists, numpy scalars/arrays -> Python values, PathLike -> str, mapping keys -> str
    (int keys are converted; a collision such as ``{1: .., "1": ..}`` is an error).  ``int``
    and ``float`` stay distinct (``1`` != ``1.0``); ``bool`` stays ``bool``.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if isinstance(k, (bool, np.bool_)) or not isinstance(k, (str, int, np.integer)):
                raise TypeError(
                    f"{_where}: mapping key {k!r} of type {type(k).__name__} is not allowed; "
                    "use str (or int) keys"
                )
            sk = str(int(k)) if not isinstance(k, str) else k
            if sk in out:
                raise TypeError(f"{_where}: keys {k!r} and {sk!r} collide after conversion to str")
            out[sk] = normalise(v, f"{_where}.{sk}")
        return out
    if isinstance(obj, (list, tuple)):
        return [normalise(v, f"{_where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return normalise(obj.tolist(), _where)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(
        f"{_where}: value {obj!r} of type {type(obj).__name__} is not JSON-able; "
        "convert it to str/int/float/bool/list/dict before storing"
    )


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)


def config_key(config: dict, version: str) -> str:
    """Stable 16-hex-char key of ``normalise(config)`` plus the flcore ``version``.

    Same dict -> same key across processes and machines (no dependence on dict order,
    hash seeds or platform).  ``1`` and ``1.0`` give different keys (documented choice).
    """
    payload = {"config": normalise(config), "version": str(version)}
    return hashlib.sha256(_canonical_json(payload).encode("utf-8")).hexdigest()[:16]


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, name + "."))
        elif isinstance(v, list):
            out[name] = _to_tuple(v)
        else:
            out[name] = v
    return out


def _to_tuple(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_to_tuple(x) for x in v)
    return v


# --------------------------------------------------------------------------------------
# low-level file helpers (module-level so tests can monkeypatch them)
# --------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:  # pragma: no cover - platforms without directory fds
        if exc.errno in (errno.EACCES, errno.EISDIR, errno.EINVAL):
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:  # pragma: no cover
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=True)
    with _open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())


def _write_frame(path: Path, df: pd.DataFrame, name: str) -> dict:
    """Write ``df`` as Parquet (pyarrow) at ``path``, fsynced; return its manifest spec."""
    spec = _frame_spec(df, name)
    try:
        import pyarrow as pa
    except ImportError as exc:  # pragma: no cover - pyarrow is a dependency
        raise StoreError(
            "storing a DataFrame needs pyarrow: `pip install pyarrow` (it is a dependency of "
            "flcore; reinstall with `pip install -e .`)"
        ) from exc
    with _open(path, "wb") as f:
        try:
            df.to_parquet(f, engine="pyarrow", index=None)
        except OSError:
            raise  # a full disk, a permission error: reported by ``put``
        except (pa.ArrowException, ValueError, TypeError) as exc:
            raise StoreError(
                f"frame {name!r} cannot be written as Parquet ({type(exc).__name__}: {exc}); "
                "convert the offending column (e.g. .astype(str) or .astype(float)) before "
                "storing"
            ) from exc
        f.flush()
        os.fsync(f.fileno())
    _check_round_trip(path, df, spec, name)
    return spec


def _write_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> dict:
    """Write a plain (uncompressed, pickle-free) .npz; return {name: {dtype, shape}}."""
    specs: dict[str, dict] = {}
    with _open(path, "wb") as f:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, arr in arrays.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, arr, allow_pickle=False)
                specs[name] = {"dtype": arr.dtype.str, "shape": list(arr.shape)}
        f.flush()
        os.fsync(f.fileno())
    return specs


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with _open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------
# DataFrame checks and the object-column fix-up (everything else is pandas' Parquet metadata)
# --------------------------------------------------------------------------------------


def _jsonable_label(label: Any, what: str) -> Any:
    if label is None or isinstance(label, str):
        return label
    if isinstance(label, (int, np.integer)) and not isinstance(label, (bool, np.bool_)):
        return int(label)
    raise StoreError(f"{what} label {label!r} is not a str/int; rename it before storing")


def _check_object_values(values: Any, what: str) -> None:
    for v in np.asarray(values, dtype=object).tolist():
        if isinstance(v, str) or v is None or v is pd.NA:
            continue
        if isinstance(v, float) and math.isnan(v):
            continue
        raise StoreError(
            f"{what} is an object column holding a {type(v).__name__} ({v!r}); only str and "
            "missing values can be stored exactly. Convert the column (e.g. .astype(str) or a "
            "numeric dtype) before storing"
        )


def _is_object(dtype: Any) -> bool:
    return isinstance(dtype, np.dtype) and dtype.kind == "O"


def _frame_spec(df: pd.DataFrame, name: str) -> dict:
    """Check that ``df`` round-trips through Parquet; return what the manifest records."""
    if not isinstance(df, pd.DataFrame):
        raise StoreError(f"frame {name!r} is a {type(df).__name__}, not a pandas DataFrame")
    if isinstance(df.columns, pd.MultiIndex):
        raise StoreError(f"frame {name!r} has MultiIndex columns; flatten them before storing")
    columns = [_jsonable_label(c, f"frame {name!r} column") for c in df.columns]
    if len({type(c) for c in columns}) > 1:
        raise StoreError(f"frame {name!r} mixes str and int column labels; use one kind")
    if not df.columns.is_unique:
        raise StoreError(f"frame {name!r} has duplicate column labels; rename them")
    for n in df.index.names:
        _jsonable_label(n, f"frame {name!r} index name")
    obj_cols = [i for i, dt in enumerate(df.dtypes) if _is_object(dt)]
    for i in obj_cols:
        _check_object_values(df.iloc[:, i], f"frame {name!r} column {df.columns[i]!r}")
    obj_levels = []
    for level in range(df.index.nlevels):
        values = df.index.get_level_values(level)
        if _is_object(values.dtype):
            _check_object_values(values, f"frame {name!r} index level {level}")
            obj_levels.append(level)
    return {
        "file": f"{name}{FRAME_SUFFIX}",
        "nrows": len(df),
        "columns": columns,
        "object_columns": obj_cols,
        "object_index_levels": obj_levels,
    }


def _same_dtype(a: Any, b: Any) -> bool:
    if isinstance(a, pd.StringDtype) and isinstance(b, pd.StringDtype):
        return a.na_value is b.na_value  # the storage (python/pyarrow) is pandas' default
    if isinstance(a, pd.CategoricalDtype) and isinstance(b, pd.CategoricalDtype):
        return (a.ordered == b.ordered and a.categories.equals(b.categories)
                and _same_dtype(a.categories.dtype, b.categories.dtype))
    return a == b


def _check_round_trip(path: Path, df: pd.DataFrame, spec: dict, name: str) -> None:
    """Read the written file back: a column or index whose dtype Parquet would not restore
    (e.g. a categorical of numbers, a period) is an error now, not a silent change later."""
    back = _read_frame(path, spec, name)
    what = f"frame {name!r}"
    for pos, col in enumerate(df.columns):
        was, got = df.dtypes.iloc[pos], back.dtypes.iloc[pos]
        if not _same_dtype(was, got):
            raise StoreError(
                f"{what} column {col!r} of dtype {was} would come back from Parquet as {got}; "
                "convert it (e.g. .astype(str), .astype(float), or str categories) before "
                "storing"
            )
    a, b = df.index, back.index
    same = type(a) is type(b) and list(a.names) == list(b.names) and a.nlevels == b.nlevels
    if same and isinstance(a, pd.RangeIndex):
        same = a.equals(b)
    if same and not isinstance(a, pd.RangeIndex):
        same = all(_same_dtype(a.get_level_values(i).dtype, b.get_level_values(i).dtype)
                   for i in range(a.nlevels))
    if not same:
        raise StoreError(
            f"{what} has an index ({type(a).__name__}, dtypes {list(getattr(a, 'dtypes', [a.dtype]))}) "
            "that Parquet would not restore; reset_index() it or convert it before storing"
        )


def _as_object(values: Any) -> np.ndarray:
    """An object array of ``values`` with every missing value as ``None``."""
    out = np.asarray(values, dtype=object).copy()
    out[np.asarray(pd.isna(values), dtype=bool)] = None
    return out


def _read_frame(path: Path, spec: dict, name: str) -> pd.DataFrame:
    df = pd.read_parquet(path, engine="pyarrow")
    what = f"frame {name!r}"
    if len(df) != spec["nrows"]:
        raise CorruptEntryError(f"{what}: expected {spec['nrows']} rows, found {len(df)}")
    if [int(c) if isinstance(c, np.integer) else c for c in df.columns] != spec["columns"]:
        raise CorruptEntryError(f"{what}: columns differ from the manifest")
    # object columns come back as pandas' string dtype: restore them (missing -> None)
    for i in spec.get("object_columns", []):
        df.isetitem(i, pd.Series(_as_object(df.iloc[:, i]), index=df.index, dtype=object))
    levels = spec.get("object_index_levels", [])
    if levels:
        idx = df.index
        arrays = [
            pd.Index(_as_object(idx.get_level_values(i)), dtype=object) if i in levels
            else idx.get_level_values(i)
            for i in range(idx.nlevels)
        ]
        df.index = (arrays[0].rename(idx.names[0]) if idx.nlevels == 1
                    else pd.MultiIndex.from_arrays(arrays, names=idx.names))
    return df


# --------------------------------------------------------------------------------------
# the store
# --------------------------------------------------------------------------------------


@dataclass
class Entry:
    key: str
    config: dict
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict, repr=False)  # schema, versions, checksums


class _StaleEntry(Exception):
    """An entry of an older store schema: treated as absent, never served."""


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValueError(
            f"invalid store key {key!r}: use 1-128 chars of [A-Za-z0-9_.-] starting with a "
            "letter or digit (config_key() returns such keys)"
        )
    return key


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in _RESERVED_FRAME_NAMES:
        raise StoreError(
            f"invalid {what} name {name!r}: use 1-128 chars of [A-Za-z0-9_.-] starting with a "
            f"letter or digit (not one of {sorted(_RESERVED_FRAME_NAMES)})"
        )
    return name


class Store:
    """A directory of crash-safe result entries; see the module docstring."""

    def __init__(
        self, path: str | os.PathLike, stale_tmp_age: float = DEFAULT_STALE_TMP_AGE
    ) -> None:
        self.path = Path(path).expanduser()
        self.stale_tmp_age = float(stale_tmp_age)
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(
                f"store path {self.path} exists but is not a directory; remove the file or "
                "choose another store path"
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create store directory {self.path}: {exc}. Choose a path whose parent "
                "is an existing, writable directory (and is not a file)"
            ) from exc
        self._probe()
        self._clean_stale_tmp()

    # -- setup ---------------------------------------------------------------------------

    def _probe(self) -> None:
        probe = self.path / f"{TMP_PREFIX}probe-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            with _open(probe, "wb") as f:
                f.write(b"probe")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise StoreError(
                f"store directory {self.path} is not writable ({exc}); make it writable "
                "(e.g. `chmod u+w`) or choose another store path"
            ) from exc
        finally:
            try:
                probe.unlink()
            except OSError:
                pass

    def _clean_stale_tmp(self) -> None:
        now = time.time()
        try:
            candidates = list(os.scandir(self.path))
        except OSError:
            return
        for de in candidates:
            if not de.name.startswith(TMP_PREFIX):
                continue
            try:
                age = now - de.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            if age < self.stale_tmp_age:
                continue
            p = Path(de.path)
            if de.is_dir(follow_symlinks=False):
                shutil.rmtree(p, ignore_errors=True)
            else:
                try:
                    p.unlink()
                except OSError:
                    pass

    # -- listing -------------------------------------------------------------------------

    def _entry_dirs(self) -> list[str]:
        """Names of every directory that could be an entry (complete or damaged)."""
        out = []
        try:
            with os.scandir(self.path) as it:
                for de in it:
                    if de.name.startswith((".", "_")) or not _KEY_RE.match(de.name):
                        continue
                    if de.is_dir(follow_symlinks=False):
                        out.append(de.name)
        except FileNotFoundError:
            return []
        return sorted(out)

    def _listed(self, entry_dir: Path) -> bool:
        """Whether an entry directory counts as an entry: it has a manifest, not of an older
        schema (a manifest too damaged to tell counts: ``get`` quarantines it)."""
        try:
            with _open(entry_dir / MANIFEST, encoding="utf-8") as f:
                schema = json.load(f).get("schema")
        except FileNotFoundError:
            return False
        except (OSError, ValueError, AttributeError):
            return (entry_dir / MANIFEST).is_file()
        return not (isinstance(schema, int) and schema < SCHEMA_VERSION)

    def keys(self) -> list[str]:
        """Keys of complete (manifest-bearing) entries, sorted; no checksum work. Entries of
        an older store schema are left out (stale: never served)."""
        return [k for k in self._entry_dirs() if self._listed(self.path / k)]

    def has(self, key: str) -> bool:
        _check_key(key)
        return self._listed(self.path / key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and bool(_KEY_RE.match(key)) and self.has(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # -- reading -------------------------------------------------------------------------

    def _read_manifest(self, entry_dir: Path) -> dict:
        mpath = entry_dir / MANIFEST
        try:
            with _open(mpath, encoding="utf-8") as f:
                manifest = json.load(f)
        except FileNotFoundError:
            raise CorruptEntryError("missing MANIFEST.json") from None
        except (OSError, ValueError) as exc:
            raise CorruptEntryError(f"unreadable MANIFEST.json ({exc})") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise CorruptEntryError("malformed MANIFEST.json")
        schema = manifest.get("schema")
        if not isinstance(schema, int):
            raise CorruptEntryError("MANIFEST.json has no schema version")
        if schema > SCHEMA_VERSION:
            raise StoreError(
                f"entry {entry_dir} uses store schema {schema}, newer than this flcore "
                f"(schema {SCHEMA_VERSION}); upgrade flcore to read it"
            )
        if schema < SCHEMA_VERSION:
            raise _StaleEntry(schema)
        return manifest

    def _verify_files(self, entry_dir: Path, manifest: dict) -> None:
        for rel, info in sorted(manifest["files"].items()):
            p = entry_dir / rel
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                raise CorruptEntryError(f"missing file {rel}") from None
            if size != info.get("size"):
                raise CorruptEntryError(
                    f"size mismatch for {rel} ({size} bytes, manifest says {info.get('size')})"
                )
            if _sha256_file(p) != info.get("sha256"):
                raise CorruptEntryError(f"checksum mismatch for {rel}")

    def _load(self, key: str, entry_dir: Path, verify: bool) -> Entry:
        manifest = self._read_manifest(entry_dir)
        if manifest.get("key") != key:
            raise CorruptEntryError(f"manifest key {manifest.get('key')!r} does not match")
        if verify:
            self._verify_files(entry_dir, manifest)
        try:
            import pyarrow as pa

            arrow_errors: tuple[type[BaseException], ...] = (pa.ArrowException,)
        except ImportError:  # pragma: no cover - pyarrow is a dependency
            arrow_errors = ()
        try:
            with _open(entry_dir / CONFIG_FILE, encoding="utf-8") as f:
                config = json.load(f)
            with _open(entry_dir / META_FILE, encoding="utf-8") as f:
                meta = json.load(f)
            frames = {
                name: _read_frame(entry_dir / fspec["file"], fspec, name)
                for name, fspec in manifest.get("frames", {}).items()
            }
            arrays: dict[str, np.ndarray] = {}
            aspecs = manifest.get("arrays", {})
            with np.load(entry_dir / ARRAYS_FILE, allow_pickle=False) as z:
                if set(z.files) != set(aspecs):
                    raise CorruptEntryError(
                        f"arrays.npz holds {sorted(z.files)}, manifest says {sorted(aspecs)}"
                    )
                for name, aspec in aspecs.items():
                    a = z[name]
                    if a.dtype.str != aspec["dtype"] or list(a.shape) != aspec["shape"]:
                        raise CorruptEntryError(f"array {name!r} dtype/shape mismatch")
                    arrays[name] = a
        except CorruptEntryError:
            raise
        except FileNotFoundError as exc:
            raise CorruptEntryError(f"missing file {Path(exc.filename or '?').name}") from None
        except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError,
                zipfile.BadZipFile, *arrow_errors) as exc:
            raise CorruptEntryError(f"unreadable content ({type(exc).__name__}: {exc})") from None
        return Entry(key=key, config=config, frames=frames, arrays=arrays, meta=meta,
                     manifest=manifest)

    def get(self, key: str, verify: bool = True) -> Entry | None:
        """The entry for ``key``; ``None`` if absent, stale (an older store schema: left in
        place, replaced by the next ``put``) or damaged (quarantined)."""
        _check_key(key)
        entry_dir = self.path / key
        try:
            st = os.stat(entry_dir)
        except FileNotFoundError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            self._quarantine(key, st.st_ino, "entry path is not a directory")
            return None
        try:
            return self._load(key, entry_dir, verify)
        except _StaleEntry:
            return None
        except CorruptEntryError as exc:
            self._quarantine(key, st.st_ino, str(exc))
            return None

    def _retire_stale(self, key: str) -> bool:
        """Move an older-schema entry at ``key`` to ``_stale/``; whether one was moved."""
        src = self.path / key
        try:
            inode = os.stat(src).st_ino
            self._read_manifest(src)
            return False
        except _StaleEntry:
            pass
        except (OSError, StoreError):
            return False
        return self._move_aside(key, inode, STALE, "retiring stale entry") is not None

    def _quarantine(self, key: str, inode: int | None, reason: str) -> Path | None:
        """Move a damaged entry aside and warn; silent if it vanished (deleted concurrently)
        or was replaced concurrently by a fresh entry (not ours to move)."""
        dst = self._move_aside(key, inode, QUARANTINE, "quarantining damaged entry")
        if dst is None:
            return None
        warnings.warn(
            f"flcore.store: entry {key!r} in {self.path} is damaged ({reason}); moved to {dst}. "
            "It will be treated as missing and recomputed.",
            StoreWarning,
            stacklevel=3,
        )
        return dst

    def _move_aside(self, key: str, inode: int | None, folder: str, action: str) -> Path | None:
        """Rename entry ``key`` into ``<store>/<folder>/<key>-<stamp>/``; None if it vanished
        or was replaced concurrently (not ours to move)."""
        src = self.path / key
        try:
            if inode is not None and os.stat(src).st_ino != inode:
                return None
        except FileNotFoundError:
            return None
        root = self.path / folder
        stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}-{secrets.token_hex(3)}"
        dst = root / f"{key}-{stamp}"
        try:
            root.mkdir(exist_ok=True)
            os.rename(src, dst)
            _fsync_dir(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _os_error(exc, action, src) from exc
        return dst

    def verify_all(self) -> dict[str, str]:
        """Check every entry's checksums: ``{key: "ok" | reason}``; damaged ones are
        quarantined; stale ones (an older store schema) are reported as ``"stale: ..."`` and
        left in place (never served)."""
        report: dict[str, str] = {}
        for key in self._entry_dirs():
            entry_dir = self.path / key
            try:
                inode = os.stat(entry_dir).st_ino
            except FileNotFoundError:
                continue
            try:
                manifest = self._read_manifest(entry_dir)
                if manifest.get("key") != key:
                    raise CorruptEntryError(f"manifest key {manifest.get('key')!r} does not match")
                self._verify_files(entry_dir, manifest)
            except _StaleEntry as exc:
                report[key] = (f"stale: store schema {exc.args[0]}, older than {SCHEMA_VERSION};"
                               " never served, recomputed when asked for")
                continue
            except CorruptEntryError as exc:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", StoreWarning)
                    moved = self._quarantine(key, inode, str(exc))
                if moved is not None:
                    report[key] = str(exc)
                continue
            report[key] = "ok"
        return report

    # -- writing -------------------------------------------------------------------------

    def put(
        self,
        key: str,
        config: dict,
        frames: Mapping[str, pd.DataFrame] | None = None,
        arrays: Mapping[str, np.ndarray] | None = None,
        meta: dict | None = None,
    ) -> Path:
        """Atomically store an entry; returns its directory.

        If a valid entry for ``key`` already exists (e.g. another worker finished first) it
        is kept and ours is discarded.
        """
        _check_key(key)
        final = self.path / key
        frames = dict(frames or {})
        arrays = dict(arrays or {})
        config_n = normalise(config, "config")
        meta_n = normalise(meta or {}, "meta")
        for name in frames:
            _check_name(name, "frame")
        arrs: dict[str, np.ndarray] = {}
        for name, a in arrays.items():
            _check_name(name, "array")
            arr = np.asarray(a)
            if arr.dtype.hasobject:
                raise StoreError(
                    f"array {name!r} has object dtype, which needs pickle; convert it to a "
                    "numeric/bool/str dtype before storing"
                )
            arrs[name] = arr

        if self.has(key) and self.get(key, verify=True) is not None:
            return final

        tmp = self.path / f"{TMP_PREFIX}{key}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            try:
                tmp.mkdir()
                _write_json(tmp / CONFIG_FILE, config_n)
                _write_json(tmp / META_FILE, meta_n)
                frame_specs = {
                    name: _write_frame(tmp / f"{name}{FRAME_SUFFIX}", df, name)
                    for name, df in frames.items()
                }
                array_specs = _write_arrays(tmp / ARRAYS_FILE, arrs)
                files = {}
                for rel in [CONFIG_FILE, META_FILE, *(s["file"] for s in frame_specs.values()),
                            ARRAYS_FILE]:
                    p = tmp / rel
                    files[rel] = {"sha256": _sha256_file(p), "size": p.stat().st_size}
                manifest = {
                    "schema": SCHEMA_VERSION,
                    "key": key,
                    "flcore_version": __version__,
                    "numerics_version": NUMERICS_VERSION,
                    "created": time.time(),
                    "files": files,
                    "frames": frame_specs,
                    "arrays": array_specs,
                }
                _write_json(tmp / MANIFEST, manifest)
                _fsync_dir(tmp)
            except OSError as exc:
                raise _os_error(exc, "writing entry", tmp) from exc
            return self._publish(key, tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _publish(self, key: str, tmp: Path, final: Path) -> Path:
        for _attempt in range(5):
            try:
                os.rename(tmp, final)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                    raise _os_error(exc, "publishing entry", final) from exc
                # another worker finished first: keep theirs if it verifies
                if self.get(key, verify=True) is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
                    return final
                self._retire_stale(key)  # an older-schema entry goes to _stale/
                continue  # theirs was damaged (now quarantined) or stale (moved): retry
            try:
                _fsync_dir(self.path)
            except OSError as exc:  # pragma: no cover - the rename itself succeeded
                raise _os_error(exc, "syncing store directory", self.path) from exc
            return final
        raise StoreError(f"could not publish entry {final}: it keeps being replaced concurrently")

    def delete(self, key: str) -> bool:
        """Remove an entry (atomically hidden first); returns whether one existed."""
        _check_key(key)
        src = self.path / key
        dst = self.path / f"{TMP_PREFIX}del-{key}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _os_error(exc, "deleting entry", src) from exc
        _fsync_dir(self.path)
        shutil.rmtree(dst, ignore_errors=True)
        return True

    # -- analysis ------------------------------------------------------------------------

    def table(self, frame: str = "final", *, include_stale: bool = False) -> pd.DataFrame:
        """Concatenate frame ``frame`` of every (verified) entry, with config/meta columns.

        With the default ``frame="final"``: one row per run × repeat, the run's config
        columns and its final metrics (``repeat``, ``accuracy``, ``source_recall``,
        ``target_recall`` in %, ``diverged``).

        Extra columns: the flattened config (nested dicts joined with ``.``; lists become
        tuples so they can be grouped on), ``key``, meta ``status`` and ``version``
        (``meta["version"]`` or ``meta["flcore_version"]``) and the manifest's
        ``numerics_version``.  A column that would clash with a frame column is prefixed
        ``config.``/``meta.`` instead.  Entries without the frame are skipped.

        Entries written by another flcore version or numerics version (their keys are never
        asked for by this code) are left out unless ``include_stale=True``; entries of an
        older store schema and damaged ones are never included.
        """
        parts = []
        for key in self.keys():
            entry = self.get(key, verify=True)
            if entry is None or frame not in entry.frames:
                continue
            nv = entry.manifest.get("numerics_version")
            current = (entry.manifest.get("flcore_version") == __version__ and nv == NUMERICS_VERSION
                       and entry.config.get("numerics_revision", 0) == dataset_revision(entry.config.get("dataset")))
            if not (current or include_stale):
                continue
            df = entry.frames[frame].copy()
            taken = set(map(str, df.columns))

            def add(name: str, value: Any, prefix: str, df=df, taken=taken) -> None:
                col = name if name not in taken else f"{prefix}{name}"
                taken.add(col)
                df[col] = [value] * len(df)

            for name, value in _flatten(entry.config).items():
                add(name, value, "config.")
            add("key", key, "meta.")
            add("status", entry.meta.get("status"), "meta.")
            add("version", entry.meta.get("version", entry.meta.get("flcore_version")), "meta.")
            add("numerics_version", nv, "meta.")
            parts.append(df)
        if not parts:
            return pd.DataFrame()
        return pd.concat(parts, ignore_index=True, sort=False)


def open(path: str | os.PathLike, **kwargs: Any) -> Store:
    """``flcore.runs.store.open(path).table()``"""
    return Store(path, **kwargs)
