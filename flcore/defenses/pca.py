"""The paper's PCA defense, made to decide and act online (registered as "pca").

Every round, each selected participant's update of the source class's output row is added
to a history; from `start_round` on, a `PCADetector` (flcore.defenses.detector: standardise,
two principal components, two clusters, a rule for which is malicious) is fitted on it and
the participants it flags are left out of the aggregate (`mode`). scikit-learn is imported
only when the first federation starts, so configuring a run does not load it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flcore.core.errors import ConfigError, suggest
from flcore.core.params import Params, check_range
from flcore.defenses.base import DEFENSES, Defense, Federation, RoundUpdates

RULES = ("smaller", "far", "direction")  # which cluster is malicious (PCADetector.rule)
CLUSTERERS = ("kmeans", "gmm")


@dataclass(frozen=True)
class PCAParams(Params):
    start_round: int = 10  # act from this round on (the paper's picture uses rounds >= 10)
    # collect updates from this round on: rounds 1-2 move ~10x more and would make the
    # clusters "early vs late" instead of "malicious vs honest"
    rounds_from: int = 3
    mode: str = "block"  # "block": flagged participants are excluded for the rest of the run;
    # "round": only from this round's aggregate
    min_rows: int = 20  # updates collected before the first decision
    max_rows: int = 1000  # history the detector is fitted on (most recent rows)
    # act only on a clear split (silhouette of the two clusters; 0.5 was chosen on seed 0 of
    # the quick profile's Fashion-MNIST runs, docs/DEFENSE.md "the silhouette gate")
    min_silhouette: float = 0.5
    scope: str = "history"  # judge a participant by all its updates ("round": only this one)
    clusterer: str = "kmeans"  # or "gmm"
    # "smaller" (the minority cluster), "far" (the cluster farther from the origin) or
    # "direction" (the cluster whose updates point against the global source row)
    rule: str = "smaller"

    def check(self, context: dict) -> None:
        for name, valid in (("mode", ("block", "round")), ("scope", ("history", "round")),
                            ("clusterer", CLUSTERERS), ("rule", RULES)):  # fmt: skip
            v = getattr(self, name)
            if v not in valid:
                raise ConfigError(f"defense_params: {name}={v!r} is unknown{suggest(v, valid)} "
                                  f"(valid: {', '.join(valid)})")  # fmt: skip
        check_range("defense_params", "start_round", self.start_round, 1, fix="rounds are numbered from 1")
        check_range("defense_params", "rounds_from", self.rounds_from, 1, fix="rounds are numbered from 1")
        check_range("defense_params", "min_rows", self.min_rows, 3,
                    fix="the detector needs at least 3 updates to fit two clusters")  # fmt: skip
        if self.max_rows < self.min_rows:
            raise ConfigError(f"defense_params: max_rows={self.max_rows} < min_rows={self.min_rows}: "
                              f"the history could never reach min_rows; raise max_rows")  # fmt: skip
        check_range("defense_params", "min_silhouette", self.min_silhouette, -1.0, 1.0,
                    fix="a silhouette score is in [-1, 1]; 0.5 is the calibrated default")  # fmt: skip


class _State:
    def __init__(self, detector, src: int) -> None:
        self.detector, self.src, self.blocked = detector, src, set()


@DEFENSES.register
class PCADefense(Defense):
    """Online PCA detector on the source class's output-row updates, with blocking."""

    name = "pca"
    Params = PCAParams

    def start(self, federation: Federation) -> _State:
        from flcore.defenses.detector import OnlineDetector, PCADetector  # scikit-learn

        p = self.params
        det = OnlineDetector(PCADetector(clusterer=p.clusterer, rule=p.rule), min_rows=p.min_rows,
                             max_rows=p.max_rows, scope=p.scope)  # fmt: skip
        return _State(det, federation.src)

    def filter(self, state: _State, rnd: int, updates: RoundUpdates) -> np.ndarray:
        p, ids = self.params, updates.ids
        keep = np.ones(len(ids))
        if rnd < p.rounds_from:
            return keep
        rows = updates.output[:, state.src, :].double().cpu().numpy()
        if not np.isfinite(rows).all():
            return keep
        ref = updates.global_output[state.src].double().cpu().numpy()
        flagged = state.detector.flag_round(ids, rows, reference=ref)
        sep = getattr(state.detector.detector_, "silhouette_", np.nan)
        act = rnd >= p.start_round and len(flagged) and sep >= p.min_silhouette
        if p.mode == "block":
            if act:
                state.blocked.update(int(i) for i in flagged)
            drop = np.isin(ids, list(state.blocked))
        else:
            drop = np.isin(ids, flagged) if act else np.zeros(len(ids), bool)
        keep[drop] = 0.0
        return keep
