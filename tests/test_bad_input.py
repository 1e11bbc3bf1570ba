"""Bad-input battery: every class of bad input through the user-facing entry points.

`Config`, `run`, `sweep` and the command line (exit code 2, the message on stderr). The
loaders' and the store's own unit tests (tests/test_data.py, tests/test_store.py) cover each
format detail; here each class of bad input is driven through what a user calls.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_data import EvilSystem, corrupt_case, make_evil_cifar, make_fmnist
from test_sweep import TINY, env, needs_fmnist

import flcore.runs.sweep as S
from flcore import cli
from flcore.config import Config, ConfigError
from flcore.data import DatasetFormatError, DatasetNotFoundError
from flcore.data import loading as D
from flcore.runs import store
from flcore.runs.runner import run
from flcore.runs.store import Store, StoreError

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.filterwarnings("ignore:.*official.*:UserWarning"), pytest.mark.usefixtures("one_thread")]



def main(argv, capsys) -> tuple[int, str]:
    """The command line in-process: (exit code, stderr)."""
    code = cli.main(argv)
    return code, capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# every Config field out of range or of the wrong type
# ------------------------------------------------------------------------------------------

# (field, bad value, extra fields, what the message must say is allowed)
BAD_FIELDS = [
    ("dataset", "mnist", {}, "did you mean 'fmnist'"),
    ("dataset", 3, {}, "valid: fmnist, cifar10"),
    ("m", 1.5, {}, "[0, 1]"),
    ("m", "0.1", {}, "must be a number"),
    ("m", True, {}, "must be a number"),
    ("m", float("nan"), {}, "finite"),
    ("src", 10, {}, "0..9"),
    ("src", 1.0, {}, "0..9"),
    ("tgt", -1, {}, "0..9"),
    ("rounds", 0, {}, "positive integer"),
    ("rounds", "10", {}, "positive integer"),
    ("num_participants", 0, {}, "positive integer"),
    ("num_participants", 2.5, {}, "positive integer"),
    ("k", 0, {}, "positive integer"),
    ("k", 100, {}, "lower k or raise num_participants"),
    ("strategy", "randm", {}, "did you mean 'random'"),
    ("alpha", 1.5, {"strategy": "availability"}, "[0, 1]"),
    ("alpha", "x", {"strategy": "availability"}, "number in [0, 1]"),
    ("alpha", 0.5, {}, "set strategy='availability'"),
    ("break_round", -1, {"strategy": "late"}, "[0, rounds=200]"),
    ("break_round", "a", {}, "integer round"),
    ("repeats", 0, {}, "positive integer"),
    ("seed", -1, {}, ">= 0"),
    ("seed", 1.5, {}, "an integer"),
    ("batch_size", 0, {}, "positive integer"),
    ("lr", 0.0, {}, "> 0"),
    ("lr", "fast", {}, "must be a number"),
    ("momentum", 1.0, {}, "[0, 1)"),
    ("momentum", [0.9], {}, "must be a number"),
    ("lr_step", 0, {}, "positive integer"),
    ("lr_gamma", 2, {}, "(0, 1]"),
    ("local_epochs", 0, {}, "positive integer"),
    ("partition", "nonid", {}, "valid: iid, dirichlet"),
    ("beta", 0, {}, "> 0"),
    ("n_train", 5, {}, "at least 10"),
    ("n_train", 3.5, {}, "positive integer or None"),
    ("n_train", 100, {}, "at least 200"),  # 50 participants x batches of 4
    ("n_test", 0, {}, "at least 10"),
    ("eval_every", 0, {}, "positive integer"),
    ("eval_classes", [10], {}, "class indices in 0..9"),
    ("eval_classes", [], {}, "non-empty list"),
    ("eval_classes", "4", {}, "or None for all classes"),
    ("record_updates", "some", {}, "did you mean 'source'"),
    ("aggregator", "krumm", {}, "did you mean 'krum'"),
    ("aggregator", None, {}, "valid: fedavg"),
    pytest.param(
        "aggregator_params",
        [],
        {},
        "must be a dict",
    ),
    ("defense", "pcaa", {}, "did you mean 'pca'"),
    pytest.param(
        "defense_params",
        "x",
        {},
        "must be a dict",
    ),
    ("defense_params", {"rule": "nearest"}, {"defense": "pca"}, "valid: smaller, far, direction"),
    ("attack", "labelflip", {}, "did you mean 'label_flip'"),
    ("client_state", "persistant", {}, "did you mean 'persistent'"),
    ("attack_params", "x", {}, "must be a dict"),
    ("device", "tpu", {}, "valid: auto, cpu, cuda"),
    ("precision", "fp16", {}, "valid: auto, fp32, bf16, fp64"),
    ("engine", "slow", {}, "valid: fast, reference"),
    ("warm_start", -5, {}, ">= 0 rounds"),
    ("warm_start", 2.5, {}, "number of clean rounds"),
    ("keep_model", "yes", {}, "True or False"),
]


# Nested options, checked against the extension's Params dataclass (key, value, allowed).
BAD_PARAMS = [
    ("aggregator_params", {"betta": 0.2}, {"aggregator": "trimmed_mean"}, "did you mean 'beta'"),
    ("aggregator_params", {"beta": 0.5}, {"aggregator": "trimmed_mean"}, "must be in [0, 0.5)"),
    ("aggregator_params", {"beta": "high"}, {"aggregator": "trimmed_mean"}, "must be a number"),
    ("aggregator_params", {"f": 2}, {"aggregator": "krum"}, "Krum needs k > 2f + 2 = 6"),
    ("aggregator_params", {"m": 6}, {"aggregator": "multi_krum"}, "must be in [1, k=5]"),
    ("aggregator_params", {"kappa": -1.0}, {"aggregator": "foolsgold"}, "must be > 0"),
    ("aggregator_params", {"beta": 0.1}, {"aggregator": "median"}, "takes no options"),
    ("aggregator_params", {"noise": -0.5}, {"aggregator": "flame"}, "must be in [0, inf)"),
    ("aggregator_params", {"root_size": 2}, {"aggregator": "fltrust"}, "raise root_size to at least 4"),
    ("aggregator_params", {"root_size": 150}, {"aggregator": "fltrust", "n_train": 300},
     "lower root_size to at most 100"),
    ("defense_params", {"start_rnd": 5}, {"defense": "pca"}, "did you mean 'start_round'"),
    ("defense_params", {"min_rows": 2}, {"defense": "pca"}, "at least 3 updates"),
    ("defense_params", {"min_silhouette": 2.0}, {"defense": "pca"}, "must be in [-1, 1]"),
    ("defense_params", {"mode": "ban"}, {"defense": "pca"}, "valid: block, round"),
    ("defense_params", {"start_round": 10}, {}, "defense=None"),
    ("attack_params", {"fraction": 0.0}, {"attack": "random_flip"}, "must be in (0, 1]"),
    ("attack_params", {"fractoin": 0.5}, {"attack": "random_flip"}, "did you mean 'fraction'"),
    ("attack_params", {"sources": [6, 4]}, {"attack": "many_to_one"}, "contains the target tgt=6"),
    ("attack_params", {"sources": [0, 2]}, {"attack": "many_to_one"}, "does not contain src=4"),
    ("attack_params", {"sources": [4, 12]}, {"attack": "many_to_one"}, "class index in 0..9"),
    ("attack_params", {"fraction": 0.5}, {}, "this one takes no options"),
    ("attack_params", {"size": 28}, {"attack": "backdoor"}, "lower size or margin"),
    ("attack_params", {"corner": "bottom"}, {"attack": "backdoor"}, "valid: bottom_right"),
    ("attack_params", {"strength": 1.5}, {"attack": "adaptive_flip"}, "must be in [0, 1]"),
    ("attack_params", {"every": 0}, {"attack": "adaptive_flip"}, "must be in [1, inf)"),
    ("n_train", 70000, {}, "has only 60000 images"),
    ("n_test", 20000, {"dataset": "cifar10"}, "has only 10000 images"),
]


@pytest.mark.parametrize("field, value, extra, allowed", BAD_PARAMS)
def test_bad_nested_option(field, value, extra, allowed, tmp_path):
    """Config, sweep grids and run() reject the option before any work (nothing stored)."""
    with pytest.raises(ConfigError) as ei:
        Config(**{**extra, field: value})
    msg = str(ei.value)
    assert allowed in msg and field in msg, msg
    if isinstance(value, dict):
        key, v = next(iter(value.items()))
        assert key in msg, msg  # names the key
    with pytest.raises(ConfigError, match="grid point"):
        S.expand({**extra, field: [value]})
    with pytest.raises(ConfigError):
        run({**extra, field: value}, store=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_battery_covers_every_field():
    covered = {c.values[0] if hasattr(c, "values") else c[0] for c in BAD_FIELDS}
    assert covered == set(Config.field_names())


@pytest.mark.parametrize("field, value, extra, allowed", BAD_FIELDS)
def test_bad_config_field(field, value, extra, allowed):
    with pytest.raises(ConfigError) as ei:
        Config(**{**extra, field: value})
    msg = str(ei.value)
    assert f"{field}={value!r}" in msg or f"{field}={value}" in msg or (  # names the value
        isinstance(value, dict) and all(f"{k}={v!r}" in msg for k, v in value.items())), msg
    assert allowed in msg, msg  # and says what is allowed
    # the same error, unchanged, through a sweep grid (naming the grid point) and run()
    with pytest.raises(ConfigError, match="grid point") as ei2:
        S.expand({**extra, field: [value]})
    assert f"{field}=" in str(ei2.value) and allowed in str(ei2.value)
    with pytest.raises(ConfigError):
        run({**extra, field: value}, store=None, progress=False)


def test_bad_config_on_the_command_line(capsys):
    code, err = main(["run", "--m", "1.5", "--no-store"], capsys)
    assert code == 2 and "m=1.5" in err and "did you mean 0.015" in err
    code, err = main(["run", "--strategy", "lat", "--no-store"], capsys)
    assert code == 2 and "strategy='lat'" in err and "did you mean 'late'" in err


CLI_BAD = [
    (["--aggregator", "trimmed_mean", "--aggregator-params", "{betta: 0.2}"], "did you mean 'beta'"),
    (["--set", "aggregator=trimmed_mean", "--set", "aggregator_params={beta: 0.5}"], "[0, 0.5)"),
    (["--attack", "random_flp"], "did you mean 'random_flip'"),
    (["--attack", "many_to_one", "--attack-params", "{sources: [6]}"], "contains the target"),
    (["--defense", "pca", "--defense-params", "{rule: nearest}"], "rule='nearest'"),
    (["--n-train", "100000"], "has only 60000 images"),
    (["--set", "roundz=3"], "did you mean 'rounds'"),
    (["--set", "rounds"], "give KEY=VALUE"),
    (["--rounds", "[1"], "not a valid YAML value"),
    (["--rounds", "2.5"], "rounds=2.5"),
    (["missing-config.yaml"], "no such config file"),
]


@pytest.mark.parametrize("args, pattern", CLI_BAD)
def test_command_line_rejects_before_any_work(args, pattern, tmp_path, capsys):
    """Exit 2, one line on stderr (no traceback), nothing stored, no data loaded."""
    results = tmp_path / "r"
    code, err = main(["run", *args, "--results", str(results)], capsys)
    assert code == 2, err
    assert pattern in err and "Traceback" not in err and err.count("\n") == 1, err
    assert not results.exists()


def test_command_line_config_file(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("aggregator: trimmed_mean\naggregator_params: {betta: 0.2}\n")
    code, err = main(["run", str(p), "--no-store"], capsys)
    assert code == 2 and "did you mean 'beta'" in err
    p.write_text("- m\n")
    code, err = main(["run", str(p), "--no-store"], capsys)
    assert code == 2 and "a config file is a mapping" in err
    p.write_text("roudns: 3\n")
    code, err = main(["run", str(p), "--no-store"], capsys)
    assert code == 2 and "did you mean 'rounds'" in err


# ------------------------------------------------------------------------------------------
# unknown keys, empty grids
# ------------------------------------------------------------------------------------------


def test_unknown_key_in_params_and_grids(tmp_path, capsys):
    # a params dict (what a params YAML becomes)
    with pytest.raises(ConfigError, match=r"'roudns'.*did you mean 'rounds'"):
        run({"roudns": 3}, store=None, progress=False)
    # sweep grids: top level, base:, zip:
    for grid, bad, close in [
        ({"mm": [0.1]}, "mm", "m"),
        ({"base": {"datset": "fmnist"}, "m": [0.1]}, "datset", "dataset"),
        ({"zip": {"src": [4], "tgtt": [6]}}, "tgtt", "tgt"),
        ({"bas": {"rounds": 2}}, "bas", "base"),
    ]:
        with pytest.raises(ConfigError, match=rf"unknown key '{bad}'.*did you mean '{close}'"):
            S.expand(grid)
    p = tmp_path / "grid.yaml"
    p.write_text("base:\n  rounds: 2\nlrr: [0.1, 0.01]\n")
    code, err = main(["sweep", str(p), "--results", str(tmp_path / "r")], capsys)
    assert code == 2 and "unknown key 'lrr'" in err and "did you mean 'lr'" in err
    assert not (tmp_path / "r").exists()


def test_typo_in_nested_options_of_a_sweep_grid_stops_before_training(tmp_path, capsys):
    """The trimmed-mean `betta` typo used to train and die in round 1 with a TypeError."""
    p = tmp_path / "grid.yaml"
    p.write_text("aggregator: trimmed_mean\nm: [0.1, 0.2]\naggregator_params: {betta: 0.2}\nrounds: 2\n")
    code, err = main(["sweep", str(p), "--results", str(tmp_path / "r"), "--quiet"], capsys)
    assert code == 2 and "did you mean 'beta'" in err and "grid point" in err
    assert "Traceback" not in err and "TypeError" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "grid, pattern",
    [
        ({}, "the grid is empty"),
        ({"m": []}, r"m=\[\] is an empty list"),
        ({"base": {"rounds": 2}}, None),  # a base alone is one configuration: allowed
        ({"zip": {"src": [4, 6], "tgt": [6]}}, "equal lengths"),
        ({"zip": {"src": 4}}, "must be a list"),
        ({"base": {"m": 0.1}, "m": [0.2]}, "both in base"),
        ([], "list is empty"),
        ("not-a-file.yaml", "not found"),
    ],
)
def test_empty_and_malformed_grids(grid, pattern, tmp_path):
    if pattern is None:
        assert len(S.expand(grid)) == 1
        return
    with pytest.raises(ConfigError, match=pattern):
        S.sweep(grid, store=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()  # nothing created before the grid is valid


def test_empty_or_broken_grid_file_on_the_command_line(tmp_path, capsys):
    for text, pattern in [("", "is empty"), ("# only a comment\n", "is empty"),
                          ("m: [0.1\n", "not valid YAML"), ("- m\n", "mapping")]:  # fmt: skip
        p = tmp_path / "g.yaml"
        p.write_text(text)
        code, err = main(["sweep", str(p)], capsys)
        assert code == 2 and pattern in err, err
    code, err = main(["sweep", str(tmp_path / "missing.yaml")], capsys)
    assert code == 2 and "missing.yaml not found" in err


def test_command_line_exit_code_in_a_real_process(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text("m: [0.1, 1.5]\n")
    out = subprocess.run([sys.executable, "-m", "flcore", "sweep", str(p)], cwd=tmp_path,
                         env=env(), capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "m=1.5" in out.stderr and "[0, 1]" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------------------------------
# datasets: damaged, malicious, missing
# ------------------------------------------------------------------------------------------


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """No dataset anywhere, no network, an empty in-memory cache."""
    monkeypatch.delenv("FLCORE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(D, "FMNIST_WELL_KNOWN", [str(tmp_path / "nowhere-fmnist")])
    monkeypatch.setattr(D, "CIFAR_WELL_KNOWN", [str(tmp_path / "nowhere-cifar")])

    def offline(url, dest, progress):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(D, "_download_file", offline)
    D.clear_cache()
    yield
    D.clear_cache()


SMALL = {"dataset": "fmnist", "num_participants": 10, "k": 2, "rounds": 1}


@pytest.mark.parametrize("case", ["truncated_gz", "short_payload", "magic", "counts"])
def test_damaged_fashion_mnist_through_sweep(tmp_path, no_data, case):
    root = tmp_path / "data"
    root.mkdir()
    bad_file, pattern = corrupt_case(root, case)
    results = tmp_path / "results"
    with pytest.raises(DatasetFormatError, match=pattern) as ei:
        S.sweep(SMALL, store=results, progress=False, data_root=root)
    assert bad_file.name in str(ei.value)
    assert Store(results).keys() == []


def test_damaged_dataset_on_the_command_line(tmp_path, no_data, capsys):
    root = tmp_path / "data"
    root.mkdir()
    corrupt_case(root, "magic")
    grid = tmp_path / "g.yaml"
    grid.write_text("dataset: fmnist\nnum_participants: 10\nk: 2\nrounds: 1\n")
    code, err = main(["sweep", str(grid), "--data-root", str(root), "--results",
                      str(tmp_path / "r"), "--quiet"], capsys)  # fmt: skip
    assert code == 2 and "magic" in err and "train-images-idx3-ubyte.gz" in err


def test_cifar_pickle_with_foreign_global_is_refused(tmp_path, no_data):
    _, target = make_evil_cifar(tmp_path, EvilSystem, 2)
    results = tmp_path / "results"
    cfg = {"dataset": "cifar10", "num_participants": 10, "k": 2, "rounds": 1}
    with pytest.raises(DatasetFormatError, match="refusing to load.*system") as ei:
        S.sweep(cfg, store=results, progress=False, data_root=tmp_path / "src")
    assert "data_batch_2" in str(ei.value)
    assert not target.exists(), "the pickle's payload was executed"
    assert Store(results).keys() == []


def test_flcore_data_adds_places_and_keeps_the_well_known_ones(tmp_path, monkeypatch):
    """FLCORE_DATA is searched first; the well-known places are still searched after it."""
    root = tmp_path / "wk"
    root.mkdir()
    make_fmnist(root)
    monkeypatch.setattr(D, "FMNIST_WELL_KNOWN", [str(root)])
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("FLCORE_DATA", str(empty))
    D.clear_cache()
    try:
        assert str(root) in D.load_dataset("fmnist", download=False, progress=False).source
        # and a copy in FLCORE_DATA wins over the well-known one
        first = tmp_path / "first"
        first.mkdir()
        make_fmnist(first)
        monkeypatch.setenv("FLCORE_DATA", os.pathsep.join([str(empty), str(first)]))
        assert str(first) in D.load_dataset("fmnist", download=False, progress=False).source
    finally:
        D.clear_cache()


def test_missing_dataset_lists_where_it_looked(tmp_path, no_data, capsys):
    results = tmp_path / "results"
    with pytest.raises(DatasetNotFoundError) as ei:
        S.sweep(SMALL, store=results, progress=False)
    msg = str(ei.value)
    assert str(tmp_path / "nowhere-fmnist") in msg and str(tmp_path / "xdg-cache") in msg
    assert "FLCORE_DATA" in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "network disabled" in msg
    assert Store(results).keys() == []
    # a --data-root that holds nothing
    empty = tmp_path / "empty"
    empty.mkdir()
    grid = tmp_path / "g.yaml"
    grid.write_text("dataset: fmnist\nnum_participants: 10\nk: 2\nrounds: 1\n")
    code, err = main(["sweep", str(grid), "--data-root", str(empty), "--results", str(results),
                      "--quiet"], capsys)  # fmt: skip
    assert code == 2 and str(empty) in err and "not found" in err


def test_small_fake_dataset_runs(tmp_path, no_data):
    """Control for the cases above: the same path with an intact (tiny) copy works."""
    make_fmnist(tmp_path / "ok", n_train=40, n_test=10)
    df = S.sweep(SMALL, store=tmp_path / "r", progress=False, data_root=tmp_path / "ok")
    assert len(df) == 1


# ------------------------------------------------------------------------------------------
# results directory: not writable, full
# ------------------------------------------------------------------------------------------


def _mount_tmpfs(path: Path, opts: str) -> bool:
    if not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount")):
        return False
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                       capture_output=True, check=False)  # fmt: skip
    return r.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True, check=False)


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory this process cannot write: chmod for users, a read-only tmpfs for root."""
    d = tmp_path / "ro"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        d.mkdir()
        d.chmod(0o500)
        yield d
        d.chmod(0o700)
    elif _mount_tmpfs(d, "ro,size=1m"):
        yield d
        _umount(d)
    else:
        pytest.skip("running as root without mount: permission bits cannot be enforced")


