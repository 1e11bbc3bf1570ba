"""Datasets for flcore: Fashion-MNIST and CIFAR-10, loaded into uint8 tensors in memory.

Where the data comes from (first match wins):

1. ``root=`` given to :func:`load_dataset` (a directory, or for CIFAR-10 also an archive file);
2. else the ``FLCORE_DATA`` environment variable (one path, or several joined by ``os.pathsep``),
   searched first;
3. then well-known places (:data:`FMNIST_WELL_KNOWN`, :data:`CIFAR_WELL_KNOWN`);
4. finally the user cache directory (``$XDG_CACHE_HOME/flcore`` or ``~/.cache/flcore``), where
   ``download=True`` puts the official files when nothing was found anywhere.

Formats read:

* Fashion-MNIST: the four official IDX files (raw or ``.gz``), directly in a directory or in its
  ``fashion-mnist/`` subdirectory. Every header, size and label is validated.
* CIFAR-10: the official "python version" (``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``,
  read with a restricted unpickler that only admits numpy array reconstruction), or an
  image-folder tree ``train|test/<class>/*.jpg|png`` as a directory or a tar(.gz) archive. Decoded
  image folders are cached as ``.npz`` in the user cache directory.

Nothing here ever executes code from a data file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import re
import tarfile
import tempfile
import urllib.request
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR_WELL_KNOWN",
    "BUILTIN",
    "FMNIST_CLASSES",
    "FMNIST_WELL_KNOWN",
    "Dataset",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "augment_crop_flip",
    "cache_dir",
    "clear_cache",
    "load_dataset",
    "normalize",
    "partition_dirichlet",
    "partition_iid",
]

BUILTIN = ("fmnist", "cifar10")  # the datasets this module reads (flcore.data.specs registers them)

FMNIST_CLASSES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

FMNIST_MEAN, FMNIST_STD = (0.0,), (1.0,)
CIFAR10_MEAN, CIFAR10_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

_PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: Well-known places searched for Fashion-MNIST when ``root=`` is not given (after ``FLCORE_DATA``).
#: Relative paths are taken relative to the current directory; ``~`` is expanded at load time.
FMNIST_WELL_KNOWN: list[str] = ["/usr/share/datasets/fashion-mnist"]
#: Well-known places searched for CIFAR-10 (same rules as :data:`FMNIST_WELL_KNOWN`).
CIFAR_WELL_KNOWN: list[str] = [
    "../shared/datasets",
    str(_PROJECT_ROOT.parent / "shared" / "datasets"),
    "~/.cache/flcore",
]

FMNIST_URLS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

_FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_FMNIST_EXPECTED = {"train": 60000, "test": 10000}
_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_BATCH = "test_batch"
_CIFAR_EXPECTED = {"train": 50000, "test": 10000}
_IMAGE_EXTS = (".jpg", ".jpeg", ".png")
_NPZ_VERSION = 1

_HOW_TO_GET = {
    "fmnist": (
        "How to get Fashion-MNIST:\n"
        "  * Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist` (installs the IDX files in "
        "/usr/share/datasets/fashion-mnist), or\n"
        "  * put the four IDX files train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), "
        "t10k-images-idx3-ubyte(.gz), t10k-labels-idx1-ubyte(.gz) in a directory (or its "
        "fashion-mnist/ subdirectory) and pass root=<dir> or set FLCORE_DATA=<dir>, or\n"
        "  * call load_dataset('fmnist', download=True) on a machine with internet access."
    ),
    "cifar10": (
        "How to get CIFAR-10:\n"
        f"  * download {CIFAR10_URL} (the official 'python version') and put "
        "cifar-10-python.tar.gz (or the extracted cifar-10-batches-py/ folder) in a directory, "
        "then pass root=<dir> or set FLCORE_DATA=<dir> (or place it in ~/.cache/flcore/), or\n"
        "  * point root=/FLCORE_DATA at an image-folder copy train|test/<class>/*.jpg|png "
        "(a directory or a .tar/.tar.gz of one, e.g. cifar10-jpeg.tar.gz), or\n"
        "  * call load_dataset('cifar10', download=True) on a machine with internet access."
    ),
}


class DatasetNotFoundError(FileNotFoundError):
    """No usable copy of the dataset was found (the message lists every place searched)."""


class DatasetFormatError(ValueError):
    """A data file exists but is truncated, corrupted or not what it claims to be."""


# --------------------------------------------------------------------------------------------
# Dataset container
# --------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """A labelled image dataset held in memory as uint8 tensors ``[n, C, H, W]``."""

    name: str
    x_train: torch.Tensor = dataclasses.field(repr=False)
    y_train: torch.Tensor = dataclasses.field(repr=False)
    x_test: torch.Tensor = dataclasses.field(repr=False)
    y_test: torch.Tensor = dataclasses.field(repr=False)
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str

    def __repr__(self) -> str:
        shape = tuple(self.x_train.shape[1:])
        return (
            f"Dataset(name={self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
            f"image_shape={shape}, source={self.source!r})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, n_train: int | None, n_test: int | None, seed: int = 0) -> Dataset:
        """Stratified random subset (class proportions kept), deterministic in ``seed``.

        ``None`` keeps a split whole. The kept samples stay in their original order.
        """
        g = torch.Generator().manual_seed(int(seed))
        tr = _stratified_indices(self.y_train, n_train, g, len(self.classes), "n_train")
        te = _stratified_indices(self.y_test, n_test, g, len(self.classes), "n_test")
        x_train, y_train = (self.x_train, self.y_train) if tr is None else (
            self.x_train[tr], self.y_train[tr])
        x_test, y_test = (self.x_test, self.y_test) if te is None else (
            self.x_test[te], self.y_test[te])
        desc = f"{n_train if n_train is not None else 'all'} train / "
        desc += f"{n_test if n_test is not None else 'all'} test"
        return dataclasses.replace(
            self,
            x_train=x_train,
            y_train=y_train,
            x_test=x_test,
            y_test=y_test,
            source=f"{self.source}; stratified subset {desc}, seed {seed}",
        )


def _stratified_indices(
    labels: torch.Tensor, n: int | None, g: torch.Generator, num_classes: int, what: str
) -> torch.Tensor | None:
    if n is None:
        return None
    total = len(labels)
    if not 0 <= n <= total:
        raise ValueError(f"{what}={n} is out of range: the split has {total} samples")
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    # Largest-remainder allocation of n over classes, proportional to the class counts.
    exact = counts * (n / max(total, 1))
    take = exact.floor().to(torch.int64)
    rest = n - int(take.sum())
    if rest > 0:
        frac = exact - take.to(torch.float64)
        # Ties broken by class index (stable sort) so the result is deterministic.
        order = torch.sort(-frac, stable=True).indices
        take[order[:rest]] += 1
    chosen = []
    for c in range(num_classes):
        k = int(take[c])
        if k == 0:
            continue
        idx = torch.nonzero(labels == c).flatten()
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    if not chosen:
        return torch.zeros(0, dtype=torch.int64)
    return torch.sort(torch.cat(chosen)).values


# --------------------------------------------------------------------------------------------
# Tensor helpers: normalisation and augmentation
# --------------------------------------------------------------------------------------------


def normalize(x: torch.Tensor, mean, std, dtype=torch.float32) -> torch.Tensor:
    """uint8 images ``[..., C, H, W]`` -> float: scale to [0, 1], then ``(x - mean) / std``.

    Runs on ``x``'s device. A floating-point ``x`` is taken to be already scaled to [0, 1].
    """
    mean_t = torch.as_tensor(mean, dtype=dtype, device=x.device).reshape(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=dtype, device=x.device).reshape(-1, 1, 1)
    if x.dim() < 3 or x.shape[-3] != mean_t.shape[0] or std_t.shape[0] != mean_t.shape[0]:
        raise ValueError(
            f"normalize: x has shape {tuple(x.shape)} but mean/std have "
            f"{mean_t.shape[0]}/{std_t.shape[0]} channels"
        )
    out = x.to(dtype)
    if not x.is_floating_point():
        out = out / 255.0
    return (out - mean_t) / std_t


def augment_crop_flip(
    x: torch.Tensor, flips: torch.Tensor, offsets: torch.Tensor, pad: int = 4
) -> torch.Tensor:
    """Random-crop-with-padding and horizontal flip, with the randomness given explicitly.

    ``x`` is ``[B, C, H, W]``; it is zero-padded by ``pad`` on every side and sample ``b`` gets
    the ``H x W`` window whose top-left corner is ``offsets[b] = (dy, dx)`` (each in
    ``[0, 2 * pad]``; ``(pad, pad)`` is the identity), mirrored left-right where ``flips[b]``.
    Fully batched (two gathers), on ``x``'s device.
    """
    if x.dim() != 4:
        raise ValueError(f"augment_crop_flip: x must be [B, C, H, W], got {tuple(x.shape)}")
    b, c, h, w = x.shape
    if flips.shape != (b,) or offsets.shape != (b, 2):
        raise ValueError(
            f"augment_crop_flip: need flips [{b}] and offsets [{b}, 2], got "
            f"{tuple(flips.shape)} and {tuple(offsets.shape)}"
        )
    dev = x.device
    flips = flips.to(device=dev, dtype=torch.bool)
    offsets = offsets.to(device=dev, dtype=torch.int64)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad)) if pad else x
    wp = w + 2 * pad
    rows = offsets[:, 0:1] + torch.arange(h, device=dev)  # [B, H]
    cols = offsets[:, 1:2] + torch.arange(w, device=dev)  # [B, W]
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    out = torch.gather(padded, 2, rows[:, None, :, None].expand(b, c, h, wp))
    out = torch.gather(out, 3, cols[:, None, None, :].expand(b, c, h, w))
    return out


# --------------------------------------------------------------------------------------------
# Partitioning over participants
# --------------------------------------------------------------------------------------------


def partition_iid(n: int, num_participants: int, generator: torch.Generator) -> torch.Tensor:
    """Shuffle ``range(n)`` and deal it into equal shares of ``n // num_participants``.

    Returns int64 ``[num_participants, share]``; the ``n % num_participants`` leftover indices
    are dropped.
    """
    if num_participants <= 0:
        raise ValueError(f"num_participants must be positive, got {num_participants}")
    share = n // num_participants
    if share == 0:
        raise ValueError(f"cannot split {n} samples over {num_participants} participants")
    perm = torch.randperm(n, generator=generator)
    return perm[: share * num_participants].reshape(num_participants, share).clone()


def partition_dirichlet(
    labels: torch.Tensor,
    num_participants: int,
    beta: float,
    generator: torch.Generator,
    min_size: int = 10,
    max_tries: int = 1000,
) -> list[torch.Tensor]:
    """Non-iid split: for each class, Dirichlet(``beta``) proportions over participants.

    The usual FL recipe (as in Hsu et al. 2019 / Wang et al. 2020): each class's shuffled indices
    are cut according to a Dirichlet draw, skipping participants that already hold at least
    ``n / num_participants`` samples; the whole draw is repeated until every participant holds
    ``>= min_size`` samples (at most ``max_tries`` draws, then a ``ValueError``). Smaller ``beta``
    means more skew. Deterministic in ``generator``. Returns a list of disjoint, sorted int64
    index tensors, one per participant.
    """
    if num_participants <= 0:
        raise ValueError(f"num_participants must be positive, got {num_participants}")
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    y = labels.detach().cpu().numpy().astype(np.int64).ravel()
    n = len(y)
    if n < num_participants * min_size:
        raise ValueError(
            f"cannot give {num_participants} participants at least {min_size} samples each "
            f"from only {n} samples"
        )
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    by_class = [np.flatnonzero(y == c) for c in classes]
    cap = n / num_participants
    smallest = 0
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_participants)]
        sizes = np.zeros(num_participants, dtype=np.int64)
        for idx in by_class:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(num_participants, float(beta)))
            p = np.where(sizes < cap, p, 0.0)
            if p.sum() <= 0:  # everyone is full (only with degenerate inputs): spread evenly
                p = np.ones(num_participants)
            p = p / p.sum()
            cuts = (np.cumsum(p) * len(idx)).astype(np.int64)[:-1]
            for j, chunk in enumerate(np.split(idx, cuts)):
                parts[j].append(chunk)
                sizes[j] += len(chunk)
        smallest = int(sizes.min())
        if smallest >= min_size:
            return [
                torch.from_numpy(np.sort(np.concatenate(ch)).astype(np.int64)) for ch in parts
            ]
    raise ValueError(
        f"partition_dirichlet: after {max_tries} draws some participant still had fewer than "
        f"{min_size} samples (smallest share in the last draw: {smallest}; n={n}, "
        f"participants={num_participants}, beta={beta}). Use a larger beta, fewer participants "
        "or a smaller min_size."
    )


# --------------------------------------------------------------------------------------------
# Locating the data
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The user cache directory: ``$XDG_CACHE_HOME/flcore`` or ``~/.cache/flcore``."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "flcore"


_MEMORY: dict[tuple, Dataset] = {}


def clear_cache() -> None:
    """Forget the datasets kept in memory by :func:`load_dataset`."""
    _MEMORY.clear()


def _expand(p: str | os.PathLike) -> Path:
    return Path(os.path.normpath(Path(os.path.expanduser(os.fspath(p))).absolute()))


@dataclass
class _Found:
    kind: str  # "idx", "cifar-py-dir", "cifar-py-tar", "imgdir", "imgtar"
    path: Path  # directory or archive
    files: dict | None = None  # for idx: role -> file path

    def key(self) -> tuple:
        try:
            st = self.path.stat()
            sig = (st.st_size, st.st_mtime_ns) if self.path.is_file() else ()
        except OSError:
            sig = ()
        extra = ()
        if self.files:
            extra = tuple(sorted((k, str(v), v.stat().st_mtime_ns) for k, v in self.files.items()))
        return (self.kind, str(self.path.resolve()), sig, extra)


def _find_fmnist(root: Path) -> tuple[_Found | None, str]:
    if not root.exists():
        return None, "does not exist"
    if not root.is_dir():
        return None, "is not a directory"
    notes = []
    for d in (root, root / "fashion-mnist"):
        if not d.is_dir():
            continue
        files, missing = {}, []
        for role, base in _FMNIST_FILES.items():
            for cand in (d / base, d / (base + ".gz")):
                if cand.is_file():
                    files[role] = cand
                    break
            else:
                missing.append(base + "(.gz)")
        if not missing:
            return _Found("idx", d, files), "ok"
        if files:
            notes.append(f"{d}: incomplete, missing {', '.join(missing)}")
    return None, "; ".join(notes) or "no Fashion-MNIST IDX files"


def _is_cifar_py_dir(d: Path) -> list[str]:
    names = (*_CIFAR_TRAIN_BATCHES, _CIFAR_TEST_BATCH)
    return [n for n in names if not (d / n).is_file()]


def _image_tree_root(d: Path) -> Path | None:
    """``d`` itself or a direct subdirectory of it holding ``train/`` and ``test/`` folders."""
    if (d / "train").is_dir() and (d / "test").is_dir():
        return d
    try:
        subs = sorted(p for p in d.iterdir() if p.is_dir())
    except OSError:
        return None
    for s in subs:
        if (s / "train").is_dir() and (s / "test").is_dir():
            return s
    return None


def _find_cifar(root: Path) -> tuple[_Found | None, str]:
    if not root.exists():
        return None, "does not exist"
    if root.is_file():
        name = root.name.lower()
        if name.endswith((".tar.gz", ".tgz", ".tar")):
            if "python" in name:
                return _Found("cifar-py-tar", root), "ok"
            return _Found("imgtar", root), "ok"
        return None, "is a file but not a .tar/.tar.gz archive"
    notes = []
    if not _is_cifar_py_dir(root):
        return _Found("cifar-py-dir", root), "ok"
    d = root / "cifar-10-batches-py"
    if d.is_dir():
        missing = _is_cifar_py_dir(d)
        if not missing:
            return _Found("cifar-py-dir", d), "ok"
        notes.append(f"{d}: incomplete, missing {', '.join(missing)}")
    if (root / "cifar-10-python.tar.gz").is_file():
        return _Found("cifar-py-tar", root / "cifar-10-python.tar.gz"), "ok"
    tree = _image_tree_root(root)
    if tree is not None:
        return _Found("imgdir", tree), "ok"
    archives = sorted(
        p for p in root.iterdir()
        if p.is_file() and p.name.lower().startswith("cifar")
        and p.name.lower().endswith((".tar.gz", ".tgz", ".tar"))
    )
    if archives:
        return _Found("imgtar", archives[0]), "ok"
    return None, "; ".join(notes) or (
        "no cifar-10-batches-py/, cifar-10-python.tar.gz, train|test/<class>/ image folders "
        "or cifar*.tar(.gz) archive"
    )


def _candidate_places(name: str, root) -> list[tuple[Path, str]]:
    """[(path, why)] to search: root= alone when given; else FLCORE_DATA's paths first, then
    the well-known places (setting FLCORE_DATA adds places, it never hides the well-known ones)."""
    if root is not None:
        return [(_expand(root), "root= argument")]
    env = os.environ.get("FLCORE_DATA", "")
    wk = FMNIST_WELL_KNOWN if name == "fmnist" else CIFAR_WELL_KNOWN
    return ([(_expand(p), "FLCORE_DATA") for p in env.split(os.pathsep) if p]
            + [(_expand(p), "well-known place") for p in wk])  # fmt: skip


# --------------------------------------------------------------------------------------------
# Public loader
# --------------------------------------------------------------------------------------------


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    download: bool = True,
    progress: bool = True,
) -> Dataset:
    """Load ``"fmnist"`` or ``"cifar10"`` as uint8 CPU tensors (see the module docstring).

    Raises :class:`DatasetNotFoundError` (listing every place searched and how to get the files)
    when no copy is found and downloading is off or fails, and :class:`DatasetFormatError` when a
    found copy is damaged. Repeated calls in one process return the in-memory copy.
    """
    name = name.lower().replace("-", "").replace("_", "")
    if name in ("fashionmnist", "fmnist"):
        name = "fmnist"
    if name not in BUILTIN:
        raise ValueError(f"unknown dataset {name!r}; this loader reads {BUILTIN} (others: register a "
                         f"flcore.data.DatasetSpec with a loader of its own)")
    finder = _find_fmnist if name == "fmnist" else _find_cifar

    cache = cache_dir()
    places = _candidate_places(name, root) + [(cache, "user cache / download directory")]
    seen: set[str] = set()
    places = [(p, why) for p, why in places
              if not (os.path.normpath(p) in seen or seen.add(os.path.normpath(p)))]
    looked: list[str] = []
    found = None
    for p, why in places:
        found, note = finder(p)
        if found is not None:
            break
        looked.append(f"  - {p} ({why}): {note}")

    if found is None and download:
        try:
            _download(name, cache, progress)
        except Exception as e:  # noqa: BLE001 - any network failure ends in one clear error
            looked.append(f"  - download into {cache}: failed ({type(e).__name__}: {e})")
        else:
            found, note = finder(cache)
            if found is None:
                looked.append(f"  - {cache} after download: {note}")
    elif found is None:
        looked.append("  - download: not attempted (download=False)")

    if found is None:
        pretty = "Fashion-MNIST" if name == "fmnist" else "CIFAR-10"
        raise DatasetNotFoundError(
            f"{pretty} ({name!r}) not found. Places searched:\n" + "\n".join(looked)
            + "\n" + _HOW_TO_GET[name]
        )

    key = (name, *found.key())
    hit = _MEMORY.get(key)
    if hit is not None:
        return dataclasses.replace(hit)
    ds = _read(name, found, progress)
    _MEMORY[key] = ds
    return dataclasses.replace(ds)


def _read(name: str, found: _Found, progress: bool) -> Dataset:
    if name == "fmnist":
        assert found.files is not None
        xtr = _read_idx_images(found.files["train_images"], _FMNIST_EXPECTED["train"])
        ytr = _read_idx_labels(found.files["train_labels"], _FMNIST_EXPECTED["train"])
        xte = _read_idx_images(found.files["test_images"], _FMNIST_EXPECTED["test"])
        yte = _read_idx_labels(found.files["test_labels"], _FMNIST_EXPECTED["test"])
        for split, x, y, fx, fy in (
            ("train", xtr, ytr, found.files["train_images"], found.files["train_labels"]),
            ("test", xte, yte, found.files["test_images"], found.files["test_labels"]),
        ):
            if len(x) != len(y):
                raise DatasetFormatError(
                    f"Fashion-MNIST {split} files disagree: {fx} holds {len(x)} images but {fy} "
                    f"holds {len(y)} labels. The files do not belong together; replace them "
                    "with a matching official set."
                )
        gz = any(str(f).endswith(".gz") for f in found.files.values())
        return Dataset(
            name="fmnist",
            x_train=torch.from_numpy(xtr).unsqueeze(1),
            y_train=torch.from_numpy(ytr.astype(np.int64)),
            x_test=torch.from_numpy(xte).unsqueeze(1),
            y_test=torch.from_numpy(yte.astype(np.int64)),
            classes=FMNIST_CLASSES,
            mean=FMNIST_MEAN,
            std=FMNIST_STD,
            source=f"Fashion-MNIST IDX files{' (gzip)' if gz else ''} in {found.path}",
        )

    if found.kind == "cifar-py-dir":
        arrays = _read_cifar_py(_dir_opener(found.path), str(found.path))
        source = f"CIFAR-10 official python version (pickled batches) in {found.path}"
    elif found.kind == "cifar-py-tar":
        with _open_tar(found.path) as tf:
            arrays = _read_cifar_py(_tar_opener(tf, found.path), str(found.path))
        source = f"CIFAR-10 official python version, read from the archive {found.path}"
    else:
        arrays, fmt = _load_image_folder(found, progress)
        where = "archive" if found.kind == "imgtar" else "directory"
        source = f"CIFAR-10 from the {fmt} copy: image-folder {where} {found.path}"
        if fmt == "JPEG":
            source += " (lossy: pixels differ slightly from the official release)"
    xtr, ytr, xte, yte = arrays
    return Dataset(
        name="cifar10",
        x_train=torch.from_numpy(xtr),
        y_train=torch.from_numpy(ytr),
        x_test=torch.from_numpy(xte),
        y_test=torch.from_numpy(yte),
        classes=CIFAR10_CLASSES,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        source=source,
    )


# --------------------------------------------------------------------------------------------
# Fashion-MNIST IDX
# --------------------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    """Whole file contents, gunzipped when the name ends in .gz; damage -> DatasetFormatError."""
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetFormatError(
            f"{path}: cannot be read as {'a gzip' if path.name.endswith('.gz') else 'an IDX'} "
            f"file ({type(e).__name__}: {e}). The file is truncated or corrupted; delete it and "
            "get a fresh copy (e.g. reinstall the dataset-fashion-mnist package)."
        ) from e


def _idx_header(path: Path, data: bytes, magic: int, ndims: int) -> tuple[int, ...]:
    hdr_len = 4 + 4 * ndims
    if len(data) < hdr_len:
        raise DatasetFormatError(
            f"{path}: only {len(data)} bytes, shorter than an IDX header; the file is "
            "truncated. Get a fresh copy."
        )
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        kind = {2051: "an images file", 2049: "a labels file"}.get(got, "not an IDX file")
        raise DatasetFormatError(
            f"{path}: wrong magic number {got} (expected {magic}; this is {kind}). The file is "
            "corrupted or misnamed; get a fresh copy of the official IDX files."
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndims))
    payload = len(data) - hdr_len
    need = int(np.prod(dims))
    if payload != need:
        raise DatasetFormatError(
            f"{path}: header announces {'x'.join(map(str, dims))} = {need} bytes of data but the "
            f"file holds {payload}; the file is {'truncated' if payload < need else 'corrupted'}. "
            "Get a fresh copy."
        )
    if dims[0] == 0:
        raise DatasetFormatError(f"{path}: holds zero items; get a fresh copy.")
    return dims


def _warn_count(path: Path, n: int, expected: int) -> None:
    if n != expected:
        warnings.warn(
            f"{path} holds {n} items; the official Fashion-MNIST file holds {expected}",
            stacklevel=4,
        )


def _read_idx_images(path: Path, expected: int) -> np.ndarray:
    data = _read_bytes(path)
    n, h, w = _idx_header(path, data, 2051, 3)
    if (h, w) != (28, 28):
        raise DatasetFormatError(
            f"{path}: images are {h}x{w}, Fashion-MNIST images are 28x28; this is not a "
            "Fashion-MNIST images file."
        )
    _warn_count(path, n, expected)
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, h, w).copy()


def _read_idx_labels(path: Path, expected: int) -> np.ndarray:
    data = _read_bytes(path)
    (n,) = _idx_header(path, data, 2049, 1)
    _warn_count(path, n, expected)
    y = np.frombuffer(data, dtype=np.uint8, offset=8).copy()
    if y.max() > 9:
        bad = int(np.flatnonzero(y > 9)[0])
        raise DatasetFormatError(
            f"{path}: label {int(y[bad])} at position {bad} is outside 0..9; the file is "
            "corrupted. Get a fresh copy."
        )
    return y


# --------------------------------------------------------------------------------------------
# CIFAR-10 python version (restricted unpickling)
# --------------------------------------------------------------------------------------------

_NP_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): __import__("_codecs").encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals genuine CIFAR-10 batches reference."""

    def __init__(self, file, source: str):
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str):
        obj = _ALLOWED_GLOBALS.get((module, name))
        if obj is None:
            raise DatasetFormatError(
                f"{self._source}: refusing to load: it references {module}.{name}; CIFAR-10 "
                "batches contain only numpy arrays; this file is not a genuine CIFAR-10 batch. "
                "Delete it and get the official cifar-10-python.tar.gz."
            )
        return obj

    def persistent_load(self, pid):
        raise DatasetFormatError(
            f"{self._source}: refusing to load: it uses persistent ids; this file is not a "
            "genuine CIFAR-10 batch."
        )


