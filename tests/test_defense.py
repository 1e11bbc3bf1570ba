"""The PCA detector (Algorithm 1 + decision) on planted data, and its helpers."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.preprocessing import MinMaxScaler

from flcore.defenses.detector import (
    OnlineDetector,
    PCADetector,
    detection_metrics,
    participant_verdict,
    source_class_updates,
    updates_frame,
)


def planted(seed=0, n_honest=40, n_mal=8, dim=50, shift=1.0):
    """Honest rows ~ N(0, 1); malicious rows shifted by ``shift`` in every coordinate.
    Rows come in a shuffled order so that no rule can lean on position."""
    rng = np.random.default_rng(seed)
    X = np.vstack([rng.normal(size=(n_honest, dim)), rng.normal(size=(n_mal, dim)) + shift])
    y = np.r_[np.zeros(n_honest, int), np.ones(n_mal, int)]
    order = rng.permutation(len(y))
    return X[order], y[order]


@pytest.mark.parametrize("clusterer", ["kmeans", "gmm"])
@pytest.mark.parametrize("rule", ["smaller", "far"])
def test_separates_planted_clusters(clusterer, rule):
    X, y = planted()
    det = PCADetector(clusterer=clusterer, rule=rule).fit(X)
    scores = det.decision_function(X)
    m = detection_metrics(y, det.predict(X), scores)
    assert m["roc_auc"] > 0.99
    assert m["recall"] == 1.0 and m["fpr"] == 0.0
    assert np.array_equal(det.labels_, y)
    assert det.cluster_sizes_[det.malicious_cluster_] == 8
    assert det.silhouette_ > 0.5


def test_rule_is_blind_to_truth_minority_is_flagged():
    # the same data with malicious/honest roles swapped in size: the rule follows the
    # minority, so flags move with it (it cannot be reading labels)
    X, y = planted(n_honest=8, n_mal=40)
    det = PCADetector(rule="smaller").fit(X)
    assert np.array_equal(det.predict(X), 1 - y)
    # fit takes no labels at all: passing y changes nothing
    det2 = PCADetector(rule="smaller").fit(X, y=np.zeros(len(X)))
    assert np.array_equal(det2.predict(X), det.predict(X))


def test_predict_agrees_with_decision_sign_on_new_rows():
    X, _ = planted()
    det = PCADetector().fit(X)
    Xn, yn = planted(seed=1)
    assert np.array_equal(det.predict(Xn), (det.decision_function(Xn) > 0).astype(int))
    assert detection_metrics(yn, det.predict(Xn), det.decision_function(Xn))["roc_auc"] > 0.99


def test_transform_shape_and_pipeline():
    X, _ = planted()
    det = PCADetector()
    Z = det.fit_transform(X)
    assert Z.shape == (48, 2)
    assert [name for name, _ in det.pipeline_.steps] == ["scale", "pca"]
    assert det.transform(X[:3]).shape == (3, 2)
    # the scaler is swappable
    det_mm = PCADetector(scaler=MinMaxScaler()).fit(X)
    assert isinstance(det_mm.pipeline_.named_steps["scale"], MinMaxScaler)


def test_sklearn_clone_and_params():
    det = PCADetector(clusterer="gmm", rule="far", random_state=3)
    params = det.get_params()
    assert params == {
        "n_components": 2,
        "clusterer": "gmm",
        "scaler": None,
        "random_state": 3,
        "rule": "far",
    }
    c = clone(det)
    assert c.get_params() == params and not hasattr(c, "pipeline_")
    c.set_params(rule="smaller", n_components=3)
    X, _ = planted()
    assert c.fit(X).transform(X).shape == (48, 3)


def test_degenerate_inputs():
    same = np.ones((6, 10))
    det = PCADetector().fit(same)
    assert det.degenerate_
    assert np.array_equal(det.predict(same), np.zeros(6, int))
    assert np.array_equal(det.decision_function(same), np.zeros(6))
    assert det.transform(same).shape == (6, 2)
    with pytest.raises(ValueError, match="at least 3"):
        PCADetector().fit(np.random.default_rng(0).normal(size=(2, 5)))
    with pytest.raises(ValueError, match="rule='biggest'"):
        PCADetector(rule="biggest").fit(same)
    with pytest.raises(ValueError, match="clusterer='dbscan'"):
        PCADetector(clusterer="dbscan").fit(planted()[0])
    with pytest.raises(RuntimeError, match="not fitted"):
        PCADetector().predict(same)


def test_participant_verdict_several_rows_each():
    # 10 participants, 5 rows each; participants 7 and 9 are malicious
    rng = np.random.default_rng(4)
    pids = np.repeat(np.arange(10), 5)
    mal = np.isin(pids, [7, 9])
    X = rng.normal(size=(50, 30)) + 1.2 * mal[:, None]
    det = PCADetector().fit(X)
    for how, values in (("mean", det.decision_function(X)), ("vote", det.predict(X))):
        v = participant_verdict(pids, values, how=how)
        assert list(v.columns) == ["participant", "n_updates", "score", "flagged"]
        assert v["n_updates"].tolist() == [5] * 10
        assert v.loc[v["flagged"], "participant"].tolist() == [7, 9]


def test_participant_verdict_vote_by_hand():
    v = participant_verdict(["a", "a", "a", "b", "b"], [1, 1, 0, 0, 1], how="vote")
    assert v["score"].tolist() == pytest.approx([2 / 3, 0.5])
    assert v["flagged"].tolist() == [True, False]  # a tie is not a majority
    with pytest.raises(ValueError, match="how='max'"):
        participant_verdict([1], [1.0], how="max")


def test_detection_metrics_known_counts():
    y_true = [1, 1, 1, 0, 0, 0, 0, 0]
    y_pred = [1, 1, 0, 1, 0, 0, 0, 0]
    scores = [0.9, 0.8, 0.1, 0.7, 0.2, 0.3, 0.0, -1.0]
    m = detection_metrics(y_true, y_pred, scores)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 4, 1)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["fpr"] == pytest.approx(1 / 5)
    # positives' scores 0.9, 0.8, 0.1 vs negatives: 0.1 beats 2 of 5 -> (5 + 5 + 2) / 15
    assert m["roc_auc"] == pytest.approx(12 / 15)
    one_class = detection_metrics([0, 0, 0], [0, 1, 0], [0.1, 0.9, 0.2])
    assert np.isnan(one_class["roc_auc"]) and one_class["fp"] == 1


def test_source_class_updates_and_frame_shapes():
    rng = np.random.default_rng(5)
    n, C, F = 12, 10, 16
    upd = rng.normal(size=(n, C, F)).astype(np.float32)
    pids = np.tile(np.arange(4), 3)
    rounds = np.repeat([5, 10, 11], 4)
    mal = pids == 3
    assert np.array_equal(source_class_updates(upd, 4), upd[:, 4, :])
    assert np.array_equal(source_class_updates(torch.from_numpy(upd), 4), upd[:, 4, :])
    with pytest.raises(ValueError, match="src=10"):
        source_class_updates(upd, 10)

    X, meta = updates_frame(upd, pids, rounds, mal, src=4, rounds_from=10)
    assert X.shape == (8, F)
    assert np.array_equal(X, upd[4:, 4, :])
    assert isinstance(meta, pd.DataFrame)
    assert list(meta.columns) == ["participant", "round", "malicious"]
    assert len(meta) == 8 and meta["round"].min() == 10 and meta["malicious"].sum() == 2

    per_class, meta_all = updates_frame(upd, pids, rounds, mal)
    assert sorted(per_class) == list(range(C)) and per_class[0].shape == (n, F)
    assert len(meta_all) == n
    with pytest.raises(ValueError, match="rounds"):
        updates_frame(upd, pids, rounds[:-1], mal)


def test_online_detector_flags_malicious_after_warmup():
    rng = np.random.default_rng(6)
    online = OnlineDetector(min_rows=20)
    malicious = {3, 17}
    flagged_rounds = []
    for r in range(12):
        ids = rng.choice(20, size=5, replace=False)
        if r % 2 == 0:  # make sure attackers show up
            ids[0] = 3 if r % 4 == 0 else 17
            ids = np.unique(ids)
        X = rng.normal(size=(len(ids), 40)) + 1.5 * np.isin(ids, list(malicious))[:, None]
        flagged = online.flag_round(ids, X)
        if r < 3:  # fewer than 20 rows collected
            assert len(flagged) == 0
        else:
            flagged_rounds.append((set(flagged.tolist()), set(ids.tolist()) & malicious))
    assert online.n_rows_ > 20 and online.detector_ is not None
    for flagged, truth in flagged_rounds:
        assert flagged == truth


def pointing(seed=0, n_honest=40, n_mal=8, dim=50, a=3.0):
    """Rows around +a·r̂ (honest: their updates reinforce the global source row r) and −a·r̂
    (malicious: trained on flipped labels, their updates point against it); shuffled."""
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=dim)
    unit = ref / np.linalg.norm(ref)
    X = np.vstack([rng.normal(size=(n_honest, dim)) + a * unit, rng.normal(size=(n_mal, dim)) - a * unit])
    y = np.r_[np.zeros(n_honest, int), np.ones(n_mal, int)]
    order = rng.permutation(len(y))
    return X[order], y[order], ref


@pytest.mark.parametrize("n_honest,n_mal", [(40, 8), (8, 40)])
def test_direction_rule_follows_the_update_direction_not_the_cluster_size(n_honest, n_mal):
    X, y, ref = pointing(n_honest=n_honest, n_mal=n_mal)
    det = PCADetector(rule="direction").fit(X, reference=ref)
    assert np.array_equal(det.predict(X), y)  # also when the attackers are the majority
    assert det.cluster_cosine_[det.malicious_cluster_] < 0 < det.cluster_cosine_[1 - det.malicious_cluster_]
    # "smaller" flags the minority, which is honest in the second case
    smaller = PCADetector(rule="smaller").fit(X).predict(X)
    assert np.array_equal(smaller, y if n_mal < n_honest else 1 - y)


def test_direction_rule_flags_nobody_without_an_update_against_the_row():
    X, _, ref = pointing(n_mal=0)
    X = np.vstack([X, X[:6] + 4 * ref / np.linalg.norm(ref)])  # two honest clusters, both along +r
    det = PCADetector(rule="direction").fit(X, reference=ref)
    assert det.malicious_cluster_ == -1 and (det.cluster_cosine_ > 0).all()
    assert not det.predict(X).any() and not det.decision_function(X).any()
    online = OnlineDetector(PCADetector(rule="direction"), min_rows=10)
    assert len(online.flag_round(np.arange(len(X)), X, reference=ref)) == 0


def test_direction_rule_needs_a_matching_reference():
    X, _, ref = pointing()
    with pytest.raises(ValueError, match="needs reference="):
        PCADetector(rule="direction").fit(X)
    with pytest.raises(ValueError, match="expected a finite, non-zero vector of 50"):
        PCADetector(rule="direction").fit(X, reference=ref[:10])
    with pytest.raises(ValueError, match="non-zero"):
        PCADetector(rule="direction").fit(X, reference=np.zeros(50))
    with pytest.raises(ValueError, match="rule='nearest'"):
        PCADetector(rule="nearest").fit(X)
