"""Grouped execution: many configurations computed as stacks, in this process or on Dask.

`compute(configs, store)` trains every configuration that is not yet in the result store.
Pending configurations are cut into the stacks `run_many` would form (`runner.batches`:
configurations that differ only in the attack and selection share one stacked model, at most
the dataset's bound for the device, `spec.stack_cap(device)` federations per stack, which bounds a
task's memory).
Each stack is one task: run here one after the other (the default), or one Dask task per
stack with `executor=` a `dask.distributed.Client`, the workers writing to the shared store.
The clean warm-ups that warm-started configurations begin from are computed first, once each.

A stack is stored when it finishes, so a killed compute resumes with every finished
configuration loaded, not recomputed. Every task runs with the same number of torch threads
(`threads`, by default this process's): in fp32 and bf16 the convolution's weight gradient
is summed in per-thread parts, so the thread count, like the stacking, is part of how the
numbers round. With both fixed, a stack gives the same numbers in this process and on a
worker.

`plan(configs, store)` says what `compute` would do without training anything.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from flcore.config import Config
from flcore.runs.runner import batches, prefix_repeats, pretrain_config, resolved, store_key

__all__ = ["Plan", "compute", "experiment_rounds", "plan"]


def experiment_rounds(cfg: Config) -> int:
    """The work of a configuration: rounds x repeats (one repeat x one round is one unit)."""
    return cfg.rounds * cfg.repeats


@dataclass
class Plan:
    """What computing a list of configurations involves (`plan`)."""

    configs: list[Config]  # resolved, distinct (by store key), in input order
    stored: list[Config] = field(default_factory=list)
    warmups: list[Config] = field(default_factory=list)  # clean warm-ups to train first
    stacks: list[list[Config]] = field(default_factory=list)  # pending configs, as trained
    # store key -> repeats a stored run of the same config with fewer repeats already holds:
    # only the others train (flcore.runs.runner.prefix_repeats)
    extends: dict[str, int] = field(default_factory=dict)

    def to_train(self, cfg: Config) -> int:
        """The federations `cfg` trains: its repeats, less those a stored shorter run holds."""
        return cfg.repeats - self.extends.get(store_key(cfg), 0)

    def rounds_to_train(self, cfg: Config) -> int:
        return cfg.rounds * self.to_train(cfg)

    @property
    def pending(self) -> list[Config]:
        """The configurations not yet stored."""
        done = {store_key(c) for c in self.stored}
        return [c for s in self.stacks for c in s if store_key(c) not in done]

    @property
    def federations(self) -> int:
        return sum(c.repeats for c in self.configs)

    @property
    def total_rounds(self) -> int:
        return sum(experiment_rounds(c) for c in self.configs)

    @property
    def pending_rounds(self) -> int:
        """The work left: the warm-ups and every stack with a configuration missing."""
        return sum(self.rounds_to_train(c) for c in self.warmups + [c for s in self.stacks for c in s])


def plan(configs, store="results", max_federations: int | None = None) -> Plan:
    """Split `configs` into the stacks that train them and say which of those are stored.

    The stacks are cut from all of `configs` (stored or not), so a configuration always
    trains in the same stack, whatever was computed before: a resumed or extended compute
    gives the numbers a compute in one go would have given. A stack with any configuration
    missing is trained whole (its stored members are kept as they are).

    max_federations: at most this many federations per stack (default: the dataset's
    bound for the device, `spec.stack_cap(device)`); smaller stacks are stored sooner, so less
    is lost when a long compute is killed. A damaged entry counts as missing (the store
    quarantines it on this verifying read)."""
    from flcore.runs.store import Store

    st = Store(store)
    seen: set[str] = set()
    out = Plan(configs=[])
    warm: dict[str, Config] = {}
    stored: set[str] = set()
    for c in configs:
        cfg = resolved(Config.from_dict(c) if isinstance(c, dict) else c)
        key = store_key(cfg)
        if key in seen:
            continue
        seen.add(key)
        out.configs.append(cfg)
        if st.get(key) is not None:
            out.stored.append(cfg)
            stored.add(key)
        elif r0 := prefix_repeats(cfg, st):
            out.extends[key] = r0
    todo = {store_key(c): out.to_train(c) for c in out.configs if store_key(c) in out.extends}
    for stack in batches(out.configs, max_federations, todo):
        if all(store_key(c) in stored for c in stack):
            continue
        out.stacks.append(stack)
        for cfg in stack:
            if cfg.warm_start:
                pre = resolved(pretrain_config(cfg))
                pk = store_key(pre)
                if pk not in warm and st.get(pk) is None:
                    warm[pk] = pre
    out.warmups = list(warm.values())
    return out


def run_stack(cfg_dicts: list[dict], store: str, data_root=None, threads: int | None = None,
              progress=None) -> list[str]:  # fmt: skip
    """Train one stack whole and store the members the store lacks; returns the store keys.
    A stack whose members are all stored trains nothing: Dask reruns a finished task whose
    worker it lost (a worker restarted, killed, or frozen past its heartbeat), and that rerun
    must not train the stack again. The Dask task: it takes plain values only, so it pickles
    anywhere.

    progress: None; a callable, called after each round with the fraction of the stack done; or
    (topic, stack): on a Dask worker, each round is logged as the event {"stack": stack,
    "fraction": ...} under `topic` (`distributed.Worker.log_event`) for the client's bar."""
    import torch

    from flcore.runs.runner import run, train_stack
    from flcore.runs.store import Store

    cfgs = [Config.from_dict(d) for d in cfg_dicts]
    keys = [store_key(c) for c in cfgs]
    st = Store(store)
    if all(st.has(k) for k in keys):
        return keys
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        on_round = _round_reporter(progress, cfgs[0].rounds)
        if len(cfgs) == 1 and cfgs[0].engine != "fast":
            run(cfgs[0], store=store, data_root=data_root, progress=False)
        else:
            train_stack(cfgs, store=store, data_root=data_root, on_round=on_round)
        return keys
    finally:
        torch.set_num_threads(before)


