"""Robust aggregation rules as small pure functions on stacked updates.

Every rule maps ``updates: Tensor[k, P]`` (one row per participant: its flattened update,
i.e. returned model minus global model, or the returned model itself) to one
``Tensor[P]`` in the same floating dtype (float32 in this project). No rule does I/O or
keeps state between calls; anything that must persist across rounds (FoolsGold's history)
is passed in by the caller.

The paper (Tolpegin et al. 2020) aggregates with the plain mean (:func:`fedavg`); the other
rules are the robust baselines a defense study compares against:

- :func:`coordinate_median`, :func:`trimmed_mean`: Yin et al. 2018;
- :func:`krum`, :func:`multi_krum`: Blanchard et al. 2017;
- :func:`foolsgold_weights` (the stateful :class:`FoolsGold` rule): Fung et al. 2020.

Each rule is registered in ``AGGREGATORS`` as an :class:`Aggregator` with a validated
``Params`` dataclass (the Config's ``aggregator_params``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from flcore.core.errors import ConfigError
from flcore.core.params import NoParams, Params, check_range, validate_params
from flcore.core.registry import Registry

__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "RoundInfo",
    "build",
    "coordinate_median",
    "fedavg",
    "foolsgold_weights",
    "krum",
    "krum_scores",
    "multi_krum",
    "multi_krum_select",
    "trimmed_mean",
]


def _as_updates(updates, name: str = "updates", ndim: int = 2) -> Tensor:
    """Return ``updates`` as a floating tensor with ``ndim`` dims and at least one row."""
    x = torch.as_tensor(updates)
    if not torch.is_floating_point(x):
        x = x.to(torch.float32)
    if x.dim() != ndim:
        shape = "[k, P]" if ndim == 2 else "[R, k, P]"
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}: expected {ndim} dims {shape} "
            "(one flattened update per participant); stack the updates with torch.stack"
        )
    if x.shape[-2] == 0:
        raise ValueError(f"{name} has no rows (k=0): at least one participant update is needed")
    return x


# ---------------------------------------------------------------------------------------
# Coordinate-wise rules, written over an arbitrary participant dim so that the batched
# form [R, k, P] reuses them unchanged.
# ---------------------------------------------------------------------------------------


def _weighted_mean(x: Tensor, weights: Tensor | None, dim: int) -> Tensor:
    if weights is None:
        return x.mean(dim=dim)
    w = weights.to(dtype=x.dtype, device=x.device)
    w = w.reshape(*w.shape, *([1] * (x.dim() - w.dim())))
    return (w * x).sum(dim=dim) / w.sum(dim=dim)


def _check_weights(weights, k: int, lead: tuple[int, ...] = ()) -> Tensor:
    w = torch.as_tensor(weights, dtype=torch.float64)
    if tuple(w.shape) != (*lead, k):
        raise ValueError(
            f"weights has shape {tuple(w.shape)}: expected {(*lead, k)}, one weight per "
            "participant (e.g. its number of training samples)"
        )
    if (w < 0).any() or not torch.isfinite(w).all():
        raise ValueError(f"weights={w.tolist()}: weights must be finite and non-negative")
    if (w.sum(dim=-1) <= 0).any():
        raise ValueError(f"weights={w.tolist()}: the weights of a federation sum to 0")
    return w


def fedavg(updates: Tensor, weights=None) -> Tensor:
    """(Weighted) mean of the participants' updates, the paper's aggregation rule.

    Args:
        updates: ``[k, P]`` float tensor, one row per participant.
        weights: optional ``[k]`` non-negative weights (e.g. sample counts); ``None`` gives
            the plain mean used by the paper.

    Returns:
        ``[P]`` tensor, ``sum_i w_i * updates_i / sum_i w_i``.
    """
    x = _as_updates(updates)
    w = None if weights is None else _check_weights(weights, x.shape[0])
    return _weighted_mean(x, w, dim=0)


def _median(x: Tensor, dim: int) -> Tensor:
    # torch.median returns the lower middle value for even k; the statistical median (mean
    # of the two middle values) is symmetric in the participants, so use it instead.
    k = x.shape[dim]
    s = x.sort(dim=dim).values
    lo = s.select(dim, (k - 1) // 2)
    hi = s.select(dim, k // 2)
    return (lo + hi) / 2


def coordinate_median(updates: Tensor) -> Tensor:
    """Coordinate-wise median of ``updates: [k, P]`` -> ``[P]``.

    For odd ``k`` each coordinate is the middle value; for even ``k`` it is the mean of
    the two middle values (``torch.median`` would return the lower one).
    """
    return _median(_as_updates(updates), dim=0)


def _n_trimmed(beta: float, k: int) -> int:
    if not (isinstance(beta, (int, float)) and 0 <= beta < 0.5):
        raise ValueError(
            f"beta={beta!r}: the trimmed fraction must be in [0, 0.5) so that at least one "
            f"value per coordinate remains (k={k}); use e.g. beta=0.1, or "
            "coordinate_median for the 50% limit"
        )
    b = math.floor(beta * k)
    if k - 2 * b < 1:  # unreachable for beta < 0.5, kept as a guard against float edge cases
        raise ValueError(
            f"beta={beta}, k={k}: trimming {b} values from each end leaves none; lower beta"
        )
    return b


def _trimmed_mean(x: Tensor, beta: float, dim: int) -> Tensor:
    k = x.shape[dim]
    b = _n_trimmed(beta, k)
    s = x.sort(dim=dim).values
    return s.narrow(dim, b, k - 2 * b).mean(dim=dim)


def trimmed_mean(updates: Tensor, beta: float = 0.1) -> Tensor:
    """Coordinate-wise trimmed mean of ``updates: [k, P]`` -> ``[P]``.

    Per coordinate, drop the ``floor(beta * k)`` largest and the ``floor(beta * k)``
    smallest values and average the rest. ``beta`` must be in ``[0, 0.5)``; ``beta=0`` is
    the plain mean. Note that with the paper's ``k = 5`` any ``beta < 0.2`` trims nothing.
    """
    x = _as_updates(updates)
    return _trimmed_mean(x, beta, dim=0)


# ---------------------------------------------------------------------------------------
# Krum and Multi-Krum (Blanchard et al., NeurIPS 2017)
# ---------------------------------------------------------------------------------------


def _check_f(f: int, k: int) -> int:
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ValueError(f"f={f!r}: the number of Byzantine participants must be an int >= 0")
    if k <= 2 * f + 2:
        raise ValueError(
            f"k={k}, f={f}: Krum needs k > 2f + 2 participants per round "
            f"(here 2f + 2 = {2 * f + 2}); lower f to at most {max((k - 3) // 2, 0)} "
            f"or select at least {2 * f + 3} participants"
        )
    return f


def _squared_distances(x: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances ``[k, k]`` in float64 (the Gram form loses
    precision in float32 when updates are large and close together)."""
    x = x.to(torch.float64)
    sq = (x * x).sum(dim=1)
    d = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    d.fill_diagonal_(0.0)
    return d.clamp_min_(0.0)


