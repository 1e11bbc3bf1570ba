"""docs/REPRODUCTION.md, written from the stored runs of a profile, never by hand.

    python -m flcore report --profile paper-fmnist [--out docs/REPRODUCTION.md]

For every Fashion-MNIST cell of the paper's Tables 2, 3 and 4: our mean, a 95% confidence
interval over the repeats (Student's t), the runs behind it and the paper's number, with a
verdict; then the paper's findings one by one, held or not, as far as the stored runs
reach; then how the runs were computed (commands, CPUs, wall time). It reads the store
only (after importing the profile's committed export), so it can be written at any point
of a long computation: a cell whose runs are not computed yet says so. `reproduce` writes
it after rendering a profile whose `profile.yaml` names a `report` file.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from flcore.config import Config
from flcore.studies import experiments as ex

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASET = "fmnist"


def _load(cfgs: list[Config], store) -> dict[str, object]:
    """store key -> Result for the configurations of `cfgs` that are stored."""
    from flcore.runs.runner import resolved, store_key
    from flcore.runs.store import Store
    from flcore.sim.result import Result

    st = Store(store)
    out = {}
    for c in cfgs:
        c = resolved(c)
        k = store_key(c)
        e = st.get(k)
        if e is not None:
            out[k] = Result.from_store(c, e.frames, e.arrays, e.meta)
    return out


def ci95(std: float, n: int) -> float:
    """Half-width of the 95% confidence interval of a mean of n runs (Student's t)."""
    if n < 2 or not np.isfinite(std):
        return math.nan
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))


def verdict(mean: float, half: float, paper: float, runs: int, null: float | None = None) -> str:
    """Our mean (± `half`, the 95% CI over `runs`) against the paper's number. `null`: the value
    of no effect (0 for a loss or a change), where there is one: when the interval holds both
    the paper's number and no effect, the verdict says that the runs cannot tell them apart."""
    if runs == 0 or not np.isfinite(mean):
        return "not computed yet"
    if not np.isfinite(paper):
        return "no published number"
    if not np.isfinite(half):
        return f"{runs} run: no interval; {mean - paper:+.1f} pp from the paper"
    if abs(mean - paper) <= half:
        if null is not None and abs(mean - null) <= half and abs(paper - null) > 1.0:
            return "paper inside our 95% CI, but so is no effect: too few runs to tell them apart"
        return "paper inside our 95% CI"
    return f"off by {mean - paper:+.1f} pp ({abs(mean - paper) - half:.1f} pp beyond our CI)"


def _fmt(v: float, nd: int = 1) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.{nd}f}"


