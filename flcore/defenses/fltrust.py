"""FLTrust (registered as "fltrust"): trust scores from a server update on a clean root set.

Cao, Fang, Liu and Gong, "FLTrust: Byzantine-robust Federated Learning via Trust
Bootstrapping", NDSS 2021. The server holds a small clean root set (by default 100
class-balanced training images, kept out of every participant's share). Every round it trains
its own update ``g_0`` from the current global model on the root set, with the participants'
local training settings, and then:

- trust score ``TS_i = ReLU(cos(x_i, g_0))``;
- each update is rescaled to the server update's norm: ``x_i * ||g_0|| / ||x_i||``;
- the aggregate is ``sum_i TS_i * rescaled_i / sum_i TS_i``; if every score is 0 the global
  model stays as it is this round.

The root set and the server's training are the engines' part (`Aggregator.root_size`, the
server's update arrives as `RoundInfo.server_update`); this module is the rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from flcore.core.errors import ConfigError
from flcore.core.params import Params, check_range
from flcore.defenses.aggregators import (
    AGGREGATORS,
    Aggregator,
    RoundInfo,
    _as_updates,
    _check_weights,
)

__all__ = ["FLTrust", "FLTrustParams", "fltrust", "trust_scores"]


def trust_scores(updates: Tensor, server_update: Tensor) -> Tensor:
    """``TS_i = ReLU(cos(x_i, g_0))``: ``[n, P], [P] -> [n]`` float64 (0 for a zero row or a
    zero server update)."""
    x = _as_updates(updates).to(torch.float64)
    s = torch.as_tensor(server_update).to(dtype=torch.float64, device=x.device)
    if s.shape != x.shape[1:]:
        raise ValueError(f"server_update has shape {tuple(s.shape)}: expected {tuple(x.shape[1:])}, "
                         "flattened like the participants' updates")  # fmt: skip
    norms, s_norm = x.norm(dim=1), s.norm()
    ok = (norms > 0) & (s_norm > 0)
    cos = torch.where(ok, (x @ s) / (norms * s_norm).clamp_min(1e-300), torch.zeros_like(norms))
    return cos.clamp_min(0.0)


def fltrust(updates: Tensor, server_update: Tensor, weights=None) -> Tensor | None:
    """FLTrust's aggregate of ``updates: [n, P]`` given the server's ``server_update: [P]``.

    ``sum_i TS_i * x_i * ||g_0|| / ||x_i|| / sum_i TS_i`` with ``TS_i`` from
    :func:`trust_scores` (times ``weights`` if given); ``None`` (the global model stays) when
    every score is 0. Computed in float64, returned in the dtype of ``updates``.
    """
    x = _as_updates(updates)
    ts = trust_scores(x, server_update)
    if weights is not None:
        ts = ts * _check_weights(weights, x.shape[0]).to(ts.device)
    if not ts.sum() > 0:
        return None
    xd = x.to(torch.float64)
    norms = xd.norm(dim=1)
    s_norm = torch.as_tensor(server_update).to(dtype=torch.float64, device=x.device).norm()
    scale = torch.where(norms > 0, s_norm / norms.clamp_min(1e-300), torch.zeros_like(norms))
    agg = ((ts * scale)[:, None] * xd).sum(dim=0) / ts.sum()
    return agg.to(x.dtype)


@dataclass(frozen=True)
class FLTrustParams(Params):
    root_size: int = 100  # the server's clean root set: class-balanced training images

    def check(self, context: dict) -> None:
        check_range("aggregator_params", "root_size", self.root_size, 1,
                    fix="the number of clean training images the server holds, e.g. 100")  # fmt: skip
        b = context.get("batch_size")
        if b is not None and self.root_size < b:
            raise ConfigError(
                f"aggregator_params: root_size={self.root_size} < batch_size={b}: the server "
                f"trains full batches of its root set, so it needs at least one; raise root_size "
                f"to at least {b} (FLTrust's default is 100)")
        n, c, n_part = context.get("n_train"), context.get("num_classes"), context.get("num_participants")
        if n is not None and c and n_part is not None and b is not None:
            per_class, have = math.ceil(self.root_size / c), n // c
            most = min(have * c, n - n_part * b)  # the largest root set this config allows
            fix = (f"lower root_size to at most {most} or raise n_train" if most >= b else
                   f"raise n_train to at least {self.root_size + n_part * b}")  # fmt: skip
            if per_class > have:
                raise ConfigError(
                    f"aggregator_params: root_size={self.root_size} needs {per_class} images of "
                    f"each of the {c} classes, but the training set (n_train={n}) has about {have} "
                    f"per class; {fix}")
            if n - self.root_size < n_part * b:
                raise ConfigError(
                    f"aggregator_params: root_size={self.root_size} leaves {n - self.root_size} of "
                    f"n_train={n} training images for {n_part} participants, who need at least "
                    f"one batch of {b} each; {fix}")
        state = context.get("client_state")
        if state is not None and state != "stateless":
            raise ConfigError(
                f"aggregator fltrust with client_state={state!r}: the server trains like a "
                f"stateless participant (a fresh optimizer each round, the learning rate by global "
                f"round), so the participants must too; use client_state='stateless'")


@AGGREGATORS.register
class FLTrust(Aggregator):
    """FLTrust: each update rescaled to the server's update norm, weighted by ReLU of its
    cosine with the server's update (`fltrust`). The engines train the server's update on its
    root set (`root_size` images kept out of every share). A defense's weights multiply the
    trust scores."""

    name, Params, uses_round = "fltrust", FLTrustParams, True

    def root_size(self) -> int:
        return self.params.root_size

    def __call__(self, rows, *, weights=None, state=None, ids=None, out_rows=None,
                 info: RoundInfo | None = None):  # fmt: skip
        if info is None or info.server_update is None:
            raise ValueError("fltrust needs the server's update on its root set: pass "
                             "info=RoundInfo(..., server_update=[P])")  # fmt: skip
        return fltrust(rows, info.server_update, weights)
