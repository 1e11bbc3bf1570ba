"""Running configurations: resolve, look up the store, warm-start, load data, simulate, store.

`run(config)` and `run_many(configs)` are the entry points; the engines below them
(flcore.sim) only simulate a prepared plan. A configuration already in the result store (same
resolved config, same flcore version, same device kind and precision) is loaded, not
retrained; `run_many` stacks compatible configurations into one batched simulation.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import torch

from flcore import __version__
from flcore.config import Config
from flcore.data import Dataset, specs
from flcore.sim.device import cpu_name, keep_freed_memory, resolve_device, resolve_precision
from flcore.sim.engine import frames as make_frames
from flcore.sim.engine import simulate
from flcore.sim.plan import Plan, make_plan
from flcore.sim.result import Result

# Set by `python -m flcore reproduce` while it renders: every run must come from the store.
RENDER_ONLY_ENV = "FLCORE_RENDER_ONLY"


class MissingRunError(RuntimeError):
    """A render-only run (`RENDER_ONLY_ENV` set) needs a configuration the store lacks."""


def describe(cfg: Config) -> str:
    """The fields of `cfg` that differ from a default Config of its dataset, e.g.
    "(dataset='fmnist', m=0.1, rounds=200)"."""
    d, ref = cfg.to_dict(), Config(dataset=cfg.dataset).to_dict()
    return "(" + ", ".join(f"{k}={v!r}" for k, v in d.items() if v != ref.get(k) or k == "dataset") + ")"


def _check_may_train(cfg: Config, store) -> None:
    """Raise `MissingRunError` naming `cfg` when this process may only read the store."""
    if os.environ.get(RENDER_ONLY_ENV):
        raise MissingRunError(
            f"render only: the configuration {describe(cfg)} (key {store_key(cfg)}) is not in the "
            f"result store {store!s}; compute it first: `python -m flcore reproduce --profile <P>` "
            f"computes every run a profile needs before rendering")  # fmt: skip


def load_data(cfg: Config, data: Dataset | None = None, data_root=None) -> Dataset:
    """`cfg`'s dataset (its spec's loader, or `data` if given), subset to n_train / n_test."""
    if data is None:
        data = specs.load(cfg.dataset, data_root, progress=False)
    if cfg.n_train is not None or cfg.n_test is not None:
        data = data.subset(cfg.n_train, cfg.n_test, seed=cfg.seed)
    return data


def pretrain_config(cfg: Config) -> Config:
    """The clean warm-up behind `cfg.warm_start`: `cfg`'s data and training settings, m = 0,
    plain FedAvg, one repeat of `warm_start` rounds, final model kept.

    Everything that does not change a clean run is normalised, so every attack, defense and
    selection strategy on the same data and seed starts from the same stored model.
    """
    return cfg.replace(m=0.0, src=0, tgt=1, strategy="random", alpha=None,
                       break_round=Config.break_round, repeats=1, rounds=cfg.warm_start,
                       warm_start=0, eval_every=cfg.warm_start, eval_classes=None, record_updates="none",
                       aggregator="fedavg", aggregator_params={}, defense=None,
                       defense_params={}, attack="label_flip", attack_params={}, keep_model=True)  # fmt: skip


def warm_state(cfg: Config, *, store="results", data: Dataset | None = None, data_root=None,
               progress: bool = False) -> dict[str, torch.Tensor] | None:  # fmt: skip
    """The initial global model of a warm-started config (None if `warm_start` is 0): the
    final model of `pretrain_config(cfg)`, loaded from the store or trained (and stored)."""
    if not cfg.warm_start:
        return None
    pre = run(pretrain_config(cfg), store=store, data=data, data_root=data_root, progress=progress)
    return pre.model_state(0)


def _warm_starts(cfgs: list[Config], store, data: Dataset | None, data_root, progress):
    """(data, initial global model per config) for configs of one dataset: one load (or
    training) per distinct warm-up; the full dataset is loaded once and shared with the runs."""
    if data is None and any(c.warm_start for c in cfgs):
        data = specs.load(cfgs[0].dataset, data_root, progress=False)
    keys = [store_key(pretrain_config(c)) if c.warm_start else "" for c in cfgs]
    warm: dict[str, dict | None] = {}
    for c, key in zip(cfgs, keys):
        if key not in warm:
            warm[key] = warm_state(c, store=store, data=data, data_root=data_root, progress=progress)
    return data, [warm[key] for key in keys]


def resolved(config: Config) -> Config:
    """The config with device and precision resolved for this machine (what the key hashes)."""
    device = resolve_device(config.device)
    return config.replace(device=device, precision=resolve_precision(config.precision, device))


def store_key(config: Config) -> str:
    """The result-store key of `config` on this machine: the resolved config (device kind and
    precision resolved, every extension default filled in), the flcore version and
    `flcore.core.numerics.NUMERICS_VERSION`."""
    from flcore.core.numerics import key_version
    from flcore.runs.store import config_key

    return config_key(resolved(config).key_dict(), key_version(__version__))


def run(
    config: Config | dict | None = None,
    *,
    store: str | os.PathLike | None = "results",
    data: Dataset | None = None,
    data_root=None,
    progress: bool = True,
    **overrides,
) -> Result:
    """Train `config.repeats` federations and return their `Result`.

    store:  a results directory; a configuration that is already stored there (same
            normalised config, same flcore version, same device kind and precision) is
            loaded instead of retrained. None disables the store.
    data:   an already loaded `flcore.data.Dataset` (else `load_dataset(config.dataset)`).
    overrides: Config fields, e.g. `run(m=0.1, rounds=20)`.
    """
    if config is None:
        config = Config()
    if isinstance(config, dict):
        config = Config.from_dict(config)
    if overrides:
        config = config.replace(**overrides)
    cfg = resolved(config)

    st = None
    if store is not None:
        from flcore.runs.store import Store

        st = Store(store)
        key = store_key(cfg)
        hit = st.get(key)
        if hit is not None:
            return Result.from_store(cfg, hit.frames, hit.arrays, hit.meta)

    _check_may_train(cfg, store)
    if cfg.engine == "fast":  # a stack of one configuration, checkpointed like any other
        return _run_batch([cfg], st, data, data_root, progress)[0]
    t0, c0 = time.perf_counter(), time.process_time()
    data, (start,) = _warm_starts([cfg], store, data, data_root, progress)
    data = load_data(cfg, data, data_root)
    plan = make_plan(cfg, data, start)
    bar = None
    if progress:
        from tqdm import tqdm  # a text bar: widget bars are saved as a dead "0/N" by papermill

        bar = tqdm(total=cfg.rounds * cfg.repeats, desc=f"{cfg.dataset} m={cfg.m:g} {cfg.strategy}",
                   unit="round", leave=False)  # fmt: skip
    try:
        keep_freed_memory()
        raw = simulate(cfg, plan, bar)
    finally:
        if bar is not None:
            bar.close()
    return _finish(cfg, plan, raw, time.perf_counter() - t0, st, cpu_s=time.process_time() - c0)


def _checkpoint(cfgs: list[Config], st, first: list[int] | None = None):
    """The mid-training checkpoint of a stack of the fast engine with a store (else None):
    flcore.runs.checkpoint. first: each member's first trained repeat (`stored_prefix`)."""
    if st is None or cfgs[0].engine != "fast":
        return None
    from flcore.runs.checkpoint import Checkpoint

    return Checkpoint(st.path, [store_key(c) for c in cfgs], first=first)