def _unpickle_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        obj = _CifarUnpickler(io.BytesIO(raw), source).load()
    except DatasetFormatError:
        raise
    except Exception as e:
        raise DatasetFormatError(
            f"{source}: not a readable CIFAR-10 batch ({type(e).__name__}: {e}); the file is "
            "truncated or corrupted. Get a fresh cifar-10-python.tar.gz."
        ) from e
    if not isinstance(obj, dict):
        raise DatasetFormatError(
            f"{source}: holds a {type(obj).__name__}, a CIFAR-10 batch is a dict"
        )
    d = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "data" not in d or "labels" not in d:
        raise DatasetFormatError(
            f"{source}: batch dict lacks 'data' and/or 'labels' (keys: {sorted(map(str, d))})"
        )
    x = d["data"]
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        desc = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DatasetFormatError(
            f"{source}: 'data' must be a uint8 array [n, 3072], got {desc}; not a CIFAR-10 batch"
        )
    try:
        y = np.asarray(d["labels"], dtype=np.int64).ravel()
    except (TypeError, ValueError) as e:
        raise DatasetFormatError(f"{source}: 'labels' is not a list of integers") from e
    if len(y) != len(x):
        raise DatasetFormatError(
            f"{source}: {len(x)} images but {len(y)} labels; the batch is corrupted"
        )
    if len(y) == 0:
        raise DatasetFormatError(f"{source}: the batch is empty")
    if y.min() < 0 or y.max() > 9:
        raise DatasetFormatError(f"{source}: labels outside 0..9; the batch is corrupted")
    return x.reshape(-1, 3, 32, 32), y


