"""Backdoor: a pixel-pattern trigger stamped on some of a malicious participant's images,
which are relabelled as the target class.

A malicious participant stamps the trigger (a `size` x `size` patch, `margin` pixels from the
image's `corner`: all white, or a white/black checkerboard) on each of its training samples
with probability `fraction`, and labels those samples `tgt` (Config.tgt). Its other samples,
and every honest participant's, are untouched. A model that learns the backdoor classifies
any image carrying the trigger as `tgt` and clean images as before, so the engines report,
beside the clean accuracy, the attack success rate: the share of stamped test images of every
class other than `tgt` classified as `tgt` (`Result.rounds["attack_success"]`, %).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flcore.attacks.base import ATTACKS, Attack, PoisonContext
from flcore.core.errors import ConfigError, suggest
from flcore.core.params import Params, check_range
from flcore.data.specs import DATASETS

CORNERS = ("bottom_right", "bottom_left", "top_right", "top_left")
PATTERNS = ("square", "checker")


@dataclass(frozen=True)
class BackdoorParams(Params):
    fraction: float = 0.5  # share of a malicious participant's samples stamped and relabelled
    size: int = 3  # the trigger's side in pixels
    margin: int = 1  # pixels between the trigger and the image's edges
    corner: str = "bottom_right"  # where the trigger sits
    pattern: str = "square"  # "square": all white; "checker": white/black, its top-left pixel white

    def check(self, context: dict) -> None:
        check_range("attack_params", "fraction", self.fraction, 0.0, 1.0, lo_open=True,
                    fix="give the share of a malicious participant's samples stamped, e.g. 0.5")  # fmt: skip
        check_range("attack_params", "size", self.size, 1, fix="the trigger's side in pixels, e.g. 3")
        check_range("attack_params", "margin", self.margin, 0, fix="pixels from the image's edge, e.g. 1")
        for name, valid in (("corner", CORNERS), ("pattern", PATTERNS)):
            v = getattr(self, name)
            if v not in valid:
                raise ConfigError(f"attack_params: {name}={v!r} is unknown{suggest(v, valid)} "
                                  f"(valid: {', '.join(valid)})")  # fmt: skip
        dataset = context.get("dataset")
        if dataset in DATASETS:
            spec = DATASETS.get(dataset)
            _, h, w = spec.image_shape
            if self.size + self.margin > min(h, w):
                raise ConfigError(f"attack_params: size={self.size} with margin={self.margin} needs "
                                  f"{self.size + self.margin} pixels from the corner, but {spec.title} "
                                  f"images are {h}x{w}; lower size or margin so that size + margin "
                                  f"<= {min(h, w)}")  # fmt: skip


def trigger_pattern(size: int, pattern: str) -> torch.Tensor:
    """The trigger's pixel values, float64 [size, size] in {0, 1} (white = 1)."""
    if pattern == "square":
        return torch.ones(size, size, dtype=torch.float64)
    i = torch.arange(size)
    return ((i[:, None] + i[None, :]) % 2 == 0).to(torch.float64)


@ATTACKS.register
class Backdoor(Attack):
    """Malicious participants stamp a trigger on a `fraction` of their samples, labelled `tgt`."""

    name = "backdoor"
    Params = BackdoorParams

    def attacked_classes(self) -> tuple[int, ...]:
        return tuple(c for c in range(self.num_classes) if c != self.tgt)

    def poison(self, labels: torch.Tensor, ctx: PoisonContext):
        chosen = ctx.malicious[:, None] & (ctx.uniform() < self.params.fraction)
        return torch.where(chosen, ctx.tgt[:, None].expand_as(labels), labels), chosen

    def window(self, h: int, w: int) -> tuple[slice, slice]:
        """The trigger's rows and columns in an h x w image."""
        p = self.params
        top = p.corner.startswith("top")
        left = p.corner.endswith("left")
        rows = slice(p.margin, p.margin + p.size) if top else slice(h - p.margin - p.size, h - p.margin)
        cols = slice(p.margin, p.margin + p.size) if left else slice(w - p.margin - p.size, w - p.margin)
        return rows, cols

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        """x: float [M, C, H, W] in [0, 1] -> a copy with the trigger in every channel."""
        rows, cols = self.window(x.shape[-2], x.shape[-1])
        out = x.clone()
        out[..., rows, cols] = trigger_pattern(self.params.size, self.params.pattern).to(x.dtype).to(x.device)
        return out