def _md(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _with_ci(t: pd.DataFrame, mean="mean", std="std", runs="runs") -> pd.DataFrame:
    t = t.copy()
    t["ci"] = [ci95(s, int(n)) for s, n in zip(t[std], t[runs])]
    return t


def _t2_of(final: pd.DataFrame | None) -> pd.DataFrame | None:
    """Table 2 of the runs, or None while the clean baseline or every attacked run is missing."""
    ok = final is not None and (final["m"] == 0).any() and (final["m"] > 0).any()
    return ex.table2(final) if ok else None


def _t4_of(late: pd.DataFrame | None) -> pd.DataFrame | None:
    return ex.table4(late) if late is not None and len(late) else None


def _row(t: pd.DataFrame | None, src: int, tgt: int, m: float | None = None, setting: str | None = None):
    """One cell of a per-pair table (Table 2 by m; Tables 3 and 4 by setting), or None."""
    if t is None:
        return None
    sel = (t["src"] == src) & (t["tgt"] == tgt)
    if m is not None:
        sel &= np.isclose(t["m"], m)
    if setting is not None:
        sel &= t["setting"] == setting
    got = t[sel]
    return None if got.empty else got.iloc[0]


def _stats(row, prefix: str = "") -> tuple[float, float, int]:
    """(mean, std, runs) of a cell, (nan, nan, 0) where it has none."""
    if row is None or f"{prefix}mean" not in row.index:
        return math.nan, math.nan, 0
    return float(row[f"{prefix}mean"]), float(row[f"{prefix}std"]), int(row[f"{prefix}runs"])


def table2_section(final: pd.DataFrame | None, pairs, last: int = 20) -> tuple[str, pd.DataFrame]:
    paper = ex.PAPER_TABLE2[ex.PAPER_TABLE2["dataset"] == DATASET]
    t2 = _t2_of(final)
    rows = []
    for r in paper.itertuples(index=False):
        if (DATASET, r.src, r.tgt) not in pairs:
            continue
        got = _row(t2, r.src, r.tgt, m=r.m)
        mean, std, n = _stats(got)
        half = ci95(std, n)
        lm, ls, ln = _stats(got, "last_")
        lh = ci95(ls, ln)
        rows.append({"pair": f"{r.src}→{r.tgt}", "m": f"{100 * r.m:g}%", "paper": _fmt(r.loss, 2),
                     "ours (final round)": _fmt(mean), "95% CI": f"± {_fmt(half)}", "runs": n,
                     "verdict": verdict(mean, half, r.loss, n, null=0.0),
                     f"ours (last {last} rounds)": _fmt(lm), "95% CI ": f"± {_fmt(lh)}",
                     f"verdict (last {last})": verdict(lm, lh, r.loss, ln, null=0.0)})  # fmt: skip
    df = pd.DataFrame(rows)
    if not len(df):
        return _md(df), t2
    counts = [_verdict_counts(df["verdict"], "the final round"),
              _verdict_counts(df[f"verdict (last {last})"], f"the last {last} rounds")]
    return _md(df) + "\n\nVerdicts, " + "; ".join(c for c in counts if c) + ".", t2


def _verdict_counts(verdicts: pd.Series, what: str) -> str:
    """'on <what>: a of n cells ...' from a column of `verdict` strings."""
    done = verdicts[verdicts != "not computed yet"]
    if not len(done):
        return ""
    inside = done.str.startswith("paper inside")
    untold = done.str.contains("so is no effect")
    off = done.str.startswith("off by")
    return (f"on {what}: the paper inside our 95% CI in {int(inside.sum())} of {len(done)} cells "
            f"({int(untold.sum())} of them with no effect inside it too), off in {int(off.sum())}"
            + (f", {len(done) - int(inside.sum()) - int(off.sum())} without an interval"
               if len(done) > int(inside.sum()) + int(off.sum()) else ""))


def table3_section(final: pd.DataFrame | None, m: float) -> str:
    paper = ex.PAPER_TABLE3[ex.PAPER_TABLE3["dataset"] == DATASET]
    t3 = None
    if final is not None and (final["m"] == 0).any() and np.isclose(final["m"], m).any():
        t3 = ex.table3(final, m)
    rows = []
    labels = {"delta_source": "source", "delta_target": "target", "delta_others_sum": "others (sum)",
              "delta_others_mean": "others (per class)"}  # fmt: skip
    for r in paper.itertuples(index=False):
        for setting, lab in labels.items():
            p = r.delta_others_sum if setting.startswith("delta_others") else getattr(r, setting)
            mean, std, n = _stats(_row(t3, r.src, r.tgt, setting=setting))
            half = ci95(std, n)
            rows.append({"pair": f"{r.src}→{r.tgt}", "change of": lab, "paper": _fmt(p, 2), "ours": _fmt(mean, 2),
                         "95% CI": f"± {_fmt(half, 2)}", "runs": n,
                         "verdict": verdict(mean, half, p, n, null=0.0)})  # fmt: skip
    return _md(pd.DataFrame(rows))


_T4_SETTINGS = (("malicious_in_PR", "≥ 1 malicious in the last round"), ("none_in_PR", "none"))


def table4_section(late: pd.DataFrame | None, pairs) -> str:
    paper = ex.PAPER_TABLE4[ex.PAPER_TABLE4["dataset"] == DATASET]
    t4 = _t4_of(late)
    rows = []
    for r in paper.itertuples(index=False):
        if (DATASET, r.src, r.tgt) not in pairs:
            continue
        for setting, lab in _T4_SETTINGS:
            p = getattr(r, setting)
            mean, std, n = _stats(_row(t4, r.src, r.tgt, setting=setting))
            half = ci95(std, n)
            rows.append({"pair": f"{r.src}→{r.tgt}", "last round": lab, "paper": _fmt(p, 2), "ours": _fmt(mean),
                         "95% CI": f"± {_fmt(half)}", "runs": n, "verdict": verdict(mean, half, p, n)})  # fmt: skip
    return _md(pd.DataFrame(rows))


def findings(final, t2, late, timing_rounds, break_round) -> list[str]:
    """The paper's §3 findings that the stored runs can judge, one line each (notebook 04's
    availability findings: `availability_findings`)."""
    out = []
    if t2 is not None and len(t2):
        per_run = ex.table2_per_repeat(final)
        for (s, t), g in t2.sort_values("m").groupby(["src", "tgt"]):
            if len(g) < 2:
                continue
            lo, hi = g.iloc[0], g.iloc[-1]
            steps = np.diff(g["mean"].to_numpy())
            runs = per_run[(per_run["src"] == s) & (per_run["tgt"] == t)].dropna(subset=["loss"])
            verdict_, trend = _trend_verdict(runs["m"].to_numpy(), runs["loss"].to_numpy())
            out.append(f"Source-recall loss grows with m ({s}→{t}): {verdict_}: "
                       f"{lo['mean']:.1f} pp at m={100 * lo['m']:g}% vs {hi['mean']:.1f} pp at m={100 * hi['m']:g}% "
                       f"(final round; it grows at {int((steps > 0).sum())} of {len(steps)} steps between "
                       f"consecutive values of m; {trend}).")  # fmt: skip
    if final is not None and (final["m"] > 0).any() and (final["m"] == 0).any():
        j = ex._with_baseline(final)
        dacc = (j["accuracy_clean"] - j["accuracy"]).mean()
        drec = (j["source_recall_clean"] - j["source_recall"]).mean()
        out.append(f"The attack is targeted: global accuracy falls far less than source recall: "
                   f"{'held' if drec > 3 * max(dacc, 0) else 'NOT held'} (mean over poisoned runs: "
                   f"accuracy −{dacc:.1f} pp, source recall −{drec:.1f} pp).")  # fmt: skip
    if late is not None and len(late):
        t4 = ex.table4(late)
        for (s, t), g in t4.groupby(["src", "tgt"]):
            g = g.set_index("setting")
            a, b = g.loc["malicious_in_PR"], g.loc["none_in_PR"]
            if a["runs"] and b["runs"]:
                out.append(f"A malicious participant in the last round lowers the final source recall ({s}→{t}): "
                           + _lower_verdict(a, b))  # fmt: skip
    if timing_rounds is not None and len(timing_rounds):
        summ = ex.timing_summary(timing_rounds, break_round)
        for (s, t), g in summ.groupby(["src", "tgt"]):
            g = g.set_index("setting")
            if {"none", "early", "late"} <= set(g.index):
                gap_e = g.loc["none", "final"] - g.loc["early", "final"]
                gap_l = g.loc["none", "mean_after_break"] - g.loc["late", "mean_after_break"]
                rounds = timing_rounds[(timing_rounds["src"] == s) & (timing_rounds["tgt"] == t)]
                d = _timing_gap_differences(rounds, break_round)
                quoted = (f"final-round gap after early poisoning {gap_e:+.1f} pp; mean gap after the break "
                          f"with late poisoning {gap_l:+.1f} pp")  # fmt: skip
                out.append(f"Early poisoning is forgotten, late poisoning is not ({s}→{t}): "
                           + _paired_verdict(d, quoted))  # fmt: skip
    return out


def _trend_verdict(m: np.ndarray, loss: np.ndarray) -> tuple[str, str]:
    """Whether `loss` grows with `m` over the individual runs: Spearman's rank correlation,
    held where it is positive at p < 0.05 (two-sided), NOT held where negative so, else not
    judged; and the statistic quoted."""
    if len(loss) < 4 or len(np.unique(m)) < 2:
        return "not judged", f"{len(loss)} runs: too few for a rank correlation"
    if np.ptp(loss) == 0:
        return "not judged", f"the {len(loss)} runs lose the same: no rank correlation"
    from scipy import stats

    rho, p = stats.spearmanr(m, loss)
    trend = f"Spearman's rho over the {len(loss)} runs {rho:+.2f}, p = {p:.2g}"
    if not np.isfinite(rho):
        return "not judged", trend
    if p < 0.05:
        return ("held" if rho > 0 else "NOT held"), trend
    return "not judged (no significant trend)", trend


def _timing_gap_differences(rounds: pd.DataFrame, break_round: int) -> np.ndarray:
    """Per repeat j present in all three settings (repeat j of each shares partition, initial
    weights, selection and batches): late poisoning's mean gap to the non-poisoned run after
    the break minus early poisoning's final-round gap."""
    last = rounds["round"].max()
    after = rounds[rounds["round"] >= break_round].groupby(["setting", "repeat"])["source_recall"].mean()
    final = rounds[rounds["round"] == last].groupby(["setting", "repeat"])["source_recall"].mean()
    reps = sorted(set.intersection(*(set(final[st].index) & set(after[st].index) for st in ("none", "early", "late"))))
    return np.array([(after["none", j] - after["late", j]) - (final["none", j] - final["early", j]) for j in reps])


def _paired_verdict(d: np.ndarray, quoted: str) -> str:
    """Held where the paired differences `d` are positive beyond their 95% CI, NOT held where
    negative beyond it, else not judged; `quoted`: the means the finding rests on."""
    n = len(d)
    if n < 2:
        return f"not judged: {n} paired run{'s' * (n != 1)}, no interval ({quoted})."
    mean, half = float(d.mean()), ci95(float(d.std(ddof=1)), n)
    return _beyond_noise(mean, half, f"{quoted}; late minus early {mean:+.1f} ± {half:.1f} pp, 95% CI over "
                                     f"{n} paired repeats")  # fmt: skip


def _beyond_noise(diff: float, half: float, detail: str) -> str:
    """A finding's verdict from a difference that should be positive and its 95% CI half-width:
    held beyond the interval, NOT held beyond it the other way, else not judged."""
    if diff > half:
        return f"held ({detail})."
    if diff < -half:
        return f"NOT held: the opposite, beyond the noise ({detail})."
    return f"not judged: the difference is within the noise ({detail})."


def _lower_verdict(a, b) -> str:
    """Whether Table 4 row `a` (a malicious participant in the last round) is below row `b`
    (none) beyond the 95% CI of their difference (Welch: different repeats on each side);
    undecided where the runs cannot tell, and said so."""
    na, nb = int(a["runs"]), int(b["runs"])
    diff = float(b["mean"] - a["mean"])
    half = welch_ci95(float(a["std"]), na, float(b["std"]), nb)
    runs = f"{a['mean']:.1f}% over {na} run{'s' * (na != 1)} vs {b['mean']:.1f}% over {nb}"
    if not np.isfinite(half):
        way = "the paper's direction" if diff > 0 else "against the paper's direction"
        return (f"not judged: {runs}, {diff:+.1f} pp, {way}, but a side with a single run has no "
                "interval (more repeats decide it).")  # fmt: skip
    return _beyond_noise(diff, half, f"{runs}; difference {diff:+.1f} ± {half:.1f} pp (95% CI)")


def welch_ci95(sd_a: float, n_a: int, sd_b: float, n_b: int) -> float:
    """Half-width of the 95% confidence interval of a difference of two means of independent
    runs (Welch's t, unequal variances); nan with fewer than 2 runs on either side, 0 where
    neither side varies."""
    if n_a < 2 or n_b < 2 or not (np.isfinite(sd_a) and np.isfinite(sd_b)):
        return math.nan
    va, vb = sd_a**2 / n_a, sd_b**2 / n_b
    if va + vb == 0:
        return 0.0
    from scipy import stats

    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    return float(stats.t.ppf(0.975, df) * math.sqrt(va + vb))


def availability_findings(av, clean, break_round: int) -> list[str]:
    """The paper's findings on malicious availability α (§3.4, late poisoning from
    `break_round`, Figs 5 and 7), one line each, from the availability runs' round frame `av`
    (`flcore.studies.experiments.round_frame` rows) and the clean runs' round frame `clean`
    (same pairs and repeats, every round evaluated; None skips the loss finding):

    - source recall after the break falls as α grows, at every m;
    - with m ≥ 10% and the largest α the loss in source recall, paired by repeat with the
      clean run and averaged over the rounds from the break on, exceeds 20 pp;
    - a rise in the number of malicious participants from one round to the next lowers
      source recall, the more the larger the rise (the paper: +3 or +4 drop it by up to 40–60%).
    """
    if av is None or not len(av):
        return []
    out = []
    per = ex.availability_per_repeat(av, break_round)
    table = ex.availability_summary(per)
    trend = ex.alpha_trend(table)
    for (s, t), g in table.groupby(["src", "tgt"]):
        cells = trend[(trend["src"] == s) & (trend["tgt"] == t)]
        if len(cells):
            n_held = int(cells["falls"].sum())
            verdict = "held" if n_held == len(cells) else "NOT held" if n_held == 0 else "partly held"
            detail = "; ".join(f"m={100 * r.m:g}%: {r.mean_lo:.1f} → {r.mean_hi:.1f}" for r in cells.itertuples())
            out.append(f"Source recall after the break falls as availability grows ({s}→{t}): {verdict}, "
                       f"at {n_held} of {len(cells)} values of m (mean source recall over rounds ≥ "
                       f"{break_round}, α = {cells['alpha_lo'].iloc[0]:g} → {cells['alpha_hi'].iloc[0]:g}, "
                       f"%: {detail}).")  # fmt: skip
        if clean is not None and len(clean):
            c = clean[(clean["src"] == s) & (clean["round"] >= break_round)]
            c = c.groupby(["src", "repeat"], as_index=False)["source_recall"].mean()
            a_max = g["alpha"].max()
            rows = per[(per["src"] == s) & (per["tgt"] == t) & (per["alpha"] == a_max) & (per["m"] >= 0.1 - 1e-9)]
            losses = []
            if len(c) and len(rows):  # paired by repeat as Table 2 is (flcore.studies.experiments)
                j = ex.paired_with_clean(rows, c, ["src"], ["source_recall"])
                j["loss"] = j["source_recall_clean"] - j["source_recall"]
                losses = [(m, float(gm["loss"].mean()), len(gm)) for m, gm in j.groupby("m")]
            if losses:
                held = all(v > 20 for _, v, _ in losses)
                detail = "; ".join(f"m={100 * m:g}%: {v:.1f} ({n} runs)" for m, v, n in losses)
                out.append(f"With m ≥ 10% and α = {a_max:g} the loss in source recall exceeds 20 pp "
                           f"({s}→{t}): {'held' if held else 'NOT held'} (loss against the clean run "
                           f"over rounds ≥ {break_round}, pp: {detail}).")  # fmt: skip
    change = ex.recall_change(av, break_round)
    for (s, t), g in change.groupby(["src", "tgt"]):
        up = g[g["delta_malicious"] > 0].sort_values("delta_malicious")
        if len(up) >= 2:
            v = up["mean"].to_numpy()
            held = bool((v < 0).all() and v[-1] == v.min())
            detail = ", ".join(f"+{int(d)}: {x:+.1f}" for d, x in zip(up["delta_malicious"], v))
            out.append(f"A rise in malicious participants from one round to the next lowers source recall, "
                       f"the more the larger the rise ({s}→{t}): {'held' if held else 'NOT held'} "
                       f"(mean change of source recall, pp, by rise: {detail}; the paper: +3 or +4 "
                       f"drop it by up to 40–60).")  # fmt: skip
    return out


def defense_findings(results, rounds_from: int, how: str = "mean", threshold: float = 0.95) -> list[str]:
    """The paper's defense finding (§4, Fig 8), from notebook 05's runs (`record_updates="source"`):
    projected on two principal components, the malicious participants' source-class updates
    stand apart from the honest ones at every m, even 2%. Judged per run by the separation AUC
    of the better component (`flcore.studies.experiments.pca_frame`): held when every run with a
    malicious update reaches `threshold`. A second line scores the detector that never sees the
    truth (`flcore.defenses.detector.PCADetector`, per participant)."""
    results = [r for r in results if r is not None]
    if not results:
        return []
    sep = ex.pca_separation(ex.pca_frame(results, rounds_from, how=how))
    sep = sep[np.isfinite(sep["separation_auc"])].sort_values(["src", "tgt", "m"])
    out = []
    for (s, t), g in sep.groupby(["src", "tgt"]):
        held = bool((g["separation_auc"] >= threshold).all())
        detail = "; ".join(f"m={100 * r.m:g}%: {r.separation_auc:.3f} ({int(r.malicious_rows)} of {int(r.rows)} "
                           "updates malicious)" for r in g.itertuples())  # fmt: skip
        out.append(f"Malicious source-class updates stand apart from honest ones in two principal "
                   f"components, even at m = 2% ({s}→{t}, §4): {'held' if held else 'NOT held'} "
                   f"(separation AUC of the better component, rounds ≥ {rounds_from}, held at ≥ {threshold:g}: "
                   f"{detail}).")  # fmt: skip
    td = ex.detection_table(ex.detection_frame(results, rounds_from, how=how))
    part = td[td["level"] == "participant"].sort_values(["src", "tgt", "m"])
    for (s, t), g in part.groupby(["src", "tgt"]):
        detail = "; ".join(f"m={100 * r.m:g}%: {int(r.tp)} of {int(r.tp + r.fn)} malicious flagged, "
                           f"{int(r.fp)} of {int(r.fp + r.tn)} honest" for r in g.itertuples())  # fmt: skip
        perfect = bool(((g["fn"] == 0) & (g["fp"] == 0)).all())
        out.append(f"Beyond the paper, a detector that never sees the truth (two clusters on the "
                   f"projection, the smaller called malicious) picks them out ({s}→{t}): "
                   f"{'every participant right' if perfect else 'with errors'} ({detail}).")  # fmt: skip
    return out


def _frames(profile: str, root: Path = REPO_ROOT, params_dir: Path | None = None, extra: dict | None = None) -> dict:
    """`profile`'s plan and stored runs (its committed export imported first), and the frames
    of notebooks 01 (feasibility: final, pairs) and 03 (timing: late, timing_rounds,
    break_round); a frame whose notebook the profile does not run is None."""
    from flcore.runs.compute import plan
    from flcore.runs.export import import_runs
    from flcore.runs.runner import resolved, store_key
    from flcore.studies.plan import configs as study_configs
    from flcore.studies.plan import feasibility_jobs, timing_jobs
    from flcore.studies.reproduce import _figures_of, _store_of, planned_configs, prepare

    out_name, nbs = prepare(profile, None, None, root, params_dir, extra)
    store = _store_of(nbs)
    runs_dir = _figures_of(nbs, out_name, root) / "runs"
    if (runs_dir / "runs.parquet").exists():
        import_runs(runs_dir, store)
    per_nb = planned_configs(nbs)
    everything = [c for cs in per_nb.values() for c in cs]
    params = {nb.stem: full for nb, _, full in nbs}
    results = _load(everything, store)

    def get(cfg):
        return results.get(store_key(resolved(cfg)))

    d = {"out_name": out_name, "plan": plan(everything, store), "params": params, "results": results,
         "final": None, "late": None, "timing_rounds": None, "pairs": set(), "break_round": 75,
         "availability": None, "clean_rounds": None, "availability_break": 75,
         "defense": [], "defense_params": {}}  # fmt: skip
    p1 = params.get("01_feasibility")
    if p1 is not None:
        jobs = feasibility_jobs(p1)
        d["pairs"] = {tuple(x) for x in ex.pair_list(p1["pairs"])}
        d["final"] = ex.feasibility_frame([get(c) for c, _, _ in jobs], jobs, p1.get("curves", False))
        clean = [(res, s) for c, _, _ in jobs if c.m == 0 and (res := get(c)) is not None
                 for s in c.eval_classes or ()]  # fmt: skip
        if clean:
            d["clean_rounds"] = pd.concat([ex.round_frame(res, src=s) for res, s in clean], ignore_index=True)
    p4 = params.get("04_availability")
    if p4 is not None:
        d["availability_break"] = p4["break_round"]
        got = [r for r in map(get, study_configs("04_availability", p4)) if r is not None]
        if got:
            d["availability"] = pd.concat([ex.round_frame(r) for r in got], ignore_index=True)
    p5 = params.get("05_defense")
    if p5 is not None:
        d["defense"] = [get(c) for c in study_configs("05_defense", p5)]
        d["defense_params"] = p5
    p3 = params.get("03_timing")
    if p3 is not None:
        d["break_round"] = p3["break_round"]
        jobs = timing_jobs(p3)
        d["timing_rounds"], d["late"] = ex.timing_frames([get(c) for c, *_ in jobs], jobs)
    return d


def more_repeats_section(profile: str, pairs, last: int, root: Path = REPO_ROOT, extra: dict | None = None) -> list[str]:
    """Table 2 again from `profile`'s runs: the same cells with more repeats, each counted once
    its configuration (and the clean baseline's) holds all of them."""
    from flcore.studies.reproduce import profile_settings

    o = _frames(profile, root, None, extra)
    p1 = o["params"].get("01_feasibility") or {}
    md, _ = table2_section(o["final"], pairs, last)
    done = len(o["plan"].stored)
    other = profile_settings(profile, root / "params" / profile).get("compare_with")
    return [
        f"## Table 2 with {p1.get('repeats', '?')} repeats per cell",
        "",
        f"The profile `{profile}` runs the same cells with {p1.get('repeats', '?')} repeats per poisoned "
        f"cell and {p1.get('baseline_repeats', '?')} for the clean model; its first repeats are the runs "
        "above (repeat j is the same federation whatever the number of repeats), so only the others "
        f"train. Configurations computed: **{done} of {len(o['plan'].configs)}**; a cell appears once "
        "its configuration and the clean baseline of its pair are both stored"
        + (". " if done == len(o["plan"].configs) else
           f", and `python -m flcore reproduce --profile {profile}` continues the rest. ")
        + "Same columns as above:",
        "",
        md if o["final"] is not None else "Not computed yet.",
        "",
    ] + (client_state_more_repeats(profile, o, other, pairs, last, root, extra) if other else [])


def client_state_more_repeats(profile: str, o: dict, other: str, pairs, last: int, root: Path = REPO_ROOT,
                              extra: dict | None = None) -> list[str]:  # fmt: skip
    """The two client-state modes compared on Table 2 with more repeats: `profile` (its frames
    `o`) against the profile `other`, which runs the same cells in the other mode."""
    q = _frames(other, root, None, extra)
    reps = (o["params"].get("01_feasibility") or {}).get("repeats", "?")
    mode_a = (o["params"].get("01_feasibility") or {}).get("client_state", "stateless")
    mode_b = (q["params"].get("01_feasibility") or {}).get("client_state", "stateless")
    a, b = f"{profile} ({mode_a})", f"{other} ({mode_b})"
    n, of = len(q["plan"].stored), len(q["plan"].configs)
    return [
        f"### Client state with {reps} repeats per cell",
        "",
        f"The profile `{other}` runs these cells with the other client state ({n} of {of} "
        "configurations computed" + ("" if n == of else f"; `python -m flcore reproduce --profile {other}` "
                                    "computes the rest") + "). Compared as in the section on client "
        "state below, with up to 10 paired repeats per cell instead of 3:",
        "",
        client_state_section(o["final"], None, q["final"], None, pairs, a, b, last),
        "",
    ]


def client_state_section(final_a, late_a, final_b, late_b, pairs, a: str, b: str, last: int = 20) -> str:
    """Table 2's loss and Table 4's final source recall of two profiles that differ in client
    state (`a`, `b`: their labels), beside the paper's, cell by cell (only where both have
    runs): each mode's mean and 95% CI, the difference b - a paired by repeat (repeat j of
    both modes shares partition, initial weights, selection and batch order, so the pairing
    removes what the selection alone does) with its 95% CI, and which mode is closer to the
    paper where the modes differ beyond that interval ("no difference" where they do not: a
    cell decided by noise counts for neither). Table 2 is judged on the final round, as the
    paper reports it, and again on the mean of the last `last` rounds, which varies less."""
    t2a, t2b = _t2_of(final_a), _t2_of(final_b)
    ra, rb = (ex.table2_per_repeat(f) if t is not None else None for f, t in ((final_a, t2a), (final_b, t2b)))
    rows, last_rows = [], []
    paper = ex.PAPER_TABLE2[ex.PAPER_TABLE2["dataset"] == DATASET]
    for r in paper.itertuples(index=False):
        if (DATASET, r.src, r.tgt) not in pairs:
            continue
        ga, gb = _row(t2a, r.src, r.tgt, m=r.m), _row(t2b, r.src, r.tgt, m=r.m)
        sel = {"src": r.src, "tgt": r.tgt, "m": r.m}
        cell = {"table": "2 (loss, pp)", "pair": f"{r.src}→{r.tgt}", "m": f"{100 * r.m:g}%"}
        rows.append(_compared(cell, r.loss, _stats(ga), _stats(gb), _paired(ra, rb, sel, "loss"), a, b))
        last_rows.append(_compared(cell, r.loss, _stats(ga, "last_"), _stats(gb, "last_"),
                                   _paired(ra, rb, sel, "loss_last"), a, b))  # fmt: skip
    t4a, t4b = _t4_of(late_a), _t4_of(late_b)
    p4 = ex.PAPER_TABLE4[ex.PAPER_TABLE4["dataset"] == DATASET]
    tables = "Tables 2 and 4"
    if late_a is None and late_b is None:  # neither profile runs Table 4 (notebook 03)
        p4, tables = p4.iloc[:0], "Table 2"
    for r in p4.itertuples(index=False):
        if (DATASET, r.src, r.tgt) not in pairs:
            continue
        for setting, _ in _T4_SETTINGS:
            cell = {"table": f"4 ({setting}, %)", "pair": f"{r.src}→{r.tgt}", "m": "10%"}
            sa, sb = (_stats(_row(t, r.src, r.tgt, setting=setting)) for t in (t4a, t4b))
            la, lb = (None if lt is None else lt[(lt["n_mal_last"] > 0) == (setting == "malicious_in_PR")]
                      for lt in (late_a, late_b))  # fmt: skip
            d = _paired(la, lb, {"src": r.src, "tgt": r.tgt}, "source_recall")
            rows.append(_compared(cell, getattr(r, setting), sa, sb, d, a, b))
    df = pd.DataFrame(rows)
    text = _md(df.drop(columns=[c for c in df.columns if c.startswith("_")])) + "\n\n"
    text += _tally(df, a, b, f"the final round ({tables})")
    t2_last = pd.DataFrame(last_rows)
    if len(t2_last) and (t2_last["closer"] != "–").any():
        text += " " + _tally(t2_last, a, b, f"Table 2's mean over the last {last} rounds")
    return text


def _paired(ra: pd.DataFrame | None, rb: pd.DataFrame | None, sel: dict, col: str) -> np.ndarray:
    """b - a of `col` for the repeats both per-repeat frames hold in the cell `sel`."""
    if ra is None or rb is None or col not in ra or col not in rb:
        return np.array([])
    keys = list(sel) + ["repeat"]
    pick = [(f[np.logical_and.reduce([np.isclose(f[k], v) for k, v in sel.items()])][keys + [col]]) for f in (ra, rb)]
    j = pick[0].merge(pick[1], on=keys, suffixes=("_a", "_b")).dropna(subset=[f"{col}_a", f"{col}_b"])
    return (j[f"{col}_b"] - j[f"{col}_a"]).to_numpy(dtype=float)


def _compared(cell: dict, paper: float, sa: tuple, sb: tuple, diffs: np.ndarray, a: str, b: str) -> dict:
    """One row of the client-state comparison: both modes' mean ± 95% CI, their difference
    paired by repeat (`diffs`: b - a per repeat) with its 95% CI, and which is closer to the
    paper where they differ beyond it."""
    (ma, sda, na), (mb, sdb, nb) = sa, sb
    n = len(diffs)
    diff = float(diffs.mean()) if n else math.nan
    half = ci95(float(diffs.std(ddof=1)), n) if n > 1 else math.nan
    if not (np.isfinite(ma) and np.isfinite(mb)):
        closer = "–"
    elif not np.isfinite(half):
        closer = "too few paired runs"
    elif abs(diff) <= half:
        closer = "tie" if half == 0 else "no difference"  # tie: the same numbers in every run
    else:
        da, db = abs(ma - paper), abs(mb - paper)
        closer = a if da < db else b if db < da else "tie"
    return {**cell, "paper": _fmt(paper, 2), a: _mode_cell(ma, ci95(sda, na), na),
            b: _mode_cell(mb, ci95(sdb, nb), nb),
            "difference (95% CI, paired runs)": f"{diff:+.1f} ± {_fmt(half)} ({n})" if n else "–",
            "closer": closer, "_a": ma, "_b": mb, "_paper": paper}  # fmt: skip


def _mode_cell(mean: float, half: float, runs: int) -> str:
    """`mean ± half (runs)`, or – where the mode has no run of the cell."""
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.1f} ± {_fmt(half)} ({runs})"


