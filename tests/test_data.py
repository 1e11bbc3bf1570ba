"""Tests for flcore.data: loaders (on small files made here), tensor helpers, partitions."""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flcore.data import (
    CIFAR10_CLASSES,
    Dataset,
    DatasetFormatError,
    DatasetNotFoundError,
    augment_crop_flip,
    load_dataset,
    normalize,
    partition_dirichlet,
    partition_iid,
)
from flcore.data import loading as D

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")
REAL_CIFAR_JPEG = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
_REAL_XDG = os.environ.get("XDG_CACHE_HOME")

# Tiny data sets trigger a "holds N items; the official file holds M" warning by design.
pytestmark = pytest.mark.filterwarnings("ignore:.*official.*:UserWarning")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No well-known places, no FLCORE_DATA, a private cache dir and an empty in-memory cache."""
    monkeypatch.delenv("FLCORE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(D, "FMNIST_WELL_KNOWN", [str(tmp_path / "nowhere-fmnist")])
    monkeypatch.setattr(D, "CIFAR_WELL_KNOWN", [str(tmp_path / "nowhere-cifar")])
    D.clear_cache()
    yield
    D.clear_cache()


# ------------------------------------------------------------------------------------------
# Fashion-MNIST IDX
# ------------------------------------------------------------------------------------------


def idx_bytes(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return head + payload


def write(path: Path, raw: bytes, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def make_fmnist(d: Path, n_train=20, n_test=10, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    xs, ys = {}, {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        write(d / f"{prefix}-images-idx3-ubyte", idx_bytes(2051, (n, 28, 28), x.tobytes()), gz)
        write(d / f"{prefix}-labels-idx1-ubyte", idx_bytes(2049, (n,), y.tobytes()), gz)
        xs[prefix], ys[prefix] = x, y
    return xs, ys


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("subdir", [False, True])
def test_fmnist_tiny_idx(tmp_path, gz, subdir):
    root = tmp_path / "data"
    xs, ys = make_fmnist(root / "fashion-mnist" if subdir else root, gz=gz)
    ds = load_dataset("fmnist", root=root, download=False)
    assert isinstance(ds, Dataset) and ds.name == "fmnist"
    assert ds.x_train.dtype == torch.uint8 and ds.x_train.shape == (20, 1, 28, 28)
    assert ds.x_test.shape == (10, 1, 28, 28)
    assert ds.y_train.dtype == torch.int64 and ds.y_test.dtype == torch.int64
    assert np.array_equal(ds.x_train[:, 0].numpy(), xs["train"])
    assert np.array_equal(ds.x_test[:, 0].numpy(), xs["t10k"])
    assert np.array_equal(ds.y_train.numpy(), ys["train"])
    assert ds.classes[0] == "t-shirt/top" and len(ds.classes) == 10
    assert ds.mean == (0.0,) and ds.std == (1.0,)
    assert str(root) in ds.source and "IDX" in ds.source


def test_fmnist_from_env_var_and_count_warning(tmp_path, monkeypatch):
    make_fmnist(tmp_path / "env")
    monkeypatch.setenv("FLCORE_DATA", str(tmp_path / "env"))
    with pytest.warns(UserWarning, match="official"):
        ds = load_dataset("fmnist", download=False)
    assert len(ds.y_train) == 20


def test_fmnist_in_memory_cache(tmp_path):
    make_fmnist(tmp_path)
    a = load_dataset("fmnist", root=tmp_path, download=False)
    b = load_dataset("fmnist", root=tmp_path, download=False)
    assert b.x_train is a.x_train  # same tensors, no second read


def corrupt_case(tmp_path, case):
    make_fmnist(tmp_path, gz=True)
    img = tmp_path / "train-images-idx3-ubyte.gz"
    lab = tmp_path / "train-labels-idx1-ubyte.gz"
    if case == "magic":
        raw = gzip.decompress(img.read_bytes())
        img.write_bytes(gzip.compress((2049).to_bytes(4, "big") + raw[4:]))
        return img, "magic"
    if case == "counts":
        y = (np.arange(19) % 10).astype(np.uint8)
        lab.write_bytes(gzip.compress(idx_bytes(2049, (19,), y.tobytes())))
        return lab, "20 images but .* 19 labels"
    if case == "truncated_gz":
        blob = img.read_bytes()
        img.write_bytes(blob[: len(blob) - 40])
        return img, "truncated or corrupted"
    if case == "bad_gzip":
        img.write_bytes(b"this is not gzip data at all")
        return img, "gzip"
    if case == "short_payload":
        raw = gzip.decompress(img.read_bytes())
        img.write_bytes(gzip.compress(raw[:-28]))
        return img, "truncated"
    if case == "long_payload":
        raw = gzip.decompress(img.read_bytes())
        img.write_bytes(gzip.compress(raw + b"\0" * 5))
        return img, "corrupted"
    if case == "dims":
        img.write_bytes(gzip.compress(idx_bytes(2051, (20, 27, 28), bytes(20 * 27 * 28))))
        return img, "27x28"
    if case == "labels_range":
        y = (np.arange(20) % 10).astype(np.uint8)
        y[7] = 10
        lab.write_bytes(gzip.compress(idx_bytes(2049, (20,), y.tobytes())))
        return lab, "label 10 at position 7"
    if case == "header":
        img.write_bytes(gzip.compress(b"\0\0\x08"))
        return img, "header"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    ["magic", "counts", "truncated_gz", "bad_gzip", "short_payload", "long_payload", "dims",
     "labels_range", "header"],
)
def test_fmnist_damaged_files_raise(tmp_path, case):
    bad_file, pattern = corrupt_case(tmp_path, case)
    with pytest.raises(DatasetFormatError, match=pattern) as ei:
        load_dataset("fmnist", root=tmp_path, download=False)
    assert bad_file.name in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_fmnist_raw_truncated(tmp_path):
    make_fmnist(tmp_path, gz=False)
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(DatasetFormatError, match="t10k-images-idx3-ubyte.*truncated"):
        load_dataset("fmnist", root=tmp_path, download=False)


def test_fmnist_not_found_lists_places(tmp_path):
    with pytest.raises(DatasetNotFoundError) as ei:
        load_dataset("fmnist", download=False)
    msg = str(ei.value)
    assert isinstance(ei.value, FileNotFoundError)
    assert str(tmp_path / "nowhere-fmnist") in msg
    assert str(tmp_path / "xdg-cache" / "flcore") in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "FLCORE_DATA" in msg and "root=" in msg


def test_fmnist_incomplete_dir_reported(tmp_path):
    make_fmnist(tmp_path / "d")
    (tmp_path / "d" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match="missing t10k-labels-idx1-ubyte"):
        load_dataset("fmnist", root=tmp_path / "d", download=False)


def test_download_failure_is_reported(tmp_path, monkeypatch):
    def boom(url, dest, progress):
        raise OSError("network unreachable")

    monkeypatch.setattr(D, "_download_file", boom)
    with pytest.raises(DatasetNotFoundError, match="network unreachable"):
        load_dataset("cifar10", download=True, progress=False)


def test_download_goes_to_cache_and_is_used(tmp_path, monkeypatch):
    src = tmp_path / "upstream"
    make_fmnist(src)
    calls = []

    def fake(url, dest, progress):
        calls.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((src / url.rsplit("/", 1)[-1]).read_bytes())

    monkeypatch.setattr(D, "_download_file", fake)
    ds = load_dataset("fmnist", download=True, progress=False)
    assert len(calls) == 4 and len(ds.y_train) == 20
    assert str(tmp_path / "xdg-cache" / "flcore" / "fashion-mnist") in ds.source
    D.clear_cache()
    load_dataset("fmnist", download=True, progress=False)
    assert len(calls) == 4  # found in the cache, not downloaded again


# ------------------------------------------------------------------------------------------
# Atomic writes (decode cache and downloads)
# ------------------------------------------------------------------------------------------


class _Boom(Exception):
    pass


def test_atomic_write_success_leaves_only_the_destination(tmp_path):
    dest = tmp_path / "sub" / "file.bin"  # the directory is created on demand
    with D._atomic_write(dest) as f:
        f.write(b"hello ")
        f.write(b"world")
        assert not dest.exists()  # nothing at the destination until the block ends
    assert dest.read_bytes() == b"hello world"
    assert sorted(os.listdir(dest.parent)) == ["file.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would, not mkstemp's 0600


@pytest.mark.parametrize("exc", [_Boom, KeyboardInterrupt])
def test_atomic_write_failure_leaves_nothing(tmp_path, exc):
    dest = tmp_path / "file.bin"
    with pytest.raises(exc), D._atomic_write(dest) as f:
        f.write(b"partial")
        assert len(os.listdir(tmp_path)) == 1  # the temporary file exists meanwhile
        raise exc("stop")
    assert os.listdir(tmp_path) == []


def test_atomic_write_failure_keeps_the_old_destination(tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"old")
    with pytest.raises(_Boom, match="stop"), D._atomic_write(dest, suffix=".part") as f:
        f.write(b"new but incomplete")
        raise _Boom("stop")
    assert dest.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file.bin"]


def test_download_file_is_atomic(tmp_path):
    src = tmp_path / "upstream.bin"
    src.write_bytes(bytes(range(256)) * 1000)
    dest = tmp_path / "dl" / "got.bin"
    D._download_file(src.as_uri(), dest, progress=False)
    assert dest.read_bytes() == src.read_bytes()
    assert os.listdir(dest.parent) == ["got.bin"]
    with pytest.raises(OSError):  # urllib's URLError is an OSError
        D._download_file((tmp_path / "missing.bin").as_uri(), tmp_path / "dl" / "x.bin", False)
    assert os.listdir(dest.parent) == ["got.bin"]


def test_npz_cache_write_failure_warns_and_leaves_nothing(tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(D.np, "savez", full)
    cpath = tmp_path / "cache" / "c.npz"
    with pytest.warns(UserWarning, match="could not write the decode cache .*No space left"):
        D._write_npz_atomic(cpath, key="k", fmt="PNG", arrays=[np.zeros(1)] * 4)
    assert os.listdir(cpath.parent) == []


# ------------------------------------------------------------------------------------------
# CIFAR-10 python version
# ------------------------------------------------------------------------------------------


def cifar_batch(n, seed, label_offset=0):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int((i + label_offset) % 10) for i in range(n)]
    return {
        b"batch_label": b"training batch",
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)],
    }


def make_cifar_py(d: Path, n=6):
    d.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        b = cifar_batch(n, seed=i, label_offset=i)
        batches[name] = b
        (d / name).write_bytes(pickle.dumps(b, protocol=2))
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": []}, protocol=2))
    return batches


def check_cifar_py(ds, batches, n=6):
    xtr = np.concatenate([batches[f"data_batch_{k}"][b"data"] for k in range(1, 6)])
    ytr = [y for k in range(1, 6) for y in batches[f"data_batch_{k}"][b"labels"]]
    assert ds.name == "cifar10" and ds.classes == CIFAR10_CLASSES
    assert ds.x_train.shape == (5 * n, 3, 32, 32) and ds.x_train.dtype == torch.uint8
    assert ds.x_test.shape == (n, 3, 32, 32)
    assert np.array_equal(ds.x_train.reshape(5 * n, -1).numpy(), xtr)
    # official layout: 1024 red, then 1024 green, then 1024 blue values, row-major 32x32
    assert int(ds.x_train[0, 1, 0, 5]) == int(xtr[0, 1024 + 5])
    assert ds.y_train.tolist() == ytr and ds.y_train.dtype == torch.int64
    assert ds.y_test.tolist() == batches["test_batch"][b"labels"]
    assert ds.mean == (0.485, 0.456, 0.406) and ds.std == (0.229, 0.224, 0.225)


def test_cifar_py_dir(tmp_path):
    batches = make_cifar_py(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", root=tmp_path, download=False)
    check_cifar_py(ds, batches)
    assert "python version" in ds.source
    # the batches dir itself also works as root
    D.clear_cache()
    check_cifar_py(load_dataset("cifar10", root=tmp_path / "cifar-10-batches-py",
                                download=False), batches)


def make_tar(src_dir: Path, arcroot: str, out: Path, mode="w:gz"):
    with tarfile.open(out, mode) as tf:
        tf.add(src_dir, arcname=arcroot)
    return out


def test_cifar_py_tar_gz(tmp_path):
    batches = make_cifar_py(tmp_path / "src" / "cifar-10-batches-py")
    root = tmp_path / "root"
    root.mkdir()
    make_tar(tmp_path / "src" / "cifar-10-batches-py", "cifar-10-batches-py",
             root / "cifar-10-python.tar.gz")
    ds = load_dataset("cifar10", root=root, download=False)
    check_cifar_py(ds, batches)
    assert "cifar-10-python.tar.gz" in ds.source
    assert not (root / "cifar-10-batches-py").exists()  # read in place, nothing extracted


_RECONSTRUCT = np.zeros(1).__reduce__()[0]


class Py2StyleArray:
    """Pickles like a numpy array written by Python 2: the raw data is a (latin-1) str."""

    def __init__(self, a):
        self.a = a

    def __reduce__(self):
        state = (1, self.a.shape, self.a.dtype, False, self.a.tobytes().decode("latin1"))
        return (_RECONSTRUCT, (np.ndarray, (0,), "b"), state)


def test_cifar_py2_style_batches(tmp_path):
    """The official files come from Python 2: str keys, array payload as a str."""
    d = tmp_path / "cifar-10-batches-py"
    batches = make_cifar_py(d)
    for name, b in batches.items():
        py2 = {k.decode(): v for k, v in b.items()}
        py2["data"] = Py2StyleArray(b[b"data"])
        py2["batch_label"] = b[b"batch_label"].decode()
        (d / name).write_bytes(pickle.dumps(py2, protocol=2))
    check_cifar_py(load_dataset("cifar10", root=tmp_path, download=False), batches)


def test_cifar_found_via_well_known_place(tmp_path, monkeypatch):
    batches = make_cifar_py(tmp_path / "wk" / "cifar-10-batches-py")
    monkeypatch.setattr(D, "CIFAR_WELL_KNOWN", [str(tmp_path / "missing"), str(tmp_path / "wk")])
    check_cifar_py(load_dataset("cifar10", download=False), batches)


class EvilSystem:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


class EvilExec:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({str(self.target)!r}, 'w').write('pwned')",))


def make_evil_cifar(tmp_path, evil_cls, batch: int) -> tuple:
    """A CIFAR-10 python folder under tmp_path/src whose data_batch_<batch> is a pickle that
    would run `evil_cls`'s payload (writing tmp_path/pwned.txt). Returns (folder, target)."""
    target = tmp_path / "pwned.txt"
    d = tmp_path / "src" / "cifar-10-batches-py"
    make_cifar_py(d)
    bad = cifar_batch(6, 0)
    bad[b"data"] = evil_cls(target)
    (d / f"data_batch_{batch}").write_bytes(pickle.dumps(bad, protocol=2))
    return d, target


