"""The defense extension point: the aggregator's filter in front of the aggregation rule.

A defense is a class registered in `DEFENSES` (its `name` is the Config's `defense` value)
with a `Params` dataclass (the Config's `defense_params`, validated before anything runs).
Both engines call it in exactly one place each (`flcore.sim.aggregation.Aggregation`):

    state = defense.start(federation)                 # once per federation
    weights = defense.filter(state, rnd, updates)     # every round -> float [k]

`updates` (`RoundUpdates`) holds the round's selected participants and their updates; the
returned weights say who is kept (> 0) and with which weight (1: as FedAvg would), 0 = left
out of this round's aggregate. A defense keeps whatever history it needs in its own state;
it never sees who is malicious (the engine records that beside its decisions, for scoring).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from flcore.core.params import Params, validate_params
from flcore.core.registry import Registry


@dataclass(frozen=True)
class Federation:
    """What a defense may know about the federation it guards."""

    num_participants: int
    k: int
    num_classes: int
    src: int  # the class under suspicion (Config.src; the paper's defense inspects it)
    seed: int
    repeat: int


@dataclass
class RoundUpdates:
    """One round of one federation, as the aggregator sees it."""

    ids: np.ndarray  # int64 [k]: the selected participants
    output: torch.Tensor  # [k, C, F]: their updates of the output layer's weight
    global_output: torch.Tensor  # [C, F]: the global output-layer weight they started from
    flat: torch.Tensor  # [k, P]: their updates of every floating-point parameter, flattened


class Defense:
    """Base class of a defense. Subclass, set `name` and `Params`, override start/filter."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[Params]]

    def __init__(self, params: Params) -> None:
        self.params = params

    @classmethod
    def validate(cls, defense_params, context: dict) -> Params:
        return validate_params(cls.Params, defense_params, "defense_params", context)

    def start(self, federation: Federation) -> Any:
        return None

    def filter(self, state: Any, rnd: int, updates: RoundUpdates) -> np.ndarray:
        raise NotImplementedError


DEFENSES: Registry[type[Defense]] = Registry("defense", "defense")


def build(name: str, defense_params, context: dict) -> Defense:
    cls = DEFENSES.get(name)
    return cls(cls.validate(defense_params, context))
