"""The paper's metrics (paper Table 1), on confusion matrices and run results.

All percentages are in [0, 100]. Confusion matrices are indexed [true class, predicted class].
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch


def confusion_counts(y: torch.Tensor, pred: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """[..., n] true and predicted labels -> int64 [..., C, C] counts, on their device (the
    engines count every repeat's test predictions in one call)."""
    if y.shape != pred.shape:
        raise ValueError(f"y_true {tuple(y.shape)} and y_pred {tuple(pred.shape)} differ in shape")
    lead = pred.shape[:-1]
    flat = (y * num_classes + pred).reshape(-1, pred.shape[-1])
    offs = torch.arange(flat.shape[0], device=flat.device).unsqueeze(1) * num_classes**2
    counts = torch.bincount((flat + offs).reshape(-1), minlength=flat.shape[0] * num_classes**2)
    return counts.view(*lead, num_classes, num_classes)


def attack_success_rate(y: torch.Tensor, pred: torch.Tensor, tgt: torch.Tensor) -> np.ndarray:
    """ASR (%) of a backdoor: the share of triggered test images of every class other than the
    target that are classified as the target. y: true labels [n]; pred: predictions on the
    triggered images [R, n]; tgt: the target per row [R]. -> float64 [R] (NaN without such
    images)."""
    other = y[None, :] != tgt[:, None]  # [R, n]
    hits = ((pred == tgt[:, None]) & other).sum(1).cpu().numpy()
    n = other.sum(1).cpu().numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, 100.0 * hits / np.maximum(n, 1), np.nan)


def confusion_matrix(y_true, y_pred, num_classes: int = 10) -> np.ndarray:
    """int64 [C, C] counts of (true, predicted) pairs (arrays, lists or tensors)."""
    y_true = torch.as_tensor(np.asarray(torch.as_tensor(y_true).cpu(), dtype=np.int64))
    y_pred = torch.as_tensor(np.asarray(torch.as_tensor(y_pred).cpu(), dtype=np.int64))
    return confusion_counts(y_true, y_pred, num_classes).numpy()


def accuracy(confusion: np.ndarray) -> np.ndarray:
    """M_acc (%) from [..., C, C] confusion matrices."""
    confusion = np.asarray(confusion)
    return 100.0 * np.trace(confusion, axis1=-2, axis2=-1) / confusion.sum(axis=(-2, -1))


def class_recall(confusion: np.ndarray) -> np.ndarray:
    """c_i^recall = TP_i / (TP_i + FN_i) (%) per class: [..., C, C] -> [..., C] (NaN if no support)."""
    confusion = np.asarray(confusion)
    support = confusion.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, 100.0 * np.diagonal(confusion, axis1=-2, axis2=-1) / support, np.nan)


def misclassification_count(confusion: np.ndarray, src: int, tgt: int) -> np.ndarray:
    """m_cnt_ij: test instances of true class src predicted as tgt. [..., C, C] -> [...]."""
    return np.asarray(confusion)[..., src, tgt]


def source_recall_loss(clean_recall, poisoned_recall):
    """Loss in source-class recall (percentage points): recall under M_NP minus under M_P."""
    return np.asarray(clean_recall) - np.asarray(poisoned_recall)


def targeting_deltas(clean_recall: np.ndarray, poisoned_recall: np.ndarray, src: int, tgt: int) -> dict:
    """Table 3's changes due to poisoning (percentage points, poisoned minus clean).

    clean_recall, poisoned_recall: per-class recall [C] (or [..., C], reduced over leading
    axes by the caller). Returns the change of the source recall, of the target recall, and
    two readings of "the recall of all remaining classes": the summed change over the other
    classes (the literal reading) and their mean change, which is the change of their pooled recall
    on a class-balanced test set (every test set and subset here is class-balanced).
    """
    d = np.asarray(poisoned_recall, dtype=float) - np.asarray(clean_recall, dtype=float)
    others = [c for c in range(d.shape[-1]) if c not in (src, tgt)]
    return {
        "delta_source": d[..., src],
        "delta_target": d[..., tgt],
        "delta_others_sum": d[..., others].sum(-1),
        "delta_others_mean": d[..., others].mean(-1),
    }


def final_metrics(result, src: int | None = None, tgt: int | None = None) -> pd.DataFrame:
    """Per repeat of a `flcore.sim.result.Result`: final accuracy, every class recall, m_cnt(src→tgt).

    One row per repeat: repeat, accuracy, recall_0 … recall_9, m_cnt, source_recall,
    target_recall, diverged (values NaN for a diverged repeat). src, tgt: this pair instead
    of the config's (a clean baseline serves every pair).
    """
    cfg = result.config
    src = cfg.src if src is None else src
    tgt = cfg.tgt if tgt is None else tgt
    conf = np.asarray(result.confusion)[:, -1]  # [R, C, C]
    rec = class_recall(conf)
    out = pd.DataFrame({"repeat": np.arange(len(conf)), "accuracy": accuracy(conf)})
    for c in range(rec.shape[-1]):
        out[f"recall_{c}"] = rec[:, c]
    out["m_cnt"] = misclassification_count(conf, src, tgt)
    out["source_recall"] = rec[:, src]
    out["target_recall"] = rec[:, tgt]
    out["diverged"] = np.isin(out["repeat"], result.meta.get("diverged_repeats", []))
    out.loc[out["diverged"], [c for c in out.columns if c not in ("repeat", "diverged")]] = np.nan
    return out


def mean_std(df: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Tidy mean, sample std and run count of `value` per group (NaN values are not counted;
    NaN keys, e.g. alpha of a non-availability run, form their own group)."""
    g = df.groupby(by, sort=True, dropna=False)[value]
    return pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "runs": g.count()}).reset_index()
