"""Notebook 07: the targeted label flip and the defenses on non-iid shares.

Every participant's share is drawn from Dirichlet(β) class proportions
(`Config(partition="dirichlet", beta=β)`, `flcore.data.loading.partition_dirichlet`); β = ∞ is
the iid split (`partition="iid"`). A β is given as a positive number, or as "iid" (also None
or inf) for β = ∞; frames and CSV files hold β = ∞ as the float `inf` beside a `shares` label.

Per β, pair, defense and m (m = 0 always included), `noniid` returns:

- a final frame (`flcore.studies.experiments.final_frame`) with `beta`, `shares`, `defense`,
  the PCA defense's blocking counts (`blocking_frame`) and its exclusion rates per run
  (`exclusion_rates`: tpr, fpr; NaN for rules that do not flag participants);
- a detection frame (`detection_frame`) of the offline PCA detector fitted on the recorded
  source-row updates of the undefended poisoned runs, per repeat and level;
- ROC curves of that detector's scores (`roc_frame`), per repeat and level, on a common
  false-positive-rate grid.

Tables: `noniid_table` (tidy, one row per setting and metric: damage, the clean-run cost,
TPR/FPR), `noniid_roc_table` (ROC AUC and the detector's decisions), `roc_curve_table`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from flcore.config import Config
from flcore.sim.result import Result
from flcore.studies import experiments as ex

IID = math.inf  # β of the iid split
ROC_GRID = np.linspace(0.0, 1.0, 51)  # false-positive rates the ROC curves are read at

# table_noniid's metrics, in this order (pp unless said otherwise):
#   source_recall, accuracy   final source recall and M_acc (%)
#   damage                    source recall of the clean undefended run at the same β minus
#                             this run's, paired by repeat; at m = 0 the defense's clean-run cost
#   accuracy_loss             the same for M_acc
#   tpr, fpr                  fraction of the malicious / honest participant-rounds (one
#                             participant selected in one round) that the defense excluded from
#                             the aggregate (Result.excluded); NaN for rules that flag nobody
#   blocked, blocked_malicious  distinct participants the PCA defense ever excluded (of them malicious)
METRICS = ("source_recall", "accuracy", "damage", "accuracy_loss", "tpr", "fpr", "blocked",
           "blocked_malicious")  # fmt: skip
_DET_METRICS = ("roc_auc", "precision", "recall", "f1", "fpr")
_DET_COUNTS = ("tp", "fp", "tn", "fn")


def beta_value(beta) -> float:
    """A β parameter as a float: "iid", None or inf give inf (the iid split); a number > 0 its
    Dirichlet concentration."""
    if beta is None or (isinstance(beta, str) and beta.strip().lower() in ("iid", "inf", "infinity", "∞")):
        return IID
    if isinstance(beta, bool):
        raise ValueError(f"beta {beta!r}: use a positive number or 'iid' (β = ∞, the iid split)")
    try:
        v = float(beta)
    except (TypeError, ValueError):
        raise ValueError(f"beta {beta!r}: use a positive number or 'iid' (β = ∞, the iid split)") from None
    if not v > 0:
        raise ValueError(f"beta {beta!r}: a Dirichlet concentration is > 0 (small: skewed shares; "
                         "'iid' for β = ∞)")  # fmt: skip
    return v


def beta_values(betas) -> list[float]:
    """The distinct β of a parameter list, in its order (see `beta_value`)."""
    out = []
    for b in betas:
        v = beta_value(b)
        if v not in out:
            out.append(v)
    if not out:
        raise ValueError("betas is empty: give at least one β, e.g. ['iid', 0.5]")
    return out


def shares_label(beta: float) -> str:
    """"iid" for β = ∞, else "Dir(β)"."""
    return "iid" if math.isinf(beta) else f"Dir({beta:g})"


def shares_config(cfg: Config, beta: float) -> Config:
    """`cfg` on the shares of β: iid for β = ∞ (beta left at its default, so the config is the
    one other notebooks run), else Dirichlet(β)."""
    beta = beta_value(beta)
    return cfg.replace(partition="iid") if math.isinf(beta) else cfg.replace(partition="dirichlet", beta=beta)


def _defense_list(defenses) -> list[str]:
    """`defenses` with "none" first (the reference of the damage and the runs of the ROC)."""
    names = list(dict.fromkeys(defenses))
    unknown = [d for d in names if d not in ex.DEFENSES]
    if unknown:
        ex.defense_config(Config(), unknown[0])  # raises, naming the valid ones
    return ["none"] + [d for d in names if d != "none"]


def noniid_jobs(pairs, m_values, betas, defenses=("none", "pca"), *, rounds: int, repeats: int,
                aggregator_params: dict | None = None, pca_params: dict | None = None,
                **base) -> list[tuple[Config, str, float]]:  # fmt: skip
    """The runs of `noniid`, without training: (config, defense name, β) for every pair × β ×
    defense × m, m = 0 always included. "none" is always run: it is the clean reference of the
    damage, and its runs record the source-row updates (`record_updates="source"`) for the
    offline detector's ROC. Every run evaluates its last round only."""
    bs = beta_values(betas)
    names = _defense_list(defenses)
    ms = sorted({0.0, *(float(m) for m in m_values)})
    jobs = []
    for d, s, t in ex.pair_list(pairs):
        cfg = ex.base_config(d, rounds=rounds, repeats=repeats, src=s, tgt=t, eval_every=rounds, **base)
        for b in bs:
            cb = shares_config(cfg, b)
            for name in names:
                dcfg = ex.defense_config(cb, name, aggregator_params, pca_params)
                if name == "none":
                    dcfg = dcfg.replace(record_updates="source")
                jobs += [(dcfg.replace(m=m), name, b) for m in ms]
    return jobs


