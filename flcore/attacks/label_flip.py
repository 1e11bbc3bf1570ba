"""Targeted label flipping (the paper's attack): every source-class label becomes the target."""

from __future__ import annotations

import torch

from flcore.attacks.base import ATTACKS, Attack, PoisonContext


@ATTACKS.register
class LabelFlip(Attack):
    """Malicious participants relabel every training sample of class `src` as `tgt`
    (Config.src, Config.tgt); honest participants and other classes are untouched."""

    name = "label_flip"

    def poison(self, labels: torch.Tensor, ctx: PoisonContext):
        flip = ctx.malicious[:, None] & (labels == ctx.src[:, None])
        return torch.where(flip, ctx.tgt[:, None].expand_as(labels), labels), None