def prefix_repeats(cfg: Config, st) -> int:
    """How many of `cfg`'s repeats a stored run already holds: the most repeats r < cfg.repeats
    for which the same configuration with `repeats=r` is in the store `st` (0: none, or no
    store, or the reference engine). Repeat j of a run is the same federation whatever the
    number of repeats (every random stream is keyed by (seed, j)), so those r repeats are the
    first r of `cfg`, and only the others need training."""
    if st is None or cfg.engine != "fast" or cfg.repeats < 2:
        return 0
    for r in range(cfg.repeats - 1, 0, -1):
        if st.has(store_key(cfg.replace(repeats=r))):
            return r
    return 0


def stored_prefix(cfg: Config, st) -> tuple[int, Result | None]:
    """(r, the stored run of `cfg` with r repeats) for r = `prefix_repeats(cfg, st)`, read
    and verified; (0, None) if there is none (or it fails its checksums)."""
    r = prefix_repeats(cfg, st)
    if not r:
        return 0, None
    short = cfg.replace(repeats=r)
    hit = st.get(store_key(short))
    if hit is None:  # damaged, and quarantined by this verifying read
        return 0, None
    return r, Result.from_store(short, hit.frames, hit.arrays, hit.meta)


def _raw_of(res: Result) -> dict:
    """A stored run's arrays as the engine returned them (what `_finish` takes)."""
    cfg, T = res.config, res.config.rounds
    rounds = res.rounds.sort_values(["repeat", "round"], kind="stable")
    R = cfg.repeats
    losses = rounds["train_loss"].to_numpy(np.float64).reshape(R, T)
    div = rounds["diverged"].to_numpy(bool).reshape(R, T)
    diverged_at = np.where(div.any(1), div.argmax(1) + 1, T + 1)
    asr = None
    if cfg.build_attack().has_trigger:
        asr = rounds["attack_success"].to_numpy(np.float64).reshape(R, T)[:, res.eval_rounds - 1]
    return {"confusion": res.confusion, "eval_rounds": res.eval_rounds, "losses": losses,
            "diverged_at": diverged_at, "updates": res.updates, "attack_success": asr,
            "excluded": res.excluded, "model": res.model}  # fmt: skip


