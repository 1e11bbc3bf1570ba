"""Untargeted random label flipping: a malicious participant's labels become other classes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flcore.attacks.base import ATTACKS, Attack, PoisonContext
from flcore.core.params import Params, check_range


@dataclass(frozen=True)
class RandomFlipParams(Params):
    fraction: float = 1.0  # share of a malicious participant's labels that are replaced

    def check(self, context: dict) -> None:
        check_range("attack_params", "fraction", self.fraction, 0.0, 1.0, lo_open=True,
                    fix="give the share of labels replaced, e.g. 0.5 (1.0: all)")  # fmt: skip


@ATTACKS.register
class RandomFlip(Attack):
    """Each label of a malicious participant is, with probability `fraction`, replaced by a
    class drawn uniformly from the other C - 1 classes (every class is attacked)."""

    name = "random_flip"
    Params = RandomFlipParams

    def attacked_classes(self) -> tuple[int, ...]:
        return tuple(range(self.num_classes))

    def poison(self, labels: torch.Tensor, ctx: PoisonContext):
        u = ctx.uniform()  # [G, n]: which labels are replaced
        v = ctx.uniform()  # [G, n]: by which other class
        C = ctx.num_classes
        shift = 1 + torch.clamp((v * (C - 1)).long(), max=C - 2)  # uniform in 1..C-1
        other = (labels + shift) % C
        replace = ctx.malicious[:, None] & (u < self.params.fraction)
        return torch.where(replace, other, labels), None
