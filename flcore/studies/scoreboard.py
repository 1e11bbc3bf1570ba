"""Notebook 08: the scoreboard, every defense against every attack.

For each pair, every defense (`experiments.DEFENSES`) meets every attack (`ATTACKS`: the
targeted flip, random flipping, many-to-one flipping, the backdoor and the adaptive flip) at
every m > 0, and runs once clean (m = 0, no attack: its clean-run cost). The attacks keep
their defaults except where `attack_params` overrides them: `{attack: {option: value}}`, or
per dataset `{attack: {dataset: {option: value}}}` (e.g. many_to_one's sources must hold the
pair's source and not its target).

`scoreboard` returns a final frame (`experiments.final_frame`) with `defense` and `attack`
("none" for the clean runs), the PCA defense's blocking counts, and per run:

- attack_success: the backdoor's attack success rate in the last round (%); NaN for attacks
  without a trigger;
- the exclusions against the truth, over participant-rounds (one participant selected in one
  round, `noniid.exclusion_rates`): mal_rounds, honest_rounds, excluded_mal, excluded_honest,
  detection_recall (= TPR), detection_fpr and detection_precision (the excluded
  participant-rounds that were malicious; NaN when nothing was excluded); NaN for rules that
  flag nobody;
- has_trigger, flags: whether the attack has a trigger and the defense records exclusions
  (what the tables may report).

Tables: `scoreboard_table` (tidy, every defense x attack x m cell and metric) and
`scoreboard_summary` (one row per pair and defense: the worst case over attacks and m, the
clean-run cost, detection). `agreement_scoreboard` reads them, and says for each headline
difference whether it is larger than its standard deviation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from flcore.config import Config
from flcore.data.specs import DATASETS
from flcore.sim.result import Result
from flcore.studies import experiments as ex
from flcore.studies import noniid as nx

# The attacks of the scoreboard, in column order (flcore.attacks; docs/SETTING.md, the threat model)
ATTACKS = ("label_flip", "random_flip", "many_to_one", "backdoor", "adaptive_flip")
ATTACK_LABEL = {"none": "clean (m = 0)", "label_flip": "targeted flip", "random_flip": "random flip",
                "many_to_one": "many-to-one", "backdoor": "backdoor", "adaptive_flip": "adaptive flip"}  # fmt: skip
CLEAN = "none"  # the attack column of the clean runs (m = 0)

# table_scoreboard's metrics, in this order (pp unless said otherwise):
#   source_recall, accuracy   final source recall and M_acc (%)
#   damage                    source recall of the clean undefended run minus this run's,
#                             paired by repeat; at m = 0 the defense's clean-run cost
#   accuracy_loss             the same for M_acc
#   attack_success            the backdoor's attack success rate in the last round (%); only
#                             for attacks with a trigger
#   detection_precision, detection_recall, detection_fpr
#                             of the participant-rounds the defense excluded (fractions);
#                             only for defenses that flag participants (the PCA defense)
METRICS = ("source_recall", "accuracy", "damage", "accuracy_loss", "attack_success",
           "detection_precision", "detection_recall", "detection_fpr")  # fmt: skip
_TRIGGER_METRICS = ("attack_success",)
_FLAG_METRICS = ("detection_precision", "detection_recall", "detection_fpr")
_KEYS = ["dataset", "src", "tgt", "defense", "attack", "m"]


def _names(values, valid: Sequence[str], what: str) -> list[str]:
    names = list(dict.fromkeys(values))
    for n in names:
        if n not in valid:
            from flcore.config import suggest

            raise ValueError(f"{what} {n!r}: unknown{suggest(n, valid)} (valid: {', '.join(valid)})")
    if not names:
        raise ValueError(f"no {what}s given: name at least one of {', '.join(valid)}")
    return names


def attack_options(attack: str, attack_params: dict | None, dataset: str) -> dict:
    """The attack_params of `attack` on `dataset`: `attack_params[attack]`, either the options
    themselves or, when every key names a dataset, the options per dataset ({} if absent)."""
    over = (attack_params or {}).get(attack) or {}
    if not isinstance(over, dict):
        raise ValueError(f"attack_params[{attack!r}]={over!r}: give a dict of options, e.g. "
                         "{'strength': 0.5}, or one per dataset, e.g. {'cifar10': {'sources': [2, 4, 5]}}")  # fmt: skip
    if over and all(k in DATASETS for k in over):
        over = over.get(dataset) or {}
    return dict(over)


def scoreboard_jobs(pairs, m_values, defenses=tuple(ex.DEFENSES), attacks=ATTACKS, *, rounds: int,
                    repeats: int, aggregator_params: dict | None = None, pca_params: dict | None = None,
                    attack_params: dict | None = None, **base) -> list[tuple[Config, str, str]]:  # fmt: skip
    """The runs of `scoreboard`, without training: (config, defense name, attack name) for every
    pair x defense ("none" always, first) x (the clean run, then every attack x m > 0). The clean run (m = 0, attack
    "none" in the frames) is the plain config with the default attack, so it stacks with the
    targeted flip's runs of the same defense. Every run evaluates its last round only."""
    names = nx._defense_list(defenses)  # "none" first: the clean reference
    atts = _names(attacks, ATTACKS, "attack")
    ms = sorted({float(m) for m in m_values if float(m) > 0})
    if not ms:
        raise ValueError(f"m_values={list(m_values)!r}: give at least one m > 0 (the clean run m = 0 is always added)")
    jobs = []
    for d, s, t in ex.pair_list(pairs):
        cfg = ex.base_config(d, rounds=rounds, repeats=repeats, src=s, tgt=t, eval_every=rounds, **base)
        for name in names:
            dcfg = ex.defense_config(cfg, name, aggregator_params, pca_params)
            jobs.append((dcfg.replace(m=0.0), name, CLEAN))
            for a in atts:
                acfg = dcfg.replace(attack=a, attack_params=attack_options(a, attack_params, d))
                jobs += [(acfg.replace(m=m), name, a) for m in ms]
    return jobs


