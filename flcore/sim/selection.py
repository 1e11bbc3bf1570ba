"""Who is malicious and who gets selected when (the paper's threat model and strategies).

Every draw comes from a stream of flcore.core.streams, so both engines, every process and
every machine draw the same malicious set and the same selections for the same config.
"""

from __future__ import annotations

import numpy as np

from flcore.config import Config
from flcore.core.streams import STREAM_MALICIOUS, STREAM_SELECTION, rng_for


def malicious_set(cfg: Config, repeat: int) -> np.ndarray:
    """Sorted ids of the N·m% malicious participants of one repeat (uniform, without repeats)."""
    rng = rng_for(cfg.seed, repeat, STREAM_MALICIOUS)
    return np.sort(rng.choice(cfg.num_participants, size=cfg.num_malicious, replace=False))


class Selection:
    """Participant selection: `select(round, rng) -> k distinct participant ids`.

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
