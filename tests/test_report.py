"""The availability and defense findings of the paper-scale report (flcore.studies.report): each verdict
follows the numbers it quotes, and turns when the numbers turn."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flcore.studies.report import availability_findings

BREAK = 3
ROUNDS = 8


def _frame(recall_of, malicious_of, ms=(0.1, 0.3), alphas=(0.6, 0.9), repeats=(0, 1)) -> pd.DataFrame:
    """A round frame as `round_frame` writes it, for 4→6 late poisoning with availability."""
    rows = []
    for m, a, j, r in itertools.product(ms, alphas, repeats, range(1, ROUNDS + 1)):
        rows.append({"dataset": "fmnist", "src": 4, "tgt": 6, "m": m, "strategy": "availability", "alpha": a,
                     "repeat": j, "round": r, "source_recall": recall_of(m, a, j, r),
                     "accuracy": 80.0, "n_malicious": malicious_of(m, a, j, r)})  # fmt: skip
    return pd.DataFrame(rows)


def _clean(level: float) -> pd.DataFrame:
    rows = [{"dataset": "fmnist", "src": 4, "tgt": 6, "m": 0.0, "strategy": "random", "alpha": np.nan,
             "repeat": j, "round": r, "source_recall": level, "accuracy": 90.0, "n_malicious": 0}
            for j in (0, 1) for r in range(1, ROUNDS + 1)]  # fmt: skip
    return pd.DataFrame(rows)


def _line(lines: list[str], start: str) -> str:
    (hit,) = [ln for ln in lines if ln.startswith(start)]
    return hit


def _malicious(m, a, j, r):  # from round BREAK on, rises of +1, +3, +4 and +2
    return (0, 0, 1, 4, 0, 4, 0, 2)[r - 1]


def _recall_following_malicious(base):
    """Source recall that drops 10 pp per malicious participant in the round."""
    return lambda m, a, j, r: base(m, a) - 10.0 * _malicious(m, a, j, r)


def test_findings_hold_when_recall_falls_with_availability_and_malicious_rises():
    av = _frame(_recall_following_malicious(lambda m, a: 90.0 - 40.0 * a - 30.0 * m), _malicious)
    lines = availability_findings(av, _clean(95.0), BREAK)
    falls = _line(lines, "Source recall after the break falls as availability grows (4→6): held, at 2 of 2")
    # the quoted means are those of the rounds >= BREAK
    late = av[(av["round"] >= BREAK) & (av["m"] == 0.1) & (av["alpha"] == 0.6)]["source_recall"].mean()
    assert f"m=10%: {late:.1f} →" in falls
    loss = _line(lines, "With m ≥ 10% and α = 0.9 the loss in source recall exceeds 20 pp (4→6): held")
    at_09 = av[(av["round"] >= BREAK) & (av["m"] == 0.3) & (av["alpha"] == 0.9)]["source_recall"].mean()
    assert f"m=30%: {95.0 - at_09:.1f} (2 runs)" in loss
    rise = _line(lines, "A rise in malicious participants from one round to the next lowers source recall")
    assert ": held " in rise and "+1: -10.0" in rise and "+4: -40.0" in rise


def test_findings_turn_when_the_numbers_turn():
    # recall rises with α at every m, the loss stays small, and malicious rises do not hurt
    av = _frame(lambda m, a, j, r: 60.0 + 20.0 * a, _malicious)
    lines = availability_findings(av, _clean(80.0), BREAK)
    _line(lines, "Source recall after the break falls as availability grows (4→6): NOT held, at 0 of 2")
    _line(lines, "With m ≥ 10% and α = 0.9 the loss in source recall exceeds 20 pp (4→6): NOT held")
    assert ": NOT held " in _line(lines, "A rise in malicious participants")
    # falling at one m only: partly held
    av = _frame(lambda m, a, j, r: 60.0 + (20.0 if m == 0.1 else -20.0) * a, _malicious)
    _line(availability_findings(av, None, BREAK), "Source recall after the break falls as availability grows "
          "(4→6): partly held, at 1 of 2")  # fmt: skip


def test_no_runs_no_findings_and_no_clean_run_no_loss_finding():
    assert availability_findings(None, None, BREAK) == []
    av = _frame(_recall_following_malicious(lambda m, a: 90.0 - 40.0 * a), _malicious)
    lines = availability_findings(av, None, BREAK)
    assert len(lines) == 2 and not any(ln.startswith("With m ≥ 10%") for ln in lines)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Fashion-MNIST not installed (make data)")  # fmt: skip
def test_defense_findings_quote_the_runs_and_turn_with_the_threshold(tmp_path):
    """The defense finding (§4) quotes each run's separation AUC and malicious share, and is held
    or NOT held by the threshold; the detector line counts flags as the detection table does."""
    from flcore.studies import experiments as ex
    from flcore.studies.report import defense_findings

    res = ex.defense_updates([["fmnist", 4, 6]], [0.2, 0.4], rounds=3, repeats=1, store=tmp_path / "store",
                             progress=False, seed=0, n_train={"fmnist": 600}, n_test={"fmnist": 300},
                             precision="fp32")  # fmt: skip
    sep = ex.pca_separation(ex.pca_frame(res, 1))
    sep = sep[np.isfinite(sep["separation_auc"])]  # a run with no malicious update selected is left out
    assert len(sep)
    low = float(sep["separation_auc"].min())
    held = defense_findings(res, 1, threshold=low)
    assert len(held) == 2 and ": held (" in held[0], held
    for r in sep.itertuples():
        assert f"m={100 * r.m:g}%: {r.separation_auc:.3f} ({int(r.malicious_rows)} of {int(r.rows)} " in held[0]
    assert "nan" not in held[0]
    assert ": NOT held (" in defense_findings(res, 1, threshold=low + 1e-6)[0]
    part = ex.detection_table(ex.detection_frame(res, 1))
    part = part[part["level"] == "participant"]
    for r in part.itertuples():
        assert f"{int(r.tp)} of {int(r.tp + r.fn)} malicious flagged, {int(r.fp)} of {int(r.fp + r.tn)} honest" in held[1]
    assert defense_findings([], 1) == [] and defense_findings([None], 1) == []


def test_client_state_tally_names_a_mode_only_when_its_distance_to_the_paper_is_smaller_beyond_noise():
    """The comparison's summary counts the cells the paired interval decides, gives each mode's
    mean distance to the paper, and names the mode the paper follows only when, over at least
    5 cells, the mean difference of the two distances has a 95% CI that excludes 0."""
    from flcore.studies.report import _tally

    def frame(pairs, verdicts=None):
        rows = [{"closer": (verdicts or ["no difference"] * len(pairs))[i], "_a": a, "_b": b, "_paper": 10.0}
                for i, (a, b) in enumerate(pairs)]  # fmt: skip
        return pd.DataFrame(rows)

    b_closer = [(20.0, 11.0), (0.0, 9.0), (22.0, 12.0), (-1.0, 8.0), (21.0, 10.5), (19.0, 9.5)]
    clear = _tally(frame(b_closer, ["b", "b", "no difference", "b", "a", "no difference"]), "a", "b", "x")
    assert "of the 6 cells computed in both modes, the two differ beyond the paired 95% CI in 4" in clear
    assert "a is closer to the paper in 1 and b in 3; in the other 2" in clear
    assert "The mean distance to the paper is 10.5 for a and 1.2 for b" in clear
    assert "a's distance minus b's, over the cells: +9.3 ± 0.8 pp" in clear and "(95% CI, 6 cells)" in clear
    assert clear.endswith("So far the paper's numbers follow b.")
    mixed = [(20.0, 11.0), (11.0, 20.0), (0.0, 9.0), (9.0, 0.0), (15.0, 14.0), (14.0, 15.0)]
    assert _tally(frame(mixed), "a", "b", "x").endswith("These runs do not yet say which mode the paper's numbers follow.")
    few = _tally(frame(b_closer[:4]), "a", "b", "x")  # 4 cells: too few to name a mode
    assert "(95% CI, 4 cells)" in few and few.endswith("do not yet say which mode the paper's numbers follow.")
    empty = frame(b_closer[:2], ["–", "–"])
    assert _tally(empty, "a", "b", "x") == "No cell is computed in both modes yet."


def test_last_round_finding_is_judged_against_the_noise_of_its_runs():
    """Table 4's finding (a malicious participant in the last round lowers the final source
    recall) is held only when the two categories differ beyond the 95% CI of their difference,
    turns when they differ the other way, and is left undecided, saying why, when the runs
    cannot tell: the difference is within the noise, or one side has a single run."""
    from flcore.studies.report import _lower_verdict, welch_ci95

    def row(values):
        v = pd.Series(values, dtype=float)
        return pd.Series({"mean": v.mean(), "std": v.std(ddof=1) if len(v) > 1 else np.nan, "runs": len(v)})

    assert _lower_verdict(row([60, 62, 61]), row([80, 81, 79])).startswith("held (61.0% over 3 runs vs 80.0% over 3;")
    assert _lower_verdict(row([80, 81, 79]), row([60, 62, 61])).startswith("NOT held: the opposite")
    assert _lower_verdict(row([60, 90, 75]), row([70, 85, 80])).startswith("not judged: the difference is within")
    single = _lower_verdict(row([60]), row([80, 81]))
    assert single.startswith("not judged: 60.0% over 1 run vs 80.5% over 2, +20.5 pp, the paper's direction")
    half = welch_ci95(1.0, 3, 1.0, 3)  # equal spreads: Student's t with 4 degrees of freedom
    assert half == pytest.approx(2.776445 * np.sqrt(2 / 3), rel=1e-5)
    assert welch_ci95(0.0, 2, 0.0, 2) == 0.0 and np.isnan(welch_ci95(1.0, 1, 1.0, 3))


def test_timing_finding_is_paired_by_repeat_and_judged_against_noise():
    """Early poisoning forgotten, late poisoning not: late poisoning's mean gap after the break
    minus early poisoning's final-round gap, paired by repeat; held beyond its 95% CI, turned
    beyond it the other way, not judged within it."""
    from flcore.studies.report import findings

    def rounds(late_drop, early_drop):
        rows = []
        for st, j, r in itertools.product(("none", "early", "late"), range(3), range(1, 7)):
            v = 80.0 + j
            if st == "late" and r >= BREAK:
                v -= late_drop(j)
            if st == "early" and r == 6:
                v -= early_drop(j)
            rows.append({"dataset": "fmnist", "src": 4, "tgt": 6, "setting": st, "repeat": j, "round": r,
                         "source_recall": v})  # fmt: skip
        return pd.DataFrame(rows)

    def line(frame):
        return _line(findings(None, None, None, frame, BREAK), "Early poisoning is forgotten")

    held = line(rounds(lambda j: 10.0 + j, lambda j: 0.0))
    assert "): held (" in held and "late minus early +11.0 ± " in held and "over 3 paired repeats" in held
    assert "NOT held: the opposite" in line(rounds(lambda j: 0.0, lambda j: 10.0 + j))
    assert "not judged: the difference is within the noise" in line(rounds(lambda j: (-20.0, 0.0, 26.0)[j], lambda j: 0.0))


def test_loss_growing_with_m_is_judged_by_rank_correlation_over_the_runs():
    from flcore.studies.report import _trend_verdict

    m = np.repeat([0.02, 0.1, 0.3, 0.5], 3)
    rng = np.random.default_rng(0)
    grows = 100 * m + rng.normal(0, 2, len(m))
    assert _trend_verdict(m, grows)[0] == "held" and "over the 12 runs +" in _trend_verdict(m, grows)[1]
    assert _trend_verdict(m, -grows)[0] == "NOT held"
    flat = np.array([5.0, 40.0, 1.0, 30.0, 2.0, 9.0, 35.0, 3.0, 8.0, 4.0, 33.0, 6.0])  # no trend in m
    assert _trend_verdict(m, flat)[0] == "not judged (no significant trend)"
    assert _trend_verdict(m[:3], grows[:3])[0] == "not judged"
    assert _trend_verdict(m, np.full(len(m), 4.0)) == ("not judged", "the 12 runs lose the same: no rank correlation")


def test_a_verdict_says_when_its_interval_cannot_tell_the_paper_from_no_effect():
    from flcore.studies.report import _verdict_counts, verdict

    assert verdict(35.4, 114.4, 42.0, 3, null=0.0).endswith("but so is no effect: too few runs to tell them apart")
    assert verdict(45.1, 7.0, 42.0, 3, null=0.0) == "paper inside our 95% CI"
    assert verdict(0.2, 0.6, 0.12, 3, null=0.0) == "paper inside our 95% CI"  # the paper's own number is ~0
    assert verdict(35.4, 114.4, 42.0, 3) == "paper inside our 95% CI"  # no null given (a recall, say)
    assert verdict(8.0, 14.6, 45.4, 3, null=0.0).startswith("off by -37.4 pp")
    col = pd.Series([verdict(35.4, 114.4, 42.0, 3, null=0.0), verdict(45.1, 7.0, 42.0, 3, null=0.0),
                     verdict(8.0, 14.6, 45.4, 3, null=0.0), verdict(3.0, float("nan"), 5.0, 1, null=0.0),
                     "not computed yet"])  # fmt: skip
    assert _verdict_counts(col, "x") == ("on x: the paper inside our 95% CI in 2 of 4 cells (1 of them with no "
                                         "effect inside it too), off in 1, 1 without an interval")