def scoreboard(pairs, m_values, defenses=tuple(ex.DEFENSES), attacks=ATTACKS, *, rounds: int, repeats: int,
               aggregator_params: dict | None = None, pca_params: dict | None = None,
               attack_params: dict | None = None, store="results", progress=True, **base) -> pd.DataFrame:  # fmt: skip
    """Every defense against every attack (`scoreboard_jobs`): a final frame (module doc)."""
    jobs = scoreboard_jobs(pairs, m_values, defenses, attacks, rounds=rounds, repeats=repeats,
                           aggregator_params=aggregator_params, pca_params=pca_params,
                           attack_params=attack_params, **base)  # fmt: skip
    results = ex.run_grid([c for c, _, _ in jobs], store, progress)
    return pd.concat([final_frame(r, name, a) for r, (_, name, a) in zip(results, jobs)], ignore_index=True)


def final_asr(res: Result) -> pd.Series:
    """Per repeat: the attack success rate in the last round (NaN without a trigger)."""
    r = res.rounds[res.rounds["round"] == res.config.rounds]
    return r.set_index("repeat")["attack_success"].astype(float)


def final_frame(res: Result, defense: str, attack: str) -> pd.DataFrame:
    """`experiments.final_frame` of one run with defense and attack, the blocking counts, the
    exclusions against the truth and the last round's attack success rate (module doc)."""
    f = ex.final_frame(res).merge(ex.blocking_frame(res), on="repeat", how="left")
    rates = nx.exclusion_rates(res).rename(columns={"tpr": "detection_recall", "fpr": "detection_fpr"})
    f = f.merge(rates, on="repeat", how="left")
    f["attack_success"] = f["repeat"].map(final_asr(res)).astype(float)
    f["has_trigger"] = bool(res.config.build_attack().has_trigger) and attack != CLEAN
    f["flags"] = res.excluded is not None
    f["equals_mean"] = res.config.build_aggregator().equals_mean(res.config.k) or ""
    return _finish(f, defense, attack)


def _finish(f: pd.DataFrame, defense: str, attack: str) -> pd.DataFrame:
    """Add detection_precision and the defense and attack columns (before repeat)."""
    f = f.copy()
    if "excluded_mal" in f:
        excl = f["excluded_mal"] + f["excluded_honest"]
        with np.errstate(invalid="ignore", divide="ignore"):
            f["detection_precision"] = np.where(excl > 0, f["excluded_mal"] / excl.where(excl > 0, 1), np.nan)
    at = list(f.columns).index("repeat")
    f.insert(at, "defense", defense)
    f.insert(at + 1, "attack", attack)
    return f


# ------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------


def _sorted(t: pd.DataFrame, extra: Sequence[str] = ()) -> pd.DataFrame:
    """Pair, defense in `DEFENSES` order, the clean run then `ATTACKS` order, m, then `extra`."""
    return ex.sort_tidy(t, ("dataset", "src", "tgt", "defense", "attack", "m", *extra),
                        {"defense": list(ex.DEFENSES), "attack": (CLEAN, *ATTACKS), "metric": METRICS})