def krum_scores(updates: Tensor, f: int = 1) -> Tensor:
    """Krum score of every update: ``[k, P] -> [k]`` float64.

    ``score_i`` is the sum of squared Euclidean distances from update ``i`` to its
    ``k - f - 2`` nearest other updates. Requires ``k > 2f + 2``.
    """
    x = _as_updates(updates)
    k = x.shape[0]
    _check_f(f, k)
    d = _squared_distances(x)
    d.fill_diagonal_(math.inf)  # a row is not its own neighbour
    nearest = d.topk(k - f - 2, dim=1, largest=False).values
    return nearest.sum(dim=1)


def krum(updates: Tensor, f: int = 1) -> Tensor:
    """Krum: the single update with the smallest :func:`krum_scores` ``[k, P] -> [P]``.

    ``f`` is the number of Byzantine participants tolerated; requires ``k > 2f + 2``.
    Ties go to the lowest index.
    """
    x = _as_updates(updates)
    return x[int(krum_scores(x, f).argmin())].clone()


def multi_krum_select(updates: Tensor, f: int = 1, m: int | None = None) -> Tensor:
    """Indices (``LongTensor[m]``, ascending score) of the ``m`` updates Multi-Krum keeps.

    Scores are computed once on all ``k`` updates (Blanchard et al.'s Multi-Krum, not the
    iterative variant that recomputes scores after each removal). ``m`` defaults to
    ``k - f``; ``m = 1`` is Krum.
    """
    x = _as_updates(updates)
    k = x.shape[0]
    scores = krum_scores(x, f)
    if m is None:
        m = k - f
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= k:
        raise ValueError(f"m={m!r}: Multi-Krum keeps m updates with 1 <= m <= k={k}")
    return scores.argsort(stable=True)[:m]


