"""One spec per dataset: everything flcore knows about a dataset, in one place.

A `DatasetSpec` names the loader, the classes, the normalisation, the model architecture,
the training augmentation, the reference hyperparameters, the paper's source → target pairs
and how many federations the fast engine stacks at most. Config validation, both engines,
the studies, the plots and the explorer read these fields, so adding a dataset is one
`DATASETS.register(DatasetSpec(...))` (see docs/EXTENDING.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from flcore.core.layers import CIFAR10_CNN, FMNIST_CNN, Layer
from flcore.core.registry import Registry
from flcore.data import loading


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # the Config's `dataset` value
    title: str  # long name for text ("Fashion-MNIST")
    label: str  # short name for tables and plots ("F-MNIST")
    classes: tuple[str, ...]  # class names, index = label
    mean: tuple[float, ...]  # per-channel normalisation of images scaled to [0, 1]
    std: tuple[float, ...]
    image_shape: tuple[int, int, int]  # (C, H, W)
    train_size: int  # images in the full training split (bounds n_train)
    test_size: int  # images in the full test split (bounds n_test)
    architecture: tuple[Layer, ...]  # the model (flcore.core.layers)
    augment: bool  # random crop (4 px padding) and horizontal flip of training batches
    # the reference hyperparameters: batch_size, lr, momentum, lr_step (participant epochs), lr_gamma
    defaults: dict = field(default_factory=dict)
    pairs: tuple[tuple[int, int], ...] = ()  # the paper's (source, target) pairs; first = default
    max_batched_federations: int = 30  # fast engine on a CPU: federations per stack (memory: x k models)
    max_batched_federations_cuda: int = 30  # the same on a CUDA GPU (more fit, and larger stacks pay)
    load: Callable[..., loading.Dataset] | None = None  # load(root=None, progress=True, download=True)

    def stack_cap(self, device: str) -> int:
        """Federations one stack of the fast engine holds at most on `device` ("cpu" or "cuda";
        anything else counts as a CPU). The CPU caps bound a task's memory and stop where
        stacking stops paying on 2 cores; on a GPU, Fashion-MNIST gets cheaper per
        experiment-round up to about 240 stacked federations and CIFAR-10 up to about 30
        (benchmarks/cuda_check.py on an NVIDIA H200, docs/PERFORMANCE.md)."""
        return self.max_batched_federations_cuda if device == "cuda" else self.max_batched_federations

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def pair_label(self, src: int, tgt: int) -> str:
        return f"{self.label} {src}→{tgt} ({self.classes[src]} → {self.classes[tgt]})"


DATASETS: Registry[DatasetSpec] = Registry("dataset", "dataset")

DATASETS.register(DatasetSpec(
    name="fmnist", title="Fashion-MNIST", label="F-MNIST", classes=loading.FMNIST_CLASSES,
    mean=loading.FMNIST_MEAN, std=loading.FMNIST_STD, image_shape=(1, 28, 28),
    train_size=60000, test_size=10000, architecture=FMNIST_CNN, augment=False,
    defaults=dict(batch_size=4, lr=0.001, momentum=0.9, lr_step=10, lr_gamma=0.1),
    pairs=((4, 6), (6, 0), (1, 3)), max_batched_federations=30, max_batched_federations_cuda=240,
    load=partial(loading.load_dataset, "fmnist"),
))  # fmt: skip
DATASETS.register(DatasetSpec(
    name="cifar10", title="CIFAR-10", label="CIFAR-10", classes=loading.CIFAR10_CLASSES,
    mean=loading.CIFAR10_MEAN, std=loading.CIFAR10_STD, image_shape=(3, 32, 32),
    train_size=50000, test_size=10000, architecture=CIFAR10_CNN, augment=True,
    defaults=dict(batch_size=10, lr=0.01, momentum=0.5, lr_step=50, lr_gamma=0.5),
    pairs=((5, 3), (0, 2), (1, 9)), max_batched_federations=12, max_batched_federations_cuda=30,
    load=partial(loading.load_dataset, "cifar10"),
))  # fmt: skip


def label(name: str) -> str:
    """The short name of a dataset in tables and plots ("F-MNIST"); unknown names as given."""
    return DATASETS.get(name).label if name in DATASETS else str(name)


def load(name: str, root=None, *, progress: bool = True, download: bool = True) -> loading.Dataset:
    """The dataset `name`, loaded by its spec's loader."""
    spec = DATASETS.get(name)
    return spec.load(root=root, progress=progress, download=download)
