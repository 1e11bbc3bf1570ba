"""Engine speed on this machine, against the machine's own practical limit.

For the paper configurations (Fashion-MNIST: N=50, k=5, batch 4, lr 0.001, momentum 0.9;
CIFAR-10: N=50, k=5, batch 10, lr 0.01, momentum 0.5; one local epoch; every repeat's global
model evaluated on the 10,000 test images every round) it measures, in seconds per
experiment-round (one repeat x one round):

  seq_s     the sequential reference engine, fp32;
  fast1_s   the fast engine, 1 repeat, in its best mode (precision "auto");
  fast10_s  the fast engine, 10 repeats batched (time per round / 10), with the defense's
            update recording on; its peak resident memory is peak_rss_mb_10;
  ideal_s   the practical limit for the same model on this machine: training samples per
            round / best large-batch (256) training throughput + 10,000 / best large-batch
            evaluation throughput, best over fp32 and bf16 autocast, channels_last.

Each measurement runs in its own process (clean peak memory, no warm caches shared) and
times `--rounds` rounds after one untimed round of the same configuration: the steady cost of
a round, which is what a 200-round run pays, without the first round's one-time costs
(allocating and first touching the stack's buffers, about 2.5 s of a 10-repeat CIFAR-10 round).
The last line per dataset is machine-readable (`RESULT ...`).

    python benchmarks/engine_speed.py [--datasets fmnist,cifar10] [--rounds 2] [--ideal-only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _worker(spec: dict) -> dict:
    import torch

    from flcore import Config
    from flcore.data import load_dataset
    from flcore.runs.runner import run
    from flcore.sim.device import resolve_precision

    data = load_dataset(spec["dataset"], progress=False)
    if spec["kind"] == "ideal":
        return _ideal(spec["dataset"], data, torch)
    cfg = Config(dataset=spec["dataset"], m=0.1, rounds=spec["rounds"], repeats=spec["repeats"],
                 engine=spec["engine"], precision=spec["precision"],
                 record_updates=spec.get("record", "none"))  # fmt: skip
    # warm-up: one untimed round of the same shape, so that the stack's buffers are allocated
    # (and the freed memory kept) before the clock starts, as in every round but the first of
    # a long run; the timed rounds are the steady per-round cost
    run(cfg.replace(rounds=1), store=None, data=data, progress=False)
    t = time.perf_counter()
    run(cfg, store=None, data=data, progress=False)
    dt = time.perf_counter() - t
    return {"s_per_exp_round": dt / (cfg.rounds * cfg.repeats),
            "precision": resolve_precision(cfg.precision, "cpu")}  # fmt: skip


def _ideal(dataset: str, data, torch) -> dict:
    import torch.nn.functional as F

    from flcore.sim.models import build_model

    x_all = data.x_train[:2048].float() / 255.0
    y_all = data.y_train[:2048]
    best_train, best_eval, modes = 0.0, 0.0, {}
    for precision in ("fp32", "bf16"):
        model = build_model(dataset).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        ac = dict(device_type="cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

        def train_steps(n, model=model, opt=opt, ac=ac):
            for i in range(n):
                b = (i % 8) * 256
                x = x_all[b : b + 256].contiguous(memory_format=torch.channels_last)
                with torch.autocast(**ac):
                    out = model(x)
                loss = F.cross_entropy(out.float(), y_all[b : b + 256])
                opt.zero_grad()
                loss.backward()
                opt.step()

        train_steps(3)
        n = 12
        t = time.perf_counter()
        train_steps(n)
        tr = n * 256 / (time.perf_counter() - t)
        model.eval()
        with torch.no_grad(), torch.autocast(**ac):
            for _ in range(2):
                model(x_all[:256].contiguous(memory_format=torch.channels_last))
            t = time.perf_counter()
            for i in range(n):
                b = (i % 8) * 256
                model(x_all[b : b + 256].contiguous(memory_format=torch.channels_last)).argmax(1)
            ev = n * 256 / (time.perf_counter() - t)
        modes[precision] = {"train": tr, "eval": ev}
        best_train, best_eval = max(best_train, tr), max(best_eval, ev)
    samples = 5 * (len(data.y_train) // 50)  # k participants x one epoch of their share
    return {"ideal_s": samples / best_train + 10_000 / best_eval, "train_img_s": best_train,
            "eval_img_s": best_eval, "modes": modes}  # fmt: skip


def measure(spec: dict) -> dict:
    """Run one measurement in a fresh process; adds its peak RSS (MB)."""
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"benchmark worker failed ({spec}): exit status {status}")
    res = json.loads(out.strip().splitlines()[-1])
    res["peak_rss_mb"] = usage.ru_maxrss / 1024
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="fmnist,cifar10")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds per measurement")
    ap.add_argument("--ideal-only", action="store_true",
                    help="only the practical limit (the machine's ideal experiment-round)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(_worker(json.loads(a.worker))))
        return
    import torch

    from flcore.sim.device import cpu_name

    cpu = cpu_name().replace(" ", "")
    cap = torch.backends.cpu.get_cpu_capability()
    print(f"# CPU: {cpu_name()}  capability: {cap}  torch {torch.__version__}  threads {torch.get_num_threads()}")
    load = os.getloadavg()[0]
    if load > 0.5:
        # Another process on these cores makes OpenMP threads wait on each other: timings
        # can be several times slower and the ratios meaningless.
        print(f"# WARNING: load average {load:.2f} before the benchmark: the machine is not idle")
    for ds in a.datasets.split(","):
        base = dict(dataset=ds, rounds=a.rounds)
        if not a.ideal_only:
            seq = measure(dict(base, kind="run", engine="reference", precision="fp32", repeats=1, rounds=1))
            print(f"{ds}: sequential reference fp32      {seq['s_per_exp_round']:8.3f} s/experiment-round", flush=True)
            f1 = measure(dict(base, kind="run", engine="fast", precision="auto", repeats=1))
            print(f"{ds}: fast, 1 repeat ({f1['precision']})          {f1['s_per_exp_round']:8.3f} s/experiment-round", flush=True)
            f10 = measure(dict(base, kind="run", engine="fast", precision="auto", repeats=10, record="all"))
            print(f"{ds}: fast, 10 repeats ({f10['precision']})       {f10['s_per_exp_round']:8.3f} s/experiment-round"
                  f"   peak RSS {f10['peak_rss_mb']:.0f} MB (updates recorded)", flush=True)  # fmt: skip
        ideal = measure(dict(base, kind="ideal"))
        for mode, v in ideal["modes"].items():
            print(f"{ds}: one model, batch 256, {mode}, channels_last: train {v['train']:7.0f} img/s, "
                  f"eval {v['eval']:7.0f} img/s")  # fmt: skip
        print(f"{ds}: ideal (practical limit)           {ideal['ideal_s']:8.3f} s/experiment-round")
        result = f"RESULT dataset={ds} cpu={cpu} capability={cap} ideal_s={ideal['ideal_s']:.4f}"
        if not a.ideal_only:
            result += (f" precision={f10['precision']} seq_s={seq['s_per_exp_round']:.4f} "
                       f"fast1_s={f1['s_per_exp_round']:.4f} fast10_s={f10['s_per_exp_round']:.4f} "
                       f"speedup_10={seq['s_per_exp_round'] / f10['s_per_exp_round']:.2f} "
                       f"fraction_of_limit_10={ideal['ideal_s'] / f10['s_per_exp_round']:.2f} "
                       f"peak_rss_mb_10={f10['peak_rss_mb']:.0f}")  # fmt: skip
        print(result, flush=True)

if __name__ == "__main__":
    main()
