"""The paper's two CNNs (paper Appendix A), as plain modules and as stacked functions.

One architecture description (`flcore.core.layers`, named by each dataset's spec) drives both forms, so they cannot drift apart:

- `build_model(dataset)` gives an ordinary `nn.Sequential` (the sequential reference engine
  trains one of these per participant);
- `stacked_forward(spec, params, buffers, x, G, training)` runs G independent copies of the
  same network at once. Every parameter carries a leading model dimension `[G, ...]`;
  convolutions become grouped convolutions (groups = G) and linear layers batched matmuls.
  The fast engine trains all selected participants of all repeats as one such stack.

Parameter names are the `nn.Sequential` state-dict names ("0.weight", "1.running_mean", ...),
so a stacked state converts to and from `G` ordinary state dicts by indexing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flcore.core.layers import Layer
from flcore.data.specs import DATASETS


def architecture(dataset: str) -> tuple[Layer, ...]:
    """The layer list of `dataset`'s model (its spec's `architecture`)."""
    return DATASETS.get(dataset).architecture


BN_MOMENTUM = 0.1
BN_EPS = 1e-5


def _module(layer: Layer) -> nn.Module:
    if layer.kind == "conv":
        cin, cout, k, pad = layer.args
        return nn.Conv2d(cin, cout, k, padding=pad)
    if layer.kind == "bn":
        return nn.BatchNorm2d(layer.args[0], eps=BN_EPS, momentum=BN_MOMENTUM)
    if layer.kind == "relu":
        return nn.ReLU()
    if layer.kind == "pool":
        return nn.MaxPool2d(layer.args[0])
    if layer.kind == "flatten":
        return nn.Flatten()
    if layer.kind == "linear":
        return nn.Linear(*layer.args)
    raise ValueError(f"unknown layer kind {layer.kind!r}")


def build_model(dataset: str) -> nn.Sequential:
    """The paper's CNN for `dataset` ("fmnist" or "cifar10"): input float [B, C, H, W], output logits [B, 10]."""
    return nn.Sequential(*(_module(layer) for layer in architecture(dataset)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def last_linear_weight_name(dataset: str) -> str:
    """State-dict name of the output layer's weight [10, F] (the defense reads its rows)."""
    spec = architecture(dataset)
    return f"{len(spec) - 1}.weight"


def init_state(dataset: str, seed: int) -> dict[str, torch.Tensor]:
    """PyTorch's default initialisation of the CNN, reproducible from `seed` alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(dataset)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def float_keys(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of all floating-point state: parameters and BatchNorm running statistics."""
    return [k for k, v in state.items() if v.is_floating_point()]


def stack_states(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """G state dicts -> one dict of `[G, ...]` tensors."""
    return {k: torch.stack([s[k] for s in states]) for k in states[0]}


def training_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with every stacked convolution weight `[G, Cout, Cin, kh, kw]` stored input
    channel fastest, so that `stacked_forward`'s grouped weight `[G*Cout, Cin, kh, kw]` is a
    channels_last view: the convolution (and autocast's bf16 copy, which keeps the strides)
    then takes it as it is, instead of reordering it at every step and its gradient back.
    Same values, same numbers (oneDNN receives the same weights in the layout it wants)."""
    return {k: v.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3) if v.dim() == 5 else v
            for k, v in state.items()}  # fmt: skip


def stacked_forward(
    spec: Sequence[Layer],
    state: dict[str, torch.Tensor],
    x: torch.Tensor,
    G: int,
    training: bool,
) -> torch.Tensor:
    """Run G copies of the network at once.

    state: name -> `[G, ...]` tensors (parameters and BN buffers; the running statistics are
           updated in place when `training`).
    x:     float `[B, G*C, H, W]`: model g sees channels `g*C:(g+1)*C`.
    Returns logits `[G, B, classes]`.
    """
    B = x.shape[0]
    for i, layer in enumerate(spec):
        kind = layer.kind
        if kind == "conv":
            w = state[f"{i}.weight"]
            x = F.conv2d(
                x, w.reshape(-1, *w.shape[2:]), state[f"{i}.bias"].reshape(-1),
                padding=layer.args[3], groups=G,
            )  # fmt: skip
        elif kind == "bn":
            x = F.batch_norm(
                x, state[f"{i}.running_mean"].view(-1), state[f"{i}.running_var"].view(-1),
                state[f"{i}.weight"].reshape(-1), state[f"{i}.bias"].reshape(-1),
                training=training, momentum=BN_MOMENTUM, eps=BN_EPS,
            )  # fmt: skip
            if training:
                state[f"{i}.num_batches_tracked"].add_(1)
        elif kind == "relu":
            x = F.relu(x)
        elif kind == "pool":
            x = F.max_pool2d(x, layer.args[0])
        elif kind == "flatten":
            # [B, G*C, H, W] -> [G, B, C*H*W] (per model the same order as nn.Flatten)
            x = x.reshape(B, G, -1).transpose(0, 1)
        elif kind == "linear":
            w, b = state[f"{i}.weight"], state[f"{i}.bias"]  # [G, out, in], [G, out]
            # cast, then transpose: the same strides as casting the transposed view (`to`
            # keeps them), so the same numbers, but a contiguous cast instead of a strided one
            x = torch.baddbmm(b.unsqueeze(1).to(x.dtype), x, w.to(x.dtype).transpose(1, 2))
        else:
            raise ValueError(f"unknown layer kind {kind!r}")
    return x