def _with_clean(final: pd.DataFrame) -> pd.DataFrame:
    """`final` with damage and accuracy_loss against the clean undefended run of the same pair,
    paired by repeat (a repeat without a clean twin: against the clean mean)."""
    pair = ["dataset", "src", "tgt"]
    clean = final[(final["defense"] == "none") & (final["m"] == 0)]
    if clean.empty:
        raise ValueError("the final frame has no clean run without defense (defense 'none', m = 0)")
    j = ex.paired_with_clean(final, clean, pair, ["source_recall", "accuracy"])
    j["damage"] = j["source_recall_clean"] - j["source_recall"]
    j["accuracy_loss"] = j["accuracy_clean"] - j["accuracy"]
    return j


def scoreboard_table(final: pd.DataFrame) -> pd.DataFrame:
    """table_scoreboard: per (pair, defense, attack, m) and metric (`METRICS`), mean, std and
    runs (repeats where the metric is defined) over repeats. Tidy: dataset, src, tgt, defense,
    attack, m, metric, mean, std, runs. attack_success appears only for attacks with a trigger,
    the detection metrics only for defenses that flag participants; the clean runs have attack
    "none" and m = 0."""
    j = _with_clean(final)
    for v in METRICS:
        if v not in j:
            j[v] = np.nan
    trig = j["has_trigger"].astype(bool) if "has_trigger" in j else pd.Series(False, index=j.index)
    flags = j["flags"].astype(bool) if "flags" in j else pd.Series(False, index=j.index)
    long = j.melt(id_vars=_KEYS + ["repeat"], value_vars=list(METRICS), var_name="metric", value_name="value")
    n = len(j)
    keep = np.ones(len(long), bool)
    for i, v in enumerate(METRICS):  # melt stacks the metrics in order, n rows each
        if v in _TRIGGER_METRICS:
            keep[i * n:(i + 1) * n] = trig.to_numpy()
        elif v in _FLAG_METRICS:
            keep[i * n:(i + 1) * n] = flags.to_numpy()
    long = long[keep]
    g = long.groupby(_KEYS + ["metric"], sort=False, dropna=False)["value"]
    t = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "runs": g.count()}).reset_index()
    return _sorted(t, ["metric"])