def multi_krum(updates: Tensor, f: int = 1, m: int | None = None) -> Tensor:
    """Multi-Krum: mean of the ``m`` lowest-scoring updates ``[k, P] -> [P]``.

    ``m`` defaults to ``k - f``; see :func:`multi_krum_select` for the chosen indices.
    """
    x = _as_updates(updates)
    return x[multi_krum_select(x, f, m)].mean(dim=0)


# ---------------------------------------------------------------------------------------
# FoolsGold (Fung, Yoon and Beschastnikh, RAID 2020)
# ---------------------------------------------------------------------------------------


def foolsgold_weights(
    updates: Tensor,
    history: Tensor | None = None,
    kappa: float = 1.0,
    pardoning: bool = True,
    eps: float = 1e-12,
) -> Tensor:
    """FoolsGold learning rates ``alpha_i`` in ``[0, 1]``: ``[k, P] -> [k]`` float64.

    Sybils that push the same direction (e.g. label flippers with the same goal) have
    highly similar update histories; FoolsGold gives them low weight.

    1. ``v_i`` = ``updates_i`` if ``history`` is ``None`` (stateless: only this round is
       seen), else ``history_i + updates_i`` where ``history: [k, P]`` holds the sum of
       each of these participants' *past* updates (kept by the caller, rows aligned with
       ``updates``).
    2. ``cs_ij`` = cosine similarity of ``v_i`` and ``v_j`` (``cs_ii = 0``; a zero vector
       has similarity 0 to everything); ``maxcs_i = max_j cs_ij``.
    3. Pardoning: if ``maxcs_i < maxcs_j``, ``cs_ij *= maxcs_i / maxcs_j`` so an honest
       client that happens to resemble a sybil is not punished as hard as the sybil.
    4. ``alpha_i = clip(1 - max_j cs_ij, 0, 1)``, rescaled so the largest is 1 (then 0.99),
       then ``alpha_i = clip(kappa * (ln(alpha_i / (1 - alpha_i)) + 0.5), 0, 1)``.

    Identical updates get ``cs = 1`` and weight 0. If every weight would be 0 (all
    updates identical) the result is all zeros. The optional feature-importance weighting
    of the original paper is not implemented.
    """
    x = _as_updates(updates).to(torch.float64)
    k = x.shape[0]
    if history is not None:
        h = torch.as_tensor(history, dtype=torch.float64, device=x.device)
        if h.shape != x.shape:
            raise ValueError(
                f"history has shape {tuple(h.shape)}, updates {tuple(x.shape)}: history must "
                "hold one summed past update per row of updates, in the same order"
            )
        x = x + h
    if kappa <= 0:
        raise ValueError(f"kappa={kappa}: the logit confidence must be > 0 (default 1.0)")
    xn = x / x.norm(dim=1, keepdim=True).clamp_min(eps)
    cs = xn @ xn.T
    cs.fill_diagonal_(0.0)
    maxcs = cs.max(dim=1).values
    if pardoning:
        pardon = maxcs[:, None] < maxcs[None, :]
        ratio = maxcs[:, None] / torch.where(pardon, maxcs[None, :], torch.ones_like(cs))
        cs = torch.where(pardon, cs * ratio, cs)
    alpha = (1.0 - cs.max(dim=1).values).clamp(0.0, 1.0)
    if k == 1:
        return torch.ones(1, dtype=torch.float64, device=x.device)
    top = alpha.max()
    if top <= 0:
        return torch.zeros(k, dtype=torch.float64, device=x.device)
    alpha = (alpha / top).clamp(max=0.99)
    logit = torch.log(alpha) - torch.log1p(-alpha)  # -inf for alpha == 0, clipped to 0 below
    return (kappa * (logit + 0.5)).nan_to_num(neginf=0.0).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------
