"""Datasets: one spec per dataset (`specs.DATASETS`) and the loaders behind them.

    from flcore.data import DATASETS, load_dataset
    DATASETS.get("fmnist").classes      # names, pairs, defaults, architecture, ...
    data = load_dataset("fmnist")        # uint8 tensors in memory (see loading.py for where from)
"""

from flcore.data.loading import (
    CIFAR10_CLASSES,
    CIFAR_WELL_KNOWN,
    FMNIST_CLASSES,
    FMNIST_WELL_KNOWN,
    Dataset,
    DatasetFormatError,
    DatasetNotFoundError,
    augment_crop_flip,
    cache_dir,
    clear_cache,
    load_dataset,
    normalize,
    partition_dirichlet,
    partition_iid,
)
from flcore.data.specs import DATASETS, DatasetSpec

__all__ = [
    "CIFAR10_CLASSES", "CIFAR_WELL_KNOWN", "DATASETS", "FMNIST_CLASSES", "FMNIST_WELL_KNOWN",
    "Dataset", "DatasetFormatError", "DatasetNotFoundError", "DatasetSpec", "augment_crop_flip",
    "cache_dir", "clear_cache", "load_dataset", "normalize", "partition_dirichlet", "partition_iid",
]  # fmt: skip