def _dir_opener(d: Path) -> Callable[[str], tuple[bytes, str]]:
    def get(name: str) -> tuple[bytes, str]:
        p = d / name
        try:
            return p.read_bytes(), str(p)
        except OSError as e:
            raise DatasetFormatError(f"{p}: cannot be read ({e})") from e

    return get


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DatasetFormatError(
            f"{path}: not a readable tar archive ({type(e).__name__}: {e}); the file is "
            "truncated or corrupted. Get a fresh copy."
        ) from e


def _tar_opener(tf: tarfile.TarFile, path: Path) -> Callable[[str], tuple[bytes, str]]:
    """Read the batch files out of the archive in one sequential pass (no backward seeks,
    which would re-decompress a .tar.gz from the start for every member)."""
    wanted = {*_CIFAR_TRAIN_BATCHES, _CIFAR_TEST_BATCH}
    blobs: dict[str, bytes] = {}
    try:
        for m in tf:
            base = m.name.rsplit("/", 1)[-1]
            if (m.isfile() and base in wanted and base not in blobs
                    and ("/" + m.name).endswith("cifar-10-batches-py/" + base)):
                f = tf.extractfile(m)
                assert f is not None
                blobs[base] = f.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DatasetFormatError(
            f"{path}: the archive is truncated or corrupted ({type(e).__name__}: {e}); get a "
            "fresh cifar-10-python.tar.gz."
        ) from e

    def get(name: str) -> tuple[bytes, str]:
        if name not in blobs:
            raise DatasetFormatError(
                f"{path}: no cifar-10-batches-py/{name} inside; the archive is incomplete. "
                "Get a fresh cifar-10-python.tar.gz."
            )
        return blobs[name], f"{path}:cifar-10-batches-py/{name}"

    return get


