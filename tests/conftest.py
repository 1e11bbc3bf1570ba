"""Fixtures shared by the test modules."""

from __future__ import annotations

import os

import pytest
import torch

from flcore.data import DatasetNotFoundError, load_dataset


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs `-n auto`), the workers share the cores: each
    trains with its share of them, so that no core runs two OpenMP teams that wait on each
    other. Tests that compare numbers across processes pin their threads (`one_thread`)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups off the markers
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist's `--dist loadgroup`, the tests of a module that shares a module- or
    class-scoped fixture (a real run, a rendered workbook) go to one worker, so the fixture is
    computed once; every other test goes to whichever worker is free."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        if any(defs[-1].scope in ("module", "class") for defs in info.name2fixturedefs.values()):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def _real(name: str, how: str):
    try:
        return load_dataset(name, download=False, progress=False)
    except DatasetNotFoundError as e:
        pytest.skip(f"{name} not found ({how}): {e}")


@pytest.fixture(scope="session")
def fmnist():
    """The real Fashion-MNIST (60,000 / 10,000), loaded once per test session."""
    return _real("fmnist", "apt-get install dataset-fashion-mnist")


@pytest.fixture(scope="session")
def cifar10():
    """The real CIFAR-10 (50,000 / 10,000), loaded once per test session."""
    return _real("cifar10", "see the README, Data")


@pytest.fixture
def one_thread():
    """One torch thread: tests that start worker processes on a 2-core machine would
    otherwise oversubscribe the cores, and OpenMP threads then wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