def _cells(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    return table[(table["metric"] == metric) & table["mean"].notna()]


def _extreme(g: pd.DataFrame, worst: str) -> pd.Series | None:
    """The row of `g` with the lowest (worst="min") or highest mean, None if `g` is empty."""
    if g.empty:
        return None
    return g.loc[g["mean"].idxmin() if worst == "min" else g["mean"].idxmax()]


def scoreboard_summary(table: pd.DataFrame, final: pd.DataFrame | None = None) -> pd.DataFrame:
    """table_scoreboard_summary: one row per (pair, defense), over its attacked cells (m > 0).

    worst_source_recall, worst_accuracy: the lowest cell mean over attacks and m (%), with the
    cell's std, attack and m; worst_attack_success: the highest backdoor success rate over m
    (NaN without an attack with a trigger). vs_none_*: this worst case minus the undefended
    one (pp; for ASR lower is better), with std = the two cells' stds in quadrature.
    clean_cost_source_recall, clean_cost_accuracy: the m = 0 damage and M_acc loss against
    the clean undefended run, paired by repeat (mean and std). Detection (defenses that flag
    participants; NaN otherwise): detection_precision and detection_recall pooled over every
    attacked run (from `final`'s counts when given, else the mean of the cells), the lowest
    detection_recall of one attack (pooled over m) and that attack, and detection_fpr_clean
    (honest participant-rounds excluded in the clean run)."""
    rows = []
    for (d, s, t, name), g in table.groupby(["dataset", "src", "tgt", "defense"], sort=False):
        att = g[g["m"] > 0]
        row = {"dataset": d, "src": s, "tgt": t, "defense": name, "setting": ex.DEFENSE_LABEL.get(name, name)}
        for metric, col, worst in (("source_recall", "worst_source_recall", "min"),
                                   ("accuracy", "worst_accuracy", "min"),
                                   ("attack_success", "worst_attack_success", "max")):  # fmt: skip
            r = _extreme(_cells(att, metric), worst)
            row[col] = np.nan if r is None else r["mean"]
            row[f"{col}_std"] = np.nan if r is None else r["std"]
            row[f"{col}_attack"] = None if r is None else r["attack"]
            row[f"{col}_m"] = np.nan if r is None else r["m"]
        for metric, col in (("damage", "clean_cost_source_recall"), ("accuracy_loss", "clean_cost_accuracy")):
            r = g[(g["m"] == 0) & (g["metric"] == metric)]
            row[col] = r["mean"].iloc[0] if len(r) else np.nan
            row[f"{col}_std"] = r["std"].iloc[0] if len(r) else np.nan
        row.update(_detection(g, att, final, (d, s, t, name)))
        row["note"] = _note(final, (d, s, t, name))
        cells = att[att["metric"] == "source_recall"]
        row["cells"] = len(cells)
        row["min_runs"] = int(cells["runs"].min()) if len(cells) else 0
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    # each worst case against the undefended one of the same pair
    pair = ["dataset", "src", "tgt"]
    none = out[out["defense"] == "none"].set_index(pair)
    idx = out.set_index(pair).index
    for col in ("worst_source_recall", "worst_accuracy", "worst_attack_success"):
        ref = none[col].reindex(idx).to_numpy() if len(none) else np.nan
        ref_sd = none[f"{col}_std"].reindex(idx).to_numpy() if len(none) else np.nan
        out[f"vs_none_{col[6:]}"] = out[col] - ref
        out[f"vs_none_{col[6:]}_std"] = np.hypot(out[f"{col}_std"], ref_sd)
    return _sorted(out)


def _note(final: pd.DataFrame | None, key) -> str:
    """Why the defense of `key` (pair, defense) is the plain mean here (`equals_mean` of its
    runs in `final`), or ""."""
    if final is None or "equals_mean" not in final:
        return ""
    d, s, t, name = key
    f = final[(final["dataset"] == d) & (final["src"] == s) & (final["tgt"] == t) & (final["defense"] == name)]
    notes = [n for n in f["equals_mean"].fillna("").unique() if n]
    return notes[0] if notes else ""


def _detection(g: pd.DataFrame, att: pd.DataFrame, final: pd.DataFrame | None, key) -> dict:
    nan = {"detection_precision": np.nan, "detection_recall": np.nan, "detection_recall_worst": np.nan,
           "detection_recall_worst_attack": None, "detection_fpr_clean": np.nan}  # fmt: skip
    if not g["metric"].isin(_FLAG_METRICS).any():
        return nan
    out = dict(nan)
    clean = g[(g["m"] == 0) & (g["metric"] == "detection_fpr")]
    out["detection_fpr_clean"] = clean["mean"].iloc[0] if len(clean) else np.nan
    if final is not None and "excluded_mal" in final:
        d, s, t, name = key
        f = final[(final["dataset"] == d) & (final["src"] == s) & (final["tgt"] == t)
                  & (final["defense"] == name) & (final["m"] > 0)]  # fmt: skip
        f = f[f["excluded_mal"].notna()]
        if len(f):
            excl = (f["excluded_mal"] + f["excluded_honest"]).sum()
            out["detection_precision"] = f["excluded_mal"].sum() / excl if excl > 0 else np.nan
            mal = f["mal_rounds"].sum()
            out["detection_recall"] = f["excluded_mal"].sum() / mal if mal > 0 else np.nan
            per = f.groupby("attack").agg(e=("excluded_mal", "sum"), n=("mal_rounds", "sum"))
            per = per[per["n"] > 0]
            if len(per):
                rec = per["e"] / per["n"]
                out["detection_recall_worst"] = float(rec.min())
                out["detection_recall_worst_attack"] = rec.idxmin()
            return out
    for metric, col in (("detection_precision", "detection_precision"), ("detection_recall", "detection_recall")):
        c = _cells(att, metric)
        out[col] = c["mean"].mean() if len(c) else np.nan
    c = _cells(att, "detection_recall")
    if len(c):
        per = c.groupby("attack")["mean"].mean()
        out["detection_recall_worst"] = float(per.min())
        out["detection_recall_worst_attack"] = per.idxmin()
    return out


def heatmap_frame(table: pd.DataFrame, metric: str = "source_recall", how: str = "min") -> pd.DataFrame:
    """Per (pair, defense, attack): the lowest (how="min") or highest ("max") cell mean of
    `metric` over m > 0, with that cell's std and m; the clean run (attack "none", m = 0)
    as it is. Columns: dataset, src, tgt, defense, attack, value, std, m."""
    c = _cells(table, metric)
    rows = []
    for (d, s, t, name, a), g in c.groupby(["dataset", "src", "tgt", "defense", "attack"], sort=False):
        r = _extreme(g, how)
        rows.append({"dataset": d, "src": s, "tgt": t, "defense": name, "attack": a, "value": r["mean"],
                     "std": r["std"], "m": r["m"]})  # fmt: skip
    out = pd.DataFrame(rows, columns=["dataset", "src", "tgt", "defense", "attack", "value", "std", "m"])
    return _sorted(out)


# ------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------


def _vs(diff: float, sd: float) -> tuple[str, bool | None]:
    """'larger than its sd s' / 'NOT larger ...' and whether it is (None: no sd)."""
    if not (np.isfinite(diff) and np.isfinite(sd)):
        return "no standard deviation (fewer than 2 runs)", None
    big = abs(diff) > sd
    return f"{'larger' if big else 'NOT larger'} than its sd {sd:.1f}", big


def agreement_scoreboard(summary: pd.DataFrame) -> str:
    """Per pair and defense: the worst source recall against the undefended worst, the worst
    backdoor ASR against the undefended one, the clean-run cost in M_acc and, for a flagging
    defense, its detection; each difference said to be larger than its standard deviation or
    not. Ends with how many headline differences are."""
    out, n_big, n_all = [], 0, 0
    for (d, s, t), g in summary.groupby(["dataset", "src", "tgt"], sort=False):
        none = g[g["defense"] == "none"]
        if len(none):
            r = none.iloc[0]
            out.append(f"{ex._pair(d, s, t)} without defense: worst source recall "
                       f"{r['worst_source_recall']:.1f}% ({ATTACK_LABEL.get(r['worst_source_recall_attack'])}, "
                       f"m={100 * r['worst_source_recall_m']:g}%)"
                       + (f", backdoor ASR up to {r['worst_attack_success']:.1f}%"
                          if np.isfinite(r["worst_attack_success"]) else "") + ".")  # fmt: skip
        for _, r in g[g["defense"] != "none"].iterrows():
            parts = [f"{r['setting']}: worst source recall {r['worst_source_recall']:.1f}% "
                     f"({ATTACK_LABEL.get(r['worst_source_recall_attack'])}, m={100 * r['worst_source_recall_m']:g}%)"]
            for col, what in (("source_recall", "vs undefended"), ("attack_success", "backdoor ASR vs undefended")):
                diff, sd = r[f"vs_none_{col}"], r[f"vs_none_{col}_std"]
                if not np.isfinite(diff):
                    continue
                txt, big = _vs(diff, sd)
                n_all += 1
                n_big += bool(big)
                pre = f"ASR {r['worst_attack_success']:.1f}%, " if col == "attack_success" else ""
                parts.append(f"{pre}{what} {diff:+.1f} pp ({txt})")
            cost, sd = r["clean_cost_accuracy"], r["clean_cost_accuracy_std"]
            if np.isfinite(cost):
                txt, big = _vs(cost, sd)
                n_all += 1
                n_big += bool(big)
                parts.append(f"clean-run cost {cost:+.1f} pp M_acc ({txt})")
            if np.isfinite(r["detection_recall"]) or np.isfinite(r["detection_fpr_clean"]):
                parts.append(_detection_text(r))
            if isinstance(r.get("note"), str) and r["note"]:
                parts.append(f"**it equals FedAvg by construction here**: {r['note']}")
            out.append("; ".join(parts) + ".")
    if n_all:
        out.append(f"**{n_big} of {n_all} headline differences are larger than their standard deviation**"
                   + (" (those that are not are within run-to-run noise at these repeats and rounds: more repeats "
                      "or rounds are needed to rank those defenses)." if n_big < n_all else "."))  # fmt: skip
    return " ".join(out)


def _detection_text(r: pd.Series) -> str:
    """How a flagging defense's exclusions matched the truth (a summary row)."""
    pct = lambda v: f"{100 * v:.0f}%" if np.isfinite(v) else "n/a"  # noqa: E731
    txt = f"it excluded {pct(r['detection_recall'])} of the malicious participant-rounds"
    txt += (f" (precision {pct(r['detection_precision'])})" if np.isfinite(r["detection_precision"])
            else " (no participant-round excluded under attack)")  # fmt: skip
    worst = r["detection_recall_worst_attack"]
    if isinstance(worst, str):
        txt += f", the fewest against the {ATTACK_LABEL.get(worst, worst)} ({pct(r['detection_recall_worst'])})"
    if np.isfinite(r["detection_fpr_clean"]):
        txt += f", and {pct(r['detection_fpr_clean'])} of the honest ones in the clean run"
    return txt
