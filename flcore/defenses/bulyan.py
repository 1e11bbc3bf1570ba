"""Bulyan (registered as "bulyan").

El Mhamdi, Guerraoui and Rouault, "The Hidden Vulnerability of Distributed Learning in
Byzantium", ICML 2018. Krum alone picks one update that may still be far off in a few
coordinates; Bulyan first selects a set of updates by repeated Krum, then takes a
coordinate-wise trimmed average of that set around its median. It tolerates ``f`` Byzantine
participants out of ``k >= 4f + 3``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flcore.core.errors import ConfigError
from flcore.core.params import Params, check_range
from flcore.defenses.aggregators import (
    AGGREGATORS,
    Aggregator,
    _as_updates,
    coordinate_median,
    krum_scores,
)

__all__ = ["Bulyan", "BulyanParams", "bulyan", "bulyan_select"]


def _need(f: int) -> int:
    return 4 * f + 3


def _check_bulyan_f(f: int, k: int) -> int:
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ValueError(f"f={f!r}: the number of Byzantine participants must be an int >= 0")
    if k < _need(f):
        lower = f"lower f to at most {(k - 3) // 4} or " if k >= 3 else ""
        raise ValueError(
            f"k={k}, f={f}: Bulyan needs k >= 4f + 3 = {_need(f)} updates per round; "
            f"{lower}aggregate at least {_need(f)} updates (a defense may have left some out)"
        )
    return f


def bulyan_select(updates: Tensor, f: int = 0) -> Tensor:
    """Indices (``LongTensor[theta]``, in the order picked) of the ``theta = k - 2f`` updates
    Bulyan's first stage selects.

    Repeatedly: compute :func:`krum_scores` on the remaining updates, move the lowest-scoring
    one (ties: lowest index) to the selection. While fewer than ``2f + 3`` updates remain (the
    last two picks, where Krum with ``f`` is undefined) Krum's ``f`` is lowered to the largest
    the remaining ``n`` allow, ``(n - 3) // 2``; with ``f = 0`` every update is selected.
    """
    x = _as_updates(updates)
    k = x.shape[0]
    _check_bulyan_f(f, k)
    remaining = list(range(k))
    chosen: list[int] = []
    for _ in range(k - 2 * f):
        n = len(remaining)
        if n >= 3:
            scores = krum_scores(x[remaining], min(f, (n - 3) // 2))
            pick = int(scores.argmin())
        else:  # only with f = 0, where the selection is every update anyway
            pick = 0
        chosen.append(remaining.pop(pick))
    return torch.as_tensor(chosen, dtype=torch.long, device=x.device)


def bulyan(updates: Tensor, f: int = 0) -> Tensor:
    """Bulyan: ``[k, P] -> [P]``, tolerating ``f`` Byzantine updates; requires ``k >= 4f + 3``.

    1. Select ``theta = k - 2f`` updates by repeated Krum (:func:`bulyan_select`).
    2. Per coordinate, keep the ``beta = theta - 2f`` selected values closest to the
       coordinate-wise median of the selection (:func:`coordinate_median`; ties: the earlier
       pick) and average them.

    With ``f = 0`` both stages keep everything and Bulyan is the plain mean.
    """
    x = _as_updates(updates)
    sel = x[bulyan_select(x, f)]  # [theta, P]
    beta = sel.shape[0] - 2 * f
    med = coordinate_median(sel)
    order = (sel - med).abs().argsort(dim=0, stable=True)[:beta]  # [beta, P]
    return sel.gather(0, order).mean(dim=0)


@dataclass(frozen=True)
class BulyanParams(Params):
    # Byzantine participants tolerated per round. The default 0 (where Bulyan is the mean)
    # fits the paper's k = 5; f = 1 needs k >= 7, f = 2 needs k >= 11.
    f: int = 0

    def check(self, context: dict) -> None:
        check_range("aggregator_params", "f", self.f, 0, fix="f counts participants")
        k = context.get("k")
        if k is not None and k < _need(self.f):
            lower = f"lower f to at most {(k - 3) // 4} or " if k >= 3 else ""
            raise ConfigError(
                f"aggregator_params: f={self.f} with k={k}: Bulyan needs k >= 4f + 3 = {_need(self.f)} "
                f"participants per round; {lower}raise k to at least {_need(self.f)}"
            )


@AGGREGATORS.register
class Bulyan(Aggregator):
    """Bulyan: repeated Krum selects k - 2f updates, then a coordinate-wise average of the
    k - 4f values closest to the median (`bulyan`). A defense's weights only select rows."""

    name, Params = "bulyan", BulyanParams

    def __call__(self, rows, *, weights=None, state=None, ids=None, out_rows=None):
        return bulyan(rows, **self.params.to_dict())

    def equals_mean(self, k: int) -> str | None:
        if self.params.f == 0:
            more = f"; k={k} allows no f >= 1" if k < _need(1) else f"; k={k} allows f up to {(k - 3) // 4}"
            return (f"Bulyan with f=0 keeps all k={k} updates in both stages: it is the plain mean "
                    f"(f >= 1 needs k >= 4f + 3 = 7{more})")  # fmt: skip
        return None