def _extend(stored: dict, trained: dict) -> dict:
    """The raw arrays of repeats 0..r-1 (`stored`, a stored run's) followed by those of the
    repeats trained after them (`trained`)."""
    out = {"eval_rounds": trained["eval_rounds"]}
    for name in ("confusion", "losses", "diverged_at", "updates", "attack_success"):
        a, b = stored[name], trained[name]
        out[name] = None if a is None or b is None else np.concatenate([a, b])
    frames = [f for f in (stored["excluded"], trained["excluded"]) if f is not None]
    out["excluded"] = (pd.concat(frames, ignore_index=True).sort_values(
        ["repeat", "round", "participant"], kind="stable").reset_index(drop=True) if frames else None)  # fmt: skip
    a, b = stored["model"], trained["model"]
    out["model"] = None if a is None or b is None else {k: np.concatenate([a[k], b[k]]) for k in b}
    return out


def _finish(cfg: Config, plan: Plan, raw: dict, wall_s: float, st, **extra_meta) -> Result:
    """Frames, metadata and the store entry of one configuration's raw arrays."""
    rounds, recall = make_frames(cfg, plan, raw["confusion"], raw["eval_rounds"], raw["losses"],
                             raw["diverged_at"], raw.get("attack_success"))  # fmt: skip
    diverged = raw["diverged_at"] <= cfg.rounds
    meta = {
        "version": __version__,
        "status": "diverged" if diverged.any() else "ok",
        "diverged_repeats": [int(j) for j in np.flatnonzero(diverged)],
        "wall_s": wall_s,
        "device": cfg.device,
        "precision": cfg.precision,
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "pid": os.getpid(),  # which process (a Dask worker, say) computed it
        "torch": torch.__version__,
        "data_source": plan.data.source,
        **extra_meta,
    }
    result = Result(cfg, rounds, recall, raw["confusion"], raw["eval_rounds"], plan.selected,
                    plan.malicious, raw["updates"], raw["excluded"], meta, raw.get("model"))  # fmt: skip
    if st is not None:
        frames, arrays, meta = result.to_store()
        st.put(store_key(cfg), cfg.key_dict(), frames, arrays, meta)
    return result


# Fields in which configs batched together by `run_many` may differ: the attack and selection.
# Everything else (training, aggregation, defense, recording) must be equal.
BATCHABLE_FIELDS = ("m", "src", "tgt", "strategy", "alpha", "break_round", "repeats", "seed")


def _batch_group(cfg: Config):
    """Configs with equal group keys can train in one stack (None: this one trains alone)."""
    if cfg.engine != "fast":
        return None
    d = cfg.to_dict()
    subset = cfg.n_train is not None or cfg.n_test is not None  # the subset depends on the seed
    for name in BATCHABLE_FIELDS:
        if not (name == "seed" and subset):
            d.pop(name)
    return repr(sorted(d.items()))