# The aggregator extension point
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrimmedMeanParams(Params):
    beta: float = 0.1  # fraction trimmed from each end of every coordinate

    def check(self, context: dict) -> None:
        check_range("aggregator_params", "beta", self.beta, 0.0, 0.5, hi_open=True,
                    fix="at least one value per coordinate must remain; use e.g. beta=0.2, or "
                        "aggregator='median' for the 50% limit")  # fmt: skip


@dataclass(frozen=True)
class KrumParams(Params):
    f: int = 1  # Byzantine participants tolerated per round

    def check(self, context: dict) -> None:
        check_range("aggregator_params", "f", self.f, 0, fix="f counts participants")
        k = context.get("k")
        if k is not None and k <= 2 * self.f + 2:
            raise ConfigError(
                f"aggregator_params: f={self.f} with k={k}: Krum needs k > 2f + 2 = {2 * self.f + 2} "
                f"participants per round; lower f to at most {max((k - 3) // 2, 0)} or raise k "
                f"to at least {2 * self.f + 3}")


@dataclass(frozen=True)
class MultiKrumParams(KrumParams):
    m: int | None = None  # updates kept (None: k - f)

    def check(self, context: dict) -> None:
        super().check(context)
        k = context.get("k")
        if self.m is not None and not (1 <= self.m <= (k or self.m)):
            raise ConfigError(f"aggregator_params: m={self.m} must be in [1, k={k}] (updates kept)")


@dataclass(frozen=True)
class FoolsGoldParams(Params):
    kappa: float = 1.0  # confidence of the logit
    pardoning: bool = True

    def check(self, context: dict) -> None:
        check_range("aggregator_params", "kappa", self.kappa, 0.0, lo_open=True,
                    fix="the logit confidence must be > 0 (default 1.0)")  # fmt: skip


@dataclass(frozen=True)
class RoundInfo:
    """The round a rule aggregates, for rules that set `uses_round = True` (passed as `info=`)."""

    seed: int  # the federation's Config.seed ...
    repeat: int  # ... and repeat: with `global_round`, the key of the rule's random stream
    rnd: int  # this run's round, 1-based
    global_round: int  # the federation's round: warm_start + rnd
    # the server's own update [P] this round, trained on its root set (only for a rule whose
    # `root_size()` is > 0, e.g. FLTrust): flattened like the rows
    server_update: Tensor | None = None


