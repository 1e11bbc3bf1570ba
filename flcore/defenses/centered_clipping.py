"""Centered clipping (registered as "centered_clipping"), a stateful rule.

Karimireddy, He and Jaggi, "Learning from History for Byzantine Robust Optimization", ICML
2021. Each update counts only up to distance ``tau`` from a center, the previous round's
aggregate ``v``; an update farther away is pulled back onto the ball of radius ``tau``
around ``v``. The rule keeps ``v`` from round to round (its state).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flcore.core.params import Params, check_range
from flcore.defenses.aggregators import AGGREGATORS, Aggregator, _as_updates, _check_weights

__all__ = ["CenteredClipping", "CenteredClippingParams", "centered_clip"]


def centered_clip(updates: Tensor, center: Tensor | None = None, tau: float = 10.0,
                  iters: int = 1, weights=None) -> Tensor:  # fmt: skip
    """Centered clipping of ``updates: [k, P]`` around ``center: [P]`` -> ``[P]``.

    ``v = center`` (zeros if ``None``), then ``iters`` times
    ``v <- v + mean_i((x_i - v) * min(1, tau / ||x_i - v||))`` (a row equal to ``v`` adds 0;
    with ``weights`` the mean is weighted). Returns ``v`` in the dtype of ``updates``.
    """
    x = _as_updates(updates)
    if not tau > 0:
        raise ValueError(f"tau={tau!r}: the clipping radius must be > 0 (default 10.0)")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters={iters!r}: the number of clipping iterations must be an int >= 1")
    k = x.shape[0]
    if center is None:
        v = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    else:
        v = torch.as_tensor(center).to(dtype=x.dtype, device=x.device)
        if v.shape != x.shape[1:]:
            raise ValueError(f"center has shape {tuple(v.shape)}: expected {tuple(x.shape[1:])}, "
                             "one value per coordinate of the updates")  # fmt: skip
    w = None
    if weights is not None:
        w = _check_weights(weights, k).to(dtype=x.dtype, device=x.device)
        w = w / w.sum()
    for _ in range(iters):
        d = x - v
        norm = d.norm(dim=1, keepdim=True)
        scale = torch.where(norm > tau, tau / norm.clamp_min(tau), torch.ones_like(norm))
        c = d * scale
        v = v + (c.mean(dim=0) if w is None else (w[:, None] * c).sum(dim=0))
    return v


@dataclass(frozen=True)
class CenteredClippingParams(Params):
    tau: float = 10.0  # clipping radius around the previous aggregate
    iters: int = 1  # clipping iterations per round (L)

    def check(self, context: dict) -> None:
        check_range("aggregator_params", "tau", self.tau, 0.0, lo_open=True,
                    fix="a positive radius, in the units of an update's norm, e.g. 10.0")  # fmt: skip
        check_range("aggregator_params", "iters", self.iters, 1,
                    fix="at least one clipping iteration per round (default 1)")  # fmt: skip


@AGGREGATORS.register
class CenteredClipping(Aggregator):
    """Centered clipping: the updates clipped to radius `tau` around the previous round's
    aggregate `v` (zeros in the first round), averaged, `iters` times (`centered_clip`). The
    result is this round's aggregate and the next round's center. A defense's weights weight
    the mean."""

    name, Params, stateful = "centered_clipping", CenteredClippingParams, True

    def init(self, num_participants: int, out_dim: int, like: Tensor) -> dict:
        # the center has the full update's size, known only at the first call
        return {"v": None}

    def __call__(self, rows, *, weights=None, state=None, ids=None, out_rows=None):
        if state is None:
            raise ValueError("centered_clipping is stateful: pass the state from init() "
                             "(the previous round's aggregate)")  # fmt: skip
        v = centered_clip(rows, state["v"], weights=weights, **self.params.to_dict())
        state["v"] = v.clone()
        return v
