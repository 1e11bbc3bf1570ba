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

This module imports nothing: every layer may read it.
"""

from __future__ import annotations

__all__ = ["NUMERICS_VERSION", "key_version"]

NUMERICS_VERSION = 1


def key_version(flcore_version: str) -> str:
    """The version string a store key hashes: the flcore version and the numerics version."""
    return f"{flcore_version}+n{NUMERICS_VERSION}"