class Aggregator:
    """An aggregation rule: rows [n, P] of the kept participants' flattened updates -> [P].

    Stateless rules wrap a pure function of this module. A stateful rule (FoolsGold) sets
    `stateful = True` and gets `init(num_participants, out_dim)` once per federation and its
    state, the participants' ids and their output-layer rows every round. `None` from
    `__call__` leaves the global model unchanged this round. `weights` (a defense's, [n])
    weight the rows where the rule can use them.

    A rule that needs to know the round (e.g. to key its own random stream, as FLAME's noise)
    sets `uses_round = True` and gets `info=` (`RoundInfo`) every round. A rule whose
    `root_size()` is > 0 (FLTrust) makes the server hold that many class-balanced training
    images out of every participant's share; every round the engines train the server's own
    update on them with the participants' settings and hand it over as `info.server_update`.
    """

    name: str = ""
    Params: type[Params] = NoParams
    stateful: bool = False
    uses_round: bool = False

    def __init__(self, params: Params) -> None:
        self.params = params

    @classmethod
    def validate(cls, aggregator_params, context: dict) -> Params:
        return validate_params(cls.Params, aggregator_params, "aggregator_params", context)

    def init(self, num_participants: int, out_dim: int, like: Tensor):
        return None

    def root_size(self) -> int:
        """Training images the server keeps out of every share and trains on (0: none)."""
        return 0

    def equals_mean(self, k: int) -> str | None:
        """Why this rule, with its parameters, returns the plain mean of any `k` updates a
        round (a robust rule that is FedAvg in disguise), or None when it does not. Config
        warns about such a rule; the scoreboard says so beside its numbers."""
        return None

    def __call__(self, rows: Tensor, *, weights=None, state=None, ids=None, out_rows=None):
        raise NotImplementedError


AGGREGATORS: Registry[type[Aggregator]] = Registry("aggregator", "aggregator")


def _function_rule(name_: str, fn, params_cls=NoParams, weighted: bool = False,
                   equals_mean=None) -> type[Aggregator]:
    """Register the stateless rule `fn(rows, **params)` as an aggregator; `equals_mean(params, k)`,
    when given, is its `Aggregator.equals_mean`."""

    class _Rule(Aggregator):
        name, Params = name_, params_cls
        __doc__ = fn.__doc__

        def __call__(self, rows, *, weights=None, state=None, ids=None, out_rows=None):
            extra = {"weights": weights} if weighted and weights is not None else {}
            return fn(rows, **self.params.to_dict(), **extra)

        def equals_mean(self, k: int) -> str | None:
            return None if equals_mean is None else equals_mean(self.params, k)

    _Rule.__name__ = _Rule.__qualname__ = f"{name_}_rule"
    return AGGREGATORS.register(_Rule)


def _trimmed_equals_mean(params: TrimmedMeanParams, k: int) -> str | None:
    beta = params.beta
    if int(beta * k) == 0:
        return (f"trimmed mean with beta={beta:g} trims floor(beta * k) = 0 of the k={k} values at each "
                f"end: it is the plain mean; raise beta to at least {1 / k:g}")  # fmt: skip
    return None


_function_rule("fedavg", fedavg, weighted=True)
_function_rule("median", coordinate_median)
_function_rule("trimmed_mean", trimmed_mean, TrimmedMeanParams, equals_mean=_trimmed_equals_mean)
_function_rule("krum", krum, KrumParams)
_function_rule("multi_krum", multi_krum, MultiKrumParams)


@AGGREGATORS.register
class FoolsGold(Aggregator):
    """FoolsGold: weights from each participant's summed output-layer history
    (`foolsgold_weights`), then the weighted mean of the full updates (`fedavg`)."""

    name, Params, stateful = "foolsgold", FoolsGoldParams, True

    def init(self, num_participants: int, out_dim: int, like: Tensor) -> Tensor:
        return torch.zeros(num_participants, out_dim, dtype=like.dtype, device=like.device)

    def __call__(self, rows, *, weights=None, state=None, ids=None, out_rows=None):
        idx = torch.as_tensor(ids, device=out_rows.device)
        past = state[idx].clone()
        state[idx] += out_rows
        w = foolsgold_weights(out_rows, past, **self.params.to_dict()).to(rows.dtype)
        return fedavg(rows, w) if w.sum() > 0 else None


def build(name: str, aggregator_params, context: dict) -> Aggregator:
    cls = AGGREGATORS.get(name)
    return cls(cls.validate(aggregator_params, context))
