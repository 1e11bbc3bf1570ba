"""The runs each notebook needs, derived from its parameters without training anything.

Every numbered notebook calls one study function of `flcore.studies.experiments`
(`feasibility`, `timing`, ...), which builds its configurations with a `*_jobs` function and
then runs them. `configs(notebook, params)` calls the same `*_jobs` function with the same
arguments the notebook passes, so `python -m flcore reproduce` can compute every run of a
profile before papermill renders the notebooks (which then only read the store). The
render step runs with training forbidden, so a notebook that asked for a configuration the
plan did not hold would stop with that configuration's name (tests/test_reproduce.py
renders every notebook that way).
"""

from __future__ import annotations

from collections.abc import Callable

from flcore.config import Config
from flcore.studies import adaptive as ad
from flcore.studies import experiments as ex
from flcore.studies import noniid as nx
from flcore.studies import scoreboard as sb

# the parameters every notebook has (tools/build_notebooks.py, COMMON) that reach Config
_COMMON = ("seed", "n_train", "n_test", "warm_start", "device", "precision", "client_state")


def _common(p: dict) -> dict:
    return {k: p[k] for k in _COMMON if k in p}  # client_state came later: absent means stateless


def feasibility_jobs(p: dict) -> list:
    """Notebook 01's `experiments.feasibility_jobs` from its parameters `p`."""
    return ex.feasibility_jobs(p["pairs"], p["m_values"], rounds=p["rounds"], repeats=p["repeats"],
                               baseline_repeats=p["baseline_repeats"], curves=p.get("curves", False),
                               **_common(p))  # fmt: skip


def timing_jobs(p: dict) -> list:
    """Notebook 03's `experiments.timing_jobs` from its parameters `p`."""
    return ex.timing_jobs(p["pairs"], p["m"], rounds=p["rounds"], repeats=p["repeats"],
                          break_round=p["break_round"], figure_pairs=p["figure_pairs"],
                          baseline_repeats=p["baseline_repeats"], **_common(p))  # fmt: skip


def _feasibility(p: dict) -> list[Config]:
    return [c for c, _, _ in feasibility_jobs(p)]


def _targeting(p: dict) -> list[Config]:
    jobs = ex.feasibility_jobs(p["pairs"], [0.0, p["m"]], rounds=p["rounds"], repeats=p["repeats"],
                               baseline_repeats=p["baseline_repeats"], curves=p.get("curves", False),
                               **_common(p))  # fmt: skip
    return [c for c, _, _ in jobs]


def _timing(p: dict) -> list[Config]:
    return [c for c, *_ in timing_jobs(p)]


def _availability(p: dict) -> list[Config]:
    return ex.availability_jobs(p["pairs"], p["m_values"], p["alphas"], rounds=p["rounds"],
                                repeats=p["repeats"], break_round=p["break_round"], **_common(p))  # fmt: skip


def _defense(p: dict) -> list[Config]:
    return ex.defense_updates_jobs(p["pairs"], p["m_values"], rounds=p["rounds"], repeats=p["repeats"],
                                   **_common(p))  # fmt: skip


def _defense_comparison(p: dict) -> list[Config]:
    jobs = ex.defense_comparison_jobs(p["pairs"], p["m_values"], p["defenses"], rounds=p["rounds"],
                                      repeats=p["repeats"], aggregator_params=p["aggregator_params"],
                                      pca_params=p["pca_params"], **_common(p))  # fmt: skip
    return [c for c, _ in jobs]


def _noniid(p: dict) -> list[Config]:
    jobs = nx.noniid_jobs(p["pairs"], p["m_values"], p["betas"], p["defenses"], rounds=p["rounds"],
                          repeats=p["repeats"], aggregator_params=p["aggregator_params"],
                          pca_params=p["pca_params"], **_common(p))  # fmt: skip
    return [c for c, _, _ in jobs]


def _scoreboard(p: dict) -> list[Config]:
    jobs = sb.scoreboard_jobs(p["pairs"], p["m_values"], p["defenses"], p["attacks"], rounds=p["rounds"],
                              repeats=p["repeats"], aggregator_params=p["aggregator_params"],
                              pca_params=p["pca_params"], attack_params=p["attack_params"], **_common(p))  # fmt: skip
    trade = ad.tradeoff_jobs(p["pairs"], p["tradeoff_m"], p["tradeoff_strengths"], rounds=p["tradeoff_rounds"],
                             repeats=p["tradeoff_repeats"], pca_params=p["pca_params"], **_common(p))  # fmt: skip
    return [c for c, _, _ in jobs] + [c for c, _, _ in trade]


# notebook stem -> the function that lists its runs from its parameters
STUDIES: dict[str, Callable[[dict], list[Config]]] = {
    "01_feasibility": _feasibility,
    "02_targeting": _targeting,
    "03_timing": _timing,
    "04_availability": _availability,
    "05_defense": _defense,
    "06_defense_comparison": _defense_comparison,
    "07_noniid": _noniid,
    "08_scoreboard": _scoreboard,
}


def configs(notebook: str, params: dict) -> list[Config]:
    """The configurations notebook `notebook` (its stem, e.g. "01_feasibility") runs with
    `params` (every parameter of its parameters cell, as papermill would set them)."""
    if notebook not in STUDIES:
        raise KeyError(f"no plan for notebook {notebook!r} (have: {', '.join(STUDIES)}); "
                       "add its *_jobs function to flcore.studies.plan.STUDIES")  # fmt: skip
    return STUDIES[notebook](params)
