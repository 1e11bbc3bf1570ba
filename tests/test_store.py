"""Tests for flcore.store: Parquet round trips, stable keys, stale and damaged entries,
crash safety."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from flcore.runs import store
from flcore.runs.store import CorruptEntryError, Store, StoreError, StoreWarning, config_key

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _frames() -> dict[str, pd.DataFrame]:
    final = pd.DataFrame(
        {
            "round": np.arange(5, dtype=np.int64),
            "acc": [0.1 + 0.2, 1e-300, float("nan"), float("inf"), -0.0],
            "acc32": np.array([0.1, 1 / 3, np.nan, -np.inf, 3.4e38], dtype=np.float32),
            "diverged": [True, False, False, True, False],
            "name": ["a,b", "", 'quote"d', "line\nbreak", " lead"],
            "maybe": pd.Series(["x", None, "nan", "None", float("nan")], dtype=object),
            "u8": np.array([0, 1, 2, 254, 255], dtype=np.uint8),
            "big": np.array([2**63 - 1, -(2**63), 0, 1, -1], dtype=np.int64),
        }
    )
    recall = pd.DataFrame(
        {
            "repeat": np.repeat(np.arange(2), 10),
            "cls": np.tile(np.arange(10), 2),
            "recall": np.linspace(0, 1, 20),
            "tag": pd.Categorical(["src", "tgt", None, "src"] * 5),
            "nullable": pd.array([1, None] * 10, dtype="Int64"),
            "s": pd.array(["a", None] * 10, dtype="str"),
            "u": pd.array([7, None] * 10, dtype="UInt8"),
            "flag": pd.array([True, None] * 10, dtype="boolean"),
            "fl": pd.array([0.1, None] * 10, dtype="Float64"),
            "when": pd.to_datetime(["2020-01-01 00:00:00.000001", None] * 10, format="ISO8601"),
        }
    ).set_index(["repeat", "cls"])
    return {"final": final, "recall": recall, "empty": pd.DataFrame(), "norows": final.iloc[:0]}


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "confusion": rng.integers(0, 100, size=(2, 3, 10, 10), dtype=np.int64),
        "selections": rng.integers(0, 50, size=(2, 3, 5), dtype=np.int64),
        "updates": rng.standard_normal((3, 1000)).astype(np.float32),
        "mask": rng.random(17) > 0.5,
        "scalar": np.array(3.5),
    }


CONFIG = {"dataset": "fmnist", "attack": {"kind": "label_flip", "frac": 0.1}, "seed": 1}
META = {"status": "ok", "version": "0.1.0", "wall_time": 1.5}


def _put(st: Store, config=CONFIG, meta=META, frames=None, arrays=None) -> str:
    key = config_key(config, "0.1.0")
    st.put(key, config, _frames() if frames is None else frames,
           _arrays() if arrays is None else arrays, meta)
    return key


def _tmp_dirs(path: Path) -> list[str]:
    return [p.name for p in path.iterdir() if p.name.startswith(".tmp-")]


# --------------------------------------------------------------------------------------
# round trip
# --------------------------------------------------------------------------------------


def test_round_trip_exact(tmp_path):
    st = Store(tmp_path / "s")
    frames, arrays = _frames(), _arrays()
    key = _put(st, frames=frames, arrays=arrays)
    assert st.has(key) and key in st and len(st) == 1 and list(st) == [key]
    entry = st.get(key)
    assert entry is not None and entry.key == key
    assert entry.config == CONFIG and entry.meta == META
    assert set(entry.frames) == set(frames)
    for name, df in frames.items():
        pd.testing.assert_frame_equal(entry.frames[name], df, check_exact=True)
    # float bits identical (assert_frame_equal treats -0.0 == 0.0 and nan == nan)
    got = entry.frames["final"]["acc"].to_numpy()
    assert got.tobytes() == frames["final"]["acc"].to_numpy().tobytes()
    # an object column comes back as object; Parquet has one null, so every missing value is None
    assert entry.frames["final"]["maybe"].dtype == object
    assert entry.frames["final"]["maybe"].tolist() == ["x", None, "nan", "None", None]
    recall = entry.frames["recall"]
    assert recall.index.names == ["repeat", "cls"]
    assert str(recall["nullable"].dtype) == "Int64" and recall["nullable"].isna().sum() == 10
    assert recall["tag"].dtype == frames["recall"]["tag"].dtype  # categories and order kept
    assert set(entry.arrays) == set(arrays)
    for name, a in arrays.items():
        b = entry.arrays[name]
        assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)
    # files on disk are the documented layout
    files = sorted(p.name for p in (tmp_path / "s" / key).iterdir())
    assert files == sorted(["MANIFEST.json", "config.json", "meta.json", "arrays.npz",
                            "final.parquet", "recall.parquet", "empty.parquet",
                            "norows.parquet"])
    with np.load(tmp_path / "s" / key / "arrays.npz", allow_pickle=False) as z:
        assert np.array_equal(z["confusion"], arrays["confusion"])
    manifest = st.get(key).manifest
    assert manifest["schema"] == store.SCHEMA_VERSION == 2
    assert manifest["flcore_version"] == store.__version__
    assert manifest["numerics_version"] == store.NUMERICS_VERSION


def test_frames_are_plain_parquet_files(tmp_path):
    """Any Parquet reader (pyarrow, pandas, DuckDB) reads a frame file without flcore."""
    st = Store(tmp_path)
    key = _put(st)
    table = pq.read_table(tmp_path / key / "final.parquet")
    assert table.num_rows == 5 and table.column_names == list(_frames()["final"].columns)
    assert table.column("big").to_pylist() == [2**63 - 1, -(2**63), 0, 1, -1]
    direct = pd.read_parquet(tmp_path / key / "recall.parquet")
    pd.testing.assert_frame_equal(direct, _frames()["recall"], check_exact=True)


@pytest.mark.parametrize(
    "df",
    [
        pd.DataFrame({0: [1.5, 2.5], 1: ["a", "b"]}),  # int column labels
        pd.DataFrame({"a": [1, 2]}, index=pd.RangeIndex(5, 7, name="r")),
        pd.DataFrame({"a": [1, 2]}, index=pd.Index(["x", None], dtype=object, name="n")),
        pd.DataFrame({"a": [1, 2]}, index=pd.Index([0.5, 1.5], name="f")),
        pd.DataFrame({"t": pd.to_datetime(["2020-01-01", None]).tz_localize("Europe/Paris"),
                      "ns": np.array(["2020-01-01T00:00:00.000000001", "NaT"], "datetime64[ns]"),
                      "td": pd.to_timedelta([1, None], unit="s")}),
        pd.DataFrame({"na": pd.array(["a", None], dtype="string"),
                      "nan": pd.array(["a", None], dtype="str"),
                      "i8": np.array([-1, 2], np.int8), "f16": np.array([1, 2], np.float16)}),
        pd.DataFrame({"c": pd.Categorical(["b", None], categories=["c", "b", "a"], ordered=True),
                      "fl": pd.array([0.5, None], dtype="Float32"),
                      "b": pd.array([None, False], dtype="boolean")}),
    ],
    ids=["int-labels", "range-index", "object-index", "float-index", "datetimes", "strings",
         "categorical-and-masked"],
)
def test_parquet_round_trip_of_supported_dtypes(tmp_path, df):
    st = Store(tmp_path)
    st.put("k", {}, {"f": df}, {}, {})
    got = st.get("k").frames["f"]
    pd.testing.assert_frame_equal(got, df, check_exact=True)
    assert list(got.dtypes.astype(str)) == list(df.dtypes.astype(str))


def test_config_is_normalised_and_tuple_lists(tmp_path):
    st = Store(tmp_path)
    key = "k1"
    st.put(key, {"a": (1, 2), "b": np.int64(3), "c": np.float32(0.5)}, {}, {}, {"status": "ok"})
    entry = st.get(key)
    assert entry.config == {"a": [1, 2], "b": 3, "c": 0.5}
    assert entry.frames == {} and entry.arrays == {}


def test_put_rejects_unstorable_data(tmp_path):
    st = Store(tmp_path)
    with pytest.raises(StoreError, match="object dtype"):
        st.put("k", {}, {}, {"a": np.array([{"x": 1}], dtype=object)}, {})
    with pytest.raises(StoreError, match="object column"):
        st.put("k", {}, {"f": pd.DataFrame({"x": pd.Series([1, "a"], dtype=object)})}, {}, {})
    # an object column of numbers would come back as int64: refused, not silently changed
    with pytest.raises(StoreError, match="object column"):
        st.put("k", {}, {"f": pd.DataFrame({"x": pd.Series([1, 2], dtype=object)})}, {}, {})
    # Parquet keeps only str categories; numbers would come back as float64
    with pytest.raises(StoreError, match=r"column 'c' of dtype category would come back.*float64"):
        st.put("k", {}, {"f": pd.DataFrame({"c": pd.Categorical([1, None])})}, {}, {})
    with pytest.raises(StoreError, match="cannot be written as Parquet"):
        st.put("k", {}, {"f": pd.DataFrame({"z": np.array([1 + 2j])})}, {}, {})
    with pytest.raises(StoreError, match="duplicate column"):
        st.put("k", {}, {"f": pd.DataFrame([[1, 2]], columns=["a", "a"])}, {}, {})
    with pytest.raises(StoreError, match="mixes str and int"):
        st.put("k", {}, {"f": pd.DataFrame({0: [1], "a": [2]})}, {}, {})
    with pytest.raises(StoreError, match="MultiIndex columns"):
        st.put("k", {}, {"f": pd.DataFrame([[1]], columns=pd.MultiIndex.from_tuples([("a", "b")]))},
               {}, {})
    with pytest.raises(StoreError, match="not a pandas DataFrame"):
        st.put("k", {}, {"f": pd.Series([1])}, {}, {})
    with pytest.raises(StoreError, match="invalid frame name"):
        st.put("k", {}, {"../evil": pd.DataFrame()}, {}, {})
    with pytest.raises(ValueError, match="invalid store key"):
        st.put("../k", {}, {}, {}, {})
    assert st.keys() == [] and _tmp_dirs(tmp_path) == []


def test_delete_and_put_existing_key(tmp_path):
    st = Store(tmp_path)
    key = _put(st)
    # a second put of the same key keeps the existing (valid) entry
    st.put(key, CONFIG, {}, {}, {"status": "other"})
    assert st.get(key).meta == META
    assert st.delete(key) is True
    assert st.delete(key) is False
    assert st.get(key) is None and not st.has(key) and st.keys() == []
    assert _tmp_dirs(tmp_path) == []


# --------------------------------------------------------------------------------------
# config keys
# --------------------------------------------------------------------------------------


def test_config_key_stability():
    a = {"lr": 0.1, "rounds": 200, "attack": {"frac": 0.5, "pair": (5, 3)}, "flag": True}
    b = {"flag": True, "attack": {"pair": [5, 3], "frac": 0.5}, "rounds": 200, "lr": float("0.1")}
    ka = config_key(a, "0.1.0")
    assert len(ka) == 16 and int(ka, 16) >= 0
    assert ka == config_key(b, "0.1.0")  # key order, tuple vs list, float parsing
    assert config_key({"x": 0.1}, "v") == config_key({"x": 0.10000000000000001}, "v")
    # numpy scalars normalise to Python values
    assert config_key({"x": np.int64(3), "y": np.float64(0.1), "z": np.bool_(True)}, "v") == \
        config_key({"x": 3, "y": 0.1, "z": True}, "v")
    assert config_key({"x": np.arange(3)}, "v") == config_key({"x": [0, 1, 2]}, "v")
    # documented choice: int and float are different values, bool is not int
    assert config_key({"x": 1}, "v") != config_key({"x": 1.0}, "v")
    assert config_key({"x": 1}, "v") != config_key({"x": True}, "v")
    # different value / version -> different key
    assert ka != config_key({**a, "lr": 0.2}, "0.1.0")
    assert ka != config_key(a, "0.1.1")
    # pinned: the key format must not drift between releases/machines
    # == sha256(b'{"config":{"a":1,"b":[0.1,"x"]},"version":"0.1.0"}').hexdigest()[:16]
    assert config_key({"b": [0.1, "x"], "a": 1}, "0.1.0") == "dc51508b001d7b60"


def test_config_key_same_across_processes():
    cfg = {"b": {"y": 0.3, "x": (1, 2)}, "a": "s"}
    code = f"from flcore.runs.store import config_key; print(config_key({cfg!r}, '9'))"
    outs = set()
    for seed in ("0", "123"):
        env = _env()
        env["PYTHONHASHSEED"] = seed
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout.strip()
        outs.add(out)
    assert outs == {config_key(cfg, "9")}


def test_config_key_rejects_unjsonable():
    with pytest.raises(TypeError, match="config.fn"):
        config_key({"fn": object()}, "v")
    with pytest.raises(TypeError, match="collide"):
        config_key({1: "a", "1": "b"}, "v")


# --------------------------------------------------------------------------------------
# damaged entries
# --------------------------------------------------------------------------------------


def _flip_frame(d: Path) -> None:
    p = d / "final.parquet"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))


def _truncate_npz(d: Path) -> None:
    p = d / "arrays.npz"
    with p.open("r+b") as f:
        f.truncate(p.stat().st_size // 2)


def _drop_manifest(d: Path) -> None:
    (d / "MANIFEST.json").unlink()


def _garble_manifest(d: Path) -> None:
    (d / "MANIFEST.json").write_text("{not json")


def _drop_frame(d: Path) -> None:
    (d / "recall.parquet").unlink()


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_flip_frame, "checksum mismatch for final.parquet"),
        (_truncate_npz, "size mismatch for arrays.npz"),
        (_drop_manifest, "missing MANIFEST.json"),
        (_garble_manifest, "unreadable MANIFEST.json"),
        (_drop_frame, "missing file recall.parquet"),
    ],
)
def test_damaged_entry_is_quarantined(tmp_path, damage, reason):
    st = Store(tmp_path)
    key = _put(st)
    good = _put(st, config={**CONFIG, "seed": 2})
    damage(tmp_path / key)
    with pytest.warns(StoreWarning, match=rf"{key}.*{reason}"):
        assert st.get(key) is None
    assert not (tmp_path / key).exists()
    q = list((tmp_path / "_quarantine").iterdir())
    assert len(q) == 1 and q[0].name.startswith(f"{key}-")
    assert st.keys() == [good] and st.get(good) is not None
    # the caller recomputes and stores again
    _put(st)
    assert st.get(key) is not None


@pytest.mark.parametrize("damage", [_flip_frame, _truncate_npz, _drop_manifest])
def test_verify_all_reports_and_quarantines(tmp_path, damage):
    st = Store(tmp_path)
    bad = _put(st)
    good = _put(st, config={**CONFIG, "seed": 2})
    damage(tmp_path / bad)
    report = st.verify_all()
    assert report[good] == "ok"
    assert report[bad] != "ok" and isinstance(report[bad], str)
    assert st.keys() == [good]
    assert [p.name.split("-")[0] for p in (tmp_path / "_quarantine").iterdir()] == [bad]
    assert st.verify_all() == {good: "ok"}


def test_get_without_verify_never_returns_unreadable_entry(tmp_path):
    st = Store(tmp_path)
    key = _put(st)
    _truncate_npz(tmp_path / key)
    with pytest.warns(StoreWarning, match="unreadable content"):
        assert st.get(key, verify=False) is None
    assert issubclass(CorruptEntryError, StoreError)
    # a frame file that is no Parquet (checksums skipped): quarantined, not returned
    key = _put(st)
    (tmp_path / key / "final.parquet").write_bytes(b"PAR1 not really")
    with pytest.warns(StoreWarning, match="unreadable content"):
        assert st.get(key, verify=False) is None
    # a Parquet file of other rows than the manifest says
    key = _put(st)
    pd.DataFrame({"round": [1]}).to_parquet(tmp_path / key / "final.parquet")
    with pytest.warns(StoreWarning, match="expected 5 rows, found 1"):
        assert st.get(key, verify=False) is None


# --------------------------------------------------------------------------------------
# old schema, other versions: never served
# --------------------------------------------------------------------------------------


def _set_schema(d: Path, schema: int) -> None:
    import json

    p = d / "MANIFEST.json"
    m = json.loads(p.read_text())
    m["schema"] = schema
    p.write_text(json.dumps(m))


def test_old_schema_entry_is_stale_never_served_and_replaced(tmp_path, recwarn):
    st = Store(tmp_path)
    old = _put(st, meta={"status": "ok", "writer": "old code"})
    good = _put(st, config={**CONFIG, "seed": 2})
    _set_schema(tmp_path / old, 1)  # as written by the CSV store
    assert st.keys() == [good] and not st.has(old) and old not in st
    assert st.get(old) is None and (tmp_path / old).is_dir()  # left in place, not quarantined
    assert not (tmp_path / "_quarantine").exists()
    assert st.verify_all()[old].startswith("stale: store schema 1")
    assert set(st.table()["key"]) == {good}
    # recomputing stores a fresh entry; the stale one is moved to _stale/
    _put(st, meta={"status": "ok", "writer": "new code"})
    assert st.get(old).meta["writer"] == "new code"
    assert [p.name.split("-")[0] for p in (tmp_path / "_stale").iterdir()] == [old]
    assert sorted(st.keys()) == sorted([old, good]) and _tmp_dirs(tmp_path) == []
    assert not [w for w in recwarn if issubclass(w.category, StoreWarning)]


def test_newer_schema_entry_asks_for_an_upgrade(tmp_path):
    st = Store(tmp_path)
    key = _put(st)
    _set_schema(tmp_path / key, store.SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match="newer than this flcore.*upgrade flcore"):
        st.get(key)
    assert (tmp_path / key).is_dir()


def test_table_leaves_out_entries_of_other_numerics_or_flcore_versions(tmp_path, monkeypatch):
    st = Store(tmp_path)
    monkeypatch.setattr(store, "NUMERICS_VERSION", 0)
    old_n = _put(st, config={**CONFIG, "seed": 10})
    monkeypatch.setattr(store, "NUMERICS_VERSION", 1)
    monkeypatch.setattr(store, "__version__", "0.0.1")
    old_v = _put(st, config={**CONFIG, "seed": 11})
    monkeypatch.undo()
    cur = _put(st, config={**CONFIG, "seed": 12})
    t = st.table()
    assert set(t["key"]) == {cur} and (t["numerics_version"] == store.NUMERICS_VERSION).all()
    every = st.table(include_stale=True)
    assert set(every["key"]) == {old_n, old_v, cur}
    assert every.groupby("key")["numerics_version"].first()[old_n] == 0


def test_import_flcore_does_not_load_pyarrow():
    code = ("import sys, flcore; from flcore import Config; Config(); "
            "print('pyarrow' in sys.modules, 'flcore.runs.store' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "False False"


# --------------------------------------------------------------------------------------
# crash safety with real processes
# --------------------------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np, pandas as pd
    from flcore.runs.store import Store
    st = Store(sys.argv[1])
    i = 0
    while True:
        big = np.random.default_rng(i).standard_normal(2_000_000).astype(np.float32)
        st.put(f"k{i:04d}", {"i": i}, {"final": pd.DataFrame({"i": [i]})}, {"big": big},
               {"status": "ok"})
        i += 1
    """
)