def run_many(configs, *, store="results", data: Dataset | None = None, data_root=None,
             progress: bool = True) -> list[Result]:  # fmt: skip
    """Run several configurations, training compatible ones together; results in input order.

    Configs that differ only in the attack and selection (`BATCHABLE_FIELDS`) share one
    stacked model, so a grid of small configs (e.g. 3 repeats each) trains at the efficiency
    of one large batch. Each config's numbers are its own (every random stream is keyed by
    its seed and repeat) and it is stored under its own key; stored configs are loaded.
    In fp64 a config's numbers are identical batched or alone; in fp32/bf16 they can differ
    by float rounding, as between any two batchings.
    """
    cfgs = [resolved(Config.from_dict(c) if isinstance(c, dict) else c) for c in configs]
    st = None
    if store is not None:
        from flcore.runs.store import Store

        st = Store(store)
    out: list[Result | None] = [None] * len(cfgs)
    groups: dict = {}
    for i, cfg in enumerate(cfgs):
        hit = st.get(store_key(cfg)) if st is not None else None
        if hit is not None:
            out[i] = Result.from_store(cfg, hit.frames, hit.arrays, hit.meta)
            continue
        key = _batch_group(cfg)
        if key is None:
            out[i] = run(cfg, store=store, data=data, data_root=data_root, progress=progress)
            continue
        groups.setdefault(key, {}).setdefault(store_key(cfg), []).append(i)  # duplicates train once
    for members in groups.values():
        idx = [ii[0] for ii in members.values()]
        todo = {i: cfgs[i].repeats - prefix_repeats(cfgs[i], st) for i in idx}
        for batch in _split(idx, cfgs, todo=todo):
            for b in batch:
                _check_may_train(cfgs[b], store)
            results = _run_batch([cfgs[b] for b in batch], st, data, data_root, progress)
            for b, res in zip(batch, results):
                for dup in members[store_key(cfgs[b])]:
                    out[dup] = res
    return out


def models_per_federation(cfg: Config) -> int:
    """Models a federation of `cfg` trains at once in the fast engine, at most: its k
    participants, plus an honest twin of each (an attack that needs one, e.g. adaptive_flip),
    plus the server's model (a rule with a root set, e.g. fltrust)."""
    twins = cfg.k if cfg.build_attack().needs_honest_twin else 0
    server = 1 if cfg.build_aggregator().root_size() > 0 else 0
    return cfg.k + twins + server


def _split(idx: list[int], cfgs: list[Config], cap: int | None = None,
           todo: dict[int, int] | None = None) -> list[list[int]]:  # fmt: skip
    """One batch group's configs (indices, in order) cut into stacks of at most `cap`
    federations and at most the dataset's bound for the device, `spec.stack_cap(device)` x k
    models (counting each federation's honest twins and server model, `models_per_federation`);
    a config larger than either is a stack of its own. todo: index -> the federations that
    config trains, where fewer than its repeats (the others stored, `prefix_repeats`)."""
    todo = todo or {}
    first = cfgs[idx[0]]
    cap = cap or 10**9
    models_cap = first.spec.stack_cap(first.device) * first.k
    per = models_per_federation(first)  # the same for every config of a batch group
    out, batch, feds = [], [], 0
    for i in idx:
        r = todo.get(i, cfgs[i].repeats)
        if batch and (feds + r > cap or (feds + r) * per > models_cap):
            out.append(batch)
            batch, feds = [], 0
        batch.append(i)
        feds += r
    if batch:
        out.append(batch)
    return out


def batches(configs: list[Config], max_federations: int | None = None,
            todo: dict[str, int] | None = None) -> list[list[Config]]:  # fmt: skip
    """How `run_many` trains `configs` (resolved, distinct keys): the stacks it forms, in the
    order it trains them. A config that cannot be batched (reference engine) is a stack of its
    own. `flcore.runs.compute` runs each stack as one task, so the numbers are the same
    whether the stacks run in this process or on a cluster. max_federations: a smaller cap
    than the dataset's. todo: store key -> the federations that config trains, where fewer
    than its repeats (a stored run holds the first ones, `prefix_repeats`)."""
    groups: dict = {}
    alone: list[list[Config]] = []
    for i, cfg in enumerate(configs):
        key = _batch_group(cfg)
        if key is None:
            alone.append([cfg])
        else:
            groups.setdefault(key, []).append(i)
    sizes = {i: todo[store_key(c)] for i, c in enumerate(configs) if todo and store_key(c) in todo}
    out = [[configs[i] for i in b] for idx in groups.values() for b in _split(idx, configs, max_federations, sizes)]
    return alone + out


