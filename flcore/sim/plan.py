"""A run's plan: everything random about it, drawn up front and identical for both engines.

`make_plan(cfg, data, init_from)` draws each repeat's shares, malicious set, selections and
initial model (and the server's root set, for a rule that has one, e.g. FLTrust);
`local_schedule` draws one participant's sample order and augmentation in one round
(`server_schedule`: the server's on its root set); `AttackDraws` draws the attack's own
numbers for them. Every draw comes from a stream
keyed by (seed, repeat, purpose, ...) (flcore.core.streams), never from global state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from flcore.config import Config
from flcore.core.streams import (
    STREAM_ATTACK,
    STREAM_INIT,
    STREAM_LOCAL,
    STREAM_PARTITION,
    STREAM_ROOT,
    STREAM_SERVER,
    rng_for,
    torch_generator,
    torch_seed_for,
)
from flcore.data import Dataset, partition_dirichlet, partition_iid
from flcore.sim.models import init_state
from flcore.sim.selection import malicious_set, select_participants


@dataclass
class Plan:
    """Everything random about a run, drawn up front (identical for both engines)."""

    data: Dataset
    shares: list[list[torch.Tensor]]  # [repeat][participant] -> int64 indices into x_train
    malicious: np.ndarray  # [repeats, n_mal]
    is_malicious: np.ndarray  # bool [repeats, N]
    selected: np.ndarray  # [repeats, rounds, k]
    init: list[dict[str, torch.Tensor]]  # per repeat initial global state
    # per repeat the server's root set (int64 indices into x_train, kept out of every share),
    # for an aggregation rule with `root_size() > 0` (FLTrust); None otherwise
    roots: list[torch.Tensor] | None = None


def make_plan(cfg: Config, data: Dataset, init_from: dict[str, torch.Tensor] | None = None) -> Plan:
    """init_from: every repeat's initial global model (a warm start), else its own initialisation."""
    shares, mal, sel, init, roots = [], [], [], [], []
    is_mal = np.zeros((cfg.repeats, cfg.num_participants), dtype=bool)
    n = len(data.y_train)
    root_size = cfg.build_aggregator().root_size()
    for j in range(cfg.repeats):
        gen = torch_generator(cfg.seed, j, STREAM_PARTITION)
        if root_size:  # the participants share what the server's root set leaves
            root = root_set(data.y_train, root_size, cfg.num_classes, cfg.seed, j)
            roots.append(root)
            rest = torch.from_numpy(np.setdiff1d(np.arange(n), root.numpy()))
            if cfg.partition == "iid":
                parts = [rest[p] for p in partition_iid(len(rest), cfg.num_participants, gen)]
            else:
                parts = [rest[p] for p in partition_dirichlet(
                    data.y_train[rest], cfg.num_participants, cfg.beta, gen, min_size=cfg.batch_size)]  # fmt: skip
        elif cfg.partition == "iid":
            parts = list(partition_iid(n, cfg.num_participants, gen))
        else:
            parts = partition_dirichlet(data.y_train, cfg.num_participants, cfg.beta, gen,
                                        min_size=cfg.batch_size)  # fmt: skip
        shares.append(parts)
        mal_j = malicious_set(cfg, j)
        mal.append(mal_j)
        is_mal[j, mal_j] = True
        sel.append(select_participants(cfg, j, mal_j))
        init.append(init_state(cfg.dataset, torch_seed_for(cfg.seed, j, STREAM_INIT))
                    if init_from is None else init_from)  # fmt: skip
    return Plan(data, shares, np.stack(mal) if mal else np.zeros((0, 0), np.int64), is_mal,
                np.stack(sel), init, roots if root_size else None)  # fmt: skip


def root_set(labels: torch.Tensor, size: int, num_classes: int, seed: int, repeat: int) -> torch.Tensor:
    """The server's root set of one repeat: `size` class-balanced training images (size //
    num_classes of each class, one more of each of the first size % num_classes classes),
    drawn from the stream (seed, repeat, STREAM_ROOT); sorted int64 indices into `labels`."""
    rng = rng_for(seed, repeat, STREAM_ROOT)
    y = labels.cpu().numpy()
    picked = []
    for c in range(num_classes):
        want = size // num_classes + (1 if c < size % num_classes else 0)
        have = np.flatnonzero(y == c)
        if want > len(have):
            raise ValueError(f"root set of {size} images: class {c} has only {len(have)} training "
                             f"images, {want} are needed; lower root_size or raise n_train")  # fmt: skip
        picked.append(rng.choice(have, size=want, replace=False))
    return torch.from_numpy(np.sort(np.concatenate(picked)).astype(np.int64))


