"""The paper's defense (Tolpegin et al. 2020, §4, Algorithm 1) as a detector that decides.

Algorithm 1 collects, for a suspected source class c_src, every selected participant's
update θ_Δ,i = θ_{r,i} − θ_{r−1} restricted to the weights that feed the output node of
c_src (row c_src of the last linear layer's weight), standardises each coordinate,
projects onto two principal components and plots the result. The paper stops at the
picture. :class:`PCADetector` adds the decision: a two-cluster model on the projection
and a rule, blind to the ground truth, for which cluster is malicious.

Pieces:

- :func:`source_class_updates`, :func:`updates_frame`: from recorded last-layer weight
  updates ``[n_rows, C, F]`` to the detector's input ``X: [n_rows, F]`` and a tidy
  ``meta`` frame (participant, round, malicious).
- :class:`PCADetector`: scikit-learn estimator (fit / transform / decision_function /
  predict / fit_predict).
- :func:`participant_verdict`: per-row scores or flags to one verdict per participant.
- :func:`detection_metrics`: precision, recall, F1, FPR, ROC AUC and counts vs the truth.
- :class:`OnlineDetector`: accumulates rows across rounds and flags participants of the
  current round, for an engine that blocks flagged participants.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import (
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    silhouette_score,
)
from sklearn.mixture import GaussianMixture
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

__all__ = [
    "OnlineDetector",
    "PCADetector",
    "detection_metrics",
    "participant_verdict",
    "source_class_updates",
    "updates_frame",
]

from flcore.defenses.pca import CLUSTERERS as _CLUSTERERS  # noqa: E402
from flcore.defenses.pca import RULES  # noqa: E402


def _to_numpy(a, dtype=None) -> np.ndarray:
    """Plain numpy array from a numpy array, list or torch tensor (detached, on CPU)."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=dtype)


# ---------------------------------------------------------------------------------------
# Extraction: recorded last-layer updates -> detector input
# ---------------------------------------------------------------------------------------


def source_class_updates(updates, src: int) -> np.ndarray:
    """Rows of the updates that feed the output node of class ``src``.

    Args:
        updates: ``[n_rows, C, F]`` last-linear-layer WEIGHT updates θ_{r,i} − θ_{r−1}
            (``C`` classes, ``F`` inputs to the layer: 1568 for the Fashion-MNIST CNN, 128
            for the CIFAR-10 CNN); numpy array or torch tensor.
        src: the (suspected) source class, ``0 <= src < C``.

    Returns:
        ``[n_rows, F]`` numpy array (same floating dtype).
    """
    u = _to_numpy(updates)
    if u.ndim != 3:
        raise ValueError(
            f"updates has shape {u.shape}: expected [n_rows, C, F], the last linear layer's "
            "weight update per recorded row (bias excluded)"
        )
    C = u.shape[1]
    if not (isinstance(src, (int, np.integer)) and 0 <= src < C):
        raise ValueError(f"src={src!r}: the source class must be an int in [0, {C - 1}]")
    return u[:, int(src), :]


def updates_frame(updates, participant_ids, rounds, malicious, src=None, rounds_from=None):
    """Detector input and a tidy description of its rows.

    Args:
        updates: ``[n_rows, C, F]`` last-linear-layer weight updates, one row per
            (round, selected participant).
        participant_ids, rounds, malicious: ``[n_rows]`` each: who sent the row, in which
            global round, and whether that participant is malicious (ground truth, kept
            for evaluation only; the detector never sees it).
        src: the suspected source class; ``None`` (c_src unknown) returns one matrix per
            class, as the paper suggests running Algorithm 1 once per class.
        rounds_from: keep only rows with ``round >= rounds_from`` (the paper uses rounds
            10 to 200, i.e. ``rounds_from=10``); ``None`` keeps all.

    Returns:
        ``(X, meta)``: ``X`` is ``[n_kept, F]`` (or ``{class: [n_kept, F]}`` when
        ``src is None``); ``meta`` is a DataFrame with columns ``participant``, ``round``,
        ``malicious`` aligned with the rows of ``X`` (index 0..n_kept−1).
    """
    u = _to_numpy(updates)
    if u.ndim != 3:
        raise ValueError(f"updates has shape {u.shape}: expected [n_rows, C, F]")
    n = u.shape[0]
    pid = _to_numpy(participant_ids).reshape(-1)
    rnd = _to_numpy(rounds).reshape(-1)
    mal = _to_numpy(malicious).reshape(-1).astype(bool)
    for name, a in (("participant_ids", pid), ("rounds", rnd), ("malicious", mal)):
        if len(a) != n:
            raise ValueError(f"{name} has {len(a)} entries: expected one per row ({n})")
    keep = np.ones(n, dtype=bool) if rounds_from is None else rnd >= rounds_from
    meta = pd.DataFrame({"participant": pid[keep], "round": rnd[keep], "malicious": mal[keep]})
    u = u[keep]
    if src is None:
        return {c: u[:, c, :] for c in range(u.shape[1])}, meta
    return source_class_updates(u, src), meta


