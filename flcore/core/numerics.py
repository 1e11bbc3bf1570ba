"""The numerics version: which generation of numbers the code produces.

A result-store key hashes the resolved configuration (every field and every default of the
attack, defense and aggregator parameters), the flcore version and `NUMERICS_VERSION`. The
configuration alone cannot see a change of the code that computes the numbers, so:

Bump `NUMERICS_VERSION` whenever a code change alters the numbers a configuration produces:
model initialisation or architecture, the random streams (participant selection, partitions,
batches, attack choices), the engines (training loop, aggregation, a defense's filtering),
the metrics, or a default applied at run time outside `Config` (a module constant such as
`flcore.sim.models.BN_MOMENTUM`). Then regenerate the golden numbers::

    python tools/golden.py --write

`tests/test_golden.py` recomputes a handful of tiny real Fashion-MNIST runs and fails when
their numbers differ from `tests/golden.json`, or when that file's `numerics_version` is not
this one; `tools/golden.py --write` refuses to record different numbers under an unchanged
version. Bumping the version gives every stored run a new key, so a store filled by older code
is never served to newer code (the old entries stay on disk, unused).

A change confined to one dataset's code path (its model's evaluation, say) bumps that
dataset's entry of `DATASET_REVISIONS` instead: only that dataset's runs get new keys, and a
long computation on another dataset keeps its stored runs. A nonzero revision enters the key
as the configuration field `numerics_revision` (`Config.key_dict`); the golden file records the
revisions too, and has a case per dataset.

This module imports nothing: every layer may read it.
"""

from __future__ import annotations

__all__ = ["DATASET_REVISIONS", "NUMERICS_VERSION", "dataset_revision", "key_version"]

NUMERICS_VERSION = 1

# dataset name -> revision of the numbers of its own code path (absent: 0). History:
#   cifar10 1: each repeat's global model evaluated on its own, no longer in a grouped stack
#              (flcore.sim.engine._evaluate): fp32 and bf16 logits can round differently.
DATASET_REVISIONS: dict[str, int] = {"cifar10": 1}


def dataset_revision(dataset: str | None) -> int:
    """The numerics revision of `dataset`'s own code path (0 unless bumped)."""
    return DATASET_REVISIONS.get(dataset, 0)


def key_version(flcore_version: str) -> str:
    """The version string a store key hashes: the flcore version and the numerics version."""
    return f"{flcore_version}+n{NUMERICS_VERSION}"