def _round_reporter(progress, rounds: int):
    """`run_stack`'s progress as a per-round callback of the rounds done (None: no reports)."""
    if progress is None:
        return None
    if callable(progress):
        return lambda r: progress(r / rounds)
    from distributed import get_worker

    topic, stack = progress
    worker = get_worker()
    return lambda r: worker.log_event(topic, {"stack": stack, "fraction": r / rounds})


def compute(configs, store="results", executor=None, *, threads: int | None = None,
            max_federations: int | None = None, data_root=None, retries: int = 2,
            progress: bool = True, on_stack=None, log=None) -> dict:  # fmt: skip
    """Train every configuration of `configs` that `store` lacks; returns counts.

    executor: None (stacks one after the other in this process) or a
              `dask.distributed.Client` (one task per stack; `store` must be a path every
              worker reaches).
    threads:  torch threads per task (default: this process's `torch.get_num_threads()`);
              keep it equal between runs that must agree to the bit.
    max_federations: at most this many federations per stack (see `plan`).
    retries:  Dask retries of a failed task (a worker that dies is rescheduled by Dask).
    progress: a text bar over experiment-rounds (rounds x repeats), advanced every round of
              every stack, also from Dask workers (their per-round events).
    on_stack: called with the stack's configs after each stack is stored (e.g. to export).

    Returns {configs, federations, stored, computed, stacks, warmups, experiment_rounds,
    wall_s}. The first stack that fails stops the compute with its error; everything
    finished is stored, so computing again resumes.
    """
    import torch

    store = os.path.abspath(os.fspath(store))
    p = plan(configs, store, max_federations)
    threads = int(threads or torch.get_num_threads())
    stats = {"configs": len(p.configs), "federations": p.federations, "stored": len(p.stored),
             "computed": len(p.pending), "stacks": len(p.stacks), "warmups": len(p.warmups),
             "experiment_rounds": p.pending_rounds, "threads": threads}  # fmt: skip
    t0 = time.perf_counter()
    # warm-ups first: stacks start from them; then the stacks a stopped compute left furthest
    # along, so that the work a next stop would lose is as little as can be
    waves = [[[w] for w in p.warmups], resume_order(p.stacks, p, store)]
    with _bar(progress, p.pending_rounds) as bar:
        for wave in waves:
            if not wave:
                continue
            credit = _Credit(bar)
            for stack in wave:
                credit.expect(_stack_key(stack), sum(p.rounds_to_train(c) for c in stack))
            if executor is None:
                for stack in wave:
                    key = _stack_key(stack)
                    run_stack([c.to_dict() for c in stack], store, data_root, threads,
                              progress=(lambda f, key=key, cr=credit: cr.set(key, f)) if progress else None)  # fmt: skip
                    credit.set(key, 1.0)
                    if on_stack is not None:
                        on_stack(stack)
            else:
                _run_dask(executor, wave, store, data_root, threads, retries, credit, on_stack, progress)
    stats["wall_s"] = time.perf_counter() - t0
    if log is not None:
        log(f"compute: {stats['computed']} configurations in {stats['stacks']} stacks "
            f"({stats['warmups']} warm-ups first), {stats['stored']} already stored, "
            f"{stats['wall_s']:.0f} s")  # fmt: skip
    return stats


