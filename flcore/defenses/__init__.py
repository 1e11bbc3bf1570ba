"""Defenses and aggregation rules: the aggregator's side of a round.

- `DEFENSES` (flcore.defenses.base): filters that decide who is kept each round; registered:
  "pca" (the paper's PCA detector, acting online with blocking).
- `AGGREGATORS` (flcore.defenses.aggregators): fedavg, median, trimmed_mean, krum,
  multi_krum, foolsgold; geometric_median, bulyan, centered_clipping, flame and fltrust, one
  module each.
- flcore.defenses.detector: the PCA detector itself and offline detection scoring
  (imports scikit-learn; nothing here loads it until a PCA defense starts).
"""

from flcore.defenses import (
    bulyan,  # noqa: F401  (registration)
    centered_clipping,  # noqa: F401  (registration)
    flame,  # noqa: F401  (registration)
    fltrust,  # noqa: F401  (registration)
    geometric_median,  # noqa: F401  (registration)
    pca,  # noqa: F401  (registration)
)
from flcore.defenses.aggregators import AGGREGATORS, Aggregator, RoundInfo
from flcore.defenses.base import DEFENSES, Defense, Federation, RoundUpdates

__all__ = ["AGGREGATORS", "DEFENSES", "Aggregator", "Defense", "Federation", "RoundInfo", "RoundUpdates"]
