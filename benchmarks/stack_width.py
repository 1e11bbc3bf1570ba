"""What one training step costs per model as more models are stacked (the fast engine's
stacked forward and backward pass alone, without data gathering or the optimiser).

For each stack width G it times the paper model's stacked training step (`stacked_forward`,
cross-entropy, gradients of every parameter) on random inputs at the dataset's batch size
and prints milliseconds per step and per model-step. A falling per-model cost is what
stacking buys; a rising one means the stack's activations have outgrown the caches.

    python benchmarks/stack_width.py [--dataset fmnist] [--widths 1,5,10,25,50] [--precision auto]

Like the engine, it keeps freed memory in the process (`keep_freed_memory`) and runs in the
precision `auto` resolves to on this machine unless told otherwise.

Run it on an idle machine; name the CPU beside any number you quote.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fmnist", choices=("fmnist", "cifar10"))
    p.add_argument("--widths", default="1,5,10,25,50")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    a = p.parse_args()

    import torch
    import torch.nn.functional as F

    from flcore.data.specs import DATASETS
    from flcore.sim.device import autocast, cpu_name, keep_freed_memory, resolve_precision
    from flcore.sim.models import (
        architecture,
        float_keys,
        init_state,
        stack_states,
        stacked_forward,
    )

    spec = DATASETS.get(a.dataset)
    B = spec.defaults["batch_size"]
    layers = architecture(a.dataset)
    C, H = (1, 28) if a.dataset == "fmnist" else (3, 32)
    precision = resolve_precision(a.precision, "cpu")
    keep_freed_memory()
    print(f"# CPU: {cpu_name()}  torch {torch.__version__}  threads {torch.get_num_threads()}  "
          f"{a.dataset}, batch {B}, {precision}")  # fmt: skip
    torch.manual_seed(0)
    for G in (int(w) for w in a.widths.split(",")):
        state = stack_states([init_state(a.dataset, i) for i in range(G)])
        x = torch.randn(B, G * C, H, H).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (G * B,))
        params = [state[k].requires_grad_() for k in float_keys(state) if not k.endswith(("running_mean", "running_var"))]

        def step(state=state, x=x, y=y, params=params, G=G):
            with autocast("cpu", precision):
                out = stacked_forward(layers, state, x, G, training=True)
            torch.autograd.grad(F.cross_entropy(out.float().reshape(G * B, -1), y), params)

        for _ in range(3):
            step()
        n = max(5, (400 if a.dataset == "cifar10" else 4000) // G)
        t = time.perf_counter()
        for _ in range(n):
            step()
        dt = (time.perf_counter() - t) / n
        print(f"{a.dataset} G={G:3d}: {dt * 1e3:8.2f} ms/step  {dt * 1e3 / G:6.2f} ms/model-step", flush=True)


if __name__ == "__main__":
    main()
