"""Crash-safe, content-addressed result store.

One *entry* per experiment configuration, stored as a directory ``<store>/<key>/``::

    config.json      the normalised configuration (JSON)
    meta.json        small JSON dict: flcore version, wall time, status ("ok", "diverged", ...)
    <frame>.csv      one tidy CSV per pandas DataFrame (exact round trip, see below)
    arrays.npz       all numpy arrays (plain .npz, loaded with ``allow_pickle=False``)
    MANIFEST.json    written LAST: sha256 + size of every file, schema version, frame dtypes

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

Exact DataFrame round trip
--------------------------
Frames are written as CSV but every column is encoded by the store itself: floats with
``repr`` (shortest string that round-trips; ``nan``/``inf`` included; float32 values via their
exact float64 value), ints/bools verbatim, strings verbatim (quoted by the csv writer; missing
values recorded by row position in the manifest so ``""``, ``"nan"`` and ``None`` stay
distinct).  Column dtypes, column names, and a non-default index are recorded in the manifest
and restored on read.  Supported column dtypes: numpy bool/int/uint/float, tz-naive
``datetime64``, ``object`` columns holding only ``str``/missing values, pandas ``str``/
``string``, nullable ``Int*``/``UInt*``/``Float*``/``boolean`` and ``category``.  Anything
else raises :class:`StoreError` at ``put`` time rather than being silently altered.

Config keys
-----------
:func:`config_key` hashes the normalised config plus the flcore version.  Normalisation:
tuples and lists -> lists, numpy scalars/arrays -> Python values, ``os.PathLike`` -> str,
mapping keys -> str.  Floats are kept as floats and serialised by ``repr`` (so ``0.1`` and
``float("0.1")`` and ``0.10000000000000001`` are the same value and the same key).
``1`` (int) and ``1.0`` (float) are DIFFERENT values and give DIFFERENT keys, because their
JSON forms differ and a config that says ``lr=1`` is not byte-identical to ``lr=1.0``;
normalise numeric types in the config builder if you want them merged.  ``True`` is not ``1``.
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

SCHEMA_VERSION = 1
MANIFEST = "MANIFEST.json"
CONFIG_FILE = "config.json"
META_FILE = "meta.json"
ARRAYS_FILE = "arrays.npz"
QUARANTINE = "_quarantine"
TMP_PREFIX = ".tmp-"
DEFAULT_STALE_TMP_AGE = 3600.0

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_RESERVED_FRAME_NAMES = {"MANIFEST", "config", "meta", "arrays"}
_MASKED_RE = re.compile(r"^(U?Int(8|16|32|64)|Float(32|64)|boolean)$")
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
    """Encode ``df`` (exact round trip) to CSV at ``path``; return its manifest spec."""
    out, header, spec = _encode_frame(df, name)
    with _open(path, "w", encoding="utf-8", newline="") as f:
        if out is not None:
            out.to_csv(f, index=False, header=header, lineterminator="\n")
        f.flush()
        os.fsync(f.fileno())
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
# exact DataFrame <-> CSV encoding
# --------------------------------------------------------------------------------------


def _jsonable_label(label: Any, what: str) -> Any:
    if label is None or isinstance(label, (str, bool)):
        return label
    if isinstance(label, (int, np.integer)):
        return int(label)
    if isinstance(label, (float, np.floating)) and math.isfinite(float(label)):
        return float(label)
    raise StoreError(f"{what} label {label!r} is not a str/int; rename it before storing")


def _float_strings(values: np.ndarray) -> list[str]:
    return [repr(v) for v in values.astype(np.float64).tolist()]


def _null_positions(mask: np.ndarray) -> list[int]:
    return np.flatnonzero(mask).tolist()


def _encode_series(s: pd.Series | pd.Index, what: str) -> tuple[np.ndarray, dict]:
    """Encode a column/level into an object array of str plus a spec for decoding."""
    dtype = s.dtype
    n = len(s)
    if isinstance(dtype, pd.CategoricalDtype):
        cats = pd.Series(dtype.categories)
        cat_strs, cat_spec = _encode_series(cats, f"{what} categories")
        codes = np.asarray(s.cat.codes if isinstance(s, pd.Series) else s.codes)
        strs = np.empty(n, dtype=object)
        valid = codes >= 0
        strs[valid] = cat_strs[codes[valid]]
        strs[~valid] = ""
        return strs, {
            "kind": "category",
            "ordered": bool(dtype.ordered),
            "categories": cat_strs.tolist(),
            "categories_spec": cat_spec,
            "nulls": _null_positions(~valid),
        }
    if isinstance(dtype, pd.StringDtype):
        arr = s.to_numpy(dtype=object, na_value=None)
        mask = np.array([v is None for v in arr], dtype=bool)
        strs = np.where(mask, "", arr).astype(object)
        return strs, {
            "kind": "string",
            "storage": dtype.storage,
            "na_value": "NA" if dtype.na_value is pd.NA else "nan",
            "nulls": _null_positions(mask),
        }
    if isinstance(dtype, pd.api.extensions.ExtensionDtype) and _MASKED_RE.match(dtype.name):
        # nullable Int*/UInt*/Float*/boolean
        mask = np.asarray(pd.isna(s))
        base = np.dtype(dtype.numpy_dtype)
        filled = np.asarray(s.to_numpy(dtype=object, na_value=None))
        strs = np.empty(n, dtype=object)
        for i, v in enumerate(filled):
            if mask[i]:
                strs[i] = ""
            elif base.kind == "f":
                strs[i] = repr(float(v))
            elif base.kind == "b":
                strs[i] = "True" if v else "False"
            else:
                strs[i] = str(int(v))
        return strs, {"kind": "masked", "dtype": dtype.name, "nulls": _null_positions(mask)}
    if not isinstance(dtype, np.dtype):
        raise StoreError(
            f"{what} has dtype {dtype} which the store cannot round-trip exactly; "
            "convert it (e.g. .astype(str) or .astype(float)) before storing"
        )
    arr = np.asarray(s)
    if dtype.kind == "b":
        return np.where(arr, "True", "False").astype(object), {"kind": "numpy", "dtype": "bool"}
    if dtype.kind in "iu":
        return arr.astype(str).astype(object), {"kind": "numpy", "dtype": dtype.name}
    if dtype.kind == "f":
        return np.array(_float_strings(arr), dtype=object), {"kind": "numpy", "dtype": dtype.name}
    if dtype.kind == "M":
        return np.datetime_as_string(arr).astype(object), {"kind": "numpy", "dtype": dtype.name}
    if dtype.kind == "O":
        strs = np.empty(n, dtype=object)
        nones, nans, nas = [], [], []
        for i, v in enumerate(arr.tolist()):
            if isinstance(v, str):
                strs[i] = v
                continue
            strs[i] = ""
            if v is None:
                nones.append(i)
            elif v is pd.NA:
                nas.append(i)
            elif isinstance(v, float) and math.isnan(v):
                nans.append(i)
            else:
                raise StoreError(
                    f"{what} is an object column holding a {type(v).__name__} ({v!r}); only "
                    "str and missing values can be stored exactly. Convert the column "
                    "(e.g. .astype(str) or a numeric dtype) before storing"
                )
        return strs, {"kind": "object", "none": nones, "nan": nans, "na": nas}
    raise StoreError(
        f"{what} has dtype {dtype} which the store cannot round-trip exactly; "
        "convert it (e.g. .astype(str) or .astype(float)) before storing"
    )


def _decode_series(raw: np.ndarray, spec: dict, what: str) -> Any:
    """Inverse of :func:`_encode_series`; returns an array-like suitable for a column."""
    kind = spec["kind"]
    n = len(raw)
    if kind == "numpy":
        dt = np.dtype(spec["dtype"])
        if dt.kind == "b":
            bad = [v for v in raw if v not in ("True", "False")]
            if bad:
                raise CorruptEntryError(f"{what}: non-boolean value {bad[0]!r}")
            return raw == "True"
        if dt.kind in "iu":
            return np.array([int(v) for v in raw], dtype=object).astype(dt)
        if dt.kind == "f":
            return np.array([float(v) for v in raw], dtype=np.float64).astype(dt)
        if dt.kind == "M":
            return np.array(raw.tolist(), dtype=dt)
        raise CorruptEntryError(f"{what}: unknown dtype {spec['dtype']!r}")
    if kind == "object":
        out = np.array(raw, dtype=object)
        for i in spec.get("none", []):
            out[i] = None
        for i in spec.get("nan", []):
            out[i] = np.nan
        for i in spec.get("na", []):
            out[i] = pd.NA
        return out
    if kind == "string":
        out = np.array(raw, dtype=object)
        for i in spec["nulls"]:
            out[i] = None
        na_value = pd.NA if spec["na_value"] == "NA" else np.nan
        return pd.array(out, dtype=pd.StringDtype(storage=spec["storage"], na_value=na_value))
    if kind == "masked":
        dtype = pd.api.types.pandas_dtype(spec["dtype"])
        base = np.dtype(dtype.numpy_dtype)
        nulls = set(spec["nulls"])
        vals: list[Any] = []
        for i, v in enumerate(raw):
            if i in nulls:
                vals.append(None)
            elif base.kind == "f":
                vals.append(float(v))
            elif base.kind == "b":
                vals.append(v == "True")
            else:
                vals.append(int(v))
        return pd.array(vals, dtype=dtype)
    if kind == "category":
        cat_raw = np.array(spec["categories"], dtype=object)
        cats = pd.Index(_decode_series(cat_raw, spec["categories_spec"], what))
        lookup = {s: i for i, s in enumerate(spec["categories"])}
        nulls = set(spec["nulls"])
        codes = np.empty(n, dtype=np.int64)
        for i, v in enumerate(raw):
            if i in nulls:
                codes[i] = -1
            else:
                try:
                    codes[i] = lookup[v]
                except KeyError:
                    raise CorruptEntryError(f"{what}: unknown category {v!r}") from None
        return pd.Categorical.from_codes(codes, categories=cats, ordered=spec["ordered"])
    raise CorruptEntryError(f"{what}: unknown column encoding {kind!r}")


def _is_default_index(idx: pd.Index) -> bool:
    return (
        isinstance(idx, pd.RangeIndex) and idx.start == 0 and idx.step == 1 and idx.name is None
    )


def _encode_frame(df: pd.DataFrame, name: str) -> tuple[pd.DataFrame | None, list[str], dict]:
    if not isinstance(df, pd.DataFrame):
        raise StoreError(f"frame {name!r} is a {type(df).__name__}, not a pandas DataFrame")
    if isinstance(df.columns, pd.MultiIndex):
        raise StoreError(f"frame {name!r} has MultiIndex columns; flatten them before storing")
    columns = [_jsonable_label(c, f"frame {name!r} column") for c in df.columns]
    encoded: list[np.ndarray] = []
    specs: list[dict] = []
    header: list[str] = []
    index_names: list[Any] | None = None
    if not _is_default_index(df.index):
        index_names = [_jsonable_label(n, f"frame {name!r} index name") for n in df.index.names]
        for level, lname in enumerate(df.index.names):
            values = df.index.get_level_values(level)
            strs, spec = _encode_series(values, f"frame {name!r} index level {level}")
            encoded.append(strs)
            specs.append(spec)
            header.append(str(lname) if lname is not None else f"index{level}")
    for pos, col in enumerate(df.columns):
        strs, spec = _encode_series(df.iloc[:, pos], f"frame {name!r} column {col!r}")
        encoded.append(strs)
        specs.append(spec)
        header.append(str(col))
    spec = {
        "file": f"{name}.csv",
        "nrows": len(df),
        "columns": columns,
        "columns_dtype": str(df.columns.dtype),
        "columns_name": _jsonable_label(df.columns.name, f"frame {name!r} columns name"),
        "index_names": index_names,
        "specs": specs,
    }
    if not encoded:
        return None, [], spec
    out = pd.DataFrame({f"c{i}": e for i, e in enumerate(encoded)})
    return out, header, spec


def _read_frame(path: Path, spec: dict, name: str) -> pd.DataFrame:
    specs = spec["specs"]
    nrows = spec["nrows"]
    what = f"frame {name!r}"
    if not specs:
        raw = None
    else:
        internal = [f"c{i}" for i in range(len(specs))]
        raw = pd.read_csv(
            path,
            header=0,
            names=internal,
            dtype=object,
            keep_default_na=False,
            na_filter=False,
            skip_blank_lines=False,
            encoding="utf-8",
        )
        if len(raw) != nrows:
            raise CorruptEntryError(f"{what}: expected {nrows} rows, found {len(raw)}")
    decoded = [
        _decode_series(raw.iloc[:, i].to_numpy(dtype=object), s, f"{what} field {i}")
        for i, s in enumerate(specs)
    ]
    # object columns must be wrapped explicitly, or pandas would infer the ``str`` dtype
    obj = [s["kind"] == "object" for s in specs]
    index_names = spec["index_names"]
    n_index = len(index_names) if index_names is not None else 0
    levels = [pd.Index(d, dtype=object if o else None) for d, o in zip(decoded, obj)][:n_index]
    if index_names is None:
        index: pd.Index = pd.RangeIndex(nrows)
    elif n_index == 1:
        index = levels[0].rename(index_names[0])
    else:
        index = pd.MultiIndex.from_arrays(levels, names=index_names)
    data = {
        i: pd.Series(decoded[n_index + i], index=index, dtype=object if obj[n_index + i] else None)
        for i in range(len(spec["columns"]))
    }
    df = pd.DataFrame(data, index=index)
    try:
        cols = pd.Index(spec["columns"], dtype=spec["columns_dtype"], name=spec["columns_name"])
    except (TypeError, ValueError):
        cols = pd.Index(spec["columns"], name=spec["columns_name"])
    df.columns = cols
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

    def keys(self) -> list[str]:
        """Keys of complete (manifest-bearing) entries, sorted; no checksum work."""
        return [k for k in self._entry_dirs() if (self.path / k / MANIFEST).is_file()]

    def has(self, key: str) -> bool:
        _check_key(key)
        return (self.path / key / MANIFEST).is_file()

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
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            raise CorruptEntryError(f"unreadable content ({type(exc).__name__}: {exc})") from None
        return Entry(key=key, config=config, frames=frames, arrays=arrays, meta=meta)

    def get(self, key: str, verify: bool = True) -> Entry | None:
        """The entry for ``key``; ``None`` if absent or damaged (damaged ones are quarantined)."""
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
        except CorruptEntryError as exc:
            self._quarantine(key, st.st_ino, str(exc))
            return None

    def _quarantine(self, key: str, inode: int | None, reason: str) -> Path | None:
        """Move a damaged entry aside and warn; silent if it vanished (deleted concurrently)."""
        src = self.path / key
        try:
            if inode is not None and os.stat(src).st_ino != inode:
                return None  # replaced concurrently by a fresh entry: not ours to move
        except FileNotFoundError:
            return None  # deleted/quarantined concurrently
        qroot = self.path / QUARANTINE
        stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}-{secrets.token_hex(3)}"
        dst = qroot / f"{key}-{stamp}"
        try:
            qroot.mkdir(exist_ok=True)
            os.rename(src, dst)
            _fsync_dir(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _os_error(exc, "quarantining damaged entry", src) from exc
        warnings.warn(
            f"flcore.store: entry {key!r} in {self.path} is damaged ({reason}); moved to {dst}. "
            "It will be treated as missing and recomputed.",
            StoreWarning,
            stacklevel=3,
        )
        return dst

    def verify_all(self) -> dict[str, str]:
        """Check every entry's checksums: ``{key: "ok" | reason}``; damaged ones are quarantined."""
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
                    name: _write_frame(tmp / f"{name}.csv", df, name)
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
                continue  # theirs was damaged and is now quarantined: retry
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

    def table(self, frame: str = "final") -> pd.DataFrame:
        """Concatenate frame ``frame`` of every (verified) entry, with config/meta columns.

        Extra columns: the flattened config (nested dicts joined with ``.``; lists become
        tuples so they can be grouped on), ``key``, and meta ``status`` and ``version``
        (``meta["version"]`` or ``meta["flcore_version"]``).  A column that would clash with
        a frame column is prefixed ``config.``/``meta.`` instead.  Entries without the frame
        are skipped.
        """
        parts = []
        for key in self.keys():
            entry = self.get(key, verify=True)
            if entry is None or frame not in entry.frames:
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
            parts.append(df)
        if not parts:
            return pd.DataFrame()
        return pd.concat(parts, ignore_index=True, sort=False)


def open(path: str | os.PathLike, **kwargs: Any) -> Store:
    """``flcore.runs.store.open(path).table()``"""
    return Store(path, **kwargs)
