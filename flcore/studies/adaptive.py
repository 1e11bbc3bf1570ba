"""Notebook 08's trade-off study: the adaptive flip's strength against the PCA detector.

The adaptive label flipper (`flcore.attacks.adaptive_flip`) sends
`honest + strength * (poisoned - honest)`. At strength 0 it sends the update an honest
participant would (it is then harmless and invisible); at 1 the plain targeted flip's. In
between it trades damage for stealth. `tradeoff_jobs` runs, for each pair and strength, the
attack at one m twice from the same seed:

- without a defense, recording every selected participant's source-row update, so the offline
  PCA detector (Algorithm 1, `PCADetector`, as notebook 05 scores it) can be judged on them:
  its per-participant ROC AUC (a participant's score is the mean of its updates' scores) and
  the damage the attack does unopposed;
- with the online PCA defense (`defense="pca"` with the notebook's `pca_params`): the share of
  malicious participant-rounds it excluded (its recall, over participant-rounds) and the
  damage that gets through.

Damage is the loss in final source recall against strength 0 of the same repeat (paired: the
same selections, and at strength 0 every update is the honest one), so it is 0 at strength 0
by construction. `tradeoff_table` gives, per pair, defense, strength and metric, mean, std
and runs over repeats; `escape_strength` reads off where the detector stops catching the
attacker: the largest strength at which the online defense excludes fewer than half of the
malicious participant-rounds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from flcore.config import Config
from flcore.sim.result import Result
from flcore.studies import experiments as ex
from flcore.studies import noniid as nx

DEFENSES = ("none", "pca")  # unopposed (offline detector on the recorded updates), online PCA blocking
# tradeoff_table's metrics: damage (pp of final source recall, paired against strength 0),
# source_recall (%), detection_auc (offline detector, per participant; defense "none" only),
# detection_recall and detection_fpr (online defense's exclusions; defense "pca" only)
METRICS = ("damage", "source_recall", "detection_auc", "detection_recall", "detection_fpr")
_KEYS = ["dataset", "src", "tgt", "m", "defense", "strength"]


def strength_list(strengths: Sequence[float]) -> list[float]:
    """The strengths, sorted, with 0 (the paired reference) added; each in [0, 1]."""
    out = set()
    for s in strengths:
        v = float(s)
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"strength {s!r}: the adaptive flip's strength is in [0, 1] "
                             "(0 sends the honest update, 1 the plain flip's); e.g. [0.25, 0.5, 1.0]")  # fmt: skip
        out.add(v)
    return sorted(out | {0.0})


def tradeoff_jobs(pairs, m: float, strengths: Sequence[float], *, rounds: int, repeats: int,
                  pca_params: dict | None = None, norm_match: bool = False,
                  **base) -> list[tuple[Config, str, float]]:  # fmt: skip
    """The runs of `tradeoff`, without training: (config, defense, strength) for every pair x
    defense ("none", "pca") x strength (`strength_list`: 0 is always run)."""
    if not 0.0 < float(m) < 1.0:
        raise ValueError(f"m={m!r}: the trade-off needs malicious participants, 0 < m < 1 (e.g. 0.3)")
    jobs = []
    for d, s, t in ex.pair_list(pairs):
        cfg = ex.base_config(d, rounds=rounds, repeats=repeats, src=s, tgt=t, eval_every=rounds, **base)
        cfg = cfg.replace(m=float(m), attack="adaptive_flip")
        for name in DEFENSES:
            dcfg = ex.defense_config(cfg, name, None, pca_params)
            if name == "none":
                dcfg = dcfg.replace(record_updates="source")
            for st in strength_list(strengths):
                opts = {"strength": st, "norm_match": bool(norm_match)}
                jobs.append((dcfg.replace(attack_params=opts), name, st))
    return jobs


def tradeoff(pairs, m: float, strengths: Sequence[float], *, rounds: int, repeats: int,
             pca_params: dict | None = None, norm_match: bool = False, store="results",
             progress=True, **base) -> pd.DataFrame:  # fmt: skip
    """Run `tradeoff_jobs` (stored runs are loaded) and return the per-repeat frame of
    `tradeoff_frame`."""
    jobs = tradeoff_jobs(pairs, m, strengths, rounds=rounds, repeats=repeats, pca_params=pca_params,
                         norm_match=norm_match, **base)  # fmt: skip
    results = ex.run_grid([c for c, _, _ in jobs], store, progress)
    return tradeoff_frame(results, jobs)


def _auc(res: Result) -> pd.Series:
    """Per repeat: the offline detector's per-participant ROC AUC (NaN where a repeat's
    recorded updates hold only one kind of participant)."""
    det = ex.detection_frame([res], rounds_from=1)
    det = det[det["level"] == "participant"]
    return det.set_index("repeat")["roc_auc"].astype(float)


def tradeoff_frame(results: Sequence[Result], jobs) -> pd.DataFrame:
    """One row per run and repeat: the pair, m, defense, strength, final source recall, the
    detection figures of that defense (NaN where they do not apply) and damage (paired by
    repeat against strength 0 of the same pair and defense)."""
    rows = []
    for res, (_, defense, st) in zip(results, jobs):
        f = ex.final_frame(res)[["dataset", "src", "tgt", "m", "repeat", "source_recall"]].copy()
        f.insert(4, "defense", defense)
        f.insert(5, "strength", float(st))
        f["detection_auc"] = f["repeat"].map(_auc(res)) if defense == "none" else np.nan
        rates = nx.exclusion_rates(res).set_index("repeat")
        flags = res.excluded is not None
        f["detection_recall"] = f["repeat"].map(rates["tpr"]) if flags else np.nan
        f["detection_fpr"] = f["repeat"].map(rates["fpr"]) if flags else np.nan
        rows.append(f)
    df = pd.concat(rows, ignore_index=True)
    ref = df[df["strength"] == 0.0].set_index(["dataset", "src", "tgt", "m", "defense", "repeat"])["source_recall"]
    key = pd.MultiIndex.from_frame(df[["dataset", "src", "tgt", "m", "defense", "repeat"]])
    df["damage"] = ref.reindex(key).to_numpy() - df["source_recall"].to_numpy()
    return df


def tradeoff_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Tidy: per pair, m, defense, strength and metric (`METRICS`, those defined for the
    defense), mean, std and runs (repeats where the metric is defined)."""
    long = frame.melt(id_vars=_KEYS + ["repeat"], value_vars=list(METRICS), var_name="metric")
    long = long.dropna(subset=["value"])
    g = long.groupby(_KEYS + ["metric"], sort=False)["value"]
    t = g.agg(mean="mean", std="std", runs="count").reset_index()
    return ex.sort_tidy(t, ("dataset", "src", "tgt", "m", "defense", "strength", "metric"),
                        {"defense": list(DEFENSES), "metric": list(METRICS)})