def _read_cifar_py(get: Callable[[str], tuple[bytes, str]], where: str):
    xs, ys = [], []
    for b in _CIFAR_TRAIN_BATCHES:
        x, y = _unpickle_batch(*get(b))
        xs.append(x)
        ys.append(y)
    xtr, ytr = np.concatenate(xs), np.concatenate(ys)
    xte, yte = _unpickle_batch(*get(_CIFAR_TEST_BATCH))
    for split, n in (("train", len(ytr)), ("test", len(yte))):
        if n != _CIFAR_EXPECTED[split]:
            warnings.warn(
                f"{where}: CIFAR-10 {split} split has {n} images; the official release has "
                f"{_CIFAR_EXPECTED[split]}",
                stacklevel=4,
            )
    return (
        np.ascontiguousarray(xtr),
        ytr.astype(np.int64),
        np.ascontiguousarray(xte),
        yte.astype(np.int64),
    )


# --------------------------------------------------------------------------------------------
# CIFAR-10 image folders (directory or tar archive) with an .npz decode cache
# --------------------------------------------------------------------------------------------

_SPLIT_CLASS_RE = re.compile(r"(?:^|/)(train|test)/([^/]+)/([^/]+)$")


def _classify(rel: str, where: Path) -> tuple[str, int, str] | None:
    """(split, label, filename) for an image path inside the tree, None for other files."""
    m = _SPLIT_CLASS_RE.search(rel)
    if m is None:
        return None
    split, cls, fname = m.groups()
    if fname.startswith(".") or not fname.lower().endswith(_IMAGE_EXTS):
        return None
    if cls not in CIFAR10_CLASSES:
        raise DatasetFormatError(
            f"{where}: image {rel} is in class folder {cls!r}, which is not a CIFAR-10 class; "
            f"class folders must be exactly {', '.join(CIFAR10_CLASSES)}"
        )
    return split, CIFAR10_CLASSES.index(cls), fname