def test_sigkill_mid_write_leaves_no_half_entry(tmp_path):
    path = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()
            names = os.listdir(path) if path.exists() else []
            done = [n for n in names if n.startswith("k")]
            if len(done) >= 2 and any(n.startswith(".tmp-k") for n in names):
                break
            time.sleep(0.001)
        else:
            pytest.fail("writer never got going")
        time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    st = Store(path)  # default staleness: a fresh tmp dir is left alone
    keys = st.keys()
    assert len(keys) >= 2
    for key in keys:
        with _no_store_warnings():
            entry = st.get(key)
        assert entry is not None
        i = int(key[1:])
        expect = np.random.default_rng(i).standard_normal(2_000_000).astype(np.float32)
        assert np.array_equal(entry.arrays["big"], expect)
        assert entry.config == {"i": i}
    leftovers = _tmp_dirs(path)
    assert all(not n.startswith(tuple(keys)) for n in leftovers)
    assert st.verify_all() == {k: "ok" for k in keys}

    # a simulated half-written entry from an older crash, plus whatever the kill left
    half = path / ".tmp-kdead-999-abcd"
    half.mkdir()
    (half / "config.json").write_text("{}")
    assert Store(path).keys() == keys and half.exists()
    st2 = Store(path, stale_tmp_age=0)
    assert _tmp_dirs(path) == [] and st2.keys() == keys


