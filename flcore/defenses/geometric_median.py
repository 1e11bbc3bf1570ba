"""Geometric median of the updates, the robust aggregate of RFA (registered as "geometric_median").

Pillutla, Kakade and Harchaoui, "Robust Aggregation for Federated Learning", IEEE Trans.
Signal Processing 2022: the aggregate is the (weighted) geometric median
``argmin_z sum_i w_i ||z - x_i||`` of the participants' flattened updates ``x_i``, computed
with the smoothed Weiszfeld algorithm. A minority of arbitrary updates, however large, moves it
only a bounded distance (breakdown point 1/2), while the mean follows a single outlier anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flcore.core.params import Params, check_range
from flcore.defenses.aggregators import AGGREGATORS, Aggregator, _as_updates, _check_weights

__all__ = ["GeometricMedian", "GeometricMedianParams", "geometric_median"]


def geometric_median(updates: Tensor, weights=None, max_iter: int = 100, tol: float = 1e-6,
                     eps: float = 1e-8) -> Tensor:  # fmt: skip
    """(Weighted) geometric median of ``updates: [k, P]`` -> ``[P]`` by smoothed Weiszfeld.

    Starting from the (weighted) mean ``z_0``, each iteration sets
    ``beta_i = w_i / max(eps, ||z_t - x_i||)`` and ``z_{t+1} = sum_i beta_i x_i / sum_i beta_i``.
    ``eps`` (smoothing, default 1e-8) keeps the step finite when the estimate lands on a row.

    Stopping rule: after the first iteration whose step is small relative to the estimate,
    ``||z_{t+1} - z_t|| <= tol * ||z_t||`` (relative tolerance ``tol``, default 1e-6), or
    after ``max_iter`` iterations (default 100), whichever comes first.

    Args:
        updates: ``[k, P]`` float tensor, one row per participant.
        weights: optional ``[k]`` non-negative weights (a defense's); ``None``: all equal.
        max_iter: at most this many Weiszfeld iterations, ``>= 1``.
        tol: the relative tolerance of the stopping rule, ``> 0``.
        eps: the smoothing distance, ``> 0``.

    Returns:
        ``[P]`` tensor in the dtype of ``updates`` (the iterations run in float64).
    """
    x = _as_updates(updates)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(
            f"max_iter={max_iter!r}: the number of Weiszfeld iterations must be an int >= 1"
        )
    if not tol > 0:
        raise ValueError(f"tol={tol!r}: the relative tolerance must be > 0 (default 1e-6)")
    if not eps > 0:
        raise ValueError(f"eps={eps!r}: the smoothing distance must be > 0 (default 1e-8)")
    k = x.shape[0]
    xd = x.to(torch.float64)
    if weights is None:
        w = torch.ones(k, dtype=torch.float64, device=x.device)
    else:
        w = _check_weights(weights, k).to(x.device)
    w = w / w.sum()
    z = (w[:, None] * xd).sum(dim=0)
    for _ in range(max_iter):
        beta = w / (xd - z).norm(dim=1).clamp_min(eps)
        z_new = (beta[:, None] * xd).sum(dim=0) / beta.sum()
        step = (z_new - z).norm()
        done = bool(step <= tol * z.norm())
        z = z_new
        if done:
            break
    return z.to(x.dtype)


@dataclass(frozen=True)
class GeometricMedianParams(Params):
    max_iter: int = 100  # Weiszfeld iterations at most
    tol: float = 1e-6  # stop when ||z_{t+1} - z_t|| <= tol * ||z_t||
    eps: float = 1e-8  # smoothing: distances below eps count as eps

    def check(self, context: dict) -> None:
        check_range("aggregator_params", "max_iter", self.max_iter, 1,
                    fix="at least one Weiszfeld iteration (default 100)")  # fmt: skip
        check_range("aggregator_params", "tol", self.tol, 0.0, lo_open=True,
                    fix="a positive relative tolerance, e.g. 1e-6")  # fmt: skip
        check_range("aggregator_params", "eps", self.eps, 0.0, lo_open=True,
                    fix="a positive smoothing distance, e.g. 1e-8")  # fmt: skip


@AGGREGATORS.register
class GeometricMedian(Aggregator):
    """RFA: the (weighted) geometric median of the updates (`geometric_median`); a defense's
    weights weight the rows."""

    name, Params = "geometric_median", GeometricMedianParams

    def __call__(self, rows, *, weights=None, state=None, ids=None, out_rows=None):
        return geometric_median(rows, weights, **self.params.to_dict())