def _value(t: pd.DataFrame, metric: str, **where) -> pd.Series:
    sel = t["metric"] == metric
    for k, v in where.items():
        sel &= t[k] == v
    return t[sel].set_index("strength")["mean"]


def escape_strength(table: pd.DataFrame, dataset: str, src: int, tgt: int, threshold: float = 0.5):
    """The largest strength at which the online PCA defense excludes fewer than `threshold` of
    the malicious participant-rounds (mean over repeats), with the damage the unopposed attack
    does there; (None, nan) if it catches every strength > 0."""
    rec = _value(table, "detection_recall", dataset=dataset, src=src, tgt=tgt, defense="pca")
    dmg = _value(table, "damage", dataset=dataset, src=src, tgt=tgt, defense="none")
    missed = [s for s, v in rec.items() if s > 0 and v < threshold]
    if not missed:
        return None, float("nan")
    s = max(missed)
    return s, float(dmg.get(s, np.nan))


def agreement_tradeoff(table: pd.DataFrame) -> str:
    """Per pair: damage and detection at each strength, and where the detector stops catching
    the attacker (`escape_strength`)."""
    out = []
    for (d, s, t, m), g in table.groupby(["dataset", "src", "tgt", "m"], sort=False):
        dmg = _value(g, "damage", defense="none")
        dmg_sd = g[(g["metric"] == "damage") & (g["defense"] == "none")].set_index("strength")["std"]
        auc = _value(g, "detection_auc", defense="none")
        rec = _value(g, "detection_recall", defense="pca")
        thr = _value(g, "damage", defense="pca")
        parts = []
        for st in dmg.index:
            if st == 0:
                continue
            parts.append(f"strength {st:g}: damage {dmg[st]:.1f} ± {dmg_sd.get(st, np.nan):.1f} pp unopposed, "
                         f"{thr.get(st, np.nan):.1f} pp through the online defense, detector AUC "
                         f"{auc.get(st, np.nan):.2f}, online recall {rec.get(st, np.nan):.2f}")  # fmt: skip
        esc, esc_dmg = escape_strength(g, d, s, t)
        head = f"{ex._pair(d, s, t)}, m = {100 * m:g}%, adaptive flip: " + "; ".join(parts) + "."
        if esc is None:
            head += " The online PCA defense excludes at least half of the malicious participant-rounds at every strength tried."
        else:
            head += (f" **The PCA detector stops catching it at strength {esc:g}** (it excludes fewer than half "
                     f"of the malicious participant-rounds there), where the attack still costs the source class "
                     f"{esc_dmg:.1f} pp unopposed.")  # fmt: skip
        out.append(head)
    return " ".join(out)
