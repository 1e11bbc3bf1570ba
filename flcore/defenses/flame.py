"""FLAME (registered as "flame"): cluster, clip to the median norm, average, add noise.

Nguyen et al., "FLAME: Taming Backdoors in Federated Learning", USENIX Security 2022. Every
round:

1. HDBSCAN (scikit-learn) on the pairwise cosine distances ``1 - cos(x_i, x_j)`` of the
   flattened updates, with ``min_cluster_size = n // 2 + 1``: the cluster it finds is the
   majority, and the points it labels noise are rejected;
2. the clipping bound ``S_t`` is the median L2 norm of all the round's updates; each admitted
   update is scaled down to norm at most ``S_t``;
3. the aggregate is the mean of the clipped admitted updates;
4. Gaussian noise ``N(0, (noise * S_t)^2)`` is added to every coordinate of the aggregate
   (the paper's lambda; 0.001 for image tasks, 0 switches it off). The draws come from the
   stream (seed, repeat, STREAM_AGGREGATOR, global round) of the federation, so a run is
   reproducible and both engines draw the same noise.

HDBSCAN settings: ``min_samples=1`` (mutual reachability = the cosine distance itself) and
``allow_single_cluster=True``, as in the reimplementations of FLAME. With
``min_cluster_size > n / 2`` there is room for one cluster only, and without
``allow_single_cluster`` HDBSCAN would label every update noise. In that single-cluster mode
HDBSCAN admits the densest group of at least ``n // 2 + 1`` updates (the last ones left
together as the distance threshold shrinks), so an honest update far from the others can be
rejected too. scikit-learn is imported only when a round is aggregated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from flcore.core.errors import ConfigError
from flcore.core.params import Params, check_range
from flcore.core.streams import STREAM_AGGREGATOR, torch_generator
from flcore.defenses.aggregators import (
    AGGREGATORS,
    Aggregator,
    RoundInfo,
    _as_updates,
    _check_weights,
    _median,
)

__all__ = ["Flame", "FlameParams", "cosine_distances", "flame", "flame_admitted"]

MIN_K = 3  # below this the majority cluster is every update: clustering cannot reject any


def cosine_distances(updates: Tensor) -> np.ndarray:
    """Pairwise cosine distances ``1 - cos(x_i, x_j)`` of ``updates: [n, P]`` -> float64
    ``[n, n]``, symmetric, zero diagonal, in [0, 2]. A zero row has cosine 0 to every other."""
    x = _as_updates(updates).to(torch.float64)
    xn = x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)
    d = (1.0 - xn @ xn.T).clamp(0.0, 2.0)
    d = (d + d.T) / 2  # exactly symmetric whatever the matmul's rounding
    d.fill_diagonal_(0.0)
    return d.cpu().numpy()


def flame_admitted(updates: Tensor) -> np.ndarray:
    """Which updates FLAME admits: bool ``[n]``, HDBSCAN's majority cluster on their cosine
    distances (``min_cluster_size = n // 2 + 1``, ``min_samples=1``,
    ``allow_single_cluster=True``); noise points are rejected. A single update is admitted."""
    d = cosine_distances(updates)
    n = len(d)
    if n == 1:
        return np.ones(1, dtype=bool)
    from sklearn.cluster import HDBSCAN  # lazily: `import flcore` must not load scikit-learn

    labels = HDBSCAN(min_cluster_size=n // 2 + 1, min_samples=1, metric="precomputed",
                     allow_single_cluster=True, copy=True).fit(d).labels_  # fmt: skip
    if labels.max() < 0:
        return np.zeros(n, dtype=bool)
    # min_cluster_size > n / 2 leaves room for one cluster; take the largest to be explicit
    majority = np.bincount(labels[labels >= 0]).argmax()
    return labels == majority


def flame(updates: Tensor, weights=None, noise: float = 0.0,
          generator: torch.Generator | None = None) -> Tensor | None:  # fmt: skip
    """FLAME's aggregate of ``updates: [n, P]`` -> ``[P]``, or ``None`` if nobody is admitted.

    ``S`` = the median L2 norm of all ``n`` rows (the mean of the two middle norms for even
    ``n``); the admitted rows (:func:`flame_admitted`) are scaled by ``min(1, S / ||x_i||)``
    and averaged (weighted by ``weights`` if given); then ``noise * S * z`` is added, ``z`` a
    standard normal draw per coordinate from ``generator`` (float64, on the CPU). ``noise = 0``
    adds nothing and draws nothing. Computed in float64, returned in the dtype of ``updates``.
    """
    x = _as_updates(updates)
    if not noise >= 0:
        raise ValueError(f"noise={noise!r}: the noise level lambda must be >= 0 (0: no noise)")
    if noise > 0 and generator is None:
        raise ValueError(f"noise={noise}: FLAME's noise needs a generator (its random stream)")
    xd = x.to(torch.float64)
    norms = xd.norm(dim=1)
    bound = _median(norms, dim=0)  # S_t, over every row of the round
    admitted = torch.as_tensor(flame_admitted(xd), device=x.device)
    if not admitted.any():
        return None
    kept, kn = xd[admitted], norms[admitted]
    scale = torch.where(kn > bound, bound / kn.clamp_min(1e-300), torch.ones_like(kn))
    clipped = kept * scale[:, None]
    if weights is None:
        agg = clipped.mean(dim=0)
    else:
        w = _check_weights(weights, x.shape[0]).to(x.device)[admitted]
        if not w.sum() > 0:
            return None
        agg = (w[:, None] * clipped).sum(dim=0) / w.sum()
    if noise > 0:
        z = torch.randn(x.shape[1], generator=generator, dtype=torch.float64)
        agg = agg + (noise * bound) * z.to(x.device)
    return agg.to(x.dtype)


@dataclass(frozen=True)
class FlameParams(Params):
    # lambda: the noise's standard deviation per coordinate, in units of the clipping bound
    # S_t (FLAME's value for image classification; 0 switches the noise off)
    noise: float = 0.001

    def check(self, context: dict) -> None:
        check_range("aggregator_params", "noise", self.noise, 0.0,
                    fix="the noise level lambda, in units of the clipping bound: FLAME uses 0.001 "
                        "for images, 0 switches the noise off")  # fmt: skip
        k = context.get("k")
        if k is not None and k < MIN_K:
            raise ConfigError(
                f"aggregator_params: flame with k={k}: FLAME's majority cluster (min_cluster_size "
                f"= k // 2 + 1 = {k // 2 + 1}) holds every update when k < {MIN_K}, so the "
                f"clustering could never reject one; raise k to at least {MIN_K}"
            )


@AGGREGATORS.register
class Flame(Aggregator):
    """FLAME: HDBSCAN's majority cluster of the cosine distances is admitted, clipped to the
    round's median norm, averaged, plus Gaussian noise from the federation's stream (`flame`).
    A defense's weights weight the mean; the median norm is over the rows the defense kept."""

    name, Params, uses_round = "flame", FlameParams, True

    def __call__(self, rows, *, weights=None, state=None, ids=None, out_rows=None,
                 info: RoundInfo | None = None):  # fmt: skip
        gen = None
        if self.params.noise > 0:
            if info is None:
                raise ValueError("flame adds noise from the federation's stream: pass info= "
                                 "(RoundInfo: seed, repeat, round), or noise=0")  # fmt: skip
            gen = torch_generator(info.seed, info.repeat, STREAM_AGGREGATOR, info.global_round)
        return flame(rows, weights, self.params.noise, gen)
