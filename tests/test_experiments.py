"""The table computations of flcore.experiments on hand-made frames (no training)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flcore.config import Config
from flcore.studies import experiments as ex


def _final(dataset, src, tgt, m, repeat, recalls, n_mal_last=0, strategy="random"):
    row = {"dataset": dataset, "src": src, "tgt": tgt, "m": m, "strategy": strategy,
           "alpha": np.nan, "repeat": repeat, "accuracy": float(np.mean(recalls))}  # fmt: skip
    for c, v in enumerate(recalls):
        row[f"recall_{c}"] = v
    row |= {"source_recall": recalls[src], "target_recall": recalls[tgt], "m_cnt": 10 * (repeat + 1),
            "n_mal_last": n_mal_last}  # fmt: skip
    return row


@pytest.fixture
def final():
    clean = [90.0] * 10
    rows = [_final("fmnist", 4, 6, 0.0, j, clean) for j in range(3)]
    for j in range(2):
        r = list(clean)
        r[4], r[6], r[0] = 80.0 - j, 95.0, 89.0  # source -10-j, target +5, one other -1
        rows.append(_final("fmnist", 4, 6, 0.1, j, r))
        r = list(clean)
        r[4] = 40.0
        rows.append(_final("fmnist", 4, 6, 0.5, j, r))
    return pd.DataFrame(rows)


def test_table2_loss_paired_by_repeat(final):
    t = ex.table2(final)
    assert list(t.columns[:4]) == ["dataset", "src", "tgt", "setting"]
    r10 = t[t["m"] == 0.1].iloc[0]
    assert r10["mean"] == pytest.approx(10.5) and r10["runs"] == 2
    assert r10["std"] == pytest.approx(np.std([10, 11], ddof=1))
    assert r10["m_cnt"] == pytest.approx(20.0)  # mean of the clean repeats' 10, 20, 30
    assert t[t["m"] == 0.5].iloc[0]["mean"] == pytest.approx(50.0)
    assert list(t["setting"]) == ["m=10%", "m=50%"]


def test_table2_unpaired_repeat_uses_clean_mean(final):
    extra = final[final["m"] == 0.5].iloc[[0]].assign(repeat=7)
    t = ex.table2(pd.concat([final, extra]))
    assert t[t["m"] == 0.5].iloc[0]["runs"] == 3


def test_table2_needs_baseline(final):
    with pytest.raises(ValueError, match="m = 0"):
        ex.table2(final[final["m"] > 0])


def test_table3_deltas(final):
    t = ex.table3(final, 0.1).set_index("setting")
    assert list(t.index) == ["delta_source", "delta_target", "delta_others_sum", "delta_others_mean"]
    assert t.loc["delta_source", "mean"] == pytest.approx(-10.5)
    assert t.loc["delta_target", "mean"] == pytest.approx(5.0)
    assert t.loc["delta_others_sum", "mean"] == pytest.approx(-1.0)
    assert t.loc["delta_others_mean", "mean"] == pytest.approx(-1.0 / 8)  # 8 other classes
    assert (t["runs"] == 2).all()
    with pytest.raises(ValueError, match="m=0.2"):
        ex.table3(final, 0.2)


def test_table4_categories_and_empty_category():
    rows = [_final("fmnist", 4, 6, 0.2, j, [90.0] * 4 + [v] + [90.0] * 5, n_mal_last=n, strategy="late")
            for j, (v, n) in enumerate([(50.0, 1), (60.0, 2), (85.0, 0), (95.0, 0)])]  # fmt: skip
    rows += [
        _final("fmnist", 6, 0, 0.2, j, [90.0] * 10, n_mal_last=1, strategy="late") for j in range(2)
    ]
    t = ex.table4(pd.DataFrame(rows))
    a = t[(t["src"] == 4)].set_index("setting")
    assert a.loc["malicious_in_PR", "mean"] == pytest.approx(55.0)
    assert a.loc["none_in_PR", "mean"] == pytest.approx(90.0)
    assert a.loc["none_in_PR", "runs"] == 2
    b = t[(t["src"] == 6)].set_index("setting")
    assert b.loc["none_in_PR", "runs"] == 0 and np.isnan(b.loc["none_in_PR", "mean"])
    assert "no run" in b.loc["none_in_PR", "note"]
    assert "open" in ex.agreement_table4(t)


def _rounds(recall, n_mal, alpha=0.9, m=0.3, repeat=0):
    T = len(recall)
    return pd.DataFrame({"dataset": "fmnist", "src": 4, "tgt": 6, "m": m, "strategy": "availability",
                         "alpha": alpha, "repeat": repeat, "round": np.arange(1, T + 1),
                         "source_recall": recall, "accuracy": 80.0, "n_malicious": n_mal})  # fmt: skip


def test_recall_change_from_break_round():
    df = _rounds([80, 82, 60, 70, 40], [0, 0, 2, 1, 3])
    ch = ex.recall_change(df, break_round=3).set_index("delta_malicious")
    # rounds 3..5: (r3-r2): +2 mal, -22; (r4-r3): -1, +10; (r5-r4): +2, -30
    assert ch.loc[2, "mean"] == pytest.approx(-26.0) and ch.loc[2, "runs"] == 2
    assert ch.loc[-1, "mean"] == pytest.approx(10.0)
    assert 0 not in ch.index


def test_availability_average_after_break():
    df = pd.concat([_rounds([90, 90, 60, 50], [0, 0, 2, 3], alpha=0.9),
                    _rounds([90, 90, 80, 70], [0, 0, 1, 1], alpha=0.6)])  # fmt: skip
    t = ex.availability_table(df, break_round=3).set_index("alpha")
    assert t.loc[0.9, "mean"] == pytest.approx(55.0) and t.loc[0.6, "mean"] == pytest.approx(75.0)
    assert "falls" in ex.agreement_availability(t.reset_index(), ex.recall_change(df, 3))


def test_alpha_trend_compares_smallest_and_largest_alpha_per_m():
    df = pd.concat([_rounds([90, 90, 60, 50], [0, 0, 2, 3], alpha=0.9),
                    _rounds([90, 90, 95, 95], [0, 0, 1, 1], alpha=0.7),
                    _rounds([90, 90, 80, 70], [0, 0, 1, 1], alpha=0.6),
                    _rounds([90, 90, 50, 50], [0, 0, 1, 1], alpha=0.6, m=0.1)])  # fmt: skip
    tr = ex.alpha_trend(ex.availability_table(df, break_round=3))
    assert len(tr) == 1  # m = 10% has one alpha: no trend to judge
    r = tr.iloc[0]
    assert (r["alpha_lo"], r["alpha_hi"]) == (0.6, 0.9) and r["mean_lo"] == pytest.approx(75.0)
    assert r["mean_hi"] == pytest.approx(55.0) and r["falls"]
    rising = ex.alpha_trend(ex.availability_table(df.assign(source_recall=100 - df["source_recall"]), 3))
    assert not rising["falls"].any()


def test_compare_tables_align_with_paper(final):
    c2 = ex.compare_table2(ex.table2(final))
    row = c2[c2["setting"] == "m=10%"].iloc[0]
    assert row["paper"] == 16 and row["paper_m_cnt"] == 51
    assert row["difference"] == pytest.approx(10.5 - 16)
    c3 = ex.compare_table3(ex.table3(final, 0.1)).set_index("setting")
    assert c3.loc["delta_source", "paper"] == -9.96
    # the paper's one "remaining classes" value stands beside both readings
    assert c3.loc["delta_others_sum", "paper"] == c3.loc["delta_others_mean", "paper"] == 0.09
    assert len(ex.PAPER_TABLE2) == 6 * 7 and len(ex.PAPER_TABLE4) == 6


def test_baseline_config_is_pair_independent():
    a = ex.base_config("fmnist", rounds=6, repeats=3, src=4, tgt=6, m=0.2, break_round=3)
    b = ex.base_config("fmnist", rounds=6, repeats=3, src=6, tgt=0, m=0.1)
    b = b.replace(strategy="late", break_round=2)
    assert ex.baseline_config(a) == ex.baseline_config(b)
    assert ex.baseline_config(a).m == 0 and ex.baseline_config(a).eval_every == 1
    assert isinstance(ex.baseline_config(a), Config)


def test_per_dataset_parameters_and_paths(tmp_path):
    assert ex.pick({"fmnist": None, "cifar10": 5000}, "cifar10") == 5000
    assert ex.pick(300, "fmnist") == 300
    assert ex.repo_path("results") == ex.REPO_ROOT / "results"
    assert ex.figures_dir(tmp_path, "quick") == tmp_path / "quick"
    with pytest.raises(ValueError, match="unknown dataset"):
        ex.pair_list([["mnist", 1, 2]])


def test_writers(tmp_path, final):
    import matplotlib

    matplotlib.use("Agg")
    from flcore.studies import plots

    paths = ex.save_table(ex.table2(final), "t2", tmp_path)
    assert [p.suffix for p in paths] == [".csv", ".tex"] and all(p.exists() for p in paths)
    assert "tabular" in paths[1].read_text()
    paths = ex.save_figure(plots.fig1_feasibility(final), "f1", tmp_path)
    assert all(p.stat().st_size > 1000 for p in paths)
    # no creation date in the PDF, so the same run writes the same bytes
    assert b"/CreationDate" not in paths[1].read_bytes()


def test_fig8_draws_the_repeat_with_the_most_malicious_updates():
    """A run whose attacker was never selected says nothing about separation: Fig 8 draws,
    per (pair, m), the first repeat with the most malicious updates."""
    import matplotlib.pyplot as plt

    from flcore.studies import plots

    rows = []
    for rep, n_mal in ((0, 0), (1, 3), (2, 3)):
        for i in range(10):
            rows.append(dict(dataset="fmnist", src=4, tgt=6, m=0.1, repeat=rep, participant=i,
                             pc1=float(i + 100 * rep), pc2=0.0, malicious=i < n_mal, separation=1.0))  # fmt: skip
    fig = plots.fig8_defense_pca(pd.DataFrame(rows))
    honest, mal = fig.axes[0].collections[:2]
    assert len(mal.get_offsets()) == 3 and len(honest.get_offsets()) == 7
    assert mal.get_offsets()[:, 0].min() == 100  # repeat 1, not 0 (none) or 2 (a later tie)
    plt.close(fig)


def test_agreement_table3_counts_both_readings(final):
    text = ex.agreement_table3(ex.table3(final, 0.1))
    # source -10.5: the sum (-1.0) is below a tenth of it only just, the mean (-0.125) clearly
    assert "-1.00 pp summed (0.10× the source change)" in text
    assert "Read summed, the other classes' change is at least 10× below the source change for 1 of 1 pairs" in text
    assert "Read per class, the other classes' change is at least 10× below the source change for 1 of 1 pairs" in text
    worse = final.copy()
    worse.loc[(worse["m"] == 0.1), "recall_0"] = 85.0  # the other class now loses 5 pp
    text = ex.agreement_table3(ex.table3(worse, 0.1))
    assert "Read summed, the other classes' change is at least 10× below the source change for 0 of 1 pairs." in text


def test_repeats_per_dataset():
    assert ex.base_config("cifar10", rounds=2, repeats={"fmnist": 4, "cifar10": 2}).repeats == 2
    with pytest.raises(ValueError, match="repeats=.*'cifar10'"):
        ex.base_config("cifar10", rounds=2, repeats={"fmnist": 4})
