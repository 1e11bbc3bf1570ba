"""The availability findings of the paper-scale report (flcore.studies.report): each verdict
follows the numbers it quotes, and turns when the numbers turn."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

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
