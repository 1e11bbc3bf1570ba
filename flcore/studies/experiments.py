"""Study-level functions behind the notebooks: run a grid of configurations into tidy frames,
compute the paper's tables from them, set them beside the published numbers, and write
figures and tables to disk.

Frames (all tidy, percentages in [0, 100]):

- final frame (`final_frame`): one row per (config, repeat): dataset, src, tgt, m, strategy,
  alpha, repeat, accuracy, recall_0 … recall_9, source_recall, target_recall, m_cnt (test
  images of src predicted as tgt), n_mal_last (malicious participants in the last round).
- round frame (`round_frame`): one row per (config, repeat, evaluated round): the same keys,
  round, accuracy (NaN in rounds evaluated on the source class only), source_recall, n_malicious.

The clean baseline (m = 0) does not depend on the source/target pair, so every study asks
for it through `baseline_config`, which fixes a canonical pair: one training serves every
pair (each pair's recall is read from the baseline's confusion matrices) and every notebook
(the result store recognises the identical configuration).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from flcore.config import NUM_CLASSES, Config
from flcore.data import specs
from flcore.data.specs import DATASETS
from flcore.runs.runner import run_many
from flcore.sim.metrics import final_metrics, mean_std, source_recall_loss, targeting_deltas
from flcore.sim.result import Result

REPO_ROOT = Path(__file__).resolve().parents[2]

# The paper's source → target pairs per dataset, in class order (from the dataset specs).
PAIRS = {name: sorted(DATASETS.get(name).pairs) for name in DATASETS}


dataset_label = specs.label  # the short name of a dataset in tables and plots ("F-MNIST")


# m = 0 trains the same whatever the pair; this one names the baseline in the store.
BASELINE_PAIR = (0, 1)

# ------------------------------------------------------------------------------------------
# Published numbers (the paper's Tables 2-4), as data
# ------------------------------------------------------------------------------------------

_T2_M = (0.02, 0.04, 0.10, 0.20, 0.30, 0.40, 0.50)
_T2 = {  # (dataset, src, tgt): (m_cnt, loss at each m in _T2_M)
    ("cifar10", 0, 2): (16, (1.42, 2.93, 10.2, 14.1, 48.3, 73, 70.5)),
    ("cifar10", 1, 9): (56, (0.69, 3.75, 6.04, 15, 36.3, 49.2, 54.7)),
    ("cifar10", 5, 3): (200, (0, 3.21, 7.92, 25.4, 49.5, 69.2, 69.2)),
    ("fmnist", 1, 3): (18, (0.12, 0.42, 2.27, 2.41, 40.3, 45.4, 42)),
    ("fmnist", 4, 6): (51, (0.61, 7.16, 16, 29.2, 28.7, 37.1, 58.9)),
    ("fmnist", 6, 0): (118, (-1, 2.19, 7.34, 9.81, 19.9, 39, 43.4)),
}
PAPER_TABLE2 = pd.DataFrame(
    [
        {"dataset": d, "src": s, "tgt": t, "m": m, "m_cnt": cnt, "loss": v}
        for (d, s, t), (cnt, vals) in _T2.items()
        for m, v in zip(_T2_M, vals)
    ]
)
PAPER_TABLE3 = pd.DataFrame(
    [
        ("cifar10", 0, 2, -6.28, 1.58, 0.34),
        ("cifar10", 1, 9, -6.22, 2.28, 0.16),
        ("cifar10", 5, 3, -6.12, 3.00, 0.17),
        ("fmnist", 1, 3, -2.23, 0.25, 0.01),
        ("fmnist", 4, 6, -9.96, 2.40, 0.09),
        ("fmnist", 6, 0, -8.87, 2.59, 0.20),
    ],
    columns=["dataset", "src", "tgt", "delta_source", "delta_target", "delta_others_sum"],
)
PAPER_TABLE4 = pd.DataFrame(
    [
        ("cifar10", 0, 2, 73.90, 82.45),
        ("cifar10", 1, 9, 77.30, 89.40),
        ("cifar10", 5, 3, 57.50, 73.10),
        ("fmnist", 1, 3, 84.32, 96.25),
        ("fmnist", 4, 6, 51.50, 89.60),
        ("fmnist", 6, 0, 49.80, 73.15),
    ],
    columns=["dataset", "src", "tgt", "malicious_in_PR", "none_in_PR"],
)
TABLE3_SETTINGS = ("delta_source", "delta_target", "delta_others_sum", "delta_others_mean")
TABLE4_SETTINGS = ("malicious_in_PR", "none_in_PR")

# ------------------------------------------------------------------------------------------
# Paths and configurations
# ------------------------------------------------------------------------------------------


def repo_path(p: str | Path) -> Path:
    """A path relative to the repository root (papermill's working directory may differ)."""
    p = Path(p).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def figures_dir(output_dir: str | Path, profile: str) -> Path:
    """`<output_dir>/<profile>/`, created; relative paths are taken from the repository root."""
    d = repo_path(output_dir) / profile
    d.mkdir(parents=True, exist_ok=True)
    return d


def pick(value, dataset: str):
    """A per-dataset parameter: `{dataset: value}` or one value for every dataset."""
    return value.get(dataset) if isinstance(value, dict) else value


def base_config(dataset: str, *, rounds: int, repeats: int | dict, seed: int = 0, n_train=None,
                n_test=None, warm_start=0, device: str = "auto", precision: str = "auto",
                break_round: int = 75, **fields) -> Config:  # fmt: skip
    """The shared part of a study's configurations. `repeats`, `n_train`, `n_test`,
    `warm_start`: one value or a dict per dataset."""
    if pick(repeats, dataset) is None:
        raise ValueError(f"repeats={repeats!r} gives no value for dataset {dataset!r}; "
                         f"add {dataset!r} to the dict or give one number for every dataset")  # fmt: skip
    return Config(dataset=dataset, rounds=rounds, repeats=pick(repeats, dataset), seed=seed,
                  n_train=pick(n_train, dataset), n_test=pick(n_test, dataset),
                  warm_start=pick(warm_start, dataset) or 0, device=device, precision=precision,
                  break_round=min(break_round, rounds), **fields)  # fmt: skip


def baseline_config(cfg: Config) -> Config:
    """The non-poisoned model M_NP for `cfg`: m = 0, the canonical pair, evaluated every round.

    Everything that does not change an m = 0 run is normalised (pair, strategy, α, break
    round, recorded updates), so that all notebooks and pairs share one training. Rounds
    before the last evaluate only the source classes of the paper's pairs (the per-round
    curves need no more) when `cfg`'s source is one of them, else every class.
    """
    sources = tuple(sorted({s for s, _ in PAIRS[cfg.dataset]}))
    return cfg.replace(m=0.0, src=BASELINE_PAIR[0], tgt=BASELINE_PAIR[1], strategy="random",
                       alpha=None, break_round=Config.break_round, record_updates="none",
                       eval_every=1, eval_classes=sources if cfg.src in sources else None,
                       defense=None, defense_params={}, attack="label_flip", attack_params={})  # fmt: skip


def _baseline_for(cfg: Config, baseline_repeats=None) -> Config:
    """`baseline_config` of a study's config with its own repeat count (one value, a dict per
    dataset, or None: the study's)."""
    return baseline_config(cfg.replace(repeats=pick(baseline_repeats, cfg.dataset) or cfg.repeats))


def run_grid(configs: Iterable[Config], store="results", progress: bool = True) -> list[Result]:
    """Run (or load from the result store) each configuration; results in input order.

    Compatible configurations (differing only in the attack and selection) train together
    as one stacked model (`flcore.runs.runner.run_many`)."""
    store = None if store is None else repo_path(store)
    return run_many(list(configs), store=store, progress=progress)


# ------------------------------------------------------------------------------------------
# Results -> tidy frames
# ------------------------------------------------------------------------------------------


def _keys(cfg: Config, src: int | None = None, tgt: int | None = None) -> dict:
    return {
        "dataset": cfg.dataset,
        "src": cfg.src if src is None else src,
        "tgt": cfg.tgt if tgt is None else tgt,
        "m": float(cfg.m),
        "strategy": cfg.strategy,
        "alpha": np.nan if cfg.alpha is None else float(cfg.alpha),
    }


def _ok_repeats(res: Result) -> np.ndarray:
    """Repeats that did not diverge (the paper's means are over converged runs)."""
    return np.setdiff1d(np.arange(res.config.repeats), res.meta.get("diverged_repeats", []))


def final_frame(res: Result, src: int | None = None, tgt: int | None = None) -> pd.DataFrame:
    """One row per non-diverged repeat: final accuracy and class recalls of `res`
    (`flcore.sim.metrics.final_metrics`), the study keys and n_mal_last.

    src, tgt: read the metrics for this pair instead of the config's (for the baseline).
    """
    cfg = res.config
    s, t = (cfg.src if src is None else src), (cfg.tgt if tgt is None else tgt)
    fm = final_metrics(res, s, t).set_index("repeat")
    mal = np.zeros((cfg.repeats, cfg.num_participants), bool)
    for j in range(cfg.repeats):
        mal[j, res.malicious[j]] = True
    n_mal_last = mal[np.arange(cfg.repeats)[:, None], res.selected[:, -1]].sum(1)
    cols = ["accuracy", *(f"recall_{c}" for c in range(NUM_CLASSES)), "source_recall", "target_recall"]
    rows = []
    for j in _ok_repeats(res):
        row = _keys(cfg, s, t) | {"repeat": int(j)} | fm.loc[j, cols].to_dict()
        row |= {"m_cnt": int(fm.loc[j, "m_cnt"]), "n_mal_last": int(n_mal_last[j])}
        rows.append(row)
    return pd.DataFrame(rows)


def round_frame(res: Result, src: int | None = None, tgt: int | None = None) -> pd.DataFrame:
    """One row per (non-diverged repeat, evaluated round): accuracy, source recall, n_malicious."""
    cfg = res.config
    s = cfg.src if src is None else src
    rec = res.recall[res.recall["cls"] == s].rename(columns={"recall": "source_recall"})
    df = rec[["repeat", "round", "source_recall"]].merge(
        res.rounds[["repeat", "round", "accuracy", "n_malicious"]], on=["repeat", "round"])
    df = df[df["repeat"].isin(_ok_repeats(res))]
    for k, v in reversed(_keys(cfg, s, tgt).items()):
        df.insert(0, k, v)
    return df.reset_index(drop=True)


def setting_label(m: float, strategy: str = "random", alpha=None) -> str:
    lab = f"m={100 * m:g}%"
    if strategy != "random":
        lab += f" {strategy}"
    if alpha is not None and not (isinstance(alpha, float) and math.isnan(alpha)):
        lab += f" α={alpha:g}"
    return lab


# ------------------------------------------------------------------------------------------
# Studies
# ------------------------------------------------------------------------------------------


def pair_list(pairs) -> list[tuple[str, int, int]]:
    """[[dataset, src, tgt], ...] (notebook parameters) -> [(dataset, src, tgt), ...]."""
    out = []
    for p in pairs:
        d, s, t = p
        if d not in PAIRS:
            raise ValueError(f"pair {p!r}: unknown dataset {d!r} (use 'fmnist' or 'cifar10')")
        out.append((str(d), int(s), int(t)))
    return out


def feasibility_jobs(pairs, m_values: Sequence[float], *, rounds: int, repeats: int | dict,
                     baseline_repeats: int | None = None, curves: bool = False,
                     **base) -> list[tuple[Config, int | None, int | None]]:  # fmt: skip
    """The runs of `feasibility`, without training: (config, src, tgt) per run, src and tgt
    set where the run is the shared baseline read for that pair."""
    jobs = []
    for d, s, t in pair_list(pairs):
        cfg = base_config(d, rounds=rounds, repeats=repeats, src=s, tgt=t, **base)
        jobs.append((_baseline_for(cfg, baseline_repeats), s, t))
        poisoned = cfg.replace(eval_every=1, eval_classes=(s, t)) if curves else cfg.replace(eval_every=rounds)
        jobs += [(poisoned.replace(m=float(m)), None, None) for m in m_values if m > 0]
    return jobs


def feasibility(pairs, m_values: Sequence[float], *, rounds: int, repeats: int | dict,
                baseline_repeats: int | None = None, curves: bool = False, store="results",
                progress=True, **base) -> pd.DataFrame:  # fmt: skip
    """Final metrics for every pair × m (random selection): the data of Fig 1, Fig 2, Table 2, Table 3.

    m = 0 rows come from the shared baseline (`baseline_config`), whatever the pair.
    Poisoned runs evaluate only the last round, or with `curves` every round on the source
    and target classes (for means over the last rounds). Returns a final frame (module doc).
    """
    jobs = feasibility_jobs(pairs, m_values, rounds=rounds, repeats=repeats,
                            baseline_repeats=baseline_repeats, curves=curves, **base)  # fmt: skip
    return feasibility_frame(run_grid([c for c, _, _ in jobs], store, progress), jobs, curves)


def feasibility_frame(results, jobs, curves: bool = False) -> pd.DataFrame | None:
    """The final frame of `feasibility` from its jobs' results (a result may be None: not
    computed, left out; None if none is there). With `curves`, the source recall over the
    last rounds too (`source_recall_last`, Table 2's second reading)."""
    frames = []
    for r, (_, s, t) in zip(results, jobs):
        if r is None:
            continue
        f = final_frame(r, s, t)
        if curves:
            last = last_rounds_recall(r, s)
            f = f.assign(source_recall_last=f["repeat"].map(last) if last is not None else np.nan)
        frames.append(f)
    return pd.concat(frames, ignore_index=True) if frames else None


def last_rounds(rounds: int) -> int:
    """How many final rounds the "last rounds" means average: a tenth of the run (the
    paper's 200 rounds: 20), at least 1. One round swings with who was selected in it."""
    return max(1, rounds // 10)


def last_rounds_recall(res: Result, src: int | None = None) -> pd.Series | None:
    """Per non-diverged repeat: the recall of class `src` (default: the config's source)
    averaged over the last `last_rounds` rounds; None if the run did not evaluate that class
    in each of them."""
    cfg = res.config
    s = cfg.src if src is None else src
    L = last_rounds(cfg.rounds)
    rec = res.recall[(res.recall["cls"] == s) & (res.recall["round"] > cfg.rounds - L)]
    rec = rec[rec["repeat"].isin(_ok_repeats(res))]
    per = rec.groupby("repeat")["recall"]
    if rec.empty or (per.count() < L).any():
        return None
    return per.mean()


def timing(pairs, m: float, strategies=("early", "late"), *, rounds: int, repeats: int,
           break_round: int, figure_pairs=None, baseline_repeats: int | None = None,
           store="results", progress=True, **base) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """Early/late poisoning (Figs 3, 4, Table 4).

    Every pair gets a late-poisoning run (Table 4, final round only unless the pair is in
    `figure_pairs`); the pairs in `figure_pairs` (default: all) also get every strategy in
    `strategies`, evaluated each round, plus the baseline's per-round recall ("none").
    Returns (round frame with a `setting` column: none | early | late, final frame of the
    late runs).
    """
    jobs = timing_jobs(pairs, m, strategies, rounds=rounds, repeats=repeats, break_round=break_round,
                       figure_pairs=figure_pairs, baseline_repeats=baseline_repeats, **base)  # fmt: skip
    rf, late = timing_frames(run_grid([j[0] for j in jobs], store, progress), jobs)
    return rf, late


def timing_frames(results, jobs) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """`timing`'s (round frame, final frame of the late runs) from its jobs' results (a
    result may be None: not computed, left out)."""
    rounds_frames, finals = [], []
    for r, (c, kind, s, t) in zip(results, jobs):
        if r is None:
            continue
        if kind != "final":
            rounds_frames.append(round_frame(r, s, t).assign(setting=kind))
        if c.strategy == "late" and kind != "none":
            finals.append(final_frame(r))
    rf = pd.concat(rounds_frames, ignore_index=True) if rounds_frames else pd.DataFrame()
    return rf, pd.concat(finals, ignore_index=True) if finals else None


def sort_tidy(t: pd.DataFrame, by: Sequence[str], orders: dict[str, Sequence]) -> pd.DataFrame:
    """`t` sorted by the columns of `by` it has (stable). A column named in `orders` sorts by
    its position in that sequence (e.g. defenses in `DEFENSES` order), or by the callable
    given for it (e.g. `lambda c: -c` for descending); the others by value."""

    def key(c: pd.Series):
        o = orders.get(c.name)
        if o is None:
            return c
        return o(c) if callable(o) else c.map({v: i for i, v in enumerate(o)})

    cols = [k for k in by if k in t]
    return t.sort_values(cols, key=key, kind="stable").reset_index(drop=True)


def timing_jobs(pairs, m: float, strategies=("early", "late"), *, rounds: int, repeats: int,
                break_round: int, figure_pairs=None, baseline_repeats: int | None = None,
                **base) -> list[tuple[Config, str, int | None, int | None]]:  # fmt: skip
    """The runs of `timing`, without training: (config, kind, src, tgt), kind one of none
    (the baseline, read for src → tgt), early, late (figure pairs) or final (Table 4 only)."""
    pairs = pair_list(pairs)
    figure_pairs = pairs if figure_pairs is None else pair_list(figure_pairs)
    jobs = []
    for d, s, t in pairs:
        cfg = base_config(d, rounds=rounds, repeats=repeats, src=s, tgt=t, m=float(m),
                          break_round=break_round, **base)  # fmt: skip
        on_fig = (d, s, t) in figure_pairs
        if on_fig:
            jobs.append((_baseline_for(cfg, baseline_repeats), "none", s, t))
        for strat in strategies if on_fig else ("late",):
            jobs.append((cfg.replace(strategy=strat, eval_every=1 if on_fig else rounds, eval_classes=(s,)),
                         strat if on_fig else "final", None, None))  # fmt: skip
    return jobs


def availability(pairs, m_values, alphas, *, rounds: int, repeats: int, break_round: int,
                 store="results", progress=True, **base) -> pd.DataFrame:  # fmt: skip
    """Late poisoning with availability α for every pair × m × α (Figs 5, 6, 7): a round frame."""
    grid = availability_jobs(pairs, m_values, alphas, rounds=rounds, repeats=repeats,
                             break_round=break_round, **base)  # fmt: skip
    return pd.concat([round_frame(r) for r in run_grid(grid, store, progress)], ignore_index=True)


def availability_jobs(pairs, m_values, alphas, *, rounds: int, repeats: int, break_round: int,
                      **base) -> list[Config]:  # fmt: skip
    """The runs of `availability`, without training."""
    grid = []
    for d, s, t in pair_list(pairs):
        cfg = base_config(d, rounds=rounds, repeats=repeats, src=s, tgt=t,
                          break_round=break_round, **base)  # fmt: skip
        grid += [cfg.replace(m=float(m), strategy="availability", alpha=float(a), eval_classes=(s,))
                 for m in m_values for a in alphas]  # fmt: skip
    return grid


def defense_updates(pairs, m_values, *, rounds: int, repeats: int = 1, store="results",
                    progress=True, **base) -> list[Result]:  # fmt: skip
    """Runs that record every selected participant's source-row output-layer update (Fig 8)."""
    return run_grid(defense_updates_jobs(pairs, m_values, rounds=rounds, repeats=repeats, **base),
                    store, progress)  # fmt: skip


def defense_updates_jobs(pairs, m_values, *, rounds: int, repeats: int = 1, **base) -> list[Config]:
    """The runs of `defense_updates`, without training."""
    grid = []
    for d, s, t in pair_list(pairs):
        cfg = base_config(d, rounds=rounds, repeats=repeats, src=s, tgt=t, record_updates="source",
                          eval_every=rounds, **base)  # fmt: skip
        grid += [cfg.replace(m=float(m)) for m in m_values]
    return grid


# ------------------------------------------------------------------------------------------
# Defense: detection (notebook 05) and the comparison of defenses (notebook 06)
# ------------------------------------------------------------------------------------------

# The defenses notebook 06 compares: name -> the Config fields that select it. Parameters
# that need k = 5 in mind: trimmed mean drops floor(β·k) values per end, so β ≥ 0.2 to trim
# anything; Krum needs k > 2f + 2, so f = 1.
DEFENSES = {
    "none": {},
    "pca": {"defense": "pca"},  # the online PCA detector, flagged participants blocked
    "median": {"aggregator": "median"},
    "trimmed_mean": {"aggregator": "trimmed_mean", "aggregator_params": {"beta": 0.2}},
    "multi_krum": {"aggregator": "multi_krum", "aggregator_params": {"f": 1}},
    "foolsgold": {"aggregator": "foolsgold"},
    # the later rules (notebook 07's paper profile), at their defaults (docs/DEFENSE.md). With
    # k = 5, Bulyan admits only f = 0 (it needs k >= 4f + 3), where it is the mean.
    "geometric_median": {"aggregator": "geometric_median"},
    "bulyan": {"aggregator": "bulyan"},
    "centered_clipping": {"aggregator": "centered_clipping"},
    "flame": {"aggregator": "flame"},
    "fltrust": {"aggregator": "fltrust"},  # the server's root set is taken out of the shares
}
DEFENSE_LABEL = {"none": "no defense", "pca": "PCA detector + blocking", "median": "median",
                 "trimmed_mean": "trimmed mean", "multi_krum": "Multi-Krum", "foolsgold": "FoolsGold",
                 "geometric_median": "geometric median", "bulyan": "Bulyan",
                 "centered_clipping": "centered clipping", "flame": "FLAME", "fltrust": "FLTrust"}  # fmt: skip
# notebook 06's default list (the rules it was written for)
COMPARISON_DEFENSES = ("none", "pca", "median", "trimmed_mean", "multi_krum", "foolsgold")
_DETECTION_METRICS = ("precision", "recall", "f1", "fpr", "roc_auc")
_DETECTION_COUNTS = ("tp", "fp", "tn", "fn")


def detection_frame(results: Sequence[Result], rounds_from: int = 10, how: str = "mean") -> pd.DataFrame:
    """Algorithm 1 with a decision (`flcore.defenses.detector.evaluate_detection`) scored against the
    truth for every run and repeat: one row per (run, repeat, level), level "update" (each
    recorded update judged) or "participant" (a participant's updates aggregated by `how`),
    with precision, recall, f1, fpr, roc_auc and the counts tp, fp, tn, fn."""
    from flcore.defenses.detector import evaluate_detection

    frames = []
    for res in results:
        if res.updates is None:
            raise ValueError(f"{setting_label(res.config.m)}: no recorded updates; run with record_updates='source'")
        df = evaluate_detection(res, rounds_from=rounds_from, how=how)
        df = df[df["repeat"].isin(_ok_repeats(res))]
        for kk, v in reversed(_keys(res.config).items()):
            df.insert(0, kk, v)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def detection_table(det: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, pair, m, level): the detection metrics averaged over repeats (NaN-aware:
    a repeat without any malicious update has no AUC), the counts summed, and runs."""
    keys = ["dataset", "src", "tgt", "m", "level"]
    g = det.groupby(keys, sort=True)
    out = g[list(_DETECTION_METRICS)].mean().join(g[list(_DETECTION_COUNTS)].sum())
    out["runs"] = g.size()
    out = out.reset_index()
    out.insert(4, "setting", [setting_label(m) for m in out["m"]])
    return out


def defense_config(cfg: Config, defense: str, aggregator_params: dict | None = None,
                   pca_params: dict | None = None) -> Config:  # fmt: skip
    """`cfg` with the defense `defense` (a key of `DEFENSES`) switched on.

    aggregator_params: {defense name: params} overriding `DEFENSES`' defaults, e.g.
    {"trimmed_mean": {"beta": 0.4}}; pca_params: `defense_params` of the PCA detector
    (defaults: `flcore.defenses.pca.PCAParams`).
    """
    if defense not in DEFENSES:
        from flcore.config import suggest

        raise ValueError(f"defense {defense!r}: unknown{suggest(defense, DEFENSES)} (valid: {', '.join(DEFENSES)})")
    fields = dict(DEFENSES[defense])
    over = (aggregator_params or {}).get(defense)
    if over is not None:
        fields["aggregator_params"] = dict(fields.get("aggregator_params", {}), **over)
    if defense == "pca":
        fields["defense_params"] = dict(pca_params or {})
    return cfg.replace(**fields)


def blocking_frame(res: Result) -> pd.DataFrame:
    """Who the online defense excluded, per repeat: blocked (distinct participants ever
    excluded), blocked_malicious (of them malicious), first_block (round of the first
    exclusion, NaN if none). Empty columns (NaN) for runs without the PCA defense."""
    R = res.config.repeats
    out = pd.DataFrame({"repeat": np.arange(R), "blocked": np.nan, "blocked_malicious": np.nan,
                        "first_block": np.nan})  # fmt: skip
    ex = res.excluded
    if ex is None:
        return out
    out[["blocked", "blocked_malicious"]] = 0.0
    for j, g in ex.groupby("repeat"):
        first = g.drop_duplicates("participant")
        out.loc[out["repeat"] == j, ["blocked", "blocked_malicious", "first_block"]] = (
            len(first), float(first["malicious"].sum()), float(g["round"].min()))
    return out


def defense_comparison(pairs, m_values, defenses=COMPARISON_DEFENSES, *, rounds: int, repeats: int,
                       aggregator_params: dict | None = None, pca_params: dict | None = None,
                       store="results", progress=True, **base) -> pd.DataFrame:  # fmt: skip
    """Final metrics of every pair × defense × m, m = 0 (the clean-run cost) always included.

    Returns a final frame (module doc) with a `defense` column and, from `blocking_frame`,
    blocked, blocked_malicious and first_block (PCA defense only). Every m = 0 run keeps
    the pair: the PCA defense watches the source class's updates even on clean runs.
    """
    jobs = defense_comparison_jobs(pairs, m_values, defenses, rounds=rounds, repeats=repeats,
                                   aggregator_params=aggregator_params, pca_params=pca_params, **base)  # fmt: skip
    names, grid = [n for _, n in jobs], [c for c, _ in jobs]
    frames = []
    for name, res in zip(names, run_grid(grid, store, progress)):  # undefended runs train together
        f = final_frame(res).merge(blocking_frame(res), on="repeat", how="left")
        f.insert(list(f.columns).index("repeat"), "defense", name)
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def defense_comparison_jobs(pairs, m_values, defenses=COMPARISON_DEFENSES, *, rounds: int, repeats: int,
                            aggregator_params: dict | None = None, pca_params: dict | None = None,
                            **base) -> list[tuple[Config, str]]:  # fmt: skip
    """The runs of `defense_comparison`, without training: (config, defense name)."""
    unknown = [d for d in defenses if d not in DEFENSES]
    if unknown:
        defense_config(Config(), unknown[0])  # raises, naming the valid ones
    ms = sorted({0.0, *(float(m) for m in m_values)})
    jobs = []
    for d, s, t in pair_list(pairs):
        cfg = base_config(d, rounds=rounds, repeats=repeats, src=s, tgt=t, eval_every=rounds, **base)
        for name in defenses:
            dcfg = defense_config(cfg, name, aggregator_params, pca_params)
            jobs += [(dcfg.replace(m=m), name) for m in ms]
    return jobs


def comparison_table(final: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, pair, defense, m): final source recall and M_acc (mean, std over repeats),
    runs, and the gap to the clean run without defense (`*_vs_clean`, pp: this mean minus
    the no-defense m = 0 mean of the pair; at m = 0 it is the defense's clean-run cost).
    PCA rows also hold the mean number of participants blocked and how many were malicious."""
    keys = ["dataset", "src", "tgt", "defense", "m"]
    g = final.groupby(keys, sort=False)
    t = pd.DataFrame({
        "source_recall_mean": g["source_recall"].mean(), "source_recall_std": g["source_recall"].std(ddof=1),
        "accuracy_mean": g["accuracy"].mean(), "accuracy_std": g["accuracy"].std(ddof=1),
        "runs": g.size(), "blocked": g["blocked"].mean(), "blocked_malicious": g["blocked_malicious"].mean(),
    }).reset_index()  # fmt: skip
    clean = t[(t["defense"] == "none") & (t["m"] == 0)].set_index(["dataset", "src", "tgt"])
    ref = t.set_index(["dataset", "src", "tgt"]).index
    for v in ("source_recall", "accuracy"):
        base = clean[f"{v}_mean"].reindex(ref).to_numpy() if len(clean) else np.nan
        t[f"{v}_vs_clean"] = t[f"{v}_mean"] - base
    t.insert(4, "setting", [DEFENSE_LABEL.get(d, d) for d in t["defense"]])
    order = {d: i for i, d in enumerate(DEFENSES)}
    t = t.sort_values(["dataset", "src", "tgt", "defense", "m"], key=lambda c: c.map(order) if c.name == "defense" else c)
    return t.reset_index(drop=True)


def agreement_detection(table: pd.DataFrame) -> str:
    """One sentence per (pair, m): per-participant ROC AUC, precision and recall."""
    out = []
    p = table[table["level"] == "participant"]
    for _, r in p.iterrows():
        auc = f"ROC AUC {r['roc_auc']:.2f}" if np.isfinite(r["roc_auc"]) else "no ROC AUC (one class only)"
        out.append(f"{_pair(r['dataset'], r['src'], r['tgt'])} m={100 * r['m']:g}%: per participant "
                   f"{auc}, precision {r['precision']:.2f}, recall {r['recall']:.2f} "
                   f"({int(r['tp'])} of {int(r['tp'] + r['fn'])} malicious flagged, {int(r['fp'])} honest).")  # fmt: skip
    return " ".join(out)


def agreement_comparison(table: pd.DataFrame) -> str:
    """Per pair and m > 0: which defense ends closest to the clean source recall, and how
    far the undefended and PCA-defended runs are from it; the clean-run cost of each."""
    out = []
    for (d, s, t), g in table.groupby(["dataset", "src", "tgt"], sort=True):
        for m, gm in g[g["m"] > 0].groupby("m", sort=True):
            best = gm.loc[gm["source_recall_vs_clean"].abs().idxmin()]
            parts = [f"{_pair(d, s, t)} m={100 * m:g}%: best {DEFENSE_LABEL.get(best['defense'])} "
                     f"({best['source_recall_vs_clean']:+.1f} pp source recall vs clean)"]  # fmt: skip
            for name in ("none", "pca"):
                row = gm[gm["defense"] == name]
                if len(row):
                    parts.append(f"{DEFENSE_LABEL[name]} {row['source_recall_vs_clean'].iloc[0]:+.1f} pp")
            out.append(", ".join(parts) + ".")
        c = g[(g["m"] == 0) & (g["defense"] != "none")]
        if len(c):
            costs = ", ".join(f"{DEFENSE_LABEL.get(r['defense'])} {r['accuracy_vs_clean']:+.1f} pp"
                              for _, r in c.iterrows())  # fmt: skip
            out.append(f"{_pair(d, s, t)} clean-run cost in M_acc: {costs}.")
    return " ".join(out)


# ------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------


def paired_with_clean(rows: pd.DataFrame, clean: pd.DataFrame, keys: Sequence[str],
                      cols: Sequence[str]) -> pd.DataFrame:
    """`rows` with `<col>_clean` for each of `cols`: the value of the `clean` run of the same
    `keys` and repeat. Repeats are paired by index (same partition, initial weights, selection
    and batches: only the attack differs); a row without a clean repeat of the same index is
    compared with the clean mean of its `keys`."""
    keys, cols = list(keys), list(cols)
    out = rows.merge(clean[keys + ["repeat"] + cols], on=keys + ["repeat"], how="left", suffixes=("", "_clean"))
    means = clean.groupby(keys)[cols].mean().add_suffix("_clean_mean").reset_index()
    out = out.merge(means, on=keys, how="left")
    for c in cols:
        out[f"{c}_clean"] = out[f"{c}_clean"].fillna(out[f"{c}_clean_mean"])
    return out.drop(columns=[f"{c}_clean_mean" for c in cols])


def _with_baseline(final: pd.DataFrame) -> pd.DataFrame:
    """Poisoned rows of a final frame joined with the same pair's baseline, per repeat
    (`paired_with_clean`)."""
    base = final[final["m"] == 0]
    if base.empty:
        raise ValueError("the final frame has no m = 0 rows: run the baseline (baseline_config)")
    recall_cols = [f"recall_{c}" for c in range(NUM_CLASSES)] + ["source_recall", "target_recall",
                                                                    "accuracy", "m_cnt"]  # fmt: skip
    return paired_with_clean(final[final["m"] > 0], base, ["dataset", "src", "tgt"], recall_cols)


def table2_per_repeat(final: pd.DataFrame) -> pd.DataFrame:
    """Table 2's loss in source recall (pp, clean minus poisoned) of every poisoned repeat,
    paired with the clean repeat of the same index: dataset, src, tgt, m, repeat, loss, m_cnt
    and, with `feasibility(curves=True)` runs, loss_last (the loss averaged over the last
    rounds, NaN where the poisoned run was evaluated in the final round only)."""
    j = _with_baseline(final)
    j["loss"] = source_recall_loss(j["source_recall_clean"], j["source_recall"])
    keys = ["dataset", "src", "tgt", "m", "repeat"]
    if "source_recall_last" in final and final.loc[final["m"] > 0, "source_recall_last"].notna().any():
        base = final[final["m"] == 0][["dataset", "src", "tgt", "repeat", "source_recall_last"]]
        jl = final[final["m"] > 0].merge(base, on=["dataset", "src", "tgt", "repeat"], suffixes=("", "_clean"))
        jl["loss_last"] = source_recall_loss(jl["source_recall_last_clean"], jl["source_recall_last"])
        # one run per key on both sides (validate): a frame with two runs of one key fails here
        # instead of pairing them crosswise
        j = j.merge(jl[keys + ["loss_last"]], on=keys, how="left", validate="1:1")
    return j


def table2(final: pd.DataFrame) -> pd.DataFrame:
    """Loss in source recall (pp, clean minus poisoned) per pair and m, with the clean m_cnt.

    Tidy: dataset, src, tgt, setting, m, mean, std, runs, m_cnt (mean over clean repeats).
    With `feasibility(curves=True)` runs, also the loss averaged over the last rounds
    (`last_rounds`: the last tenth of the run), paired by repeat: last_mean, last_std,
    last_runs (NaN where the poisoned runs were evaluated in the final round only).
    Per repeat: `table2_per_repeat`.
    """
    j = table2_per_repeat(final)
    t = mean_std(j, ["dataset", "src", "tgt", "m"], "loss")
    cnt = final[final["m"] == 0].groupby(["dataset", "src", "tgt"])["m_cnt"].mean().rename("m_cnt")
    t = t.merge(cnt.reset_index(), on=["dataset", "src", "tgt"], how="left")
    t.insert(3, "setting", [setting_label(m) for m in t["m"]])
    if "loss_last" in j:
        last = mean_std(j, ["dataset", "src", "tgt", "m"], "loss_last").rename(
            columns={"mean": "last_mean", "std": "last_std", "runs": "last_runs"})
        t = t.merge(last, on=["dataset", "src", "tgt", "m"], how="left")
    return t


def table3(final: pd.DataFrame, m: float = 0.10) -> pd.DataFrame:
    """Change due to poisoning at m (pp, poisoned minus clean): source, target, sum of the others.

    Tidy: dataset, src, tgt, setting (delta_source | delta_target | delta_others_sum), m,
    mean, std, runs.
    """
    j = _with_baseline(final)
    j = j[np.isclose(j["m"], m)]
    if j.empty:
        raise ValueError(f"no runs at m={m:g} in the final frame (m values: "
                         f"{sorted(final['m'].unique())})")  # fmt: skip
    rows = []
    for _, r in j.iterrows():
        clean = [r[f"recall_{c}_clean"] for c in range(NUM_CLASSES)]
        poisoned = [r[f"recall_{c}"] for c in range(NUM_CLASSES)]
        for k, v in targeting_deltas(clean, poisoned, r["src"], r["tgt"]).items():
            rows.append({"dataset": r["dataset"], "src": r["src"], "tgt": r["tgt"], "setting": k,
                         "m": r["m"], "repeat": r["repeat"], "value": float(v)})  # fmt: skip
    t = mean_std(pd.DataFrame(rows), ["dataset", "src", "tgt", "setting", "m"], "value")
    t["setting"] = pd.Categorical(t["setting"], TABLE3_SETTINGS, ordered=True)
    t = t.sort_values(["dataset", "src", "tgt", "setting"]).reset_index(drop=True)
    t["setting"] = t["setting"].astype(str)
    return t


def table4(final_late: pd.DataFrame) -> pd.DataFrame:
    """Final source recall of late-poisoning runs, split by whether P_R (the last round's
    participants) held at least one malicious participant.

    Tidy: dataset, src, tgt, setting (malicious_in_PR | none_in_PR), m, mean, std, runs, note.
    A category with no run gets runs = 0, NaN mean and a note instead of failing.
    """
    rows = []
    for (d, s, t, m), g in final_late.groupby(["dataset", "src", "tgt", "m"], sort=True):
        for setting, sel in (("malicious_in_PR", g["n_mal_last"] > 0), ("none_in_PR", g["n_mal_last"] == 0)):
            v = g.loc[sel, "source_recall"]
            rows.append({"dataset": d, "src": s, "tgt": t, "setting": setting, "m": m,
                         "mean": v.mean() if len(v) else np.nan,
                         "std": v.std(ddof=1) if len(v) > 1 else np.nan, "runs": len(v),
                         "note": "" if len(v) else "no run in this category"})  # fmt: skip
    return pd.DataFrame(rows)


def availability_per_repeat(rounds: pd.DataFrame, break_round: int) -> pd.DataFrame:
    """Source recall averaged over the rounds ≥ break_round: one row per (pair, m, α, repeat)."""
    late = rounds[rounds["round"] >= break_round]
    keys = ["dataset", "src", "tgt", "m", "alpha", "repeat"]
    return late.groupby(keys, as_index=False)["source_recall"].mean()


def availability_table(rounds: pd.DataFrame, break_round: int) -> pd.DataFrame:
    """Fig 5's numbers: mean/std/runs over repeats of `availability_per_repeat`."""
    return availability_summary(availability_per_repeat(rounds, break_round))


def availability_summary(per: pd.DataFrame) -> pd.DataFrame:
    """`availability_table` from `availability_per_repeat`'s rows (for a caller that has them)."""
    t = mean_std(per, ["dataset", "src", "tgt", "m", "alpha"], "source_recall")
    t.insert(3, "setting", [setting_label(m, "availability", a) for m, a in zip(t["m"], t["alpha"])])
    return t


def alpha_trend(table: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, src, tgt, m) of `availability_table` with at least two values of α: the
    smallest and largest α (alpha_lo, alpha_hi), the mean source recall at each (mean_lo,
    mean_hi) and whether it falls from the one to the other (`falls`)."""
    rows = []
    for (d, s, t, m), g in table.groupby(["dataset", "src", "tgt", "m"], sort=True):
        if len(g) < 2:
            continue
        g = g.sort_values("alpha")
        lo, hi = g.iloc[0], g.iloc[-1]
        rows.append({"dataset": d, "src": s, "tgt": t, "m": m, "alpha_lo": lo["alpha"], "mean_lo": lo["mean"],
                     "alpha_hi": hi["alpha"], "mean_hi": hi["mean"], "falls": bool(hi["mean"] < lo["mean"])})  # fmt: skip
    cols = ["dataset", "src", "tgt", "m", "alpha_lo", "mean_lo", "alpha_hi", "mean_hi", "falls"]
    return pd.DataFrame(rows, columns=cols)


def recall_change(rounds: pd.DataFrame, break_round: int) -> pd.DataFrame:
    """Fig 7: change of source recall between consecutive rounds vs the change in the number
    of malicious participants selected, rounds r ≥ break_round (r − 1 may precede it).

    Returns one row per (dataset, src, tgt, delta_malicious): mean, std, runs of delta_recall.
    """
    keys = ["dataset", "src", "tgt", "m", "strategy", "alpha", "repeat"]
    df = rounds.sort_values(keys + ["round"]).copy()
    g = df.groupby(keys, dropna=False)
    df["delta_recall"] = g["source_recall"].diff()
    df["delta_malicious"] = g["n_malicious"].diff()
    df["gap"] = g["round"].diff()
    df = df[(df["round"] >= break_round) & (df["gap"] == 1)].dropna(subset=["delta_recall"])
    df["delta_malicious"] = df["delta_malicious"].astype(int)
    return mean_std(df, ["dataset", "src", "tgt", "delta_malicious"], "delta_recall")


def pca_frame(results: Sequence[Result], rounds_from: int = 1, how: str = "mean") -> pd.DataFrame:
    """Algorithm 1's picture: per run, the source-class output-node updates of every selected
    participant (rounds ≥ rounds_from), standardised per coordinate and projected on two
    principal components. One row per (run, round, participant): dataset, src, tgt, m,
    round, participant, malicious, pc1, pc2, separation (ROC AUC of the better PC against the
    truth, folded to ≥ 0.5; 1 = perfectly separated), and the decision of
    `flcore.defenses.detector.PCADetector` fitted on the same rows: score (suspicion of the update),
    flagged (the update falls in the malicious cluster), participant_flagged (the
    participant's verdict over all its updates, `participant_verdict(how)`)."""
    from sklearn.metrics import roc_auc_score

    from flcore.defenses.detector import PCADetector, participant_verdict, updates_frame

    frames = []
    for res in results:
        cfg = res.config
        if res.updates is None:
            raise ValueError(f"{setting_label(cfg.m)}: no recorded updates; run with record_updates='source'")
        for j in _ok_repeats(res):
            u = np.asarray(res.updates[j])  # [rounds, k, 1, F]
            T, k = u.shape[:2]
            sel = res.selected[j]  # [rounds, k]
            is_mal = np.isin(sel, res.malicious[j])
            rnd = np.repeat(np.arange(1, T + 1), k)
            X, meta = updates_frame(u.reshape(T * k, 1, -1), sel.reshape(-1), rnd, is_mal.reshape(-1),
                                    src=0, rounds_from=rounds_from)  # fmt: skip
            det = PCADetector(n_components=2, random_state=0).fit(X)  # scaler + PCA as in the paper
            Z = det.transform(X)
            score = det.decision_function(X)
            verdict = participant_verdict(meta["participant"], score, how=how).set_index("participant")
            df = meta.assign(pc1=Z[:, 0], pc2=Z[:, 1], score=score, flagged=score > 0,
                             participant_flagged=verdict.loc[meta["participant"], "flagged"].to_numpy())  # fmt: skip
            sep = np.nan
            if 0 < df["malicious"].sum() < len(df):
                aucs = [roc_auc_score(df["malicious"], df[c]) for c in ("pc1", "pc2")]
                sep = max(max(a, 1 - a) for a in aucs)
            df = df.assign(separation=sep, repeat=int(j))
            for kk, v in reversed(_keys(cfg).items()):
                df.insert(0, kk, v)
            frames.append(df)
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------------------------------
# Paper vs this run
# ------------------------------------------------------------------------------------------


def compare_table2(t2: pd.DataFrame) -> pd.DataFrame:
    """Loss in source recall, paper vs this run, for the (pair, m) that were run."""
    p = PAPER_TABLE2.rename(columns={"loss": "paper", "m_cnt": "paper_m_cnt"})
    t = t2.rename(columns={"mean": "this_run", "std": "this_std", "m_cnt": "this_m_cnt"})
    t = t.assign(m=t["m"].round(4))
    out = t.merge(p.assign(m=p["m"].round(4)), on=["dataset", "src", "tgt", "m"], how="left")
    out["difference"] = out["this_run"] - out["paper"]
    cols = ["dataset", "src", "tgt", "setting", "paper", "this_run", "this_std", "runs", "difference",
            "paper_m_cnt", "this_m_cnt"]  # fmt: skip
    if "last_mean" in out:  # the loss averaged over the last rounds (feasibility curves)
        out["last_difference"] = out["last_mean"] - out["paper"]
        cols += ["last_mean", "last_std", "last_difference"]
    return out[cols]


def _compare_settings(table: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """A tidy (dataset, src, tgt, setting) table beside the paper's wide one."""
    p = paper.melt(id_vars=["dataset", "src", "tgt"], var_name="setting", value_name="paper")
    t = table.rename(columns={"mean": "this_run", "std": "this_std"})
    out = t.merge(p, on=["dataset", "src", "tgt", "setting"], how="left")
    out["difference"] = out["this_run"] - out["paper"]
    return out[["dataset", "src", "tgt", "setting", "paper", "this_run", "this_std", "runs", "difference"]]


def compare_table3(t3: pd.DataFrame) -> pd.DataFrame:
    """Ours beside the paper's Table 3. The paper has one column for the other classes ("loss in
    recall of all remaining classes"); read literally it is a sum, but its size (0.01–0.34 pp) is
    that of a per-class mean, so the paper's value stands beside both of our readings."""
    paper = PAPER_TABLE3.assign(delta_others_mean=PAPER_TABLE3["delta_others_sum"])
    return _compare_settings(t3, paper)


def compare_table4(t4: pd.DataFrame) -> pd.DataFrame:
    return _compare_settings(t4, PAPER_TABLE4)


def agreement_table2(t2: pd.DataFrame) -> str:
    """One sentence per pair: does the loss grow with m, and how large is it at the largest m."""
    out = []
    for (d, s, t), g in t2.sort_values("m").groupby(["dataset", "src", "tgt"], sort=True):
        v = g["mean"].to_numpy()
        grows = bool(np.all(np.diff(v) > 0)) if len(v) > 1 else None
        trend = {True: "grows with m", False: "does not grow monotonically with m", None: "one m only"}
        out.append(f"{dataset_label(d)} {s}→{t}: the loss {trend[grows]} and reaches "
                   f"{v[-1]:.1f} pp at m={100 * g['m'].iloc[-1]:g}%.")  # fmt: skip
    return " ".join(out)


def data_note(datasets: Iterable[str]) -> str:
    ds = set(datasets)
    notes = []
    if "cifar10" in ds:
        notes.append("CIFAR-10 here is a lossy JPEG copy of the official release (pixels differ "
                     "slightly), so its numbers can drift from the paper's beyond run-to-run noise.")  # fmt: skip
    return " ".join(notes)


# ------------------------------------------------------------------------------------------
# Writers
# ------------------------------------------------------------------------------------------


def save_figure(fig, name: str, out_dir: str | Path) -> list[Path]:
    """Write `fig` as `<out_dir>/<name>.png` and `.pdf`; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    # no creation date in the PDF: the same run writes byte-identical files (diffable in git)
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight", metadata={"CreationDate": None})
    return paths


def save_table(df: pd.DataFrame, name: str, out_dir: str | Path, float_format: str = "%.2f") -> list[Path]:
    """Write a tidy table as `<out_dir>/<name>.csv` (full precision) and `.tex` (2 decimals)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.csv", out_dir / f"{name}.tex"]
    df.to_csv(paths[0], index=False)
    df.to_latex(paths[1], index=False, float_format=lambda x: float_format % x, na_rep="--")
    return paths


# ------------------------------------------------------------------------------------------
# Sentences for the closing "paper vs this run" cell
# ------------------------------------------------------------------------------------------

_ROUNDS_NOTE = ("The paper trains 200 rounds; a run with fewer rounds stops while the model "
                "still learns and the last round's participants weigh more, so magnitudes "
                "differ while the direction of each effect is what is compared.")  # fmt: skip


def round_label(warm_start=0) -> str:
    """x-axis label of per-round plots."""
    warm = any(warm_start.values()) if isinstance(warm_start, dict) else bool(warm_start)
    return "round after the clean warm-up" if warm else "round"


def rounds_note(warm_start=0) -> str:
    """How this run's rounds relate to the paper's 200 (`warm_start`: int or per dataset)."""
    ws = {k: v for k, v in warm_start.items() if v} if isinstance(warm_start, dict) else warm_start
    if not ws:
        return _ROUNDS_NOTE
    w = ", ".join(f"{dataset_label(d)} {v}" for d, v in ws.items()) if isinstance(ws, dict) else str(ws)
    return ("The paper trains 200 rounds. Here every run starts from the clean FedAvg model "
            f"after a warm-up of {w} rounds (trained once and shared by all runs, "
            "`Config.warm_start`), so round r on the plots is round warm-up + r of the "
            "federation: the attack meets a model near the paper's converged one, but acts for "
            "a few rounds instead of ~200, so magnitudes differ while the direction of each "
            "effect is what is compared.")


def _pair(d, s, t) -> str:
    return f"{dataset_label(d)} {s}→{t}"


def agreement_table3(t3: pd.DataFrame) -> str:
    """One sentence per pair, then whether the other classes' change is an order of magnitude
    below the source change under each reading of the paper's third column (sum, per-class mean)."""
    w = t3.pivot_table(index=["dataset", "src", "tgt"], columns="setting", values="mean")
    out = []
    for (d, s, t), r in w.iterrows():
        src = max(abs(r["delta_source"]), 1e-9)
        out.append(f"{_pair(d, s, t)}: source {r['delta_source']:+.2f} pp, target "
                   f"{r['delta_target']:+.2f} pp, the other classes {r['delta_others_sum']:+.2f} pp "
                   f"summed ({abs(r['delta_others_sum']) / src:.2f}× the source change) or "
                   f"{r['delta_others_mean']:+.2f} pp per class ({abs(r['delta_others_mean']) / src:.2f}×).")  # fmt: skip
    for col, reading in (("delta_others_sum", "summed"), ("delta_others_mean", "per class")):
        below = [f"{_pair(d, s, t)}" for (d, s, t), r in w.iterrows()
                 if abs(r[col]) * 10 <= abs(r["delta_source"])]  # fmt: skip
        out.append(f"Read {reading}, the other classes' change is at least 10× below the source "
                   f"change for {len(below)} of {len(w)} pairs" + (f" ({', '.join(below)})." if below else "."))
    return " ".join(out)


def agreement_table4(t4: pd.DataFrame) -> str:
    out = []
    for (d, s, t), g in t4.groupby(["dataset", "src", "tgt"], sort=True):
        g = g.set_index("setting")
        a, b = g.loc["malicious_in_PR"], g.loc["none_in_PR"]
        if a["runs"] == 0 or b["runs"] == 0:
            empty = "≥ 1 malicious" if a["runs"] == 0 else "none"
            out.append(f"{_pair(d, s, t)}: no run had {empty} in the last round, so the "
                       f"comparison is open for this pair.")  # fmt: skip
            continue
        rel = "below" if a["mean"] < b["mean"] else "NOT below"
        out.append(f"{_pair(d, s, t)}: {a['mean']:.1f}% with ≥ 1 malicious participant in the "
                   f"last round ({int(a['runs'])} runs) is {rel} {b['mean']:.1f}% with none "
                   f"({int(b['runs'])} runs).")  # fmt: skip
    return " ".join(out)


def timing_summary(rounds: pd.DataFrame, break_round: int) -> pd.DataFrame:
    """Source recall (mean over repeats) in the last round before the break and in the final
    round, per pair and setting (none | early | late): the recovery the figures show."""
    last = rounds["round"].max()
    pick_r = {"before_break": break_round - 1, "final": last}
    rows = []
    for (d, s, t, st), g in rounds.groupby(["dataset", "src", "tgt", "setting"], sort=True):
        row = {"dataset": d, "src": s, "tgt": t, "setting": st}
        for k, r in pick_r.items():
            row[k] = g.loc[g["round"] == r, "source_recall"].mean()
        row["mean_after_break"] = g.loc[g["round"] >= break_round, "source_recall"].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def agreement_timing(summary: pd.DataFrame) -> str:
    out = []
    for (d, s, t), g in summary.groupby(["dataset", "src", "tgt"], sort=True):
        g = g.set_index("setting")
        if not {"none", "early", "late"} <= set(g.index):
            continue
        n, e, la = g.loc["none"], g.loc["early"], g.loc["late"]
        out.append(f"{_pair(d, s, t)}: early poisoning ends {e['final']:.1f}% vs "
                   f"{n['final']:.1f}% non-poisoned in the final round (gap "
                   f"{n['final'] - e['final']:+.1f} pp); late poisoning averages "
                   f"{la['mean_after_break']:.1f}% from the break on vs "
                   f"{n['mean_after_break']:.1f}% (gap "
                   f"{n['mean_after_break'] - la['mean_after_break']:+.1f} pp).")  # fmt: skip
    return " ".join(out)


def agreement_availability(table: pd.DataFrame, change: pd.DataFrame) -> str:
    out = []
    for r in alpha_trend(table).itertuples():
        out.append(f"{_pair(r.dataset, r.src, r.tgt)} m={100 * r.m:g}%: source recall after the break "
                   f"{'falls' if r.falls else 'does NOT fall'} from {r.mean_lo:.1f}% (α={r.alpha_lo:g}) "
                   f"to {r.mean_hi:.1f}% (α={r.alpha_hi:g}).")  # fmt: skip
    for (d, s, t), g in change.groupby(["dataset", "src", "tgt"], sort=True):
        up, down = g[g["delta_malicious"] > 0], g[g["delta_malicious"] < 0]
        if len(up) and len(down):
            out.append(f"{_pair(d, s, t)}: when more malicious participants are selected than "
                       f"in the previous round, source recall changes by "
                       f"{np.average(up['mean'], weights=up['runs']):+.1f} pp on average; when "
                       f"fewer, by {np.average(down['mean'], weights=down['runs']):+.1f} pp "
                       f"(paper: +3 or +4 malicious drop it by up to 40–60 pp).")  # fmt: skip
    return " ".join(out)


def pca_separation(pca: pd.DataFrame) -> pd.DataFrame:
    """Per run: rows, malicious rows and the separation AUC of the PCA picture."""
    g = pca.groupby(["dataset", "src", "tgt", "m", "repeat"], as_index=False)
    return g.agg(rows=("malicious", "size"), malicious_rows=("malicious", "sum"),
                 separation_auc=("separation", "first"))  # fmt: skip


def agreement_pca(sep: pd.DataFrame) -> str:
    out = []
    for _, r in sep.iterrows():
        what = (f"separation AUC {r['separation_auc']:.2f}" if np.isfinite(r["separation_auc"])
                else "no malicious participant was selected, nothing to separate")  # fmt: skip
        out.append(f"{_pair(r['dataset'], r['src'], r['tgt'])} m={100 * r['m']:g}%: "
                   f"{int(r['malicious_rows'])} malicious of {int(r['rows'])} updates, {what}.")  # fmt: skip
    return " ".join(out) + " Paper: clearly separated clusters for every m."