def resume_order(stacks: list[list[Config]], p: Plan, store) -> list[list[Config]]:
    """`stacks` with those that have a checkpoint in `store` first, the furthest along first
    (by the share of their rounds saved), the others after them in plan order. A compute that
    is stopped again soon (a session's end, a preempted node) then finishes, and stores, the
    configurations it had nearly done instead of starting others."""
    return sorted(stacks, key=lambda s: -saved_share(s, p, store))  # stable: plan order kept among equals


def saved_share(stack: list[Config], p: Plan, store) -> float:
    """The share of the stack's rounds its checkpoint in `store` holds (0: none)."""
    from flcore.runs.checkpoint import saved_round

    first = [p.extends.get(store_key(c), 0) for c in stack]
    return saved_round(store, [store_key(c) for c in stack], first) / stack[0].rounds


def _bar(progress: bool, total: int):
    from tqdm import tqdm  # a text bar (papermill and logs keep it readable)

    return tqdm(total=total, desc="compute", unit="exp-round", disable=not progress or total == 0,
                dynamic_ncols=True)  # fmt: skip


class _Credit:
    """The compute bar's account: each stack's experiment-rounds are credited as the fraction
    of it reported done grows (never backwards: a retried stack starts again from 0), from
    this thread or from the Dask client's event thread."""

    def __init__(self, bar) -> None:
        import threading

        self.bar, self.lock, self.total, self.done = bar, threading.Lock(), {}, {}

    def expect(self, key: str, exp_rounds: int) -> None:
        self.total[key], self.done[key] = exp_rounds, 0

    def set(self, key: str, fraction: float) -> None:
        with self.lock:
            if key not in self.total:
                return
            n = int(self.total[key] * min(max(fraction, 0.0), 1.0))
            if n > self.done[key]:
                self.bar.update(n - self.done[key])
                self.done[key] = n


def _stack_key(stack: list[Config]) -> str:
    return f"flcore-stack-{store_key(stack[0])}-{len(stack)}"


def _run_dask(client, wave: list[list[Config]], store, data_root, threads, retries, credit: _Credit,
              on_stack, progress: bool) -> None:  # fmt: skip
    import uuid

    from distributed import as_completed

    from flcore.runs.runner import describe

    topic = f"flcore-progress-{uuid.uuid4().hex}"
    if progress:
        client.subscribe_topic(topic, lambda event: credit.set(event[1]["stack"], event[1]["fraction"]))
    futures, stacks = [], {}
    for i, stack in enumerate(wave):  # in the wave's order: the first has the highest priority
        key = _stack_key(stack)
        fut = client.submit(run_stack, [c.to_dict() for c in stack], store, data_root, threads,
                            (topic, key) if progress else None, key=key, pure=False, retries=retries,
                            priority=len(wave) - i)  # fmt: skip
        futures.append(fut)
        stacks[fut.key] = stack
    try:
        for fut in as_completed(futures):
            stack = stacks[fut.key]
            try:
                fut.result()
            except BaseException as e:
                if hasattr(e, "add_note"):
                    e.add_note(f"flcore compute: the stack of {len(stack)} configurations starting "
                               f"with {describe(stack[0])} failed; finished stacks are stored in "
                               f"{store}: compute again to resume.")  # fmt: skip
                raise
            credit.set(fut.key, 1.0)
            # its result is in the store: holding the future would make Dask recompute the
            # stack if the worker that ran it is lost later in this wave
            futures.remove(fut)
            fut.release()
            if on_stack is not None:
                on_stack(stack)
    finally:
        if progress:
            client.unsubscribe_topic(topic)
        left = [f for f in futures if not f.done()]
        if left:
            client.cancel(left)