class _no_store_warnings:
    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error", StoreWarning)

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


_RACER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np, pandas as pd
    from flcore.runs.store import Store
    path, me, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    st = Store(path)
    Store.has = lambda self, key: False  # force both writers all the way to the rename
    arr = np.full(250_000, me, dtype=np.int64)
    while not os.path.exists(go):
        time.sleep(0.001)
    for i in range(8):
        p = st.put(f"race{i}", {"i": i}, {"final": pd.DataFrame({"w": [me]})}, {"a": arr},
                   {"status": "ok", "writer": me})
        assert p.name == f"race{i}", p
    print("done", me)
    """
)


def test_concurrent_put_same_key_two_processes(tmp_path):
    path = tmp_path / "s"
    Store(path)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", _RACER, str(path), str(me), str(go)],
                         env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for me in (1, 2)
    ]
    time.sleep(0.5)  # let both import and block on the start file
    go.write_text("go")
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert out.startswith("done")
    st = Store(path)
    assert st.keys() == [f"race{i}" for i in range(8)]
    for key in st:
        with _no_store_warnings():
            entry = st.get(key)
        me = entry.meta["writer"]
        assert me in (1, 2)
        assert entry.frames["final"]["w"].tolist() == [me]  # one writer's files, not a mix
        assert np.array_equal(entry.arrays["a"], np.full(250_000, me, dtype=np.int64))
    assert _tmp_dirs(path) == []
    assert not (path / "_quarantine").exists()


def test_rename_collision_keeps_existing_entry(tmp_path, monkeypatch):
    a, b = Store(tmp_path), Store(tmp_path)
    key = _put(a, meta={"status": "ok", "writer": "a"})
    monkeypatch.setattr(Store, "has", lambda self, key: False)
    assert b.put(key, CONFIG, _frames(), _arrays(), {"writer": "b"}) == tmp_path / key
    monkeypatch.undo()
    assert a.get(key).meta["writer"] == "a"
    assert _tmp_dirs(tmp_path) == [] and a.keys() == [key]


def test_rename_collision_with_damaged_existing_entry(tmp_path, monkeypatch):
    st = Store(tmp_path)
    key = _put(st, meta={"writer": "old"})
    _flip_frame(tmp_path / key)
    monkeypatch.setattr(Store, "has", lambda self, key: False)
    with pytest.warns(StoreWarning, match="checksum mismatch"):
        st.put(key, CONFIG, _frames(), _arrays(), {"writer": "new"})
    monkeypatch.undo()
    assert st.get(key).meta["writer"] == "new"
    assert _tmp_dirs(tmp_path) == []


# --------------------------------------------------------------------------------------
# unwritable store, full disk
# --------------------------------------------------------------------------------------


def test_store_path_under_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StoreError, match=re.escape(str(f / "sub"))):
        Store(f / "sub")
    with pytest.raises(StoreError, match="not a directory"):
        Store(f)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root bypasses permission bits (covered by the path-under-file test)")
def test_non_writable_dir(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        with pytest.raises(StoreError, match=re.escape(str(d)) + r".*(writable|chmod)"):
            Store(d)
    finally:
        d.chmod(0o700)


@pytest.mark.parametrize(
    "code, match",
    [(errno.ENOSPC, "No space left on device"), (errno.EACCES, "Permission denied")],
)
def test_write_failure_leaves_nothing(tmp_path, monkeypatch, code, match):
    st = Store(tmp_path)

    def boom(path, arrays):
        Path(path).write_bytes(b"partial")
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(store, "_write_arrays", boom)
    with pytest.raises(StoreError, match=match) as info:
        _put(st)
    assert str(tmp_path) in str(info.value)
    assert st.keys() == [] and _tmp_dirs(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == []


def test_interrupt_during_put_cleans_tmp(tmp_path, monkeypatch):
    st = Store(tmp_path)

    def interrupted(path, obj):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "_write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _put(st)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------
# table
# --------------------------------------------------------------------------------------


def test_table_concatenates_with_config_columns(tmp_path):
    st = store.open(tmp_path)
    k1 = _put(st, config={"attack": {"kind": "none", "frac": 0.0}, "seed": 1, "pair": (5, 3)},
              frames={"final": pd.DataFrame({"round": [0, 1], "acc": [0.5, 0.6]})}, arrays={})
    k2 = _put(st, config={"attack": {"kind": "flip", "frac": 0.5}, "seed": 2, "pair": (5, 3)},
              meta={"status": "diverged", "version": "0.1.0"},
              frames={"final": pd.DataFrame({"round": [0], "acc": [0.1]})}, arrays={})
    _put(st, config={"seed": 3}, frames={"other": pd.DataFrame({"x": [1]})}, arrays={})
    t = st.table()
    assert len(t) == 3
    assert {"round", "acc", "attack.kind", "attack.frac", "seed", "pair", "key", "status",
            "version"} <= set(t.columns)
    assert sorted(t["key"].unique()) == sorted([k1, k2])
    by_key = t.set_index("key")
    assert by_key.loc[k2, "attack.kind"] == "flip" and by_key.loc[k2, "status"] == "diverged"
    assert (t[t["key"] == k1]["status"] == "ok").all()
    assert t["pair"].tolist() == [(5, 3)] * 3
    assert t.groupby("attack.kind")["acc"].mean().to_dict() == pytest.approx(
        {"none": 0.55, "flip": 0.1})
    assert len(st.table("other")) == 1
    assert st.table("missing").empty


def test_stale_tmp_probe_and_quarantine_not_listed(tmp_path):
    st = Store(tmp_path)
    key = _put(st)
    (tmp_path / "_quarantine").mkdir()
    (tmp_path / "_quarantine" / "zzz").mkdir()
    (tmp_path / ".tmp-x-1-2").mkdir()
    (tmp_path / "stray.txt").write_text("x")
    assert st.keys() == [key]
    old = time.time() - 7200
    os.utime(tmp_path / ".tmp-x-1-2", (old, old))
    Store(tmp_path)
    assert _tmp_dirs(tmp_path) == []
