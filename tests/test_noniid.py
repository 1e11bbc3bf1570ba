"""Notebook 07's study code without training: β parameters, the job list and its plan, the
exclusion rates, the ROC reading and the tables on hand-made frames."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from flcore.config import Config
from flcore.studies import noniid as nx
from flcore.studies.plan import configs

INF = math.inf


def test_beta_values():
    assert nx.beta_values(["iid", None, "inf", 1, 0.5, "0.1", 0.5]) == [INF, 1.0, 0.5, 0.1]
    assert nx.shares_label(INF) == "iid" and nx.shares_label(0.5) == "Dir(0.5)"
    for bad in (0, -1, "skewed", True):
        with pytest.raises(ValueError, match="beta"):
            nx.beta_value(bad)
    with pytest.raises(ValueError, match="empty"):
        nx.beta_values([])
    cfg = Config()
    assert nx.shares_config(cfg, "iid") == cfg  # the iid config other notebooks run
    assert nx.shares_config(cfg, 0.1).partition == "dirichlet" and nx.shares_config(cfg, 0.1).beta == 0.1


PARAMS = dict(pairs=[["fmnist", 4, 6]], m_values=[0.3], betas=["iid", 0.5], defenses=["pca", "median"],
              rounds=3, repeats=2, aggregator_params={"trimmed_mean": {"beta": 0.2}},
              pca_params={"start_round": 2, "min_rows": 10}, seed=0, n_train={"fmnist": 500},
              n_test={"fmnist": 200}, warm_start={"fmnist": 2}, device="auto", precision="fp32")  # fmt: skip


def test_jobs_and_plan_agree():
    p = dict(PARAMS)
    jobs = nx.noniid_jobs(p.pop("pairs"), p.pop("m_values"), p.pop("betas"), p.pop("defenses"), **p)
    # "none" always first, m = 0 always added: 2 betas x 3 defenses x 2 m
    assert [(n, b, c.m) for c, n, b in jobs[:6]] == [
        ("none", INF, 0.0), ("none", INF, 0.3), ("pca", INF, 0.0), ("pca", INF, 0.3),
        ("median", INF, 0.0), ("median", INF, 0.3)]  # fmt: skip
    assert len(jobs) == 12
    for c, name, b in jobs:
        assert c.partition == ("iid" if b == INF else "dirichlet") and c.eval_every == 3
        assert c.beta == (0.5 if b == INF else b)  # iid keeps the default beta (one key with the others)
        assert c.record_updates == ("source" if name == "none" else "none")
        assert (c.defense == "pca") == (name == "pca") and c.n_train == 500 and c.warm_start == 2
    assert configs("07_noniid", PARAMS) == [c for c, _, _ in jobs]
    with pytest.raises(ValueError, match="did you mean 'median'"):
        nx.noniid_jobs(PARAMS["pairs"], [0.3], ["iid"], ["medain"], rounds=3, repeats=1)


def test_exclusion_rates():
    # 2 repeats, 2 rounds, k = 3; participants 0 and 1 malicious
    sel = np.array([[[0, 2, 3], [1, 4, 5]], [[2, 3, 4], [5, 6, 7]]])
    excluded = pd.DataFrame({"repeat": [0, 0, 0], "round": [1, 1, 2], "participant": [0, 3, 1],
                             "malicious": [True, False, True]})  # fmt: skip
    res = SimpleNamespace(config=SimpleNamespace(repeats=2), selected=sel,
                          malicious=[np.array([0, 1]), np.array([0, 1])], excluded=excluded)  # fmt: skip
    r = nx.exclusion_rates(res)
    assert r["mal_rounds"].tolist() == [2, 0] and r["honest_rounds"].tolist() == [4, 6]
    assert r["tpr"].iloc[0] == 1.0 and r["fpr"].iloc[0] == 0.25
    assert np.isnan(r["tpr"].iloc[1]) and r["fpr"].iloc[1] == 0.0
    r = nx.exclusion_rates(SimpleNamespace(**{**vars(res), "excluded": None}))
    assert r["tpr"].isna().all() and r["fpr"].isna().all()


def test_roc_on_grid():
    grid = np.linspace(0, 1, 5)
    y = np.array([0, 0, 0, 1, 1])
    assert nx._roc_on_grid(y, [0, 1, 2, 3, 4], grid).tolist() == [1, 1, 1, 1, 1]  # perfect
    assert nx._roc_on_grid(y, [4, 3, 2, 1, 0], grid)[:-1].max() == 0  # reversed
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 200), rng.normal(size=200)
    fine = np.linspace(0, 1, 2001)
    from sklearn.metrics import roc_auc_score

    assert np.trapezoid(nx._roc_on_grid(y, s, fine), fine) == pytest.approx(roc_auc_score(y, s), abs=1e-3)


def _final() -> pd.DataFrame:
    """Two betas x (none, pca, median) x m in {0, 0.3} x 2 repeats, hand-made numbers."""
    rows = []
    for beta in (INF, 0.5):
        for d in ("none", "pca", "median"):
            for m in (0.0, 0.3):
                for j in range(2):
                    sr = 80.0 + 10 * j - (40 if (m and d != "pca") else 0) - (5 if d == "median" else 0)
                    sr -= 20 if beta == 0.5 else 0
                    acc = 85.0 + j - (2 if m else 0)
                    tpr = (0.5 + 0.5 * j if m else np.nan) if d == "pca" else np.nan
                    fpr = 0.1 * j if d == "pca" else np.nan
                    rows.append({"dataset": "fmnist", "src": 4, "tgt": 6, "beta": beta,
                                 "shares": nx.shares_label(beta), "defense": d, "m": m, "repeat": j,
                                 "source_recall": sr, "accuracy": acc, "tpr": tpr, "fpr": fpr,
                                 "blocked": 1.0 if d == "pca" else np.nan,
                                 "blocked_malicious": 1.0 if d == "pca" else np.nan})  # fmt: skip
    return pd.DataFrame(rows)


def test_noniid_table():
    f = _final()
    t = nx.noniid_table(f)
    assert list(t.columns) == ["dataset", "src", "tgt", "beta", "shares", "defense", "setting", "m", "metric",
                               "mean", "std", "runs"]  # fmt: skip
    assert len(t) == 2 * 3 * 2 * len(nx.METRICS) and not t.duplicated(
        ["beta", "defense", "m", "metric"]).any()  # fmt: skip
    assert t["beta"].iloc[0] == INF and t["defense"].iloc[0] == "none"  # iid first, "none" first

    def cell(beta, d, m, metric):
        r = t[(t["beta"] == beta) & (t["defense"] == d) & (t["m"] == m) & (t["metric"] == metric)]
        assert len(r) == 1
        return r.iloc[0]

    # damage: paired with the clean undefended run of the same beta (and repeat)
    for beta in (INF, 0.5):
        assert cell(beta, "none", 0.3, "damage")[["mean", "std", "runs"]].tolist() == [40.0, 0.0, 2]
        assert cell(beta, "median", 0.0, "damage")["mean"] == 5.0  # the clean-run cost
        assert cell(beta, "pca", 0.3, "damage")["mean"] == 0.0
        assert cell(beta, "none", 0.3, "accuracy_loss")["mean"] == 2.0
    assert cell(0.5, "none", 0.0, "source_recall")["mean"] == 65.0
    # exclusion rates: defined for the PCA defense only (TPR only where attackers were selected)
    assert cell(INF, "pca", 0.3, "tpr")[["mean", "runs"]].tolist() == [0.75, 2]
    assert cell(INF, "pca", 0.0, "tpr")["runs"] == 0 and cell(INF, "pca", 0.0, "fpr")["mean"] == 0.05
    assert np.isnan(cell(INF, "median", 0.3, "tpr")["mean"]) and cell(INF, "median", 0.3, "fpr")["runs"] == 0
    assert cell(INF, "pca", 0.3, "tpr")["setting"] == "PCA detector + blocking"
    # a repeat without a clean twin is compared with the clean mean
    extra = f[(f["defense"] == "median") & (f["m"] == 0.3) & (f["repeat"] == 1) & (f["beta"] == INF)]
    t2 = nx.noniid_table(pd.concat([f, extra.assign(repeat=2, source_recall=30.0)], ignore_index=True))
    r = t2[(t2["beta"] == INF) & (t2["defense"] == "median") & (t2["m"] == 0.3) & (t2["metric"] == "damage")]
    assert r["runs"].item() == 3 and r["mean"].item() == pytest.approx((45 + 45 + 55) / 3)
    with pytest.raises(ValueError, match="clean run"):
        nx.noniid_table(f[f["defense"] != "none"])


def test_roc_tables():
    det = pd.DataFrame({"dataset": "fmnist", "src": 4, "tgt": 6, "beta": [INF, INF, 0.5, 0.5], "shares": "x",
                        "m": 0.3, "level": "update", "repeat": [0, 1, 0, 1], "roc_auc": [1.0, 0.8, np.nan, 0.4],
                        "precision": 1.0, "recall": 0.5, "f1": 0.6, "fpr": 0.0, "tp": 1, "fp": 0, "tn": 5,
                        "fn": 1})  # fmt: skip
    r = nx.noniid_roc_table(det)
    assert r["beta"].tolist() == [INF, 0.5] and r["runs"].tolist() == [2, 2] and r["auc_runs"].tolist() == [2, 1]
    assert r["roc_auc"].tolist() == pytest.approx([0.9, 0.4]) and r["tp"].tolist() == [2, 2]
    roc = pd.DataFrame({"dataset": "fmnist", "src": 4, "tgt": 6, "beta": 0.5, "shares": "x", "m": 0.3,
                        "level": "update", "repeat": [0, 0, 1, 1], "fpr": [0.0, 1.0, 0.0, 1.0],
                        "tpr": [0.2, 1.0, 0.4, 1.0]})  # fmt: skip
    c = nx.roc_curve_table(roc)
    assert c["tpr"].tolist() == pytest.approx([0.3, 1.0]) and c["runs"].tolist() == [2, 2]
    assert nx.noniid_roc_table(pd.DataFrame()).empty and nx.roc_curve_table(pd.DataFrame()).empty