def local_schedule(cfg: Config, share: torch.Tensor, repeat: int, rnd: int, participant: int):
    """One participant's local epochs in round `rnd`: sample order and augmentation draws.

    Returns (order int64 [steps*B], flips bool [steps*B], offsets int64 [steps*B, 2]) where
    steps = local_epochs * floor(n_i / B).
    """
    g = torch_generator(cfg.seed, repeat, STREAM_LOCAL, cfg.warm_start + rnd, participant)
    return _schedule(cfg, share, g)


def server_schedule(cfg: Config, root: torch.Tensor, repeat: int, rnd: int):
    """The server's local epochs on its root set in round `rnd` (FLTrust), drawn as a
    participant's (`local_schedule`) from the stream (seed, repeat, STREAM_SERVER, global round)."""
    return _schedule(cfg, root, torch_generator(cfg.seed, repeat, STREAM_SERVER, cfg.warm_start + rnd))


def _schedule(cfg: Config, share: torch.Tensor, g: torch.Generator):
    B = cfg.batch_size
    per_epoch = (len(share) // B) * B
    order = torch.cat([share[torch.randperm(len(share), generator=g)[:per_epoch]]
                       for _ in range(cfg.local_epochs)])  # fmt: skip
    n = len(order)
    flips = torch.rand(n, generator=g) < 0.5
    offsets = torch.randint(0, 9, (n, 2), generator=g)
    return order, flips, offsets



class AttackDraws:
    """An attack's `ctx.uniform()` for G models trained at once: each call returns the next
    float64 draws [G, n] in [0, 1); row g comes from the stream (seed, repeat, STREAM_ATTACK,
    global round, participant) of model g, drawn for its own schedule length and padded as
    its schedule is (`pad_like_schedule`), so any stacking draws the same numbers."""

    def __init__(self, models: list[tuple[Config, int, int]], rnd: int, lengths: list[int], n: int,
                 device) -> None:  # fmt: skip
        """models: (config, repeat, participant) per row; lengths: each row's schedule length."""
        self.models, self.rnd, self.lengths, self.n, self.device = models, rnd, lengths, n, device
        self._gens = None

    def __call__(self) -> torch.Tensor:
        if self._gens is None:
            self._gens = [torch_generator(c.seed, j, STREAM_ATTACK, c.warm_start + self.rnd, p)
                          for c, j, p in self.models]  # fmt: skip
        rows = [pad_like_schedule(torch.rand(n_g, generator=g, dtype=torch.float64), self.n)
                for g, n_g in zip(self._gens, self.lengths)]  # fmt: skip
        return torch.stack(rows).to(self.device)


def pad_like_schedule(t: torch.Tensor, n_max: int) -> torch.Tensor:
    """A per-sample tensor [n, ...] of one schedule padded to n_max rows by repeating it, as
    the fast engine pads unequal schedules (entry i is entry i mod n)."""
    return t.repeat((n_max + len(t) - 1) // len(t), *([1] * (t.dim() - 1)))[:n_max]


def training_calls(selected: np.ndarray) -> np.ndarray:
    """For one repeat's selections [rounds, k]: how many times each selected participant had
    trained before that round [rounds, k] (its step scheduler's position, client_state
    "persistent")."""
    counts: dict[int, int] = {}
    out = np.zeros(selected.shape, dtype=np.int64)
    for r, row in enumerate(selected):
        for s, p in enumerate(row):
            out[r, s] = counts.get(int(p), 0)
            counts[int(p)] = out[r, s] + 1
    return out


def learning_rates(cfg: Config, selected: np.ndarray) -> np.ndarray:
    """The learning rate of each selected participant [rounds, k] in one repeat."""
    if cfg.client_state == "persistent":
        return np.vectorize(cfg.lr_after_calls, otypes=[float])(training_calls(selected))
    return np.repeat([[cfg.lr_at(r)] for r in range(1, len(selected) + 1)], selected.shape[1], 1)
