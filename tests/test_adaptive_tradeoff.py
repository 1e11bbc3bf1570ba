"""Notebook 08's adaptive-attacker trade-off (flcore.studies.adaptive) and the rules that are
the plain mean in disguise (Aggregator.equals_mean): the job list, the tables and the escape
point on hand-made frames, one small real run, and the warnings."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from flcore import Config
from flcore.core.errors import MeanEquivalentWarning
from flcore.studies import adaptive as ad
from flcore.studies import scoreboard as sb

TINY = dict(seed=0, n_train={"fmnist": 500}, n_test={"fmnist": 200}, warm_start={"fmnist": 2}, device="auto",
            precision="fp32")  # fmt: skip


def test_jobs():
    jobs = ad.tradeoff_jobs([["fmnist", 4, 6]], 0.3, [1.0, 0.5], rounds=3, repeats=2,
                            pca_params={"start_round": 1, "min_rows": 5}, **TINY)  # fmt: skip
    assert [(d, s) for _, d, s in jobs] == [("none", 0.0), ("none", 0.5), ("none", 1.0),
                                            ("pca", 0.0), ("pca", 0.5), ("pca", 1.0)]  # fmt: skip
    for c, d, s in jobs:
        assert c.attack == "adaptive_flip" and c.attack_params == {"strength": s, "norm_match": False}
        assert c.m == 0.3 and c.eval_every == 3 and c.n_train == 500
        assert (c.record_updates == "source") == (d == "none") and (c.defense == "pca") == (d == "pca")
    with pytest.raises(ValueError, match=r"strength 1.5: .* in \[0, 1\]"):
        ad.tradeoff_jobs([["fmnist", 4, 6]], 0.3, [1.5], rounds=3, repeats=1)
    with pytest.raises(ValueError, match="m=0.0"):
        ad.tradeoff_jobs([["fmnist", 4, 6]], 0.0, [0.5], rounds=3, repeats=1)


def _frame() -> pd.DataFrame:
    """Strengths 0, 0.5, 1 x (none, pca) x 2 repeats: damage grows with strength, the offline
    AUC too, and the online defense catches only strength 1."""
    rows = []
    for d in ("none", "pca"):
        for st, sr, auc, rec in ((0.0, 90.0, 0.5, 0.0), (0.5, 80.0, 0.6, 0.25), (1.0, 50.0, 0.95, 0.9)):
            for j in range(2):
                rows.append({"dataset": "fmnist", "src": 4, "tgt": 6, "m": 0.3, "defense": d, "strength": st,
                             "repeat": j, "source_recall": (sr if d == "none" else 90.0 - (st == 0.5) * 10) + j,
                             "detection_auc": auc + 0.02 * j if d == "none" else np.nan,
                             "detection_recall": rec if d == "pca" else np.nan,
                             "detection_fpr": 0.05 if d == "pca" else np.nan})  # fmt: skip
    f = pd.DataFrame(rows)
    ref = f[f["strength"] == 0].set_index(["defense", "repeat"])["source_recall"]
    f["damage"] = [ref[(d, j)] - v for d, j, v in zip(f["defense"], f["repeat"], f["source_recall"])]
    return f


def test_table_and_escape_point():
    t = ad.tradeoff_table(_frame())
    none = t[(t["defense"] == "none") & (t["metric"] == "damage")].set_index("strength")
    assert none["mean"].tolist() == [0.0, 10.0, 40.0] and (none["runs"] == 2).all()
    auc = t[(t["metric"] == "detection_auc")]
    assert set(auc["defense"]) == {"none"} and auc.set_index("strength")["mean"][1.0] == pytest.approx(0.96)
    assert set(t[t["metric"] == "detection_recall"]["defense"]) == {"pca"}
    # the online defense misses strength 0.5 (recall 0.25 < 0.5) and catches 1.0
    assert ad.escape_strength(t, "fmnist", 4, 6) == (0.5, 10.0)
    text = ad.agreement_tradeoff(t)
    assert "stops catching it at strength 0.5" in text and "10.0 pp unopposed" in text
    caught = t.copy()
    caught.loc[(caught["metric"] == "detection_recall") & (caught["strength"] > 0), "mean"] = 0.9
    assert ad.escape_strength(caught, "fmnist", 4, 6) == (None, pytest.approx(np.nan, nan_ok=True))
    assert "at every strength tried" in ad.agreement_tradeoff(caught)


@pytest.mark.slow
def test_real_tradeoff_run(tmp_path):
    f = ad.tradeoff([["fmnist", 4, 6]], 0.4, [1.0], rounds=3, repeats=2, store=str(tmp_path), progress=False,
                    pca_params={"start_round": 1, "min_rows": 5}, **TINY)  # fmt: skip
    assert len(f) == 2 * 2 * 2  # (none, pca) x (0, 1) x repeats
    zero = f[f["strength"] == 0.0]
    assert (zero["damage"] == 0).all()  # paired against itself
    none, pca = f[f["defense"] == "none"], f[f["defense"] == "pca"]
    assert none["detection_recall"].isna().all() and pca["detection_auc"].isna().all()
    assert pca["detection_recall"].notna().any()
    # strength 1 is the plain flip: it costs the source class something in one of the repeats
    assert (none[none["strength"] == 1.0]["damage"] != 0).any()
    t = ad.tradeoff_table(f)
    assert set(t["metric"]) <= set(ad.METRICS) and (t["runs"] >= 1).all()


def test_rules_that_are_the_mean_warn():
    with pytest.warns(MeanEquivalentWarning, match=r"Bulyan with f=0 .* plain mean .* k=5 allows no f >= 1"):
        Config(dataset="fmnist", aggregator="bulyan")
    with pytest.warns(MeanEquivalentWarning, match=r"beta=0.1 trims floor\(beta \* k\) = 0 .* raise beta to at least 0.2"):
        Config(dataset="fmnist", aggregator="trimmed_mean", aggregator_params={"beta": 0.1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Config(dataset="fmnist", aggregator="trimmed_mean", aggregator_params={"beta": 0.2})
        Config(dataset="fmnist", aggregator="bulyan", aggregator_params={"f": 1}, k=7)
        Config(dataset="fmnist", aggregator="median")


def test_scoreboard_names_the_mean_rule():
    rows = []
    for d, note in (("none", ""), ("bulyan", "Bulyan with f=0 keeps all k=5 updates")):
        for a, m in (("none", 0.0), ("label_flip", 0.3)):
            for j in range(2):
                rows.append({"dataset": "fmnist", "src": 4, "tgt": 6, "defense": d, "attack": a, "m": m,
                             "repeat": j, "accuracy": 80.0 + j, "source_recall": 70.0 - 30 * (m > 0) + j,
                             "attack_success": np.nan, "has_trigger": False, "flags": False,
                             "equals_mean": note})  # fmt: skip
    final = pd.DataFrame(rows)
    summary = sb.scoreboard_summary(sb.scoreboard_table(final), final)
    assert summary.set_index("defense")["note"].to_dict() == {"none": "", "bulyan": "Bulyan with f=0 keeps all k=5 updates"}
    assert "equals FedAvg by construction here**: Bulyan with f=0" in sb.agreement_scoreboard(summary)


@pytest.mark.parametrize("once", [True, False])
def test_the_command_line_warns_once_however_often_the_config_is_made(once):
    """`python -m flcore ...` says that a rule is the plain mean once per command, although the
    compute makes the same Config in every stack and libraries reset Python's once-per-line
    registry by changing the filters (the control run, without the filter, shows the repeats)."""
    import subprocess
    import sys

    code = (
        "import warnings\n"
        "from flcore import cli\n"
        "from flcore.config import Config\n"
        + ("cli._warn_once()\n" if once else "")
        + "for i in range(3):\n"
        "    Config(aggregator='bulyan')\n"
        "    warnings.filterwarnings('ignore', message=f'unrelated {i}')\n"
    )
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert err.count("MeanEquivalentWarning") == (1 if once else 3), err
