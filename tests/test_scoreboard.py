"""Notebook 08's study code without training: the job list and its plan, attack options per
dataset, and the tables on hand-made frames (worst case over attacks, ASR only where an attack
has a trigger, detection only for defenses that flag participants)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flcore.studies import scoreboard as sb
from flcore.studies.plan import configs

PARAMS = dict(pairs=[["fmnist", 4, 6]], m_values=[0.1, 0.3], defenses=["pca", "median"],
              attacks=["label_flip", "backdoor", "adaptive_flip"], rounds=3, repeats=2,
              aggregator_params={"trimmed_mean": {"beta": 0.2}}, pca_params={"start_round": 2, "min_rows": 10},
              attack_params={"adaptive_flip": {"strength": 0.8}, "many_to_one": {"cifar10": {"sources": [2, 4, 5]}}},
              tradeoff_m=0.3, tradeoff_strengths=[0.5], tradeoff_rounds=2, tradeoff_repeats=1,
              seed=0, n_train={"fmnist": 500}, n_test={"fmnist": 200}, warm_start={"fmnist": 2}, device="auto",
              precision="fp32")  # fmt: skip


def test_jobs_and_plan_agree():
    p = {k: v for k, v in PARAMS.items() if not k.startswith("tradeoff_")}
    jobs = sb.scoreboard_jobs(p.pop("pairs"), p.pop("m_values"), p.pop("defenses"), p.pop("attacks"), **p)
    # "none" always first; per defense the clean run, then attack x m > 0
    assert len(jobs) == 3 * (1 + 3 * 2)
    assert [(n, a, c.m) for c, n, a in jobs[:4]] == [("none", "none", 0.0), ("none", "label_flip", 0.1),
                                                     ("none", "label_flip", 0.3), ("none", "backdoor", 0.1)]  # fmt: skip
    for c, name, a in jobs:
        assert c.attack == ("label_flip" if a == "none" else a) and c.eval_every == 3 and c.n_train == 500
        assert (c.defense == "pca") == (name == "pca") and (c.aggregator == "median") == (name == "median")
        assert c.attack_params == ({"strength": 0.8} if a == "adaptive_flip" else {})
    planned = configs("08_scoreboard", PARAMS)  # the scoreboard's runs, then the trade-off's
    assert planned[: len(jobs)] == [c for c, _, _ in jobs]
    assert [c.attack_params["strength"] for c in planned[len(jobs):]] == [0.0, 0.5, 0.0, 0.5]
    with pytest.raises(ValueError, match="did you mean 'backdoor'"):
        sb.scoreboard_jobs(PARAMS["pairs"], [0.1], ["none"], ["backdor"], rounds=3, repeats=1)
    with pytest.raises(ValueError, match="m > 0"):
        sb.scoreboard_jobs(PARAMS["pairs"], [0.0], ["none"], ["backdoor"], rounds=3, repeats=1)


def test_attack_options_per_dataset():
    ap = {"many_to_one": {"cifar10": {"sources": [2, 4, 5]}}, "random_flip": {"fraction": 0.5}}
    assert sb.attack_options("many_to_one", ap, "cifar10") == {"sources": [2, 4, 5]}
    assert sb.attack_options("many_to_one", ap, "fmnist") == {}  # its default (0, 2, 4) fits 4 -> 6
    assert sb.attack_options("random_flip", ap, "cifar10") == {"fraction": 0.5}
    assert sb.attack_options("backdoor", None, "fmnist") == {}
    jobs = sb.scoreboard_jobs([["cifar10", 5, 3]], [0.1], ["none"], ["many_to_one"], rounds=2, repeats=1,
                              attack_params=ap)  # fmt: skip
    assert jobs[1][0].attack_params == {"sources": [2, 4, 5]}


def _final() -> pd.DataFrame:
    """(none, pca, median) x (the clean run, label_flip at m 0.1 and 0.3, backdoor at 0.3) x 2
    repeats, hand-made numbers; only the PCA defense flags participants."""
    rows = []
    cells = [("none", 0.0), ("label_flip", 0.1), ("label_flip", 0.3), ("backdoor", 0.3)]
    for d in ("none", "pca", "median"):
        for a, m in cells:
            for j in range(2):
                sr = 80.0 + 10 * j
                if a == "label_flip":
                    sr -= {"none": 60, "pca": 10, "median": 40}[d] * m / 0.3
                if d == "median":
                    sr -= 4
                acc = 85.0 + j - (5 if a == "backdoor" else 0) - (1 if d == "median" else 0)
                asr = (50.0 + 10 * j if d != "median" else 20.0 + 10 * j) if a == "backdoor" else np.nan
                flags = d == "pca"
                mal = 0.0 if m == 0 else 4.0
                ex_mal = (3.0 if a == "label_flip" else 1.0) if (flags and m) else (0.0 if flags else np.nan)
                ex_hon = (1.0 if m == 0 else 0.0) if flags else np.nan
                rows.append({"dataset": "fmnist", "src": 4, "tgt": 6, "m": m, "defense": d, "attack": a, "repeat": j,
                             "source_recall": sr, "accuracy": acc, "attack_success": asr, "mal_rounds": mal,
                             "honest_rounds": 10.0 - mal, "excluded_mal": ex_mal, "excluded_honest": ex_hon,
                             "detection_recall": ex_mal / mal if (flags and mal) else np.nan,
                             "detection_fpr": ex_hon / (10.0 - mal) if flags else np.nan,
                             "has_trigger": a == "backdoor", "flags": flags})  # fmt: skip
    f = pd.DataFrame(rows)
    f["detection_precision"] = np.where(f["excluded_mal"] + f["excluded_honest"] > 0,
                                        f["excluded_mal"] / (f["excluded_mal"] + f["excluded_honest"]), np.nan)  # fmt: skip
    return f


def test_scoreboard_table():
    f = _final()
    t = sb.scoreboard_table(f)
    assert list(t.columns) == ["dataset", "src", "tgt", "defense", "attack", "m", "metric", "mean", "std", "runs"]
    assert not t.duplicated(["defense", "attack", "m", "metric"]).any()
    assert t["defense"].iloc[0] == "none" and t["attack"].iloc[0] == "none"  # the clean undefended run first
    # every defense x cell, with mean, std and 2 runs where the metric is defined
    base = t[t["metric"] == "source_recall"]
    assert len(base) == 3 * 4 and (base["runs"] == 2).all() and base["std"].notna().all()
    # ASR only for the attack with a trigger, detection only for the defense that flags
    assert set(t.loc[t["metric"] == "attack_success", "attack"]) == {"backdoor"}
    assert set(t.loc[t["metric"].isin(sb._FLAG_METRICS), "defense"]) == {"pca"}

    def cell(d, a, m, metric):
        r = t[(t["defense"] == d) & (t["attack"] == a) & (t["m"] == m) & (t["metric"] == metric)]
        assert len(r) == 1
        return r.iloc[0]

    assert cell("none", "label_flip", 0.3, "damage")[["mean", "std", "runs"]].tolist() == [60.0, 0.0, 2]
    assert cell("median", "none", 0.0, "damage")["mean"] == 4.0  # the clean-run cost, paired by repeat
    assert cell("median", "none", 0.0, "accuracy_loss")["mean"] == 1.0
    assert cell("pca", "backdoor", 0.3, "attack_success")["mean"] == 55.0
    assert cell("pca", "label_flip", 0.3, "detection_recall")["mean"] == 0.75
    assert cell("pca", "none", 0.0, "detection_fpr")["mean"] == 0.1
    assert cell("pca", "none", 0.0, "detection_recall")["runs"] == 0  # no attacker to catch
    with pytest.raises(ValueError, match="clean run"):
        sb.scoreboard_table(f[f["defense"] != "none"])


def test_scoreboard_summary_worst_case():
    f = _final()
    t = sb.scoreboard_table(f)
    s = sb.scoreboard_summary(t, f).set_index("defense")
    assert list(s.index) == ["none", "pca", "median"]
    # the worst case is taken over attacks and m (m > 0 only: never the clean run)
    assert s.loc["none", "worst_source_recall"] == 25.0 and s.loc["none", "worst_source_recall_attack"] == "label_flip"
    assert s.loc["none", "worst_source_recall_m"] == 0.3
    assert s.loc["pca", "worst_source_recall"] == 75.0 and s.loc["pca", "worst_source_recall_attack"] == "label_flip"
    assert s.loc["median", "worst_source_recall"] == 41.0
    # worst M_acc: the backdoor's cells (5 pp below the flip's)
    assert s.loc["none", "worst_accuracy_attack"] == "backdoor" and s.loc["median", "worst_accuracy"] == 79.5
    # ASR: the highest over m of the attack with a trigger
    assert s.loc["none", "worst_attack_success"] == 55.0 and s.loc["median", "worst_attack_success"] == 25.0
    assert s.loc["median", "vs_none_attack_success"] == -30.0
    assert s.loc["median", "vs_none_attack_success_std"] == pytest.approx(np.hypot(np.sqrt(50), np.sqrt(50)))
    # against the undefended worst case, with the two cells' stds in quadrature
    assert s.loc["pca", "vs_none_source_recall"] == 50.0 and s.loc["none", "vs_none_source_recall"] == 0.0
    assert s.loc["pca", "vs_none_source_recall_std"] == pytest.approx(np.hypot(np.sqrt(50), np.sqrt(50)))
    # the clean-run cost, paired by repeat
    assert s.loc["median", "clean_cost_source_recall"] == 4.0 and s.loc["median", "clean_cost_source_recall_std"] == 0
    assert s.loc["none", "clean_cost_accuracy"] == 0.0
    # detection only for the flagging defense: pooled over the attacked runs
    assert s[["detection_precision", "detection_recall", "detection_fpr_clean"]].drop("pca").isna().all().all()
    assert s.loc["pca", "detection_precision"] == 1.0  # nobody honest excluded under attack
    assert s.loc["pca", "detection_recall"] == pytest.approx((3 + 3 + 1) * 2 / (4 * 3 * 2))
    assert s.loc["pca", "detection_recall_worst_attack"] == "backdoor" and s.loc["pca", "detection_recall_worst"] == 0.25
    assert s.loc["pca", "detection_fpr_clean"] == 0.1
    # without the final frame the detection comes from the cells' means
    s2 = sb.scoreboard_summary(t).set_index("defense")
    assert s2.loc["pca", "detection_recall_worst_attack"] == "backdoor" and np.isnan(s2.loc["median", "detection_recall"])
    assert (s["cells"] == 3).all() and (s["min_runs"] == 2).all()


def test_summary_without_trigger_and_reading():
    f = _final()
    f = f[f["attack"] != "backdoor"]
    t = sb.scoreboard_table(f)
    s = sb.scoreboard_summary(t, f)
    assert s["worst_attack_success"].isna().all() and s["vs_none_attack_success"].isna().all()
    text = sb.agreement_scoreboard(s)
    # PCA: +50 pp against sd 10 (larger); median: +16 pp against sd 10 (larger); median's clean-run
    # cost 1 pp M_acc with sd 0 (larger); PCA's 0 pp (not larger)
    assert "larger than its sd 10.0" in text and "NOT larger than its sd 0.0" in text
    assert "3 of 4 headline differences are larger than their standard deviation" in text
    assert "excluded 75% of the malicious participant-rounds" in text


def test_heatmap_frame_and_figure():
    t = sb.scoreboard_table(_final())
    h = sb.heatmap_frame(t, "source_recall")
    assert len(h) == 3 * 3  # defense x (the clean run, label_flip, backdoor)
    r = h[(h["defense"] == "none") & (h["attack"] == "label_flip")].iloc[0]
    assert r["value"] == 25.0 and r["m"] == 0.3  # the worst over m
    a = sb.heatmap_frame(t, "attack_success", "max")
    assert set(a["attack"]) == {"backdoor"}
    import matplotlib

    matplotlib.use("Agg")
    from flcore.studies import plots

    fig = plots.fig_scoreboard(t, order=["none", "pca", "median"])
    assert len(fig.axes) == 3