def _check_classes(entries: list[tuple[str, int, str, object]], where: Path) -> None:
    for split in ("train", "test"):
        present = {lab for s, lab, _, _ in entries if s == split}
        if not present:
            raise DatasetFormatError(
                f"{where}: no images under {split}/<class>/; expected an image-folder tree "
                "train|test/<class>/*.jpg|png"
            )
        missing = [CIFAR10_CLASSES[i] for i in range(10) if i not in present]
        if missing:
            raise DatasetFormatError(
                f"{where}: {split}/ lacks the class folder(s) {', '.join(missing)}; class folders "
                f"must be exactly {', '.join(CIFAR10_CLASSES)}"
            )


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _list_image_dir(tree: Path) -> tuple[list[tuple[str, int, str, object]], str]:
    entries = []
    h = hashlib.sha256()
    for split in ("train", "test"):
        base = tree / split
        for dirpath, _dirs, files in os.walk(base):
            for fn in files:
                p = Path(dirpath) / fn
                rel = p.relative_to(tree).as_posix()
                c = _classify(rel, tree)
                if c is None:
                    continue
                entries.append((*c, p))
    entries.sort(key=lambda e: (e[0] != "train", e[1], e[2]))
    for split, label, fname, p in entries:
        st = p.stat()
        h.update(f"{split}/{label}/{fname}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return entries, h.hexdigest()


def _iter_tar_images(path: Path) -> Iterator[tuple[str, int, str, bytes]]:
    tf = _open_tar(path)
    try:
        with tf:
            for m in tf:
                if not m.isfile():
                    continue
                c = _classify(m.name, path)
                if c is None:
                    continue
                f = tf.extractfile(m)
                assert f is not None
                yield (*c, f.read())
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DatasetFormatError(
            f"{path}: the archive is truncated or corrupted ({type(e).__name__}: {e}); get a "
            "fresh copy."
        ) from e


def _decode(blob: bytes, name: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(blob)) as im:
            if im.size != (32, 32):
                raise DatasetFormatError(
                    f"{name}: image is {im.size[0]}x{im.size[1]}, CIFAR-10 images are 32x32"
                )
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except DatasetFormatError:
        raise
    except Exception as e:
        raise DatasetFormatError(
            f"{name}: cannot be decoded as an image ({type(e).__name__}: {e})"
        ) from e
    return arr


def _validate_npz(z, key: str) -> tuple[np.ndarray, ...]:
    if int(z["version"]) != _NPZ_VERSION or str(z["key"]) != key:
        raise ValueError("cache version or key mismatch")
    out = []
    for split in ("train", "test"):
        x, y = z[f"x_{split}"], z[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (3, 32, 32):
            raise ValueError(f"bad x_{split} {x.dtype} {x.shape}")
        if y.dtype != np.int64 or y.shape != (len(x),) or len(y) == 0:
            raise ValueError(f"bad y_{split}")
        if y.min() < 0 or y.max() > 9:
            raise ValueError(f"bad labels in y_{split}")
        out += [x, y]
    return tuple(out)


def _load_image_folder(found: _Found, progress: bool):
    if found.kind == "imgtar":
        key = "tar-sha256-" + _sha256_file(found.path)
        entries = None
    else:
        entries, digest = _list_image_dir(found.path)
        key = "dir-" + digest
    cpath = cache_dir() / f"cifar10-imagefolder-{key[-64:]}.npz"

    if cpath.is_file():
        try:
            with np.load(cpath, allow_pickle=False) as z:
                arrays = _validate_npz(z, key)
                fmt = str(z["fmt"])
            return arrays, fmt
        except Exception as e:  # noqa: BLE001 - any cache problem: rebuild
            warnings.warn(f"ignoring broken decode cache {cpath} ({e}); rebuilding", stacklevel=3)

    if found.kind == "imgtar":
        items: Iterable = _iter_tar_images(found.path)
        total = None
    else:
        assert entries is not None
        _check_classes(entries, found.path)
        items = ((s, lab, fn, p.read_bytes()) for s, lab, fn, p in entries)
        total = len(entries)

    from tqdm import tqdm  # a text bar: widget bars are saved as a dead "0/N" by papermill

    decoded: list[tuple[str, int, str, np.ndarray]] = []
    exts = set()
    bar = tqdm(items, total=total, desc=f"decoding CIFAR-10 images ({found.path.name})",
               unit="img", disable=not progress, mininterval=0.5)
    for split, label, fname, blob in bar:
        name = f"{found.path}:{split}/{CIFAR10_CLASSES[label]}/{fname}"
        decoded.append((split, label, fname, _decode(blob, name)))
        exts.add(Path(fname).suffix.lower())
    if found.kind == "imgtar":
        _check_classes([(s, lab, fn, None) for s, lab, fn, _ in decoded], found.path)
    decoded.sort(key=lambda e: (e[0] != "train", e[1], e[2]))

    arrays = []
    for split in ("train", "test"):
        part = [e for e in decoded if e[0] == split]
        x = np.stack([e[3] for e in part]).transpose(0, 3, 1, 2)
        arrays += [np.ascontiguousarray(x), np.array([e[1] for e in part], dtype=np.int64)]
    if exts <= {".jpg", ".jpeg"}:
        fmt = "JPEG"
    elif exts == {".png"}:
        fmt = "PNG"
    else:
        fmt = "mixed JPEG/PNG"
    _write_npz_atomic(cpath, key=key, fmt=fmt, arrays=arrays)
    return tuple(arrays), fmt


@contextlib.contextmanager
def _atomic_write(dest: Path, suffix: str = ".tmp") -> Iterator[BinaryIO]:
    """Open a temporary file next to ``dest`` (same directory, so the rename is atomic) for
    binary writing, creating the directory if needed.

    On a clean exit of the block the file is flushed, fsync'ed, given the permissions a plain
    ``open()`` would give (umask, not mkstemp's 0600) and renamed onto ``dest`` with
    ``os.replace``. On any exception, KeyboardInterrupt included, the temporary file is removed
    and the exception propagates unchanged, so ``dest`` is either untouched or complete.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_npz_atomic(path: Path, *, key: str, fmt: str, arrays: list[np.ndarray]) -> None:
    try:
        with _atomic_write(path) as f:
            np.savez(
                f,
                version=np.array(_NPZ_VERSION),
                key=np.array(key),
                fmt=np.array(fmt),
                x_train=arrays[0],
                y_train=arrays[1],
                x_test=arrays[2],
                y_test=arrays[3],
            )
    except OSError as e:
        warnings.warn(f"could not write the decode cache {path} ({e})", stacklevel=3)


# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------


def _download_file(url: str, dest: Path, progress: bool) -> None:
    from tqdm import tqdm  # a text bar: widget bars are saved as a dead "0/N" by papermill

    with (
        _atomic_write(dest, suffix=".part") as out,
        urllib.request.urlopen(url, timeout=60) as resp,
    ):
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(
            total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress
        ) as bar:
            for chunk in iter(lambda: resp.read(1 << 16), b""):
                out.write(chunk)
                bar.update(len(chunk))


def _download(name: str, dest_dir: Path, progress: bool) -> None:
    if name == "fmnist":
        target = dest_dir / "fashion-mnist"
        for base in _FMNIST_FILES.values():
            dest = target / (base + ".gz")
            if dest.is_file():
                continue
            errors = []
            for mirror in FMNIST_URLS:
                try:
                    _download_file(mirror + base + ".gz", dest, progress)
                    break
                except Exception as e:  # noqa: BLE001
                    errors.append(f"{mirror}: {e}")
            else:
                raise OSError("; ".join(errors))
    else:
        _download_file(CIFAR10_URL, dest_dir / "cifar-10-python.tar.gz", progress)
