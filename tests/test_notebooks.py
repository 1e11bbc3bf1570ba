"""The workbook end to end: papermill runs every notebook on a tiny setting (a few hundred
Fashion-MNIST images, 3 rounds) and the named figures and tables must exist and be sane."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

pytest.importorskip("papermill")

from flcore.studies import experiments as ex
from flcore.studies.reproduce import REPO_ROOT, ParameterError, execute, load_parameters, notebooks

pytestmark = pytest.mark.slow

TINY_COMMON = {"n_train": {"fmnist": 500, "cifar10": 500}, "n_test": {"fmnist": 200, "cifar10": 200},
                   "rounds": 3, "seed": 0, "precision": "fp32", "warm_start": {"fmnist": 2}}  # fmt: skip
TINY = {
    "01_feasibility": {"repeats": 2, "baseline_repeats": 3, "pairs": [["fmnist", 4, 6], ["fmnist", 6, 0]],
                           "m_values": [0.0, 0.1, 0.5], "fig1_pairs": [["fmnist", 4, 6]]},
    "02_targeting": {"repeats": 2, "baseline_repeats": 3, "pairs": [["fmnist", 4, 6], ["fmnist", 6, 0]], "m": 0.1},
    "03_timing": {"repeats": 4, "baseline_repeats": 3, "break_round": 2, "m": 0.2,
                      "pairs": [["fmnist", 4, 6], ["fmnist", 6, 0]], "figure_pairs": [["fmnist", 4, 6]]},
    "04_availability": {"repeats": 2, "break_round": 2, "pairs": [["fmnist", 4, 6]], "m_values": [0.1, 0.3],
                            "alphas": [0.6, 0.9], "fig6_m": 0.3},
    "05_defense": {"repeats": 1, "pairs": [["fmnist", 4, 6]], "m_values": [0.1, 0.2], "rounds_from": 1},
    "06_defense_comparison": {"repeats": 2, "pairs": [["fmnist", 4, 6]], "m_values": [0.2, 0.4],
                              "defenses": ["none", "pca", "median", "trimmed_mean", "multi_krum", "foolsgold"],
                              "pca_params": {"start_round": 2, "min_rows": 10}},
    "07_noniid": {"repeats": 2, "pairs": [["fmnist", 4, 6]], "m_values": [0.4], "betas": ["iid", 0.5],
                  "defenses": ["pca", "median"], "pca_params": {"start_round": 2, "min_rows": 10}},
    "08_scoreboard": {"repeats": 2, "pairs": [["fmnist", 4, 6]], "m_values": [0.4], "defenses": ["pca", "median"],
                      "attacks": ["label_flip", "backdoor"], "pca_params": {"start_round": 2, "min_rows": 10},
                      "tradeoff_strengths": [1.0], "tradeoff_rounds": 3, "tradeoff_repeats": 2},
}  # fmt: skip
FIGURES = ["fig1_feasibility", "fig2_acc_vs_recall", "fig3_early_poisoning", "fig4_late_poisoning",
           "fig5_availability", "fig6_alpha_rounds", "fig7_recall_change", "fig8_defense_pca",
           "fig_defense_comparison", "fig_noniid_damage", "fig_noniid_roc", "fig_scoreboard", "fig_adaptive_tradeoff"]  # fmt: skip
TABLES = ["table2_source_recall_loss", "table3_targeting", "table4_final_source_recall",
          "table_defense_detection", "table_defense_comparison", "table_noniid", "table_noniid_roc",
          "table_noniid_roc_curve", "table_scoreboard", "table_scoreboard_summary", "table_adaptive_tradeoff"]  # fmt: skip


@pytest.fixture(scope="module")
def workbook(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workbook")
    params = tmp / "params"
    params.mkdir()
    for name, p in TINY.items():
        (params / f"{name}.yaml").write_text(yaml.safe_dump(TINY_COMMON | p))
    extra = {"output_dir": str(tmp / "figures"), "results": str(tmp / "results")}
    written = execute("test", root=REPO_ROOT, params_dir=params, reports_dir=tmp / "reports",
                      extra=extra, log=lambda *a, **k: None)  # fmt: skip
    return tmp, written


def test_every_notebook_has_a_tiny_parameter_file():
    assert sorted(p.stem for p in notebooks()) == sorted(TINY)


def test_reports_written(workbook):
    tmp, written = workbook
    for name in TINY:
        assert (tmp / "reports" / f"{name}.ipynb").exists()
        assert (tmp / "reports" / f"{name}.html").stat().st_size > 1000
    assert len(written) >= 2 * len(TINY)


def test_named_figures_and_tables(workbook):
    tmp, _ = workbook
    out = tmp / "figures" / "test"
    for f in FIGURES:
        for ext in ("png", "pdf"):
            assert (out / f"{f}.{ext}").stat().st_size > 1000, f"{f}.{ext}"
    for t in TABLES:
        for ext in ("csv", "tex"):
            assert (out / f"{t}.{ext}").exists(), f"{t}.{ext}"


def _table(workbook, name) -> pd.DataFrame:
    return pd.read_csv(workbook[0] / "figures" / "test" / f"{name}.csv")


def test_table2_sane(workbook):
    t = _table(workbook, "table2_source_recall_loss")
    assert {"dataset", "src", "tgt", "setting", "mean", "std", "runs", "m_cnt"} <= set(t.columns)
    assert set(zip(t["src"], t["tgt"])) == {(4, 6), (6, 0)}
    assert sorted(t["m"].unique()) == [0.1, 0.5]
    assert t["mean"].between(-100, 100).all() and (t["runs"] == 2).all() and (t["m_cnt"] >= 0).all()
    assert not t.duplicated(["dataset", "src", "tgt", "setting"]).any()


def test_table3_sane(workbook):
    t = _table(workbook, "table3_targeting")
    assert {"dataset", "src", "tgt", "setting", "mean", "std", "runs"} <= set(t.columns)
    assert set(t["setting"]) == {"delta_source", "delta_target", "delta_others_sum", "delta_others_mean"}
    w = t.pivot_table(index=["dataset", "src", "tgt"], columns="setting", values="mean")
    assert np.allclose(w["delta_others_mean"], w["delta_others_sum"] / 8)
    # every cell, recomputed by hand from the stored runs 02 used (loaded, not retrained):
    # repeat j of the poisoned run minus repeat j of the shared clean baseline, final round
    from flcore.runs.runner import run

    p = TINY_COMMON | TINY["02_targeting"]
    common = dict(seed=p["seed"], n_train=p["n_train"], n_test=p["n_test"], warm_start=p["warm_start"],
                  precision=p["precision"], device="auto")  # fmt: skip
    store = workbook[0] / "results"
    for d, s, tg in p["pairs"]:
        cfg = ex.base_config(d, rounds=p["rounds"], repeats=p["repeats"], src=s, tgt=tg, **common)
        poisoned = run(cfg.replace(m=p["m"], eval_every=p["rounds"]), store=store, progress=False)
        clean = run(ex._baseline_for(cfg, p["baseline_repeats"]), store=store, progress=False)
        assert poisoned.meta.get("batched_with") is not None or "wall_s" in poisoned.meta

        def final_recall(res, c):
            r = res.recall[(res.recall["round"] == p["rounds"]) & (res.recall["cls"] == c)]
            return r.sort_values("repeat")["recall"].to_numpy()

        n = p["repeats"]
        for setting, cls in (("delta_source", s), ("delta_target", tg)):
            expected = (final_recall(poisoned, cls) - final_recall(clean, cls)[:n]).mean()
            got = t[(t["src"] == s) & (t["tgt"] == tg) & (t["setting"] == setting)]["mean"].item()
            assert got == pytest.approx(expected, abs=0.006), (d, s, tg, setting)  # CSV: 2 decimals
        others = [c for c in range(10) if c not in (s, tg)]
        expected = np.mean([(final_recall(poisoned, c) - final_recall(clean, c)[:n]).mean() for c in others])
        got = t[(t["src"] == s) & (t["tgt"] == tg) & (t["setting"] == "delta_others_mean")]["mean"].item()
        assert got == pytest.approx(expected, abs=0.006)


def test_table4_sane(workbook):
    t = _table(workbook, "table4_final_source_recall")
    assert set(t["setting"]) == {"malicious_in_PR", "none_in_PR"}
    assert t.groupby(["src", "tgt"])["runs"].sum().eq(4).all()
    ok = t["runs"] > 0
    assert t.loc[ok, "mean"].between(0, 100).all()
    assert t.loc[~ok, "mean"].isna().all()


def test_defense_detection_table_sane(workbook):
    t = _table(workbook, "table_defense_detection")
    assert {"dataset", "src", "tgt", "m", "level", "precision", "recall", "f1", "fpr", "roc_auc",
            "runs"} <= set(t.columns)  # fmt: skip
    assert set(t["level"]) == {"update", "participant"} and sorted(t["m"].unique()) == [0.1, 0.2]
    for c in ("precision", "recall", "f1"):
        assert t[c].between(0, 1).all()
    assert t["roc_auc"].dropna().between(0, 1).all()


def test_defense_comparison_table_sane(workbook):
    t = _table(workbook, "table_defense_comparison")
    defenses = TINY["06_defense_comparison"]["defenses"]
    assert set(t["defense"]) == set(defenses)
    # every defense at every m, the clean run (m = 0) included, with mean, std and run counts
    assert all(sorted(g["m"]) == [0.0, 0.2, 0.4] for _, g in t.groupby("defense"))
    assert (t["runs"] == 2).all() and t["source_recall_std"].notna().all()
    assert t["source_recall_mean"].between(0, 100).all() and t["accuracy_mean"].between(0, 100).all()
    clean = t[(t["defense"] == "none") & (t["m"] == 0)]
    assert clean["source_recall_vs_clean"].abs().max() < 1e-9
    assert t.loc[t["defense"] != "pca", "blocked"].isna().all()


def test_noniid_tables_sane(workbook):
    t = _table(workbook, "table_noniid")
    p = TINY["07_noniid"]
    assert {"dataset", "src", "tgt", "beta", "shares", "defense", "m", "metric", "mean", "std", "runs"} <= set(t.columns)
    # every beta (iid written as inf), every defense ("none" always added) at m = 0 and every m
    assert set(t["beta"]) == {float("inf"), 0.5} and set(t.loc[t["beta"] == float("inf"), "shares"]) == {"iid"}
    assert set(t["defense"]) == {"none", *p["defenses"]}
    assert all(sorted(g["m"].unique()) == [0.0, 0.4] for _, g in t.groupby(["beta", "defense"]))
    assert {"damage", "accuracy_loss", "tpr", "fpr", "source_recall", "accuracy"} <= set(t["metric"])
    assert not t.duplicated(["dataset", "src", "tgt", "beta", "defense", "m", "metric"]).any()
    rates = t[t["metric"].isin(["tpr", "fpr"])]
    assert rates["mean"].dropna().between(0, 1).all()
    # the PCA defense's FPR is defined at every setting, and no aggregation rule flags anybody
    assert rates.loc[(rates["defense"] == "pca") & (rates["metric"] == "fpr"), "runs"].eq(2).all()
    assert rates.loc[rates["defense"] != "pca", "mean"].isna().all()
    other = t[~t["metric"].isin(["tpr", "fpr", "blocked", "blocked_malicious"])]
    assert (other["runs"] >= 1).all() and other["mean"].notna().all()
    clean = t[(t["defense"] == "none") & (t["m"] == 0) & t["metric"].isin(["damage", "accuracy_loss"])]
    assert clean["mean"].abs().max() < 1e-9
    r = _table(workbook, "table_noniid_roc")
    assert set(r["beta"]) == {float("inf"), 0.5} and set(r["level"]) == {"update", "participant"}
    assert (r["runs"] >= 1).all() and r["roc_auc"].dropna().between(0, 1).all()
    c = _table(workbook, "table_noniid_roc_curve")
    assert c["tpr"].between(0, 1).all() and c["fpr"].between(0, 1).all()


def test_scoreboard_tables_sane(workbook):
    t = _table(workbook, "table_scoreboard")
    p = TINY["08_scoreboard"]
    assert list(t.columns) == ["dataset", "src", "tgt", "defense", "attack", "m", "metric", "mean", "std", "runs"]
    defenses = {"none", *p["defenses"]}
    assert set(t["defense"]) == defenses and set(t["attack"]) == {"none", *p["attacks"]}
    assert not t.duplicated(["dataset", "src", "tgt", "defense", "attack", "m", "metric"]).any()
    # every defense x attack x m cell, and each defense's clean run, with 2 runs
    sr = t[t["metric"] == "source_recall"]
    cells = {(d, a, m) for d in defenses for a in p["attacks"] for m in p["m_values"]}
    assert {(d, a, m) for d, a, m in zip(sr["defense"], sr["attack"], sr["m"]) if m > 0} == cells
    assert set(sr.loc[sr["m"] == 0, "defense"]) == defenses and (sr.loc[sr["m"] == 0, "attack"] == "none").all()
    assert (sr["runs"] >= 2).all() and sr["std"].notna().all() and sr["mean"].between(0, 100).all()
    # ASR only for the backdoor, detection only for the PCA defense
    asr = t[t["metric"] == "attack_success"]
    assert set(asr["attack"]) == {"backdoor"} and asr["mean"].between(0, 100).all() and (asr["runs"] == 2).all()
    det = t[t["metric"].str.startswith("detection_")]
    assert set(det["defense"]) == {"pca"} and det["mean"].dropna().between(0, 1).all()
    clean = t[(t["defense"] == "none") & (t["m"] == 0) & t["metric"].isin(["damage", "accuracy_loss"])]
    assert clean["mean"].abs().max() < 1e-9
    s = _table(workbook, "table_scoreboard_summary")
    assert len(s) == len(defenses) and set(s["defense"]) == defenses
    assert s["worst_source_recall"].between(0, 100).all() and set(s["worst_source_recall_attack"]) <= set(p["attacks"])
    assert s["worst_attack_success"].between(0, 100).all()
    # the worst case over attacks and m is the lowest cell of that defense
    for _, r in s.iterrows():
        lo = sr[(sr["defense"] == r["defense"]) & (sr["m"] > 0)]["mean"].min()
        assert r["worst_source_recall"] == pytest.approx(lo, abs=0.006)
    assert s.loc[s["defense"] != "pca", ["detection_precision", "detection_recall"]].isna().all().all()
    assert s.loc[s["defense"] == "pca", "detection_fpr_clean"].between(0, 1).all()


def test_baseline_trained_once(workbook):
    """01, 02 and 03 share one clean baseline (one store entry with m = 0)."""
    from flcore.runs.store import Store

    finals = Store(workbook[0] / "results").table("final")
    # the clean warm-up (keep_model) trains once for every notebook of the same data subset and
    # shares; 07's Dirichlet shares have one each
    warm = finals["keep_model"].astype(bool)
    iid = finals["partition"] == "iid"
    assert finals.loc[warm & iid, "key"].nunique() == 1 and (finals.loc[~warm, "warm_start"] == 2).all()
    assert finals.loc[warm & ~iid, "key"].nunique() == len(TINY["07_noniid"]["betas"]) - 1
    finals = finals[~warm & iid]
    # 06 runs its own m = 0 runs per defense (on the attacked pair); the shared one has no defense
    # (07's clean iid run records the updates, so it is another configuration)
    plain = (finals["m"] == 0) & finals["defense"].isna() & (finals["aggregator"] == "fedavg")
    plain &= finals["record_updates"] == "none"
    shared = plain & (finals["src"] == ex.BASELINE_PAIR[0]) & (finals["tgt"] == ex.BASELINE_PAIR[1])
    assert finals.loc[shared, "key"].nunique() == 1
    assert finals.loc[plain & ~shared, "key"].nunique() <= 1  # 06's clean run without defense


def test_unknown_parameter_names_it(tmp_path):
    nb = REPO_ROOT / "notebooks" / "01_feasibility.ipynb"
    y = tmp_path / "01_feasibility.yaml"
    y.write_text("m_vals: [0.1]\n")
    with pytest.raises(ParameterError, match=r"'m_vals'.*did you mean 'm_values'"):
        load_parameters(y, nb)


def test_recall_in_range(workbook):
    t = _table(workbook, "table4_final_source_recall")
    assert np.all((t["mean"].dropna() >= 0) & (t["mean"].dropna() <= 100))


def test_seed_override_writes_beside_the_profile(tmp_path):
    """A fresh-seed check (`reproduce --seed N`) writes to <profile>-seed<N>, never over the
    profile's own figures, and the notebooks run with that seed."""
    params = tmp_path / "params"
    params.mkdir()
    (params / "02_targeting.yaml").write_text(yaml.safe_dump(TINY_COMMON | TINY["02_targeting"]))
    extra = {"output_dir": str(tmp_path / "figures"), "results": str(tmp_path / "results"), "seed": 3}
    execute("test", only=["02"], root=REPO_ROOT, params_dir=params, reports_dir=tmp_path / "reports",
            extra=extra, log=lambda *a, **k: None)  # fmt: skip
    assert (tmp_path / "figures" / "test-seed3" / "table3_targeting.csv").exists()
    assert not (tmp_path / "figures" / "test").exists()
    from flcore.runs.store import Store

    assert set(Store(tmp_path / "results").table("final")["seed"]) == {3}


def test_every_committed_profile_matches_its_notebooks():
    """Each params/<profile>/NN_*.yaml names only parameters its notebook has, and quick and
    paper cover every notebook (the run would otherwise stop at that notebook)."""
    from flcore.studies.reproduce import PROFILES, profiles

    assert set(PROFILES) <= set(profiles()) and "defense-cifar" in profiles()
    for prof in profiles():
        for nb in notebooks(REPO_ROOT):
            y = REPO_ROOT / "params" / prof / f"{nb.stem}.yaml"
            if prof in PROFILES:
                assert y.exists(), f"{prof} has no parameters for {nb.name}"
            if y.exists():
                load_parameters(y, nb, profile=prof)
