"""Evaluating R global models: as one grouped stack, or each model on its own.

The fast engine evaluates every repeat's global model on the 10,000 test images each round.
Two layouts are possible: the R models as one stack (grouped convolutions; the chunk of test
images per pass shrinks as R grows, to keep the first activation in cache), or each model on
its own (dense convolutions at the chunk size that suits one model). The engine picks the
layout from the size of the model's first activation (`flcore.sim.engine._evaluate`); this
script runs that function with each layout forced, for both paper models, so the choice can be
checked on any machine.

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

    import flcore.sim.engine as eng
    from flcore.sim.device import cpu_name, keep_freed_memory, resolve_precision
    from flcore.sim.models import architecture, init_state, stack_states

    keep_freed_memory()
    R, n = a.repeats, a.images
    print(f"# CPU: {cpu_name()}  torch {torch.__version__}  threads {torch.get_num_threads()}  R={R}")
    precisions = dict.fromkeys(["fp32", resolve_precision("auto", "cpu")])
    layouts = {"stacked": 2**62, "per_model": 0}  # eng.PER_MODEL_EVAL_FROM forcing each layout
    for ds, (C, H) in {"fmnist": (1, 28), "cifar10": (3, 32)}.items():
        spec = architecture(ds)
        glob = stack_states([init_state(ds, i) for i in range(R)])
        gen = torch.Generator().manual_seed(0)
        xt = torch.randint(0, 256, (n, C, H, H), dtype=torch.uint8, generator=gen)
        images = eng._TestImages(xt, torch.float32, torch.zeros(1, C, 1, 1), torch.ones(1, C, 1, 1))
        first = spec[0].args[1]
        for prec in precisions:
            times, preds = {}, {}
            for name, threshold in layouts.items():
                eng.PER_MODEL_EVAL_FROM = threshold
                eng._evaluate(spec, glob, images, R, H * H, "cpu", prec)  # warm-up
                t = time.perf_counter()
                preds[name] = eng._evaluate(spec, glob, images, R, H * H, "cpu", prec)
                times[name] = (time.perf_counter() - t) / R / n * 10_000
                chunk = eng._eval_chunk(R if name == "stacked" else 1, first, H * H)
                print(f"{ds} {prec}: {name:9s} (chunk {chunk:4d} images) {times[name]:.3f} s per model per 10,000 images")
            same = bool(torch.equal(preds["stacked"], preds["per_model"]))
            print(f"RESULT dataset={ds} precision={prec} stacked_s={times['stacked']:.3f} "
                  f"per_model_s={times['per_model']:.3f} ratio={times['stacked'] / times['per_model']:.2f} "
                  f"same_predictions={same}")  # fmt: skip


if __name__ == "__main__":
    main()
