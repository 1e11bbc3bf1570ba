"""Many-to-one label flipping: several source classes are all relabelled as one target."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flcore.attacks.base import ATTACKS, Attack, PoisonContext, check_class
from flcore.core.errors import ConfigError
from flcore.core.params import Params


@dataclass(frozen=True)
class ManyToOneParams(Params):
    # the flipped classes; the default is Fashion-MNIST's tops (t-shirt, pullover, coat),
    # which the target shirt (Config.tgt = 6) is most confused with
    sources: tuple[int, ...] = (0, 2, 4)

    def check(self, context: dict) -> None:
        n = context.get("num_classes", 10)
        if not self.sources:
            raise ConfigError("attack_params: sources=[] must name at least one class, e.g. [0, 2, 4]")
        for c in self.sources:
            check_class("sources", c, n)
        if len(set(self.sources)) != len(self.sources):
            raise ConfigError(f"attack_params: sources={list(self.sources)} repeats a class")
        tgt = context.get("tgt")
        if tgt in self.sources:
            raise ConfigError(f"attack_params: sources={list(self.sources)} contains the target "
                              f"tgt={tgt}; drop it from sources or choose another tgt")  # fmt: skip
        src = context.get("src")
        if src not in self.sources:
            raise ConfigError(f"attack_params: sources={list(self.sources)} does not contain "
                              f"src={src}, the class whose recall the tables report; add it to "
                              f"sources or set src to one of them")  # fmt: skip


@ATTACKS.register
class ManyToOne(Attack):
    """Malicious participants relabel every sample of each class in `sources` as `tgt`."""

    name = "many_to_one"
    Params = ManyToOneParams

    def attacked_classes(self) -> tuple[int, ...]:
        return tuple(sorted(self.params.sources))

    def poison(self, labels: torch.Tensor, ctx: PoisonContext):
        srcs = torch.tensor(self.params.sources, dtype=labels.dtype, device=labels.device)
        flip = ctx.malicious[:, None] & torch.isin(labels, srcs)
        return torch.where(flip, ctx.tgt[:, None].expand_as(labels), labels), None
