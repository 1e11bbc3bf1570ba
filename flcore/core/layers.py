"""Model architectures as data: a tuple of `Layer` records per architecture.

A dataset's spec (flcore.data.specs) names its architecture; flcore.sim.models builds the
`nn.Module` (reference engine) and the stacked forward pass (fast engine) from the same
description, so the two engines cannot disagree on a layer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layer:
    kind: str  # conv | bn | relu | pool | flatten | linear
    args: tuple = ()


def _conv(cin: int, cout: int, k: int, pad: int) -> Layer:
    return Layer("conv", (cin, cout, k, pad))


# Fashion-MNIST CNN (paper Table 6): 29,034 parameters.
FMNIST_CNN = (
    _conv(1, 16, 5, 2), Layer("bn", (16,)), Layer("relu"), Layer("pool", (2,)),
    _conv(16, 32, 5, 2), Layer("bn", (32,)), Layer("relu"), Layer("pool", (2,)),
    Layer("flatten"), Layer("linear", (1568, 10)),
)  # fmt: skip

# CIFAR-10 CNN (paper Table 5): 551,466 parameters. The reference code orders each block
# Conv -> ReLU -> BatchNorm, and applies a softmax before cross-entropy; we return logits.
CIFAR10_CNN = (
    _conv(3, 32, 3, 1), Layer("relu"), Layer("bn", (32,)),
    _conv(32, 32, 3, 1), Layer("relu"), Layer("bn", (32,)), Layer("pool", (2,)),
    _conv(32, 64, 3, 1), Layer("relu"), Layer("bn", (64,)),
    _conv(64, 64, 3, 1), Layer("relu"), Layer("bn", (64,)), Layer("pool", (2,)),
    _conv(64, 128, 3, 1), Layer("relu"), Layer("bn", (128,)),
    _conv(128, 128, 3, 1), Layer("relu"), Layer("bn", (128,)), Layer("pool", (2,)),
    Layer("flatten"), Layer("linear", (2048, 128)), Layer("relu"), Layer("linear", (128, 10)),
)  # fmt: skip