# ---------------------------------------------------------------------------------------
# The detector
# ---------------------------------------------------------------------------------------


class PCADetector(BaseEstimator):
    """Algorithm 1 (standardise, PCA to 2 components) plus a 2-cluster decision.

    Parameters:
        n_components: principal components kept (the paper: 2). Clipped to
            ``min(n_rows, n_features)`` at fit time.
        clusterer: ``"kmeans"`` (KMeans, 2 clusters, ``n_init=10``), ``"gmm"`` (2-component
            full-covariance GaussianMixture), or an unfitted scikit-learn clusterer with 2
            clusters; an instance must expose ``predict_proba`` (scored like ``"gmm"``) or
            ``cluster_centers_`` after fitting (scored like ``"kmeans"``).
        scaler: transformer for the first pipeline step; ``None`` means ``StandardScaler()``
            (the paper's per-coordinate standardisation), ``"passthrough"`` skips it.
        random_state: seed for the clusterer (and a randomised PCA solver).
        rule: how the malicious cluster is chosen, without ground truth:

            - ``"smaller"`` (default): the cluster with fewer rows. The threat model has
              m < 50% malicious participants and random selection, so malicious rows are
              the minority of the collected updates. A tie falls back to ``"far"``.
            - ``"far"``: the cluster whose centroid (in the projection) is farther from
              the coordinate-wise median of all projected points. The median sits inside
              the honest majority, so this also assumes a minority of attackers but
              stays meaningful when the clusterer splits the honest rows unevenly.
            - ``"direction"``: needs ``reference``, the global model's source row that the
              updates were computed from (``fit(X, reference=w)``). A participant that
              trains source images under the target label pushes the source logit down on
              them, so its update of the source row points against that row; an honest one
              does not. The malicious cluster is the one whose rows have the lower mean
              cosine with ``reference``, and only if that mean is below 0; otherwise
              nobody is flagged. No minority assumption: it also holds when attackers
              outnumber honest participants in the collected rows, and an attack-free
              window is not split into a "malicious" half (docs/DEFENSE.md).

    Fitted attributes:
        ``pipeline_`` (scaler + PCA), ``clusterer_``, ``malicious_cluster_`` (0 or 1, or
        ``-1`` when degenerate or, under ``"direction"``, when neither cluster points
        against ``reference``), ``cluster_sizes_`` ``[2]``, ``centroids_`` ``[2, d]`` (means
        of the projected rows of each cluster), ``labels_`` (``[n]`` 0/1 flags of the
        training rows, 1 = malicious), ``silhouette_`` (separation of the two clusters in
        [-1, 1]; NaN when undefined), ``degenerate_``, ``n_features_in_``, and under
        ``"direction"`` ``cluster_cosine_`` ``[2]`` (mean cosine of each cluster's rows with
        ``reference``).

    Degenerate input: fewer than 3 rows raise ``ValueError`` (two clusters of which one
    is a minority need at least 3 rows). If the rows are all identical, or the projection
    has no spread, there is nothing to separate: ``degenerate_ = True``, every row is
    honest (``predict`` gives 0, ``decision_function`` gives 0).

    Limitation: the detector always splits into two clusters, so on attack-free data it
    still flags the smaller cluster; a low ``silhouette_`` is the sign of no real split.
    """

    def __init__(
        self,
        n_components=2,
        clusterer="kmeans",
        scaler=None,
        random_state=0,
        rule="smaller",
    ):
        self.n_components = n_components
        self.clusterer = clusterer
        self.scaler = scaler
        self.random_state = random_state
        self.rule = rule

    # -- construction helpers ------------------------------------------------------------

    def _make_pipeline(self, n_rows: int, n_features: int) -> Pipeline:
        if self.scaler is None:
            scaler = StandardScaler()
        elif isinstance(self.scaler, str):
            scaler = self.scaler
        else:
            scaler = clone(self.scaler)
        n_comp = min(int(self.n_components), n_rows, n_features)
        return Pipeline(
            [("scale", scaler), ("pca", PCA(n_components=n_comp, random_state=self.random_state))]
        )

    def _make_clusterer(self):
        if isinstance(self.clusterer, str):
            if self.clusterer == "kmeans":
                return KMeans(n_clusters=2, n_init=10, random_state=self.random_state)
            if self.clusterer == "gmm":
                return GaussianMixture(n_components=2, n_init=3, random_state=self.random_state)
            raise ValueError(
                f"clusterer={self.clusterer!r}: use one of {list(_CLUSTERERS)} or an unfitted "
                "scikit-learn clusterer instance with 2 clusters"
            )
        return clone(self.clusterer)

    @staticmethod
    def _check_X(X) -> np.ndarray:
        X = _to_numpy(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError(
                f"X has shape {X.shape}: expected [n_rows, n_features], one update per row "
                "(see source_class_updates)"
            )
        if not np.isfinite(X).all():
            raise ValueError("X contains NaN or inf: check the recorded updates")
        return X

    # -- fitting ---------------------------------------------------------------------------

    def fit(self, X, y=None, reference=None):
        """Fit scaler + PCA on ``X: [n_rows, n_features]``, then the 2-cluster model on the
        projection, then pick the malicious cluster by ``rule``. ``y`` is ignored;
        ``reference`` ``[n_features]``: the global source row (rule ``"direction"`` only)."""
        if self.rule not in RULES:
            raise ValueError(f"rule={self.rule!r}: use one of {list(RULES)}")
        X = self._check_X(X)
        n, d = X.shape
        ref = None
        if self.rule == "direction":
            if reference is None:
                raise ValueError("rule='direction' needs reference=: the global model's source row "
                                 "that the updates started from (fit(X, reference=w_src))")  # fmt: skip
            ref = _to_numpy(reference, dtype=np.float64).reshape(-1)
            if ref.shape != (d,) or not np.isfinite(ref).all() or not np.any(ref):
                raise ValueError(f"reference has shape {ref.shape}: expected a finite, non-zero "
                                 f"vector of {d} values, one per update feature")  # fmt: skip
        if n < 3:
            raise ValueError(
                f"X has {n} row(s): the detector needs at least 3 updates to form a "
                "majority and a minority cluster; collect more rounds first"
            )
        self.n_features_in_ = d
        self.pipeline_ = self._make_pipeline(n, d)
        self.clusterer_ = self._make_clusterer()
        no_spread = bool(np.ptp(X, axis=0).max() <= 1e-12 * max(1.0, np.abs(X).max()))
        with warnings.catch_warnings():
            # PCA of constant data divides 0 by 0 in explained_variance_ratio_
            if no_spread:
                warnings.simplefilter("ignore", RuntimeWarning)
            Z = self.pipeline_.fit_transform(X)
        distinct = np.unique(np.round(Z, 12), axis=0).shape[0]
        self.degenerate_ = no_spread or distinct < 2
        if self.degenerate_:
            self.malicious_cluster_ = -1
            self.cluster_sizes_ = np.array([n, 0])
            self.centroids_ = np.vstack([Z.mean(axis=0), np.full(Z.shape[1], np.nan)])
            self.labels_ = np.zeros(n, dtype=int)
            self.silhouette_ = np.nan
            self.cluster_cosine_ = np.full(2, np.nan)
            return self

        labels = self.clusterer_.fit_predict(Z)
        if not (
            hasattr(self.clusterer_, "predict_proba")
            or hasattr(self.clusterer_, "cluster_centers_")
        ):
            raise TypeError(
                f"clusterer {type(self.clusterer_).__name__} has neither predict_proba nor "
                "cluster_centers_: the detector cannot score new rows with it"
            )
        sizes = np.bincount(labels, minlength=2)[:2]
        centroids = np.vstack(
            [
                Z[labels == c].mean(axis=0) if sizes[c] else np.full(Z.shape[1], np.inf)
                for c in (0, 1)
            ]
        )
        self.cluster_sizes_ = sizes
        self.centroids_ = centroids
        if ref is not None:
            norms = np.linalg.norm(X, axis=1) * np.linalg.norm(ref)
            cos = np.divide(X @ ref, norms, out=np.zeros(n), where=norms > 0)
            self.cluster_cosine_ = np.array([cos[labels == c].mean() if sizes[c] else np.inf for c in (0, 1)])
            low = int(np.argmin(self.cluster_cosine_))
            self.malicious_cluster_ = low if self.cluster_cosine_[low] < 0 else -1
        else:
            self.malicious_cluster_ = self._choose_malicious(Z, sizes, centroids)
        self.labels_ = (labels == self.malicious_cluster_).astype(int)
        self.silhouette_ = (
            float(silhouette_score(Z, labels, sample_size=min(n, 2000), random_state=0))
            if 2 <= len(np.unique(labels)) <= n - 1
            else np.nan
        )
        return self

    def _choose_malicious(self, Z, sizes, centroids) -> int:
        if self.rule == "smaller" and sizes[0] != sizes[1]:
            return int(np.argmin(sizes))
        # "far", or a tie under "smaller": the robust centre lies in the honest majority
        centre = np.median(Z, axis=0)
        dist = np.linalg.norm(centroids - centre, axis=1)
        return int(np.argmax(np.where(np.isfinite(dist), dist, -np.inf)))

    def _check_fitted(self):
        if not hasattr(self, "pipeline_"):
            raise RuntimeError("this PCADetector is not fitted yet: call fit(X) first")

    # -- outputs ---------------------------------------------------------------------------

    def transform(self, X) -> np.ndarray:
        """Project ``X: [n, n_features]`` to ``[n, n_components]`` (the paper's Fig. 8)."""
        self._check_fitted()
        return self.pipeline_.transform(self._check_X(X))

    def fit_transform(self, X, y=None, reference=None) -> np.ndarray:
        return self.fit(X, reference=reference).transform(X)

    def decision_function(self, X) -> np.ndarray:
        """Suspicion score ``[n]``, higher = more suspicious, > 0 = assigned to the
        malicious cluster.

        kmeans-like: distance to the honest centroid minus distance to the malicious
        centroid (in the projection). gmm-like: log posterior odds of the malicious
        component, ``log p(mal | x) − log p(honest | x)`` (clipped to about ±690).
        Degenerate fit, or no cluster points against ``reference`` (rule ``"direction"``):
        all zeros.
        """
        self._check_fitted()
        Z = self.transform(X)
        if self.degenerate_ or self.malicious_cluster_ < 0:
            return np.zeros(len(Z))
        mal = self.malicious_cluster_
        if hasattr(self.clusterer_, "predict_proba"):
            p = np.clip(self.clusterer_.predict_proba(Z), 1e-300, None)
            return np.log(p[:, mal]) - np.log(p[:, 1 - mal])
        c = self.clusterer_.cluster_centers_
        return np.linalg.norm(Z - c[1 - mal], axis=1) - np.linalg.norm(Z - c[mal], axis=1)

    def predict(self, X) -> np.ndarray:
        """Flags ``[n]`` int, 1 = malicious (``decision_function(X) > 0``)."""
        return (self.decision_function(X) > 0).astype(int)

    def fit_predict(self, X, y=None, reference=None) -> np.ndarray:
        return self.fit(X, reference=reference).predict(X)


# ---------------------------------------------------------------------------------------
# From rows to participants, and scoring against the truth
# ---------------------------------------------------------------------------------------


def participant_verdict(participant_ids, scores_or_flags, how="mean", threshold=None):
    """One verdict per participant from per-row scores or flags.

    Args:
        participant_ids: ``[n]`` who sent each row.
        scores_or_flags: ``[n]`` ``PCADetector.decision_function`` scores (``how="mean"``)
            or 0/1 flags from ``predict`` (``how="vote"``; scores are turned into flags by
            ``> 0``).
        how: ``"mean"``: score = mean row score, flagged if ``score > threshold`` (default
            0). ``"vote"``: score = fraction of the participant's rows flagged, flagged if
            ``score > threshold`` (default 0.5, a strict majority).

    Returns:
        DataFrame sorted by participant with columns ``participant``, ``n_updates``,
        ``score`` (float), ``flagged`` (bool).
    """
    pid = _to_numpy(participant_ids).reshape(-1)
    s = _to_numpy(scores_or_flags).reshape(-1).astype(np.float64)
    if len(pid) != len(s):
        raise ValueError(
            f"participant_ids has {len(pid)} entries, scores_or_flags {len(s)}: one each per row"
        )
    if how == "mean":
        thr = 0.0 if threshold is None else threshold
        values = s
    elif how == "vote":
        thr = 0.5 if threshold is None else threshold
        values = (s > 0).astype(np.float64)
    else:
        raise ValueError(f"how={how!r}: use 'mean' (mean score) or 'vote' (fraction flagged)")
    g = pd.DataFrame({"participant": pid, "v": values}).groupby("participant", sort=True)["v"]
    out = pd.DataFrame({"n_updates": g.size(), "score": g.mean()}).reset_index()
    out["n_updates"] = out["n_updates"].astype(int)
    out["flagged"] = out["score"] > thr
    return out


def detection_metrics(y_true, y_pred, scores=None) -> dict:
    """Detection quality against the known truth (1 = malicious).

    Returns a dict with ``precision``, ``recall``, ``f1`` (0 when undefined), ``fpr``
    (``fp / (fp + tn)``, NaN without negatives), ``roc_auc`` (from ``scores``, NaN when
    ``scores`` is None or only one class is present) and the counts ``tp``, ``fp``, ``tn``,
    ``fn``.
    """
    yt = _to_numpy(y_true).reshape(-1).astype(int)
    yp = _to_numpy(y_pred).reshape(-1).astype(int)
    if len(yt) != len(yp):
        raise ValueError(f"y_true has {len(yt)} entries, y_pred {len(yp)}: they must match")
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(yt, yp, labels=[0, 1]).ravel())
    auc = np.nan
    if scores is not None and len(np.unique(yt)) == 2:
        auc = float(roc_auc_score(yt, _to_numpy(scores).reshape(-1)))
    return {
        "precision": float(precision_score(yt, yp, labels=[0, 1], zero_division=0)),
        "recall": float(recall_score(yt, yp, labels=[0, 1], zero_division=0)),
        "f1": float(f1_score(yt, yp, labels=[0, 1], zero_division=0)),
        "fpr": fp / (fp + tn) if (fp + tn) else np.nan,
        "roc_auc": auc,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


# ---------------------------------------------------------------------------------------
# Online use by the engine
# ---------------------------------------------------------------------------------------


class OnlineDetector:
    """Flags participants round by round from the updates seen so far.

    Each call to :meth:`flag_round` with the round's rows (``X: [k, F]``, e.g.
    ``source_class_updates(...)`` of the selected participants, and their ids):

    1. if fewer than ``min_rows`` rows (history + this round) exist, flags nobody;
    2. otherwise fits a fresh clone of ``detector`` on history + this round's rows and
       flags the participants of this round by :func:`participant_verdict` over
       ``scope``: ``"round"`` uses only this round's rows, ``"history"`` all rows the
       participant ever sent (steadier, as a malicious participant sends many rows);
    3. appends this round's rows to the history (flagged ones included: the malicious
       cluster needs its members to stay visible), keeping the last ``max_rows`` if set.

    Attributes: ``detector_`` (last fitted detector or None), ``n_rows_``.
    The engine decides what to do with the flagged ids (e.g. exclude them from the mean).
    """

    def __init__(self, detector=None, min_rows=20, max_rows=None, scope="round", how="mean"):
        if scope not in ("round", "history"):
            raise ValueError(f"scope={scope!r}: use 'round' or 'history'")
        if min_rows < 3:
            raise ValueError(f"min_rows={min_rows}: the detector needs at least 3 rows")
        self.detector = PCADetector() if detector is None else detector
        self.min_rows = min_rows
        self.max_rows = max_rows
        self.scope = scope
        self.how = how
        self.reset()

    def reset(self) -> None:
        """Forget all collected rows."""
        self._X: list[np.ndarray] = []
        self._ids: list[np.ndarray] = []
        self.detector_ = None
        self.n_rows_ = 0

    def flag_round(self, participant_ids, X, reference=None) -> np.ndarray:
        """Ids (sorted, unique) of this round's participants to flag; empty before
        ``min_rows`` rows have been collected. ``reference``: the global source row of this
        round, passed to the detector's fit (needed by rule ``"direction"``)."""
        X = PCADetector._check_X(X)
        ids = _to_numpy(participant_ids).reshape(-1)
        if len(ids) != len(X):
            raise ValueError(f"{len(ids)} participant ids for {len(X)} rows: one id per row")
        all_X = np.concatenate([*self._X, X]) if self._X else X
        all_ids = np.concatenate([*self._ids, ids]) if self._ids else ids
        flagged = ids[:0]
        if len(all_X) >= self.min_rows:
            det = clone(self.detector)
            det = det.fit(all_X) if reference is None else det.fit(all_X, reference=reference)
            self.detector_ = det
            if self.scope == "round":
                verdict = participant_verdict(ids, det.decision_function(X), how=self.how)
            else:
                verdict = participant_verdict(all_ids, det.decision_function(all_X), how=self.how)
                verdict = verdict[verdict["participant"].isin(ids)]
            flagged = verdict.loc[verdict["flagged"], "participant"].to_numpy()
        self._X.append(X)
        self._ids.append(ids)
        if self.max_rows is not None:
            self._trim(self.max_rows)
        self.n_rows_ = sum(len(x) for x in self._X)
        return np.unique(flagged)

    def _trim(self, max_rows: int) -> None:
        X = np.concatenate(self._X)[-max_rows:]
        ids = np.concatenate(self._ids)[-max_rows:]
        self._X, self._ids = [X], [ids]


# ---------------------------------------------------------------------------------------
# Offline evaluation on a run's recorded updates
# ---------------------------------------------------------------------------------------


def result_updates(result, repeat: int, src: int | None = None, rounds_from: int = 10):
    """Detector input from one repeat of a `flcore.sim.result.Result` run with
    ``record_updates="source"`` or ``"all"``: ``(X [n, F], meta)`` as `updates_frame`."""
    if result.updates is None:
        raise ValueError(
            "this result has no recorded updates: run it with record_updates='source' (or 'all')"
        )
    cfg = result.config
    u = result.updates[repeat]  # [rounds, k, rows, F]
    T, k = u.shape[:2]
    sel = result.selected[repeat]
    mal = np.isin(sel, result.malicious[repeat])
    rounds = np.repeat(np.arange(1, T + 1), k)
    flat = u.reshape(T * k, *u.shape[2:])
    if flat.shape[1] == 1:  # only the source row was recorded
        if src not in (None, cfg.src):
            raise ValueError(f"src={src}: only class {cfg.src}'s row was recorded; use record_updates='all'")
        flat, src = flat, 0
    else:
        src = cfg.src if src is None else src
    return updates_frame(flat, sel.reshape(-1), rounds, mal.reshape(-1), src=src, rounds_from=rounds_from)


def evaluate_detection(result, detector=None, rounds_from: int = 10, how: str = "mean") -> pd.DataFrame:
    """Algorithm 1 with a decision, scored against the truth, for every repeat of a run.

    Fits `detector` (default `PCADetector()`) on each repeat's source-class updates of rounds
    ``>= rounds_from`` and returns one row per (repeat, level) with level "update" (every
    row judged) and "participant" (rows aggregated by `participant_verdict`), holding the
    `detection_metrics` columns. Participants never selected in those rounds are absent.
    """
    detector = PCADetector() if detector is None else detector
    rows = []
    for j in range(result.updates.shape[0] if result.updates is not None else 0):
        X, meta = result_updates(result, j, rounds_from=rounds_from)
        det = clone(detector).fit(X)
        scores = det.decision_function(X)
        rows.append({"repeat": j, "level": "update", **detection_metrics(meta["malicious"], scores > 0, scores)})
        verdict = participant_verdict(meta["participant"], scores, how=how)
        truth = np.isin(verdict["participant"], result.malicious[j])
        rows.append({"repeat": j, "level": "participant",
                     **detection_metrics(truth, verdict["flagged"], verdict["score"])})  # fmt: skip
    if not rows:
        result_updates(result, 0)  # raises the explanatory error
    return pd.DataFrame(rows)