def train_stack(cfgs: list[Config], *, store="results", data: Dataset | None = None, data_root=None,
                progress: bool = False, on_round=None) -> list[Result]:  # fmt: skip
    """Train `cfgs` (batchable together, at most the dataset's cap of federations) as one
    stacked model, whether or not some are stored already, and store those that are not
    (stored entries are kept as they are). `flcore.runs.compute` runs every stack so, so a
    configuration's numbers do not depend on which of its stack-mates were stored before.
    `on_round(r)`, when given, is called after each round with the rounds done so far."""
    cfgs = [resolved(c) for c in cfgs]
    if len({_batch_group(c) for c in cfgs}) != 1 or _batch_group(cfgs[0]) is None:
        raise ValueError("train_stack: the configurations must be batchable together "
                         f"(differ only in {', '.join(BATCHABLE_FIELDS)}) and use the fast engine")  # fmt: skip
    st = None
    if store is not None:
        from flcore.runs.store import Store

        st = Store(store)
    for c in cfgs:
        _check_may_train(c, store)
    return _run_batch(cfgs, st, data, data_root, progress, on_round)


class _RoundHook:
    """The engine's progress object: advances an optional text bar and tells `on_round` the
    rounds done so far."""

    def __init__(self, bar, on_round) -> None:
        self.bar, self.on_round, self.done = bar, on_round, 0

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        if self.on_round is not None:
            self.on_round(self.done)


def _run_batch(cfgs: list[Config], st, data, data_root, progress, on_round=None) -> list[Result]:
    # a configuration whose first repeats are stored with fewer repeats trains only the others
    prefixes = [stored_prefix(c, st) for c in cfgs]
    first = [r for r, _ in prefixes]
    ckpt = _checkpoint(cfgs, st, first)
    t0, c0 = time.perf_counter(), time.process_time()
    data, starts = _warm_starts(cfgs, None if st is None else st.path, data, data_root, progress)
    data_sub = load_data(cfgs[0], data, data_root)
    plans = [make_plan(c, data_sub, w) for c, w in zip(cfgs, starts)]
    feds = [(c, pl, j) for c, pl, r0 in zip(cfgs, plans, first) for j in range(r0, c.repeats)]
    lead = cfgs[0].replace(repeats=len(feds))
    bar = None
    if progress:
        from tqdm import tqdm

        desc = (f"{lead.dataset} m={lead.m:g} {lead.strategy}" if len(cfgs) == 1
                else f"{lead.dataset}: {len(cfgs)} configs, {len(feds)} federations")  # fmt: skip
        bar = tqdm(total=lead.rounds, desc=desc, unit="round", leave=False)
    hook = None if bar is None and on_round is None else _RoundHook(bar, on_round)
    try:
        keep_freed_memory()
        raw = simulate(lead, plans[0], hook, feds=feds, checkpoint=ckpt)
    finally:
        if bar is not None:
            bar.close()
    wall = (time.perf_counter() - t0 + (0.0 if ckpt is None else ckpt.wall_before)) / len(cfgs)
    cpu_before = 0.0 if ckpt is None else ckpt.cpu_before  # None: resumed from a checkpoint without it
    cpu = None if cpu_before is None else (time.process_time() - c0 + cpu_before) / len(cfgs)
    results, start = [], 0
    for c, pl, (r0, pre) in zip(cfgs, plans, prefixes):
        sl = slice(start, start + c.repeats - r0)
        start += c.repeats - r0
        part = {"confusion": raw["confusion"][sl], "eval_rounds": raw["eval_rounds"],
                "losses": raw["losses"][sl], "diverged_at": raw["diverged_at"][sl],
                "updates": None if raw["updates"] is None else raw["updates"][sl],
                "attack_success": None if raw.get("attack_success") is None else raw["attack_success"][sl],
                "excluded": raw["aggregation"].excluded_frame(range(sl.start, sl.stop)),
                "model": None if raw["model"] is None else {kk: v[sl] for kk, v in raw["model"].items()}}  # fmt: skip
        extra = {} if ckpt is None else {"resumed_after": ckpt.resumed_at}
        wall_c, cpu_c = wall, cpu
        if pre is not None:  # repeats 0..r0-1 from the stored run: its time counts too
            part = _extend(_raw_of(pre), part)
            wall_c += float(pre.meta.get("wall_s") or 0.0)
            cpu_c = None if cpu is None or pre.meta.get("cpu_s") is None else cpu + float(pre.meta["cpu_s"])
            extra["extended_from"] = r0
        results.append(_finish(c, pl, part, wall_c, st, batched_with=len(cfgs), cpu_s=cpu_c, **extra))
    if ckpt is not None:
        ckpt.remove()
    return results
