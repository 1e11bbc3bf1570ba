"""Would BatchNorm in the contiguous (NCHW) layout make the stacked training step faster?

The fast engine keeps activations channels_last, where PyTorch's CPU BatchNorm (above all its
backward pass) is slower than on contiguous tensors. This times the stacked training step
(`stacked_forward`, cross-entropy, gradients; random inputs at the dataset's batch size) as the
engine runs it, and with each BatchNorm's input converted to NCHW and its output back to
channels_last, alternating the two twice, and prints milliseconds per model and step.

    python benchmarks/bn_layout.py [--dataset cifar10] [--precision bf16] [--widths 5,50]

Changing BatchNorm's layout changes its rounding, so the numbers: this only asks whether it
would be worth it. Run it on an idle machine; name the CPU beside any number you quote.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="cifar10", choices=("fmnist", "cifar10"))
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    p.add_argument("--widths", default="5,50")
    a = p.parse_args()

    import torch
    import torch.nn.functional as F

    import flcore.sim.models as models
    from flcore.data.specs import DATASETS
    from flcore.sim.device import autocast, cpu_name, keep_freed_memory

    batch_norm = F.batch_norm
    nchw = {"on": False}

    def bn(x, *args, **kwargs):  # what stacked_forward calls as F.batch_norm
        if nchw["on"]:
            return batch_norm(x.contiguous(), *args, **kwargs).contiguous(memory_format=torch.channels_last)
        return batch_norm(x, *args, **kwargs)

    models.F.batch_norm = bn
    keep_freed_memory()
    B = DATASETS.get(a.dataset).defaults["batch_size"]
    layers = models.architecture(a.dataset)
    C, H = (1, 28) if a.dataset == "fmnist" else (3, 32)
    print(f"# CPU: {cpu_name()}  torch {torch.__version__}  threads {torch.get_num_threads()}  "
          f"{a.dataset}, batch {B}, {a.precision}")  # fmt: skip
    for G in (int(w) for w in a.widths.split(",")):
        state = models.training_layout(models.stack_states([models.init_state(a.dataset, i) for i in range(G)]))
        x = torch.randn(B, G * C, H, H).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (G * B,))
        params = [state[k].requires_grad_() for k in models.float_keys(state)
                  if not k.endswith(("running_mean", "running_var"))]  # fmt: skip

        def step(state=state, x=x, y=y, params=params, G=G):
            with autocast("cpu", a.precision):
                out = models.stacked_forward(layers, state, x, G, training=True)
            torch.autograd.grad(F.cross_entropy(out.float().reshape(G * B, -1), y), params)

        res: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(2):
            for on in (False, True):
                nchw["on"] = on
                for _ in range(3):
                    step()
                n = max(5, (300 if a.dataset == "cifar10" else 3000) // G)
                t = time.perf_counter()
                for _ in range(n):
                    step()
                res[on].append((time.perf_counter() - t) / n * 1e3 / G)
        print(f"{a.dataset} {a.precision} G={G}: channels_last "
              f"{' '.join(f'{v:.2f}' for v in res[False])}  BatchNorm in NCHW "
              f"{' '.join(f'{v:.2f}' for v in res[True])}  ms per model-step", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