# ------------------------------------------------------------------------------------------
# Estimated wall time (python -m flcore reproduce --dry-run)
# ------------------------------------------------------------------------------------------

CALIBRATION_FILE = ".flcore-calibration.json"  # in the store: per machine, torch, dataset, stack
# A kept calibration is reused for this long: a virtual machine's speed drifts with its host's
# load (an AMD EPYC Zen 3 guest calibrated 3.16 and, two hours later, 5.03 s per
# experiment-round for the same stack; the stack then ran at 5.25).
CALIBRATION_MAX_AGE_S = 3600
# Above this share of busy CPU time the machine is busy: its calibration is not kept.
BUSY_CPU_SHARE = 0.3


def _calibration_key(cfg: Config, G: int, threads: int) -> str:
    import torch

    from flcore.sim.device import cpu_id

    return "|".join(map(str, (cpu_id(), torch.__version__, threads, cfg.device, cfg.precision,
                              cfg.dataset, cfg.batch_size, cfg.k, cfg.num_participants, G)))  # fmt: skip


class _Clock:
    """A stand-in progress bar that records when each round ends."""

    def __init__(self) -> None:
        self.t = [time.perf_counter()]

    def update(self, n: int = 1) -> None:
        self.t.append(time.perf_counter())


def calibrate(cfg: Config, G: int, threads: int, data_root=None) -> dict:
    """Seconds per training sample and per evaluated test image of `cfg`'s dataset and
    settings with G federations stacked, read from the round times of one short real run on
    a class-balanced subset (40 training images per participant, 1,000 test images): round 3
    trains only, rounds 2 and 4 also evaluate; round 1 warms up."""
    import torch

    from flcore.runs.runner import load_data
    from flcore.sim.engine import simulate
    from flcore.sim.plan import make_plan

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        per, n_test, rounds = 40, 1000, 4
        c = cfg.replace(m=0.0, repeats=G, rounds=rounds, n_train=per * cfg.num_participants,
                        n_test=n_test, warm_start=0, strategy="random", alpha=None,
                        break_round=rounds, record_updates="none", defense=None, defense_params={},
                        keep_model=False, eval_every=2, eval_classes=None)  # fmt: skip
        clock = _Clock()
        simulate(c, make_plan(c, load_data(c, None, data_root)), clock)
        dt = np.diff(clock.t)  # per round
        train_round = float(dt[2])
        eval_round = max(float(np.median(dt[[1, 3]])) - train_round, 0.0)
        return {"train_s": train_round / (G * cfg.k * per * cfg.local_epochs),
                "eval_s": eval_round / (G * n_test)}  # fmt: skip
    finally:
        torch.set_num_threads(before)


def _eval_images(cfg: Config) -> int:
    """Test images evaluated over a run of `cfg` (per repeat)."""
    n_test = cfg.n_test if cfg.n_test is not None else cfg.spec.test_size
    rounds = cfg.eval_rounds()
    part = n_test if cfg.eval_classes is None else n_test * len(cfg.eval_classes) / cfg.num_classes
    return int(n_test + part * (len(rounds) - 1))