class NoniidFrames(NamedTuple):
    final: pd.DataFrame  # one row per (run, repeat)
    detection: pd.DataFrame  # offline detector, one row per (undefended poisoned run, repeat, level)
    roc: pd.DataFrame  # ROC curves of the offline detector, per (run, repeat, level, grid point)


def noniid(pairs, m_values, betas, defenses=("none", "pca"), *, rounds: int, repeats: int,
           aggregator_params: dict | None = None, pca_params: dict | None = None, roc_rounds_from: int = 1,
           store="results", progress=True, **base) -> NoniidFrames:  # fmt: skip
    """Label flipping and the defenses on Dirichlet(β) shares (`noniid_jobs`).

    roc_rounds_from: the offline detector reads the recorded updates of rounds ≥ this (the
    paper: 10 of 200; from a warm start every round is comparable, 1).
    Returns `NoniidFrames` (final, detection, roc; module doc)."""
    jobs = noniid_jobs(pairs, m_values, betas, defenses, rounds=rounds, repeats=repeats,
                       aggregator_params=aggregator_params, pca_params=pca_params, **base)  # fmt: skip
    results = ex.run_grid([c for c, _, _ in jobs], store, progress)
    finals, dets, rocs = [], [], []
    for res, (_, name, b) in zip(results, jobs):
        f = final_frame(res, name, b)
        finals.append(f)
        if name == "none" and res.config.m > 0:
            dets.append(_with_beta(ex.detection_frame([res], roc_rounds_from), b))
            rocs.append(roc_frame(res, b, roc_rounds_from))
    det = pd.concat(dets, ignore_index=True) if dets else pd.DataFrame()
    roc = pd.concat(rocs, ignore_index=True) if rocs else pd.DataFrame()
    return NoniidFrames(pd.concat(finals, ignore_index=True), det, roc)


def _with_beta(df: pd.DataFrame, beta: float) -> pd.DataFrame:
    """`df` with beta and shares columns after tgt."""
    df = df.copy()
    at = list(df.columns).index("tgt") + 1
    df.insert(at, "beta", float(beta))
    df.insert(at + 1, "shares", shares_label(beta))
    return df


