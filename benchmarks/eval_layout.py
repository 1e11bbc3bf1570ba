"""Evaluating R global models: as one grouped stack, or each model on its own.

The fast engine evaluates every repeat's global model on the 10,000 test images each round.
Two layouts are possible: the R models as one stack (grouped convolutions; the chunk of test
images per pass shrinks as R grows, to keep the first activation in cache), or each model on
its own (dense convolutions at the chunk size that suits one model). The engine picks the
layout from the size of the model's first activation (`flcore.sim.engine._evaluate`); this
script times both for both paper models, so the choice can be checked on any machine.

It prints seconds per model per 10,000 images, for precision fp32 and the machine's `auto`,
and one `RESULT` line per dataset and precision with the ratio stacked / per-model (above 1:
evaluating each model on its own is faster). Both layouts predict the same classes in bf16
here; in fp32 grouped and dense convolutions can round differently, which is why switching a
dataset's layout bumps its numerics revision.

Run it on an idle machine:

    python benchmarks/eval_layout.py [--repeats 10] [--images 2000]
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10, help="global models evaluated (R)")
    ap.add_argument("--images", type=int, default=2000, help="test images timed per model")
    a = ap.parse_args()
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"# WARNING: load average {load:.2f}: other processes share the cores; timings are not meaningful")

    import torch

    from flcore.sim.device import autocast, cpu_name, keep_freed_memory, resolve_precision
    from flcore.sim.engine import _eval_chunk
    from flcore.sim.models import architecture, init_state, stack_states, stacked_forward

    keep_freed_memory()
    cl = torch.channels_last
    R, n = a.repeats, a.images
    print(f"# CPU: {cpu_name()}  torch {torch.__version__}  threads {torch.get_num_threads()}  R={R}")
    precisions = dict.fromkeys(["fp32", resolve_precision("auto", "cpu")])
    for ds, (C, H) in {"fmnist": (1, 28), "cifar10": (3, 32)}.items():
        spec = architecture(ds)
        glob = stack_states([init_state(ds, i) for i in range(R)])
        gen = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (n, C, H, H), dtype=torch.uint8, generator=gen).float() / 255.0
        first = spec[0].args[1]

        def stacked(prec, x=x, spec=spec, glob=glob, first=first, H=H):
            chunk, out = _eval_chunk(R, first, H * H), []
            with torch.no_grad(), autocast("cpu", prec):
                for b in range(0, n, chunk):
                    xe = x[b : b + chunk].repeat(1, R, 1, 1).contiguous(memory_format=cl)
                    out.append(stacked_forward(spec, glob, xe, R, training=False).argmax(-1))
            return torch.cat(out, 1), chunk

        def per_model(prec, x=x, spec=spec, glob=glob, first=first, H=H):
            chunk, out = _eval_chunk(1, first, H * H), []
            models = [{k: v[g : g + 1] for k, v in glob.items()} for g in range(R)]
            with torch.no_grad(), autocast("cpu", prec):
                for b in range(0, n, chunk):
                    xe = x[b : b + chunk].contiguous(memory_format=cl)
                    out.append(torch.cat([stacked_forward(spec, m, xe, 1, training=False).argmax(-1) for m in models]))
            return torch.cat(out, 1), chunk

        for prec in precisions:
            times, preds = {}, {}
            for name, f in (("stacked", stacked), ("per_model", per_model)):
                f(prec)  # warm-up
                t = time.perf_counter()
                preds[name], chunk = f(prec)
                times[name] = (time.perf_counter() - t) / R / n * 10_000
                print(f"{ds} {prec}: {name:9s} (chunk {chunk:4d} images) {times[name]:.3f} s per model per 10,000 images")
            same = bool(torch.equal(preds["stacked"], preds["per_model"]))
            print(f"RESULT dataset={ds} precision={prec} stacked_s={times['stacked']:.3f} "
                  f"per_model_s={times['per_model']:.3f} ratio={times['stacked'] / times['per_model']:.2f} "
                  f"same_predictions={same}")  # fmt: skip


if __name__ == "__main__":
    main()