@pytest.mark.parametrize("where", ["read-only", "under-a-file"])
def test_results_dir_not_writable(tmp_path, where, request, capsys):
    if where == "read-only":
        results = request.getfixturevalue("read_only_dir")
    else:
        (tmp_path / "file").write_text("x")
        results = tmp_path / "file" / "results"
    grid = tmp_path / "g.yaml"
    grid.write_text("m: [0.0, 0.1]\nrounds: 1\n")
    code, err = main(["sweep", str(grid), "--results", str(results), "--quiet"], capsys)
    assert code == 2 and str(results) in err, err
    assert "writable" in err or "not a directory" in err
    if results.exists():
        assert os.listdir(results) == []  # nothing half-written
    with pytest.raises(StoreError):
        run({**TINY}, store=results, progress=False)


@needs_fmnist
def test_results_dir_full_simulated(tmp_path, monkeypatch):
    def full(path, arrays):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(store, "_write_arrays", full)
    results = tmp_path / "results"
    with pytest.raises(StoreError, match="No space left on device.*Nothing was stored"):
        S.sweep(TINY, store=results, progress=False)
    assert os.listdir(results) == []


@needs_fmnist
def test_results_dir_really_full(tmp_path):
    results = tmp_path / "full"
    if not _mount_tmpfs(results, "size=256k"):
        pytest.skip("needs root and mount for a real size-limited file system")
    try:
        filler = results / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
        finally:
            os.close(fd)
        with open(filler, "r+b") as f:  # leave two pages: room for the store's probe, not an entry
            f.truncate(max(0, filler.stat().st_size - 8192))
        # the store's probe fits, so the run trains and fails writing its entry
        with pytest.raises(StoreError, match="No space left on device while writing entry"):
            S.sweep(TINY, store=results, progress=False)
        assert os.listdir(results) == ["filler"]  # no entry, no temporary directory
    finally:
        _umount(results)
