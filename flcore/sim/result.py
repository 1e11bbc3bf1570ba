"""What a run produces (`Result`): tidy frames and raw arrays for every table and figure."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from flcore.config import Config
from flcore.sim.metrics import final_metrics

MODEL_PREFIX = "model."  # store array names of Result.model



@dataclass
class Result:
    """What a run produces; everything a table or figure needs.

    rounds:     DataFrame, one row per (repeat, round): accuracy (M_acc, %), n_malicious
                (malicious participants selected), lr, train_loss (mean over the selected
                participants' batches), diverged (bool), attack_success (%, an attack
                with a trigger: the share of the evaluated test images of every class but
                tgt that, stamped with it, are classified as tgt; NaN for an attack without
                a trigger); accuracy and attack_success are NaN in rounds that were not
                evaluated (`eval_every`) and after a divergence, accuracy also in rounds
                evaluated only on some classes (`eval_classes`).
    recall:     DataFrame, one row per (repeat, evaluated round, class): recall (%); NaN for
                a class that round did not evaluate (`eval_classes`).
    confusion:  int64 [repeats, n_eval, C, C] (true class, predicted class).
    eval_rounds: int64 [n_eval], the evaluated rounds (1-based).
    selected:   int64 [repeats, rounds, k], participant ids per round.
    malicious:  int64 [repeats, N·m%], malicious participant ids.
    updates:    float32 [repeats, rounds, k, C' , F] or None: each selected participant's
                update (θ_{r,i} − θ_{r−1}) of the output layer's weight; C' = 1 (source row
                only, `record_updates="source"`) or C (`"all"`).
    model:      {state-dict name: [repeats, ...] array} or None: each repeat's final global
                model (`keep_model=True`; float32, integer buffers as int64).
    """

    config: Config
    rounds: pd.DataFrame
    recall: pd.DataFrame
    confusion: np.ndarray
    eval_rounds: np.ndarray
    selected: np.ndarray
    malicious: np.ndarray
    updates: np.ndarray | None = None
    excluded: pd.DataFrame | None = None
    meta: dict = field(default_factory=dict)
    model: dict[str, np.ndarray] | None = None

    def final(self) -> pd.DataFrame:
        """One row per repeat: the last round's accuracy and source/target recall (%), NaN for
        a diverged repeat (`flcore.metrics.final_metrics` has every class)."""
        return final_metrics(self)[["repeat", "accuracy", "source_recall", "target_recall", "diverged"]]

    def summary(self) -> pd.DataFrame:
        """Final accuracy and source recall, mean and std over the non-diverged repeats."""
        f = self.final()
        ok = f[~f["diverged"]]
        return pd.DataFrame(
            {
                "mean": ok[["accuracy", "source_recall", "target_recall"]].mean(),
                "std": ok[["accuracy", "source_recall", "target_recall"]].std(ddof=1),
                "runs": len(ok),
            }
        )

    # ---- persistence (flcore.store) ---------------------------------------------------------
    def to_store(self) -> tuple[dict, dict, dict]:
        frames = {"rounds": self.rounds, "recall": self.recall, "final": self.final()}
        if self.excluded is not None:
            frames["excluded"] = self.excluded
        arrays = {
            "confusion": self.confusion,
            "eval_rounds": self.eval_rounds,
            "selected": self.selected,
            "malicious": self.malicious,
        }
        if self.updates is not None:
            arrays["updates"] = self.updates
        for name, a in (self.model or {}).items():
            arrays[MODEL_PREFIX + name] = a
        return frames, arrays, self.meta

    @classmethod
    def from_store(cls, config: Config, frames: dict, arrays: dict, meta: dict) -> Result:
        rounds = frames["rounds"]
        if "attack_success" not in rounds:  # stored before the column existed: no trigger attack
            rounds = rounds.assign(attack_success=np.nan)
        return cls(
            config=config,
            rounds=rounds,
            recall=frames["recall"],
            confusion=arrays["confusion"],
            eval_rounds=arrays["eval_rounds"],
            selected=arrays["selected"],
            malicious=arrays["malicious"],
            updates=arrays.get("updates"),
            excluded=frames.get("excluded"),
            meta=meta,
            model={k[len(MODEL_PREFIX):]: a for k, a in arrays.items() if k.startswith(MODEL_PREFIX)} or None,
        )

    def model_state(self, repeat: int = 0) -> dict[str, torch.Tensor]:
        """Repeat `repeat`'s final global model as a state dict (needs `keep_model=True`)."""
        if self.model is None:
            raise ValueError("this result kept no model: run it with keep_model=True")
        return {k: torch.from_numpy(np.array(a[repeat])) for k, a in self.model.items()}