def exclusion_rates(res: Result) -> pd.DataFrame:
    """Per repeat, how the defense's exclusions (`Result.excluded`) match the truth, counted
    over participant-rounds (one participant selected in one round): mal_rounds, honest_rounds
    (selections of malicious / honest participants), excluded_mal, excluded_honest, tpr =
    excluded_mal / mal_rounds, fpr = excluded_honest / honest_rounds (NaN when the denominator
    is 0). Without a defense that records exclusions the counts of exclusions and the rates
    are NaN."""
    R = res.config.repeats
    mal_rounds = np.array([np.isin(res.selected[j], res.malicious[j]).sum() for j in range(R)], float)
    honest_rounds = np.array([res.selected[j].size for j in range(R)], float) - mal_rounds
    out = pd.DataFrame({"repeat": np.arange(R), "mal_rounds": mal_rounds, "honest_rounds": honest_rounds,
                        "excluded_mal": np.nan, "excluded_honest": np.nan})  # fmt: skip
    if res.excluded is not None:
        ex_ = res.excluded
        for j in range(R):
            e = ex_[ex_["repeat"] == j]
            out.loc[j, "excluded_mal"] = float(e["malicious"].sum())
            out.loc[j, "excluded_honest"] = float((~e["malicious"].astype(bool)).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        out["tpr"] = np.where(out["mal_rounds"] > 0, out["excluded_mal"] / out["mal_rounds"], np.nan)
        out["fpr"] = np.where(out["honest_rounds"] > 0, out["excluded_honest"] / out["honest_rounds"], np.nan)
    return out


def final_frame(res: Result, defense: str, beta: float) -> pd.DataFrame:
    """`experiments.final_frame` of one run with beta, shares and defense, the blocking counts
    and the exclusion rates (`exclusion_rates`)."""
    f = ex.final_frame(res).merge(ex.blocking_frame(res), on="repeat", how="left")
    f = f.merge(exclusion_rates(res), on="repeat", how="left")
    f.insert(list(f.columns).index("repeat"), "defense", defense)
    return _with_beta(f, beta)


def roc_frame(res: Result, beta: float, rounds_from: int = 1, grid: np.ndarray = ROC_GRID) -> pd.DataFrame:
    """ROC curves of the offline PCA detector (`PCADetector()`, as `detection_frame` fits it) on
    one run's recorded source-row updates of rounds ≥ rounds_from: per non-diverged repeat and
    level ("update": every update's score; "participant": the mean score of its updates), the
    true-positive rate at each false-positive rate of `grid` (vertical reading of the curve).
    A repeat with only honest (or only malicious) rows has no curve."""
    from sklearn.base import clone

    from flcore.defenses.detector import PCADetector, participant_verdict, result_updates

    rows = []
    det0 = PCADetector()
    for j in ex._ok_repeats(res):
        X, meta = result_updates(res, int(j), rounds_from=rounds_from)
        if len(X) < 3:
            continue
        scores = clone(det0).fit(X).decision_function(X)
        verdict = participant_verdict(meta["participant"], scores)
        for level, y, s in (("update", meta["malicious"].to_numpy(), scores),
                            ("participant", np.isin(verdict["participant"], res.malicious[j]),
                             verdict["score"].to_numpy())):  # fmt: skip
            if len(np.unique(y)) < 2:
                continue
            t = _roc_on_grid(y, s, grid)
            rows += [{"repeat": int(j), "level": level, "fpr": float(x), "tpr": float(v)} for x, v in zip(grid, t)]
    df = pd.DataFrame(rows, columns=["repeat", "level", "fpr", "tpr"])
    for k, v in reversed(ex._keys(res.config).items()):
        df.insert(0, k, v)
    return _with_beta(df, beta)


def _roc_on_grid(y, scores, grid: np.ndarray) -> np.ndarray:
    """The ROC curve of `scores` against the truth `y` (both classes present), read at the
    false-positive rates `grid`: linear between the curve's points, and at a false-positive
    rate the curve reaches several times, its highest true-positive rate there."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(y).astype(int), np.asarray(scores, float), drop_intermediate=False)
    grid = np.asarray(grid, float)
    i = np.searchsorted(fpr, grid, side="right")  # fpr[i - 1] <= x < fpr[i]; both rise along the curve
    lo = np.clip(i - 1, 0, len(fpr) - 1)
    hi = np.clip(i, 0, len(fpr) - 1)
    span = fpr[hi] - fpr[lo]
    w = np.divide(grid - fpr[lo], span, out=np.zeros_like(grid), where=span > 0)
    return tpr[lo] + w * (tpr[hi] - tpr[lo])


# ------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------

_KEYS = ["dataset", "src", "tgt", "beta", "shares", "defense", "m"]


def _sorted(t: pd.DataFrame, extra: Sequence[str] = ()) -> pd.DataFrame:
    """Pair, β from iid to the most skewed, defense in `DEFENSES` order, m, then `extra`."""
    return ex.sort_tidy(t, ("dataset", "src", "tgt", "beta", "defense", "m", *extra),
                        {"beta": lambda c: -c, "defense": list(ex.DEFENSES), "metric": METRICS})


def noniid_table(final: pd.DataFrame) -> pd.DataFrame:
    """table_noniid: per (pair, β, defense, m) and metric (`METRICS`), mean, std and runs
    (repeats where the metric is defined) over repeats. Tidy: dataset, src, tgt, beta,
    shares, defense, setting (the defense's label), m, metric, mean, std, runs.

    damage and accuracy_loss are paired by repeat with the clean undefended run (m = 0, no
    defense) of the same pair and β; a repeat without a clean twin is compared with the clean
    mean. At m = 0 they are the defense's clean-run cost."""
    pair_b = ["dataset", "src", "tgt", "beta"]
    clean = final[(final["defense"] == "none") & (final["m"] == 0)]
    if clean.empty:
        raise ValueError("the final frame has no clean run without defense (defense 'none', m = 0)")
    j = ex.paired_with_clean(final, clean, pair_b, ["source_recall", "accuracy"])
    j["damage"] = j["source_recall_clean"] - j["source_recall"]
    j["accuracy_loss"] = j["accuracy_clean"] - j["accuracy"]
    for v in METRICS:
        if v not in j:
            j[v] = np.nan
    long = j.melt(id_vars=_KEYS + ["repeat"], value_vars=list(METRICS), var_name="metric", value_name="value")
    g = long.groupby(_KEYS + ["metric"], sort=False, dropna=False)["value"]
    t = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "runs": g.count()}).reset_index()
    t.insert(list(t.columns).index("m"), "setting", [ex.DEFENSE_LABEL.get(d, d) for d in t["defense"]])
    return _sorted(t, ["metric"])