def _tally(df: pd.DataFrame, a: str, b: str, what: str) -> str:
    """One paragraph on the cells computed in both modes: how many the paired interval decides
    and for which mode; each mode's mean distance to the paper; and, over the cells as units,
    the mean of (a's distance - b's distance) with its 95% CI. A mode is named as the one the
    paper's numbers follow only where that interval, over at least 5 cells, excludes 0."""
    done = df[df["closer"] != "–"] if len(df) else df
    if not len(done):
        return "No cell is computed in both modes yet."
    n_a, n_b = int((done["closer"] == a).sum()), int((done["closer"] == b).sum())
    same = len(done) - n_a - n_b
    dist_a = np.abs(done["_a"].astype(float) - done["_paper"].astype(float)).to_numpy()
    dist_b = np.abs(done["_b"].astype(float) - done["_paper"].astype(float)).to_numpy()
    gain = dist_a - dist_b  # > 0: b is closer
    n = len(gain)
    mean, half = float(gain.mean()), ci95(float(gain.std(ddof=1)), n) if n > 1 else math.nan
    pooled = (f"{a}'s distance minus {b}'s, over the cells: {mean:+.1f} ± {_fmt(half)} pp (95% CI, "
              f"{n} cells)")  # fmt: skip
    if n >= 5 and np.isfinite(half) and abs(mean) > half:
        say = f"So far the paper's numbers follow {b if mean > 0 else a}."
    else:
        say = "These runs do not yet say which mode the paper's numbers follow."
    return (f"On {what}, of the {len(done)} cells computed in both modes, the two differ beyond "
            f"the paired 95% CI in {n_a + n_b}: {a} is closer to the paper in {n_a} and {b} in {n_b}; "
            f"in the other {same} they do not differ at this number of runs. The mean distance "
            f"to the paper is {dist_a.mean():.1f} for {a} and {dist_b.mean():.1f} for {b}; {pooled}. {say}")


