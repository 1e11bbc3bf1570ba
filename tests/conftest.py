"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest
import torch

from flcore.data import DatasetNotFoundError, load_dataset


@pytest.fixture(scope="session")
def fmnist():
    """The real Fashion-MNIST (60,000 / 10,000), loaded once per test session."""
    try:
        return load_dataset("fmnist", download=False, progress=False)
    except DatasetNotFoundError as e:
        pytest.skip(f"Fashion-MNIST not installed (apt-get install dataset-fashion-mnist): {e}")


@pytest.fixture
def one_thread():
    """One torch thread: tests that start worker processes on a 2-core machine would
    otherwise oversubscribe the cores, and OpenMP threads then wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