def estimate(p: Plan, store="results", threads: int | None = None, data_root=None, log=None,
             workers: int = 1, cores: int | None = None) -> dict:  # fmt: skip
    """Estimated seconds to compute `p`'s pending stacks here: per dataset and settings one
    calibration (`calibrate`) at the stack size that carries most of the pending work, kept
    in the store's CALIBRATION_FILE for later dry runs on this machine, scaled by each
    stack's training samples and evaluated test images; a stack stopped part-way counts only
    the rounds after its checkpoint.

    workers: stacks computed at once (Dask workers; 1: in this process). The warm-ups, then
             the stacks, are dealt longest first to the worker free soonest, as the scheduler
             would; where workers x threads exceeds `cores`, every stack is slowed by that
             ratio, since they share the cores (cores None: workers elsewhere, each assumed
             as fast as this machine).

    A calibration is kept for CALIBRATION_MAX_AGE_S and keyed by the CPU's family and model
    (`cpu_id`); one taken on a busy machine (more than BUSY_CPU_SHARE of the CPU time busy)
    is used once, flagged, and not kept.

    Returns {seconds (wall, on `workers`), serial_seconds (one after the other), per_round:
    {description: seconds per experiment-round}, threads, workers, oversubscribed, busy}."""
    import json

    import torch

    threads = int(threads or torch.get_num_threads())
    path = os.path.join(os.fspath(store), CALIBRATION_FILE)
    try:
        with open(path) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        cache = {}
    total, per_round, busy = 0.0, {}, False
    stacks = [[w] for w in p.warmups] + p.stacks
    # one calibration per dataset and settings, at the stack size carrying most of its work
    work: dict[str, dict[int, int]] = {}
    for stack in stacks:
        G = sum(p.to_train(c) for c in stack)
        sizes = work.setdefault(_calibration_key(stack[0], 0, threads), {})
        sizes[G] = sizes.get(G, 0) + sum(p.rounds_to_train(c) for c in stack)
    secs_of: list[float] = []
    for stack in stacks:
        lead = stack[0]
        sizes = work[_calibration_key(lead, 0, threads)]
        G = max(sizes, key=sizes.get)
        key = _calibration_key(lead, G, threads)
        if key not in cache or not time.time() - cache[key].get("at", 0) < CALIBRATION_MAX_AGE_S:
            load = _cpu_busy_share()
            if log is not None:
                log(f"calibrating {lead.dataset} ({lead.precision}, {G} stacked federations) ...")
                if load > BUSY_CPU_SHARE:
                    log(f"note: this machine is busy ({100 * load:.0f}% of its CPU time in use): the "
                        "calibration, and so the estimate, is pessimistic and is not kept; "
                        "run the dry run again on an idle machine")  # fmt: skip
            cache[key] = {**calibrate(lead, G, threads, data_root), "at": time.time(), "busy": load > BUSY_CPU_SHARE}
            busy |= load > BUSY_CPU_SHARE
        cal = cache[key]
        secs = 0.0
        for c in stack:
            n_train = c.n_train if c.n_train is not None else c.spec.train_size
            samples = c.rounds * c.k * (n_train / c.num_participants) * c.local_epochs
            secs += p.to_train(c) * (samples * cal["train_s"] + _eval_images(c) * cal["eval_s"])
        label = f"{lead.dataset} {lead.precision}, stacks of {G}"
        rate = per_round.setdefault(label, [0.0, 0])
        rate[0] += secs
        rate[1] += sum(p.rounds_to_train(c) for c in stack)
        secs *= 1.0 - saved_share(stack, p, store)  # a stopped stack resumes at its checkpoint
        total += secs
        secs_of.append(secs)
    keep = {k: v for k, v in cache.items() if not v.get("busy")}
    try:
        with open(path + ".tmp", "w") as f:
            json.dump(keep, f, indent=1)
        os.replace(path + ".tmp", path)
    except OSError:
        pass
    workers = max(1, int(workers))
    slow = 1.0 if cores is None else max(1.0, workers * threads / cores)
    nw = len(p.warmups)  # the warm-ups are one wave, the stacks the next
    wall = (_makespan(secs_of[:nw], workers) + _makespan(secs_of[nw:], workers)) * slow
    return {"seconds": wall, "serial_seconds": total, "threads": threads, "workers": workers,
            "oversubscribed": slow, "busy": busy, "per_round": {k: v[0] / v[1] for k, v in per_round.items()}}  # fmt: skip


def _cpu_busy_share(window: float = 0.5) -> float:
    """How busy the cores are now: the share of CPU time not idle over `window` seconds
    (/proc/stat), else the 1-minute load average per core (which lags by minutes)."""

    def ticks() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait

    try:
        t0, i0 = ticks()
        time.sleep(window)
        t1, i1 = ticks()
        return 1.0 - (i1 - i0) / max(t1 - t0, 1)
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0] / (os.cpu_count() or 1)
        except OSError:
            return 0.0


def _makespan(seconds: list[float], workers: int) -> float:
    """Wall time of tasks dealt longest first to the worker that is free soonest."""
    import heapq

    free = [0.0] * min(workers, max(len(seconds), 1))
    for s in sorted(seconds, reverse=True):
        heapq.heappush(free, heapq.heappop(free) + s)
    return max(free)