def write(profile: str = "paper-fmnist", out: Path | None = None, root: Path = REPO_ROOT, log=print,
          params_dir: Path | None = None, extra: dict | None = None) -> Path:  # fmt: skip
    """Write the report of `profile`'s stored runs to `out` (default docs/REPRODUCTION.md).
    params_dir, extra: as for `flcore.studies.reproduce.execute`."""
    from flcore.runs.compute import experiment_rounds
    from flcore.studies.reproduce import profile_settings

    out = out or root / "docs" / "REPRODUCTION.md"
    d = _frames(profile, root, params_dir, extra)
    out_name, p, params, results = d["out_name"], d["plan"], d["params"], d["results"]
    final, late, timing_rounds, pairs, break_round = (d["final"], d["late"], d["timing_rounds"], d["pairs"],
                                                      d["break_round"])  # fmt: skip
    p1 = params.get("01_feasibility")
    last = ex.last_rounds(p1["rounds"]) if p1 else 20
    t2_md, t2 = table2_section(final, pairs, last)
    clean_line = "- the clean model (m = 0): not computed yet."
    if final is not None and (final["m"] == 0).any():
        c = final[final["m"] == 0].drop_duplicates("repeat")
        acc = c["accuracy"]
        clean_line = (f"- the clean model (m = 0) after {p1['rounds']} rounds: M_acc {acc.mean():.2f}% "
                      f"± {_fmt(ci95(acc.std(ddof=1), len(acc)), 2)} (95% CI, {len(acc)} repeats).")  # fmt: skip
    m3 = params.get("02_targeting", {}).get("m", 0.1)

    metas = [r.meta for r in results.values()]
    cpus = sorted({m.get("cpu", "?") for m in metas})
    wall = sum(float(m.get("wall_s", 0.0)) for m in metas)
    done_rounds = sum(experiment_rounds(r.config) for r in results.values())
    lines = [
        f"# Reproduction at the paper's scale: {profile}",
        "",
        f"*Written by `python -m flcore report --profile {profile}` (and by `python -m flcore reproduce "
        f"--profile {profile}` after rendering) from the stored runs, {time.strftime('%Y-%m-%d')}. "
        "Do not edit: every number below is recomputed from the runs in "
        f"[figures/{out_name}/runs/](../figures/{out_name}/runs/).*",
        "",
        "## Setting and progress",
        "",
        "Fashion-MNIST as in the paper: 200 rounds from initialisation, the full 60,000 / 10,000 "
        "images, N = 50 participants, k = 5 per round, batch 4, one local epoch, fp32, one torch "
        f"thread per stack of 3 federations, {(p1 or {}).get('client_state', 'stateless')} participants "
        f"(the profile `params/{profile}/`). Loss in source recall "
        "is paired by repeat: the poisoned and the clean federation of repeat j share partition, "
        "initial weights, selection and batch order. Confidence intervals are 95% Student-t "
        "intervals of the mean over repeats; the paper reports no spread for its tables.",
        "",
        f"- configurations computed: **{len(p.stored)} of {len(p.configs)}** "
        f"({done_rounds} of {p.total_rounds} experiment-rounds); "
        + (f"all stored: `python -m flcore reproduce --profile {profile}` re-renders every figure "
           "and table without training."
           if len(p.stored) == len(p.configs) else
           f"the rest is pending, and `python -m flcore reproduce --profile {profile}` continues "
           "from here."),
        f"- computed on: {', '.join(cpus) if cpus else 'nothing yet'}; summed wall time of the stored "
        f"runs {wall / 3600:.1f} h (each stack's wall time shared by its configurations).",
        f"- repeats: {p1['repeats'] if p1 else '–'} per poisoned cell, {p1['baseline_repeats'] if p1 else '–'} "
        "for the clean model (the paper: 10); the `runs` column counts those computed.",
        clean_line,
        "",
        f"## Table 2: loss in source recall (pp), final round and last {last} rounds",
        "",
        "The paper reports the final round. One round swings with whether malicious participants "
        f"were selected in it, so the mean over the last {last} rounds is given beside it (where the "
        "poisoned runs were evaluated every round).",
        "",
        t2_md,
        "",
        f"## Table 3: change due to poisoning at m = {100 * m3:g}% (pp)",
        "",
        "The paper's third column (\"all remaining classes\") stands beside both of our readings: "
        "the summed and the per-class change of the other eight classes.",
        "",
        table3_section(final, m3),
        "",
        "## Table 4: final source recall (%) of late poisoning, by the last round's participants",
        "",
        table4_section(late, pairs),
        "",
    ]
    settings = profile_settings(profile, params_dir or root / "params" / profile)
    more = settings.get("more_repeats")
    if more:
        lines += more_repeats_section(more, pairs, last, root, extra)
    other = settings.get("compare_with")
    if other:
        o = _frames(other, root, None, extra)
        mode_a = (p1 or {}).get("client_state", "stateless")
        mode_b = (o["params"].get("01_feasibility") or {}).get("client_state", "stateless")
        a, b = f"{profile} ({mode_a})", f"{other} ({mode_b})"
        lines += [
            "## Client state: the paper's text or the authors' code",
            "",
            "The paper's text describes stateless participants (a fresh optimizer each round, the "
            "learning rate by global round); in the authors' code each participant keeps its SGD "
            "optimizer and step-LR scheduler for the whole run, so its momentum survives between "
            "its selections and its learning rate decays with its own count of training calls "
            f"(`Config(client_state=\"persistent\")`). The profile `{other}` runs the same Table 2 and "
            f"Table 4 cells that way ({len(o['plan'].stored)} of {len(o['plan'].configs)} configurations "
            "computed). Per cell, each mode's mean and 95% CI over its runs (and their number); the "
            "second mode minus the first, paired by repeat (repeat j of both shares partition, "
            "initial weights, selection and batch order), with its 95% CI; and which mode is closer "
            "to the paper where the two differ beyond that interval:",
            "",
            client_state_section(final, late, o["final"], o["late"], pairs, a, b),
            "",
        ]
    lines += [
        "## The paper's findings",
        "",
    ]
    found = findings(final, t2, late, timing_rounds, break_round)
    found += availability_findings(d["availability"], d["clean_rounds"], d["availability_break"])
    dp = d["defense_params"]
    found += defense_findings(d["defense"], dp.get("rounds_from", 10), dp.get("how", "mean"))
    lines += [f"- {f}" for f in found] or ["- none can be judged yet: their runs are not computed."]
    lines += [
        "",
        "## Commands",
        "",
        "```bash",
        f"python -m flcore reproduce --profile {profile} --dry-run   # the plan, what is stored, an estimate",
        f"python -m flcore reproduce --profile {profile}             # compute what is missing, render, export",
        f"python -m flcore reproduce --profile {profile} --local-cluster 4   # the same on 4 worker processes",
        f"python -m flcore report --profile {profile}                # this page, from the stored runs",
        "```",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(out)
    log(f"report: {out} ({len(p.stored)} of {len(p.configs)} configurations stored)")
    return out


def cmd_report(argv: list[str]) -> int:
    import argparse
    import sys

    from flcore.studies.reproduce import ParameterError, profiles

    a = argparse.ArgumentParser(prog="python -m flcore report",
                                description="Write docs/REPRODUCTION.md from a profile's stored runs.")  # fmt: skip
    a.add_argument("--profile", default="paper-fmnist", choices=profiles())
    a.add_argument("--out", default=None, help="the Markdown file (default: docs/REPRODUCTION.md)")
    args = a.parse_args(argv)
    try:
        write(args.profile, Path(args.out) if args.out else None)
    except ParameterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