def noniid_roc_table(det: pd.DataFrame) -> pd.DataFrame:
    """The offline PCA detector per (pair, β, m, level): ROC AUC (mean, roc_auc_std and
    auc_runs: repeats with both classes present), precision, recall, F1 and FPR of its
    decision (means over repeats), the counts tp, fp, tn, fn summed, and runs."""
    keys = ["dataset", "src", "tgt", "beta", "shares", "m", "level"]
    if det.empty:
        return pd.DataFrame(columns=[*keys, "roc_auc", "roc_auc_std", "auc_runs", *_DET_METRICS[1:],
                                     *_DET_COUNTS, "runs"])  # fmt: skip
    g = det.groupby(keys, sort=False)
    out = g[list(_DET_METRICS)].mean()
    out.insert(1, "roc_auc_std", g["roc_auc"].std(ddof=1))
    out.insert(2, "auc_runs", g["roc_auc"].count())
    out = out.join(g[list(_DET_COUNTS)].sum())
    out["runs"] = g.size()
    return _sorted(out.reset_index(), ["level"])


def roc_curve_table(roc: pd.DataFrame) -> pd.DataFrame:
    """Mean ROC curve per (pair, β, m, level): tpr (mean over repeats at each fpr of the grid),
    tpr_std, runs."""
    keys = ["dataset", "src", "tgt", "beta", "shares", "m", "level", "fpr"]
    if roc.empty:
        return pd.DataFrame(columns=[*keys, "tpr", "tpr_std", "runs"])
    g = roc.groupby(keys, sort=False)["tpr"]
    t = pd.DataFrame({"tpr": g.mean(), "tpr_std": g.std(ddof=1), "runs": g.count()}).reset_index()
    return _sorted(t, ["level", "fpr"])


# ------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------


def _value(t: pd.DataFrame, metric: str, **where) -> float:
    sel = t["metric"] == metric
    for k, v in where.items():
        sel &= np.isclose(t[k], v) if isinstance(v, float) else t[k] == v
    r = t.loc[sel, "mean"]
    return float(r.iloc[0]) if len(r) else np.nan


def agreement_noniid(table: pd.DataFrame, roc_table: pd.DataFrame | None = None) -> str:
    """Per pair and β: the clean source recall, the undefended damage at the largest m, the
    defense with the least damage there, the PCA defense's exclusion rates, and the offline
    detector's ROC AUC per update."""
    out = []
    for (d, s, t), g in table.groupby(["dataset", "src", "tgt"], sort=False):
        m_top = g["m"].max()
        for b, gb in g.groupby("beta", sort=False):
            lab = shares_label(b)
            clean = _value(gb, "source_recall", defense="none", m=0.0)
            parts = [f"{ex._pair(d, s, t)}, {lab}: clean source recall {clean:.1f}%"]
            if m_top > 0:
                dm = gb[(gb["metric"] == "damage") & np.isclose(gb["m"], m_top)].dropna(subset=["mean"])
                none = _value(gb, "damage", defense="none", m=float(m_top))
                parts.append(f"at m={100 * m_top:g}% the undefended damage is {none:+.1f} pp")
                if len(dm):
                    best = dm.loc[dm["mean"].idxmin()]
                    parts.append(f"least damage with {best['setting']} ({best['mean']:+.1f} pp)")
                tpr = _value(gb, "tpr", defense="pca", m=float(m_top))
                fpr = _value(gb, "fpr", defense="pca", m=float(m_top))
                if np.isfinite(tpr) or np.isfinite(fpr):
                    parts.append(f"PCA blocking excluded {100 * tpr:.0f}% of the malicious and "
                                 f"{100 * fpr:.0f}% of the honest participant-rounds")  # fmt: skip
                if roc_table is not None and len(roc_table):
                    r = roc_table[(roc_table["dataset"] == d) & (roc_table["src"] == s) & (roc_table["tgt"] == t)
                                  & (roc_table["beta"] == b) & np.isclose(roc_table["m"], m_top)
                                  & (roc_table["level"] == "update")]  # fmt: skip
                    if len(r) and np.isfinite(r["roc_auc"].iloc[0]):
                        parts.append(f"offline detector ROC AUC {r['roc_auc'].iloc[0]:.2f} per update")
            costs = gb[(gb["metric"] == "damage") & (gb["m"] == 0) & (gb["defense"] != "none")]
            if len(costs):
                parts.append("clean-run cost in source recall: " + ", ".join(
                    f"{r['setting']} {r['mean']:+.1f} pp" for _, r in costs.iterrows()))  # fmt: skip
            out.append("; ".join(parts) + ".")
    return " ".join(out)
