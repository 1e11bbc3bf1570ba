"""An adaptive label flipper that knows the PCA detector (flcore.defenses.pca).

The PCA detector clusters the selected participants' updates of the source class's output
row; the plain targeted flip (`label_flip`) stands out there because its update of that row
points against it. This attacker estimates what an honest update looks like, by training its
own share a second time with its true labels (the engines' honest twin, `Attack.craft`), and
sends a blend of the two:

    sent = honest + strength * (poisoned - honest)

`strength` 0 sends the honest update (undetectable, and harmless); 1 sends the plain flip's
poisoned update. The blend is `torch.lerp`, exact at both ends. `norm_match` rescales the
sent update to the honest update's norm (a norm-based filter then sees an honest length).
`every` > 1 poisons only in rounds 1, 1 + every, 1 + 2 * every, ... of the run and trains
honestly in the others (no twin is trained there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flcore.attacks.base import ATTACKS, Attack, CraftContext, PoisonContext
from flcore.core.errors import ConfigError
from flcore.core.params import Params, check_range


@dataclass(frozen=True)
class AdaptiveFlipParams(Params):
    strength: float = 0.5  # 0: send the honest update ... 1: send the plain flip's update
    norm_match: bool = False  # rescale the sent update to the honest update's norm
    every: int = 1  # poison in rounds 1, 1 + every, 1 + 2 * every, ... (1: every round)

    def check(self, context: dict) -> None:
        check_range("attack_params", "strength", self.strength, 0.0, 1.0,
                    fix="0 sends the honest update, 1 the plain label flip's; e.g. 0.5")  # fmt: skip
        check_range("attack_params", "every", self.every, 1,
                    fix="poison every this many rounds; 1: every round")  # fmt: skip
        if context.get("client_state") == "persistent":
            raise ConfigError("attack_params: attack 'adaptive_flip' with client_state='persistent': "
                              "it trains each poisoning participant twice per round (poisoned and "
                              "honest), which needs stateless participants; use "
                              "client_state='stateless'")  # fmt: skip


def blend(honest: torch.Tensor, poisoned: torch.Tensor, strength: float, norm_match: bool) -> torch.Tensor:
    """honest + strength * (poisoned - honest), row by row [G', P] (exactly `honest` at 0 and
    `poisoned` at 1), rescaled to each honest row's norm if `norm_match` (a zero row is kept)."""
    sent = torch.lerp(honest, poisoned, strength)
    if norm_match:
        have = sent.norm(dim=1, keepdim=True)
        want = honest.norm(dim=1, keepdim=True)
        sent = sent * torch.where(have > 0, want / torch.where(have > 0, have, 1.0), 1.0)
    return sent


@ATTACKS.register
class AdaptiveFlip(Attack):
    """The targeted flip src -> tgt, sent as a blend of the poisoned and an honest update."""

    name = "adaptive_flip"
    Params = AdaptiveFlipParams
    needs_honest_twin = True

    def poisons_in(self, rnd: int) -> bool:
        """Whether the attacker poisons in round `rnd` of the run (1-based)."""
        return (rnd - 1) % self.params.every == 0

    def poison(self, labels: torch.Tensor, ctx: PoisonContext):
        if not self.poisons_in(ctx.rnd):
            return labels, None
        flip = ctx.malicious[:, None] & (labels == ctx.src[:, None])
        return torch.where(flip, ctx.tgt[:, None].expand_as(labels), labels), None

    def craft(self, honest: torch.Tensor, poisoned: torch.Tensor, ctx: CraftContext) -> torch.Tensor:
        return blend(honest, poisoned, self.params.strength, self.params.norm_match)
