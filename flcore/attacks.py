"""The threat model (SPEC §2): who is malicious, what they do, and who gets selected when.

Every random choice of a run is drawn from a generator derived from (seed, repeat, purpose),
see `rng_for` / `torch_seed_for`, so both engines, every process and every machine draw the
same malicious set, the same selections and the same shuffles for the same configuration.
"""

from __future__ import annotations

import numpy as np
import torch

from flcore.config import Config

# Purposes of the independent random streams of one repeat.
STREAM_MALICIOUS, STREAM_PARTITION, STREAM_SELECTION, STREAM_INIT, STREAM_LOCAL = range(5)


def rng_for(seed: int, repeat: int, stream: int, *more: int) -> np.random.Generator:
    return np.random.default_rng([seed, repeat, stream, *more])


def torch_seed_for(seed: int, repeat: int, stream: int, *more: int) -> int:
    ss = np.random.SeedSequence([seed, repeat, stream, *more])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> 1)


def torch_generator(seed: int, repeat: int, stream: int, *more: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(torch_seed_for(seed, repeat, stream, *more))
    return g


def malicious_set(cfg: Config, repeat: int) -> np.ndarray:
    """Sorted ids of the N·m% malicious participants of one repeat (uniform, without repeats)."""
    rng = rng_for(cfg.seed, repeat, STREAM_MALICIOUS)
    return np.sort(rng.choice(cfg.num_participants, size=cfg.num_malicious, replace=False))


def flip_labels(labels: torch.Tensor, malicious: torch.Tensor, src, tgt) -> torch.Tensor:
    """Label flipping src -> tgt on malicious participants' copies.

    labels:    int64 [..., n] (a participant's or a stack of participants' labels);
    malicious: bool broadcastable to labels (e.g. [G, 1] for a stack of G participants);
    src, tgt:  class indices, or int64 tensors broadcastable to labels (one pair per model).
    Returns a new tensor; the input (the shared dataset's labels) is never modified.
    """
    tgt = torch.as_tensor(tgt, dtype=labels.dtype, device=labels.device)
    return torch.where(malicious & (labels == src), tgt, labels)


class Selection:
    """Participant selection (SPEC §2): `select(round, rng) -> k distinct participant ids`.

    strategy "random":       k uniformly at random every round [RandomSelection];
    strategy "early":        malicious ones only in rounds r < break_round [AfterBreakpoint];
    strategy "late":         malicious ones only in rounds r >= break_round [BeforeBreakpoint];
    strategy "availability": honest-only before the break; from it on, each of the k slots
                             is filled from the malicious pool with probability α, else from
                             the honest pool, without repeats, so a round never has more
                             than N·m% malicious participants [PoisonerProbability].
    """

    def __init__(self, strategy: str, num_participants: int, k: int, malicious: np.ndarray,
                 break_round: int = 75, alpha: float | None = None) -> None:  # fmt: skip
        self.strategy, self.n, self.k = strategy, num_participants, k
        self.break_round, self.alpha = break_round, alpha
        is_mal = np.zeros(num_participants, dtype=bool)
        is_mal[np.asarray(malicious, dtype=np.int64)] = True
        self.malicious_pool = np.flatnonzero(is_mal)
        self.honest_pool = np.flatnonzero(~is_mal)

    def __call__(self, rnd: int, rng: np.random.Generator) -> np.ndarray:
        allowed = self.malicious_allowed(rnd)
        if self.strategy == "availability" and allowed:
            return self._availability(rng)
        pool = np.arange(self.n) if allowed else self.honest_pool
        return np.sort(rng.choice(pool, size=self.k, replace=False))

    def malicious_allowed(self, rnd: int) -> bool:
        if self.strategy == "random":
            return True
        if self.strategy == "early":
            return rnd < self.break_round
        return rnd >= self.break_round  # late, availability

    def _availability(self, rng: np.random.Generator) -> np.ndarray:
        mal = list(rng.permutation(self.malicious_pool))
        hon = list(rng.permutation(self.honest_pool))
        chosen = []
        for _ in range(self.k):
            take_mal = rng.random() < self.alpha
            pool = mal if (take_mal and mal) or not hon else hon
            chosen.append(pool.pop())
        return np.sort(np.asarray(chosen, dtype=np.int64))


def selection_for(cfg: Config, malicious: np.ndarray) -> Selection:
    return Selection(cfg.strategy, cfg.num_participants, cfg.k, malicious, cfg.break_round, cfg.alpha)


def select_participants(cfg: Config, repeat: int, malicious: np.ndarray) -> np.ndarray:
    """All rounds' selections of one repeat: int64 [rounds, k] (row r-1 is round r)."""
    select = selection_for(cfg, malicious)
    # a warm-started run draws its own stream (not the one its clean warm-up drew)
    rng = rng_for(cfg.seed, repeat, STREAM_SELECTION, *([cfg.warm_start] if cfg.warm_start else []))
    return np.stack([select(r, rng) for r in range(1, cfg.rounds + 1)])
