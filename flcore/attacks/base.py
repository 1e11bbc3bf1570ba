"""The attack extension point: what a malicious participant does to its training data.

An attack is a class registered in `ATTACKS` (its `name` is the Config's `attack` value) with
a `Params` dataclass (the Config's `attack_params`, validated before anything runs). Both
engines call it in exactly one place each, once per round, on the local schedules of every
model they train at once:

    labels, stamp = attack.poison(labels, ctx)      # labels: int64 [G, n]
    x[rows] = attack.stamp(x[rows])                 # only where the stamp mask is set (a trigger)

`labels[g]` are the true labels of model g's local schedule this round (its samples in
training order, `n` = local epochs x full batches x batch size); `ctx.malicious[g]` says
whether model g belongs to a malicious participant. The attack returns the labels to train on
(it must leave honest rows unchanged) and optionally a bool mask [G, n] of samples whose
images `stamp` modifies (pixel values in [0, 1], before normalisation and augmentation).

Randomness comes only from `ctx.uniform()`: float64 draws [G, n] in [0, 1), row g from the
stream (seed, repeat, STREAM_ATTACK, global round, participant) of model g, so the fast
engine (G = all selected participants of all stacked federations) and the reference engine
(G = 1) draw the same numbers. Successive calls give successive draws.

Two optional hooks:

- a trigger (`stamp` overridden, `has_trigger`): the engines also evaluate the global model on
  the test images stamped with it and report the attack success rate (`Result.rounds`'
  `attack_success`);
- an honest twin (`needs_honest_twin = True`): each malicious model whose labels (or images)
  `poison` changed this round is trained a second time, from the same start on the same
  schedule, with its true labels; the engines then send what `craft(honest, poisoned, ctx)`
  returns (flattened updates [G', P]) instead of the poisoned update.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from flcore.core.errors import ConfigError
from flcore.core.params import NoParams, Params, validate_params
from flcore.core.registry import Registry


@dataclass
class PoisonContext:
    """What an attack may know about the models whose labels it poisons (all rows [G])."""

    malicious: torch.Tensor  # bool [G]: model g is a malicious participant's
    src: torch.Tensor  # int64 [G]: the config's source class (Config.src) per model
    tgt: torch.Tensor  # int64 [G]: the config's target class (Config.tgt) per model
    num_classes: int
    uniform: Callable[[], torch.Tensor] = field(repr=False, default=None)  # -> float64 [G, n]
    rnd: int = 0  # the round of this run (1-based) whose schedules these are


@dataclass
class CraftContext:
    """What `Attack.craft` may know about the G' malicious models whose updates it crafts."""

    src: torch.Tensor  # int64 [G']: the config's source class per model
    tgt: torch.Tensor  # int64 [G']: the config's target class per model
    num_classes: int
    rnd: int  # the round of this run (1-based)


class Attack:
    """Base class of an attack. Subclass, set `name` (and `Params`), override `poison`."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = NoParams
    # True: the engines train an honest twin of each poisoning malicious model and call `craft`
    needs_honest_twin: ClassVar[bool] = False

    def __init__(self, params: Params, *, src: int, tgt: int, num_classes: int) -> None:
        self.params, self.src, self.tgt, self.num_classes = params, src, tgt, num_classes

    @classmethod
    def validate(cls, attack_params, context: dict) -> Params:
        """The checked `Params` of `attack_params` (context: the Config's values)."""
        return validate_params(cls.Params, attack_params, "attack_params", context)

    def attacked_classes(self) -> tuple[int, ...]:
        """The classes whose training labels this attack changes (for metrics and checks)."""
        return (self.src,)

    def poison(self, labels: torch.Tensor, ctx: PoisonContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        """x: float images [M, C, H, W] in [0, 1] of the samples selected by `poison`'s mask."""
        raise NotImplementedError(f"attack {self.name!r} returned a stamp mask but has no stamp()")

    @property
    def has_trigger(self) -> bool:
        """Whether this attack stamps a trigger (it overrides `stamp`): the engines then also
        measure the attack success rate on stamped test images."""
        return type(self).stamp is not Attack.stamp

    def craft(self, honest: torch.Tensor, poisoned: torch.Tensor, ctx: CraftContext) -> torch.Tensor:
        """Only with `needs_honest_twin`: the update to send, float [G', P], from each poisoning
        malicious model's honest update (trained on its true labels) and poisoned update
        (trained on `poison`'s labels), both [G', P]: every floating-point parameter and
        buffer, returned minus global, flattened in state-dict order."""
        raise NotImplementedError(f"attack {self.name!r} needs an honest twin but has no craft()")


ATTACKS: Registry[type[Attack]] = Registry("attack", "attack")


def build(name: str, attack_params, *, src: int, tgt: int, num_classes: int, context: dict) -> Attack:
    cls = ATTACKS.get(name)
    params = cls.validate(attack_params, context)
    return cls(params, src=src, tgt=tgt, num_classes=num_classes)


def check_class(field_name: str, c, num_classes: int) -> None:
    if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < num_classes:
        raise ConfigError(f"attack_params: {field_name}={c!r} must be a class index in 0..{num_classes - 1}")
