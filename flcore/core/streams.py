"""Independent random streams, keyed by (seed, repeat, purpose, ...).

Every random choice of a run comes from a generator derived from its key, so both engines,
every process and every machine draw the same malicious set, the same selections, the same
shuffles and the same attack draws for the same configuration, whatever else runs beside it.
A new attack, defense or aggregation rule that needs randomness takes a stream of its own
(`STREAM_ATTACK`, `STREAM_DEFENSE`, `STREAM_AGGREGATOR`) keyed further by round (and
participant), so it never shifts another's draws.
"""

from __future__ import annotations

import numpy as np
import torch

# Purposes of the independent random streams of one repeat (their values are part of the
# numbers: changing one changes every run, see flcore.config.NUMERICS_VERSION).
STREAM_MALICIOUS, STREAM_PARTITION, STREAM_SELECTION, STREAM_INIT, STREAM_LOCAL = range(5)
STREAM_ATTACK, STREAM_DEFENSE = 5, 6
# An aggregation rule's own draws (FLAME's noise), keyed further by the federation's round; the
# server's root set (FLTrust) and the server's local schedule on it, keyed further by round.
STREAM_AGGREGATOR, STREAM_ROOT, STREAM_SERVER = 7, 8, 9


def rng_for(seed: int, repeat: int, stream: int, *more: int) -> np.random.Generator:
    """A NumPy generator for the stream (seed, repeat, stream, *more)."""
    return np.random.default_rng([seed, repeat, stream, *more])


def torch_seed_for(seed: int, repeat: int, stream: int, *more: int) -> int:
    """A 63-bit torch seed for the stream (seed, repeat, stream, *more)."""
    ss = np.random.SeedSequence([seed, repeat, stream, *more])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> 1)


def torch_generator(seed: int, repeat: int, stream: int, *more: int) -> torch.Generator:
    """A CPU torch generator for the stream (seed, repeat, stream, *more)."""
    g = torch.Generator()
    g.manual_seed(torch_seed_for(seed, repeat, stream, *more))
    return g