@pytest.mark.parametrize("evil_cls,global_name", [(EvilSystem, "system"), (EvilExec, "exec")])
@pytest.mark.parametrize("as_tar", [False, True])
def test_cifar_malicious_pickle_refused(tmp_path, evil_cls, global_name, as_tar):
    d, target = make_evil_cifar(tmp_path, evil_cls, 3)
    if as_tar:
        root = tmp_path / "root"
        root.mkdir()
        make_tar(d, "cifar-10-batches-py", root / "cifar-10-python.tar.gz")
    else:
        root = tmp_path / "src"
    with pytest.raises(DatasetFormatError) as ei:
        load_dataset("cifar10", root=root, download=False)
    msg = str(ei.value)
    assert "refusing to load" in msg and global_name in msg and "data_batch_3" in msg
    assert "not a genuine CIFAR-10 batch" in msg
    assert not target.exists(), "the pickle's payload was executed"


def test_cifar_truncated_pickle(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    make_cifar_py(d)
    p = d / "test_batch"
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(DatasetFormatError, match="test_batch"):
        load_dataset("cifar10", root=tmp_path, download=False)


def test_cifar_bad_batch_contents(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    make_cifar_py(d)
    b = cifar_batch(6, 1)
    b[b"labels"][2] = 11
    (d / "data_batch_2").write_bytes(pickle.dumps(b, protocol=2))
    with pytest.raises(DatasetFormatError, match="data_batch_2.*labels outside"):
        load_dataset("cifar10", root=tmp_path, download=False)
    D.clear_cache()
    b = cifar_batch(6, 1)
    b[b"data"] = b[b"data"][:, :100]
    (d / "data_batch_2").write_bytes(pickle.dumps(b, protocol=2))
    with pytest.raises(DatasetFormatError, match=r"uint8 array \[n, 3072\]"):
        load_dataset("cifar10", root=tmp_path, download=False)


def test_cifar_not_found_lists_places(tmp_path):
    with pytest.raises(DatasetNotFoundError) as ei:
        load_dataset("cifar10", download=False)
    msg = str(ei.value)
    assert str(tmp_path / "nowhere-cifar") in msg
    assert "cifar-10-python.tar.gz" in msg and "FLCORE_DATA" in msg
    assert "download=False" in msg


# ------------------------------------------------------------------------------------------
# CIFAR-10 image folders
# ------------------------------------------------------------------------------------------


def make_image_tree(root: Path, ext=".png", per_class=(2, 1), seed=0):
    """train/test/<class>/NNNN<ext>; returns {(split, class, fname): array HWC}."""
    rng = np.random.default_rng(seed)
    made = {}
    for split, n in zip(("train", "test"), per_class):
        for ci, cls in enumerate(CIFAR10_CLASSES):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                if ext == ".png":
                    arr = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                else:  # flat colour survives JPEG almost exactly
                    arr = np.full((32, 32, 3), (ci * 20, 255 - ci * 20, k * 50), dtype=np.uint8)
                fname = f"{k:04d}{ext}"
                Image.fromarray(arr).save(d / fname, quality=95)
                made[(split, ci, fname)] = arr
    return made


def check_tree(ds, made, per_class=(2, 1), atol=0):
    assert ds.x_train.shape == (10 * per_class[0], 3, 32, 32)
    assert ds.x_test.shape == (10 * per_class[1], 3, 32, 32)
    assert ds.y_train.tolist() == [c for c in range(10) for _ in range(per_class[0])]
    assert ds.y_test.tolist() == [c for c in range(10) for _ in range(per_class[1])]
    for split, x in (("train", ds.x_train), ("test", ds.x_test)):
        keys = sorted((k for k in made if k[0] == split), key=lambda k: (k[1], k[2]))
        for i, k in enumerate(keys):
            got = x[i].permute(1, 2, 0).numpy().astype(int)
            assert np.abs(got - made[k].astype(int)).max() <= atol, k


def test_image_folder_dir_and_npz_cache(tmp_path, monkeypatch):
    made = make_image_tree(tmp_path / "imgs")
    ds = load_dataset("cifar10", root=tmp_path / "imgs", download=False, progress=False)
    check_tree(ds, made)
    assert "PNG" in ds.source and "image-folder" in ds.source
    caches = list((tmp_path / "xdg-cache" / "flcore").glob("*.npz"))
    assert len(caches) == 1
    # second load (new process simulated): must come from the .npz, no image decoding
    D.clear_cache()

    def no_decode(*a, **k):
        raise AssertionError("decoded again although a cache exists")

    monkeypatch.setattr(D, "_decode", no_decode)
    check_tree(load_dataset("cifar10", root=tmp_path / "imgs", download=False), made)
    # a broken cache is rebuilt
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    caches[0].write_bytes(b"garbage")
    D.clear_cache()
    with pytest.warns(UserWarning, match="broken decode cache"):
        ds = load_dataset("cifar10", root=tmp_path / "imgs", download=False, progress=False)
    check_tree(ds, made)
    with np.load(caches[0]) as z:
        assert z["x_train"].shape == (20, 3, 32, 32)


def test_image_folder_dir_change_invalidates_cache(tmp_path):
    made = make_image_tree(tmp_path / "imgs")
    load_dataset("cifar10", root=tmp_path / "imgs", download=False, progress=False)
    extra = np.zeros((32, 32, 3), np.uint8)
    Image.fromarray(extra).save(tmp_path / "imgs" / "train" / "cat" / "0099.png")
    made[("train", 3, "0099.png")] = extra
    D.clear_cache()
    ds = load_dataset("cifar10", root=tmp_path / "imgs", download=False, progress=False)
    assert len(ds.y_train) == 21 and int((ds.y_train == 3).sum()) == 3


@pytest.mark.parametrize("mode,suffix", [("w:gz", ".tar.gz"), ("w", ".tar")])
def test_image_folder_tar_jpg(tmp_path, mode, suffix):
    made = make_image_tree(tmp_path / "src" / "cifar-jpg", ext=".jpg")
    root = tmp_path / "root"
    root.mkdir()
    archive = make_tar(tmp_path / "src" / "cifar-jpg", "CIFAR-10-images", root / f"cifar10{suffix}",
                       mode)
    ds = load_dataset("cifar10", root=root, download=False, progress=False)
    check_tree(ds, made, atol=4)
    assert "CIFAR-10 from the JPEG copy" in ds.source and str(archive) in ds.source
    # the archive file itself also works as root, and now comes from the cache
    D.clear_cache()
    ds2 = load_dataset("cifar10", root=archive, download=False, progress=False)
    assert torch.equal(ds2.x_train, ds.x_train)
    assert len(list((tmp_path / "xdg-cache" / "flcore").glob("*.npz"))) == 1


def test_image_folder_foreign_class(tmp_path):
    make_image_tree(tmp_path / "imgs")
    (tmp_path / "imgs" / "train" / "unicorn").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(
        tmp_path / "imgs" / "train" / "unicorn" / "0.png")
    with pytest.raises(DatasetFormatError, match="unicorn"):
        load_dataset("cifar10", root=tmp_path / "imgs", download=False, progress=False)


def test_image_folder_missing_class(tmp_path):
    make_image_tree(tmp_path / "imgs")
    for f in (tmp_path / "imgs" / "test" / "ship").iterdir():
        f.unlink()
    with pytest.raises(DatasetFormatError, match="test/ lacks the class folder.*ship"):
        load_dataset("cifar10", root=tmp_path / "imgs", download=False, progress=False)


def test_image_folder_bad_images(tmp_path):
    make_image_tree(tmp_path / "imgs")
    Image.fromarray(np.zeros((31, 32, 3), np.uint8)).save(
        tmp_path / "imgs" / "train" / "dog" / "0000.png")
    with pytest.raises(DatasetFormatError, match=r"dog/0000.png: image is 32x31"):
        load_dataset("cifar10", root=tmp_path / "imgs", download=False, progress=False)
    D.clear_cache()
    (tmp_path / "imgs" / "train" / "dog" / "0000.png").write_bytes(b"not an image")
    with pytest.raises(DatasetFormatError, match=r"dog/0000.png: cannot be decoded"):
        load_dataset("cifar10", root=tmp_path / "imgs", download=False, progress=False)


def test_image_folder_grey_png_becomes_rgb(tmp_path):
    make_image_tree(tmp_path / "imgs")
    grey = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    Image.fromarray(grey, mode="L").save(tmp_path / "imgs" / "test" / "frog" / "0000.png")
    ds = load_dataset("cifar10", root=tmp_path / "imgs", download=False, progress=False)
    i = CIFAR10_CLASSES.index("frog")
    img = ds.x_test[i]
    assert torch.equal(img[0], img[2]) and np.array_equal(img[1].numpy(), grey)


# ------------------------------------------------------------------------------------------
# Dataset.subset
# ------------------------------------------------------------------------------------------


def encode_ids(n):
    """Images whose first two pixels spell the sample index (low byte, high byte)."""
    x = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    i = torch.arange(n)
    x[:, 0, 0, 0] = (i % 256).to(torch.uint8)
    x[:, 0, 0, 1] = (i // 256).to(torch.uint8)
    return x


def synthetic(n_train=1000, n_test=200, weights=None):
    g = torch.Generator().manual_seed(0)
    if weights is None:
        ytr = torch.arange(n_train) % 10
    else:
        ytr = torch.multinomial(torch.tensor(weights, dtype=torch.float), n_train, True,
                                generator=g)
    return Dataset(
        name="cifar10",
        x_train=encode_ids(n_train),
        y_train=ytr,
        x_test=torch.zeros(n_test, 3, 32, 32, dtype=torch.uint8),
        y_test=torch.arange(n_test) % 10,
        classes=CIFAR10_CLASSES,
        mean=D.CIFAR10_MEAN,
        std=D.CIFAR10_STD,
        source="synthetic",
    )


def test_subset_stratified_and_deterministic():
    ds = synthetic()
    s = ds.subset(100, 50, seed=3)
    assert len(s.y_train) == 100 and len(s.y_test) == 50
    assert torch.bincount(s.y_train, minlength=10).tolist() == [10] * 10
    assert torch.bincount(s.y_test, minlength=10).tolist() == [5] * 10
    s2 = ds.subset(100, 50, seed=3)
    assert torch.equal(s.x_train, s2.x_train) and torch.equal(s.y_train, s2.y_train)
    s3 = ds.subset(100, 50, seed=4)
    assert not torch.equal(s.x_train, s3.x_train)
    assert s.name == ds.name and s.classes == ds.classes and "subset" in s.source
    assert len(ds.y_train) == 1000  # original untouched
    full = ds.subset(None, None)
    assert torch.equal(full.x_train, ds.x_train) and torch.equal(full.y_test, ds.y_test)
    # images stay matched to their labels
    ids = s.x_train[:, 0, 0, 0].to(torch.int64) + 256 * s.x_train[:, 0, 0, 1].to(torch.int64)
    assert torch.equal(ds.y_train[ids], s.y_train)
    assert bool((ids[1:] > ids[:-1]).all())  # original order kept


def test_subset_proportional_for_unbalanced():
    ds = synthetic(weights=[5, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    s = ds.subset(97, None, seed=0)
    full = torch.bincount(ds.y_train, minlength=10).double() / len(ds.y_train)
    sub = torch.bincount(s.y_train, minlength=10).double()
    assert sub.sum() == 97
    assert (sub - full * 97).abs().max() < 1.0
    with pytest.raises(ValueError):
        ds.subset(5000, None)


# ------------------------------------------------------------------------------------------
# normalize / augment
# ------------------------------------------------------------------------------------------


def test_normalize():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(3, 1, 1).expand(2, 3, 4, 4)
    out = normalize(x, D.CIFAR10_MEAN, D.CIFAR10_STD)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 4, 4)
    exp = [(0 - 0.485) / 0.229, (0.2 - 0.456) / 0.224, (1 - 0.406) / 0.225]
    assert torch.allclose(out[1, :, 2, 3], torch.tensor(exp), atol=1e-6)
    g = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    assert torch.allclose(normalize(g, (0.0,), (1.0,)), g.float() / 255)
    assert normalize(g, (0.0,), (1.0,), dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError):
        normalize(g, D.CIFAR10_MEAN, D.CIFAR10_STD)


def reference_crop_flip(x, flips, offsets, pad):
    p = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    h, w = x.shape[-2:]
    out = []
    for i in range(len(x)):
        dy, dx = offsets[i].tolist()
        c = p[i, :, dy:dy + h, dx:dx + w]
        out.append(c.flip(-1) if flips[i] else c)
    return torch.stack(out)


def test_augment_identity_flip_and_shift():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8) + 1
    no = torch.zeros(2, dtype=torch.bool)
    centre = torch.full((2, 2), 4, dtype=torch.int64)
    assert torch.equal(augment_crop_flip(x, no, centre, pad=4), x)
    yes = torch.ones(2, dtype=torch.bool)
    assert torch.equal(augment_crop_flip(x, yes, centre, pad=4), x.flip(-1))
    # offset (dy, dx) = (pad + 1, pad - 2): output[r, c] = x[r + 1, c - 2], zero outside
    off = torch.tensor([[5, 2], [5, 2]])
    out = augment_crop_flip(x, no, off, pad=4)
    exp = torch.zeros_like(x)
    exp[:, :, 0:7, 2:8] = x[:, :, 1:8, 0:6]
    assert torch.equal(out, exp)
    # corner crop (0, 0): content moves 4 down/right, top-left 4 rows/cols are padding
    out = augment_crop_flip(x, no, torch.zeros(2, 2, dtype=torch.int64), pad=4)
    assert torch.equal(out[:, :, 4:, 4:], x[:, :, :4, :4])
    assert out[:, :, :4].abs().sum() == 0 and out[:, :, :, :4].abs().sum() == 0


def test_augment_matches_reference_random():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, 32, 32, generator=g)
    flips = torch.rand(64, generator=g) < 0.5
    offsets = torch.randint(0, 9, (64, 2), generator=g)
    out = augment_crop_flip(x, flips, offsets, pad=4)
    assert torch.equal(out, reference_crop_flip(x, flips, offsets, 4))
    x1 = torch.randn(7, 1, 28, 28, generator=g)
    f1 = torch.rand(7, generator=g) < 0.5
    o1 = torch.randint(0, 5, (7, 2), generator=g)
    assert torch.equal(augment_crop_flip(x1, f1, o1, pad=2), reference_crop_flip(x1, f1, o1, 2))


# ------------------------------------------------------------------------------------------
# partitions
# ------------------------------------------------------------------------------------------


def test_partition_iid():
    parts = partition_iid(103, 10, torch.Generator().manual_seed(0))
    assert parts.shape == (10, 10) and parts.dtype == torch.int64
    flat = parts.flatten()
    assert len(set(flat.tolist())) == 100 and flat.min() >= 0 and flat.max() < 103
    full = partition_iid(100, 5, torch.Generator().manual_seed(0))
    assert sorted(full.flatten().tolist()) == list(range(100))
    again = partition_iid(100, 5, torch.Generator().manual_seed(0))
    assert torch.equal(full, again)
    assert not torch.equal(full, partition_iid(100, 5, torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError):
        partition_iid(3, 5, torch.Generator())


def test_partition_dirichlet():
    labels = torch.arange(5000) % 10
    parts = partition_dirichlet(labels, 20, 0.5, torch.Generator().manual_seed(0), min_size=10)
    assert len(parts) == 20 and all(p.dtype == torch.int64 for p in parts)
    allidx = torch.cat(parts)
    assert len(allidx) == len(torch.unique(allidx)) == 5000  # disjoint and covering
    assert min(len(p) for p in parts) >= 10
    again = partition_dirichlet(labels, 20, 0.5, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(parts, again))


def dominant_share(labels, parts):
    return float(np.mean([
        torch.bincount(labels[p], minlength=10).max().item() / len(p) for p in parts
    ]))


def test_partition_dirichlet_skew():
    labels = torch.arange(10000) % 10
    skewed = partition_dirichlet(labels, 10, 0.05, torch.Generator().manual_seed(0))
    even = partition_dirichlet(labels, 10, 1000.0, torch.Generator().manual_seed(0))
    assert dominant_share(labels, skewed) > 0.5
    assert dominant_share(labels, even) < 0.2


def test_partition_dirichlet_impossible():
    labels = torch.arange(50) % 10
    with pytest.raises(ValueError, match="at least 10"):
        partition_dirichlet(labels, 10, 0.5, torch.Generator(), min_size=10)
    with pytest.raises(ValueError, match="draws"):
        partition_dirichlet(torch.arange(200) % 10, 10, 0.01, torch.Generator().manual_seed(0),
                            min_size=19, max_tries=5)


# ------------------------------------------------------------------------------------------
# real data (skipped when the files are absent)
# ------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not (REAL_FMNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not installed in {REAL_FMNIST} (apt-get install dataset-fashion-mnist)",
)
def test_real_fmnist():
    ds = load_dataset("fmnist", root=REAL_FMNIST, download=False)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.y_train).tolist() == [6000] * 10
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.x_train.dtype == torch.uint8 and int(ds.x_train.max()) == 255


@pytest.mark.slow
@pytest.mark.skipif(not REAL_CIFAR_JPEG.is_file(), reason=f"{REAL_CIFAR_JPEG} not present")
def test_real_cifar10_jpeg(monkeypatch):
    # use the real user cache so the decoded .npz is shared with normal use
    if _REAL_XDG is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", _REAL_XDG)
    t = time.perf_counter()
    ds = load_dataset("cifar10", root=REAL_CIFAR_JPEG, download=False)
    print(f"\nCIFAR-10 JPEG load: {time.perf_counter() - t:.2f} s ({ds.source})")
    assert ds.x_train.shape == (50000, 3, 32, 32) and ds.x_test.shape == (10000, 3, 32, 32)
    assert torch.bincount(ds.y_train).tolist() == [5000] * 10
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10
    assert "JPEG" in ds.source
    mean = ds.x_train.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor([0.49, 0.48, 0.45]), atol=0.03)
