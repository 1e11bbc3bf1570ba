"""The federated simulator: FedAvg with label-flipping participants (SPEC §1–§5).

`run(config)` trains `config.repeats` independent federations and returns a `Result`.
Two implementations sit behind it and agree to float tolerance:

- `engine="reference"`: the textbook loop. One `nn.Module` and one `torch.optim.SGD` per
  selected participant, one repeat after another. Small and obviously right.
- `engine="fast"` (default): every selected participant of a round *and* every repeat train
  at once as one stacked model (`flcore.models.stacked_forward`: grouped convolutions and
  batched matmuls over a leading model dimension). One SGD step advances all of them, FedAvg
  is a mean over the stacked dimension, and all repeats' global models are evaluated on the
  test set in one batched pass.

Both draw every random choice from `flcore.attacks` streams keyed by (seed, repeat, ...), so
they select the same participants, shuffle the same way and start from the same weights.

Local training (documented choices):
- participants are stateless: a fresh SGD momentum buffer every round;
- the learning rate follows the global round (`Config.lr_at`);
- an epoch is `floor(n_i / batch_size)` full batches of a fresh shuffle of the participant's
  share (with the paper's iid shares of 1,200 / 1,000 images nothing is dropped);
- CIFAR-10 training batches get a random horizontal flip and a random crop with 4 pixels of
  zero padding, drawn per sample from the participant's stream.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from flcore import __version__
from flcore.aggregators import foolsgold_weights, get_aggregator
from flcore.attacks import (
    STREAM_INIT,
    STREAM_LOCAL,
    STREAM_PARTITION,
    flip_labels,
    malicious_set,
    select_participants,
    torch_generator,
    torch_seed_for,
)
from flcore.config import NUM_CLASSES, Config
from flcore.data import (
    Dataset,
    augment_crop_flip,
    load_dataset,
    normalize,
    partition_dirichlet,
    partition_iid,
)
from flcore.metrics import confusion_counts, final_metrics
from flcore.models import (
    ARCHITECTURES,
    build_model,
    float_keys,
    init_state,
    last_linear_weight_name,
    stack_states,
    stacked_forward,
)

AUGMENT = {"fmnist": False, "cifar10": True}


# ------------------------------------------------------------------------------------------
# Execution environment
# ------------------------------------------------------------------------------------------


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but no CUDA GPU is visible to PyTorch; use device='cpu' or 'auto'")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """`auto` picks bf16 autocast only where the hardware runs it fast.

    CUDA: GPUs with native bf16. CPU: AMX (Sapphire Rapids and later) or AVX512-BF16 (e.g. AMD
    Zen 4); on AVX2-only CPUs bf16 is emulated and several times slower than fp32. PyTorch kernels
    limited to AVX2 (`ATEN_CPU_CAPABILITY=avx2`, as `benchmarks/avx2_emulation.sh` sets to mimic
    the AVX2-only machine kind) count as AVX2-only.
    """
    if precision != "auto":
        return precision
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2", "NO AVX"):
        return "fp32"
    return "bf16" if {"amx_bf16", "avx512_bf16"} & cpu_flags() else "fp32"


def _dtype(precision: str) -> torch.dtype:
    """Storage and compute dtype of parameters and activations (bf16 runs under autocast)."""
    return torch.float64 if precision == "fp64" else torch.float32


def _to_dtype(state: dict[str, torch.Tensor], dtype: torch.dtype, device: str) -> dict:
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in state.items()}


def _autocast(device: str, precision: str):
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16")


# ------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------


@dataclass
class Result:
    """What a run produces; everything a table or figure needs.

    rounds:     DataFrame, one row per (repeat, round): accuracy (M_acc, %), n_malicious
                (malicious participants selected), lr, train_loss (mean over the selected
                participants' batches), diverged (bool); accuracy is NaN in rounds that
                were not evaluated (`eval_every`), or only on some classes
                (`eval_classes`), and after a divergence.
    recall:     DataFrame, one row per (repeat, evaluated round, class): recall (%); NaN for
                a class that round did not evaluate (`eval_classes`).
    confusion:  int64 [repeats, n_eval, C, C] (true class, predicted class).
    eval_rounds: int64 [n_eval], the evaluated rounds (1-based).
    selected:   int64 [repeats, rounds, k], participant ids per round.
    malicious:  int64 [repeats, N·m%], malicious participant ids.
    updates:    float32 [repeats, rounds, k, C' , F] or None: each selected participant's
                update (θ_{r,i} − θ_{r−1}) of the output layer's weight; C' = 1 (source row
                only, `record_updates="source"`) or C (`"all"`).
    model:      {state-dict name: [repeats, ...] array} or None: each repeat's final global
                model (`keep_model=True`; float32, integer buffers as int64).
    """

    config: Config
    rounds: pd.DataFrame
    recall: pd.DataFrame
    confusion: np.ndarray
    eval_rounds: np.ndarray
    selected: np.ndarray
    malicious: np.ndarray
    updates: np.ndarray | None = None
    excluded: pd.DataFrame | None = None
    meta: dict = field(default_factory=dict)
    model: dict[str, np.ndarray] | None = None

    def final(self) -> pd.DataFrame:
        """One row per repeat: the last round's accuracy and source/target recall (%), NaN for
        a diverged repeat (`flcore.metrics.final_metrics` has every class)."""
        return final_metrics(self)[["repeat", "accuracy", "source_recall", "target_recall", "diverged"]]

    def summary(self) -> pd.DataFrame:
        """Final accuracy and source recall, mean and std over the non-diverged repeats."""
        f = self.final()
        ok = f[~f["diverged"]]
        return pd.DataFrame(
            {
                "mean": ok[["accuracy", "source_recall", "target_recall"]].mean(),
                "std": ok[["accuracy", "source_recall", "target_recall"]].std(ddof=1),
                "runs": len(ok),
            }
        )

    # ---- persistence (flcore.store) ---------------------------------------------------------
    def to_store(self) -> tuple[dict, dict, dict]:
        frames = {"rounds": self.rounds, "recall": self.recall, "final": self.final()}
        if self.excluded is not None:
            frames["excluded"] = self.excluded
        arrays = {
            "confusion": self.confusion,
            "eval_rounds": self.eval_rounds,
            "selected": self.selected,
            "malicious": self.malicious,
        }
        if self.updates is not None:
            arrays["updates"] = self.updates
        for name, a in (self.model or {}).items():
            arrays[MODEL_PREFIX + name] = a
        return frames, arrays, self.meta

    @classmethod
    def from_store(cls, config: Config, frames: dict, arrays: dict, meta: dict) -> Result:
        return cls(
            config=config,
            rounds=frames["rounds"],
            recall=frames["recall"],
            confusion=arrays["confusion"],
            eval_rounds=arrays["eval_rounds"],
            selected=arrays["selected"],
            malicious=arrays["malicious"],
            updates=arrays.get("updates"),
            excluded=frames.get("excluded"),
            meta=meta,
            model={k[len(MODEL_PREFIX):]: a for k, a in arrays.items() if k.startswith(MODEL_PREFIX)} or None,
        )

    def model_state(self, repeat: int = 0) -> dict[str, torch.Tensor]:
        """Repeat `repeat`'s final global model as a state dict (needs `keep_model=True`)."""
        if self.model is None:
            raise ValueError("this result kept no model: run it with keep_model=True")
        return {k: torch.from_numpy(np.array(a[repeat])) for k, a in self.model.items()}


# ------------------------------------------------------------------------------------------
# Shared preparation
# ------------------------------------------------------------------------------------------


MODEL_PREFIX = "model."  # store array names of Result.model


@dataclass
class Plan:
    """Everything random about a run, drawn up front (identical for both engines)."""

    data: Dataset
    shares: list[list[torch.Tensor]]  # [repeat][participant] -> int64 indices into x_train
    malicious: np.ndarray  # [repeats, n_mal]
    is_malicious: np.ndarray  # bool [repeats, N]
    selected: np.ndarray  # [repeats, rounds, k]
    init: list[dict[str, torch.Tensor]]  # per repeat initial global state


def load_data(cfg: Config, data: Dataset | None = None, data_root=None) -> Dataset:
    if data is None:
        data = load_dataset(cfg.dataset, root=data_root, progress=False)
    if cfg.n_train is not None or cfg.n_test is not None:
        data = data.subset(cfg.n_train, cfg.n_test, seed=cfg.seed)
    return data


def make_plan(cfg: Config, data: Dataset, init_from: dict[str, torch.Tensor] | None = None) -> Plan:
    """init_from: every repeat's initial global model (a warm start), else its own initialisation."""
    shares, mal, sel, init = [], [], [], []
    is_mal = np.zeros((cfg.repeats, cfg.num_participants), dtype=bool)
    n = len(data.y_train)
    for j in range(cfg.repeats):
        gen = torch_generator(cfg.seed, j, STREAM_PARTITION)
        if cfg.partition == "iid":
            parts = list(partition_iid(n, cfg.num_participants, gen))
        else:
            parts = partition_dirichlet(data.y_train, cfg.num_participants, cfg.beta, gen,
                                        min_size=cfg.batch_size)  # fmt: skip
        shares.append(parts)
        mal_j = malicious_set(cfg, j)
        mal.append(mal_j)
        is_mal[j, mal_j] = True
        sel.append(select_participants(cfg, j, mal_j))
        init.append(init_state(cfg.dataset, torch_seed_for(cfg.seed, j, STREAM_INIT))
                    if init_from is None else init_from)  # fmt: skip
    return Plan(data, shares, np.stack(mal) if mal else np.zeros((0, 0), np.int64), is_mal,
                np.stack(sel), init)  # fmt: skip


def local_schedule(cfg: Config, share: torch.Tensor, repeat: int, rnd: int, participant: int):
    """One participant's local epochs in round `rnd`: sample order and augmentation draws.

    Returns (order int64 [steps*B], flips bool [steps*B], offsets int64 [steps*B, 2]) where
    steps = local_epochs * floor(n_i / B).
    """
    g = torch_generator(cfg.seed, repeat, STREAM_LOCAL, cfg.warm_start + rnd, participant)
    B = cfg.batch_size
    per_epoch = (len(share) // B) * B
    order = torch.cat([share[torch.randperm(len(share), generator=g)[:per_epoch]]
                       for _ in range(cfg.local_epochs)])  # fmt: skip
    n = len(order)
    flips = torch.rand(n, generator=g) < 0.5
    offsets = torch.randint(0, 9, (n, 2), generator=g)
    return order, flips, offsets


def _test_sets(cfg: Config, x_test: torch.Tensor, y_test: torch.Tensor):
    """round -> the test images (x, y) evaluated in that round: all in the last round (and
    without `eval_classes`), else only those of `eval_classes` (selected once per run)."""
    full = (x_test, y_test)
    if cfg.eval_classes is None:
        return lambda rnd: full
    keep = torch.isin(y_test, torch.tensor(cfg.eval_classes, device=y_test.device))
    part = (x_test[keep], y_test[keep])
    return lambda rnd: full if rnd == cfg.rounds else part


def _frames(cfg: Config, plan: Plan, confusion: np.ndarray, eval_rounds: np.ndarray,
            losses: np.ndarray, diverged_at: np.ndarray):  # fmt: skip
    """Tidy per-round and per-class frames from the raw arrays."""
    R, T = cfg.repeats, cfg.rounds
    n_mal = plan.is_malicious[np.arange(R)[:, None, None], plan.selected].sum(-1)  # [R, T]
    correct = np.trace(confusion, axis1=-2, axis2=-1)
    totals = confusion.sum(axis=(-2, -1))
    acc = np.full((R, T), np.nan)
    acc[:, eval_rounds - 1] = 100.0 * correct / np.maximum(totals, 1)
    if cfg.eval_classes is not None:  # rounds evaluated on some classes only have no M_acc
        acc[:, eval_rounds[eval_rounds < T] - 1] = np.nan
    rnd = np.arange(1, T + 1)
    diverged = rnd[None, :] >= diverged_at[:, None]
    acc[diverged] = np.nan
    rounds = pd.DataFrame(
        {
            "repeat": np.repeat(np.arange(R), T),
            "round": np.tile(rnd, R),
            "accuracy": acc.reshape(-1),
            "n_malicious": n_mal.reshape(-1).astype(np.int64),
            "lr": np.tile([cfg.lr_at(r) for r in rnd], R),
            "train_loss": losses.reshape(-1),
            "diverged": diverged.reshape(-1),
        }
    )
    support = confusion.sum(-1)  # [R, E, C]
    recall = 100.0 * np.diagonal(confusion, axis1=-2, axis2=-1) / np.maximum(support, 1)
    recall = np.where(support > 0, recall, np.nan)
    recall[diverged[:, eval_rounds - 1]] = np.nan
    E = len(eval_rounds)
    rec = pd.DataFrame(
        {
            "repeat": np.repeat(np.arange(R), E * NUM_CLASSES),
            "round": np.tile(np.repeat(eval_rounds, NUM_CLASSES), R),
            "cls": np.tile(np.arange(NUM_CLASSES), R * E),
            "recall": recall.reshape(-1),
        }
    )
    return rounds, rec


# ------------------------------------------------------------------------------------------
# Aggregation and the online defense (shared by both engines)
# ------------------------------------------------------------------------------------------

# Online PCA defense (flcore.defense, paper Algorithm 1 made to decide), `defense_params`:
DEFENSE_DEFAULTS = dict(
    start_round=10,  # act from this round on (the paper's picture uses rounds >= 10)
    rounds_from=3,  # collect updates from this round on: rounds 1-2 move ~10x more and
    # would make the clusters "early vs late" instead of "malicious vs honest"
    mode="block",  # "block": flagged participants are excluded for the rest of the run;
    # "round": only from this round's aggregate
    min_rows=20,  # updates collected before the first decision
    max_rows=1000,  # history the detector is fitted on (most recent rows)
    min_silhouette=0.5,  # act only on a clear split: measured 0.57-0.66 under attack (m=10-20%), 0.33-0.37 clean (F-MNIST)
    scope="history",  # judge a participant by all its updates ("round": only this one)
    clusterer="kmeans",
    rule="smaller",  # which cluster is malicious (PCADetector.rule): "smaller", "far", or
    # "direction" (the cluster whose updates point against the global source row)
)


class Aggregation:
    """The aggregator's side of a round: optional defense, then the aggregation rule.

    Called with the stacked global state `[R, ...]` and the k returned models of each of the R
    repeats `[R, k, ...]`; returns the new global state. Plain FedAvg without a defense is a
    mean over the model dimension; robust rules (flcore.aggregators) act on the flattened
    updates `[k, P]` of all floating-point state. A round whose participants are all
    excluded leaves the global model unchanged.
    """

    def __init__(self, cfg: Config, feds: list[tuple[Config, Plan, int]], float_names: list[str]):
        """feds: the stacked federations (config, plan, repeat), in stack order; they share
        `cfg`'s aggregation and defense settings (`run_many` batches only such configs)."""
        self.cfg, self.feds, self.fkeys = cfg, feds, float_names
        self.rule = get_aggregator(cfg.aggregator)
        self.params = dict(cfg.aggregator_params)
        self.plain = cfg.aggregator == "fedavg" and cfg.defense is None and not self.params
        self.w_name = last_linear_weight_name(cfg.dataset)
        self.excluded: list[tuple[int, int, int, bool]] = []
        self.foolsgold = cfg.aggregator == "foolsgold"
        self.history = None  # FoolsGold: per repeat and participant, summed output-layer updates
        self.detectors = None
        if cfg.defense == "pca":
            from flcore.defense import OnlineDetector, PCADetector

            unknown = set(cfg.defense_params) - set(DEFENSE_DEFAULTS)
            if unknown:
                raise ValueError(f"defense_params: unknown {sorted(unknown)}; valid: {sorted(DEFENSE_DEFAULTS)}")
            self.dp = dict(DEFENSE_DEFAULTS, **cfg.defense_params)
            self.detectors = [
                OnlineDetector(PCADetector(clusterer=self.dp["clusterer"], rule=self.dp["rule"]),
                               min_rows=self.dp["min_rows"],
                               max_rows=self.dp["max_rows"], scope=self.dp["scope"])
                for _ in feds
            ]
            self.blocked = [set() for _ in feds]

    def excluded_frame(self, feds: range | None = None) -> pd.DataFrame | None:
        """Who was excluded when: repeat (within its config), round, participant, malicious
        (the truth, recorded for evaluation only). feds: these federations only."""
        if self.detectors is None:
            return None
        rows = [(self.feds[i][2], r, p, mal) for i, r, p, mal in self.excluded if feds is None or i in feds]
        return pd.DataFrame(rows, columns=["repeat", "round", "participant", "malicious"]).astype(
            {"repeat": np.int64, "round": np.int64, "participant": np.int64, "malicious": bool}
        )

    def __call__(self, rnd: int, glob: dict, local: dict, repeats: list[int]) -> dict:
        """glob: name -> [R', ...]; local: name -> [R', k, ...] for the federations `repeats`
        (indices into `feds`)."""
        if self.plain:
            return {kk: (v.mean(1) if kk in self.fkeys else v[:, 0]) for kk, v in local.items()}
        k = self.cfg.k
        keep = np.ones((len(repeats), k), dtype=bool)
        out_delta = local[self.w_name] - glob[self.w_name].unsqueeze(1)  # [R', k, C, F]
        if self.detectors is not None:
            for i, j in enumerate(repeats):
                keep[i] = self._defend(rnd, j, out_delta[i], glob[self.w_name][i])
        flat_g = torch.cat([glob[kk].reshape(len(repeats), -1) for kk in self.fkeys], 1)
        flat_l = torch.cat([local[kk].reshape(len(repeats), k, -1) for kk in self.fkeys], 2)
        upd = flat_l - flat_g.unsqueeze(1)
        new_flat = flat_g.clone()
        for i, j in enumerate(repeats):
            rows = upd[i][torch.as_tensor(keep[i], device=upd.device)]
            if len(rows) == 0:
                continue
            params = dict(self.params)
            if self.foolsgold:
                _, pl, jj = self.feds[j]
                ids = pl.selected[jj, rnd - 1][keep[i]]
                cur = out_delta[i][torch.as_tensor(keep[i], device=upd.device)].reshape(len(rows), -1)
                hist = self._history(j, ids, cur)
                weights = foolsgold_weights(cur, hist, **params).to(rows.dtype)
                agg = (weights[:, None] * rows).sum(0) / weights.sum() if weights.sum() > 0 else None
            else:
                agg = self.rule(rows, **params)
            if agg is not None:
                new_flat[i] += agg
        new, offset = {}, 0
        for kk, v in local.items():
            if kk in self.fkeys:
                n = v[0, 0].numel()
                new[kk] = new_flat[:, offset : offset + n].reshape(v.shape[0], *v.shape[2:]).contiguous()
                offset += n
            else:
                new[kk] = v[:, 0]
        return new

    def _history(self, j: int, ids: np.ndarray, cur: torch.Tensor) -> torch.Tensor:
        if self.history is None:
            self.history = torch.zeros(len(self.feds), self.cfg.num_participants, cur.shape[1],
                                       dtype=cur.dtype, device=cur.device)  # fmt: skip
        idx = torch.as_tensor(ids, device=cur.device)
        past = self.history[j, idx].clone()
        self.history[j, idx] += cur
        return past

    def _defend(self, rnd: int, j: int, delta: torch.Tensor, w_glob: torch.Tensor) -> np.ndarray:
        """Score this round's updates of federation j (output-layer deltas [k, C, F], global
        output-layer weight [C, F]); returns the keep mask [k]."""
        c, pl, jj = self.feds[j]
        ids = pl.selected[jj, rnd - 1]
        if rnd < self.dp["rounds_from"]:
            return np.ones(len(ids), dtype=bool)
        rows = delta[:, c.src, :].double().cpu().numpy()
        if not np.isfinite(rows).all():
            return np.ones(len(ids), dtype=bool)
        det = self.detectors[j]
        flagged = det.flag_round(ids, rows, reference=w_glob[c.src].double().cpu().numpy())
        sep = getattr(det.detector_, "silhouette_", np.nan)
        act = rnd >= self.dp["start_round"] and len(flagged) and sep >= self.dp["min_silhouette"]
        if act and self.dp["mode"] == "block":
            self.blocked[j].update(int(p) for p in flagged)
        drop = np.isin(ids, list(self.blocked[j])) if self.dp["mode"] == "block" else (
            np.isin(ids, flagged) if act else np.zeros(len(ids), bool))  # fmt: skip
        for p in ids[drop]:
            self.excluded.append((j, rnd, int(p), bool(pl.is_malicious[jj, p])))
        return ~drop


# ------------------------------------------------------------------------------------------
# Reference engine
# ------------------------------------------------------------------------------------------


def _run_reference(cfg: Config, plan: Plan, device: str, precision: str, progress) -> dict:
    data = plan.data
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    eval_rounds = np.asarray(cfg.eval_rounds())
    test_set = _test_sets(cfg, x_test, y_test)
    R, T, k = cfg.repeats, cfg.rounds, cfg.k
    confusion = np.zeros((R, len(eval_rounds), NUM_CLASSES, NUM_CLASSES), np.int64)
    losses = np.zeros((R, T))
    diverged_at = np.full(R, T + 1)
    updates = _updates_buffer(cfg)
    w_name = last_linear_weight_name(cfg.dataset)
    dtype = _dtype(precision)
    model = build_model(cfg.dataset).to(device, dtype)
    aggregate = Aggregation(cfg, [(cfg, plan, j) for j in range(R)], float_keys(plan.init[0]))
    finals = []
    for j in range(R):
        global_state = _to_dtype(plan.init[j], dtype, device)
        e = 0
        for r in range(1, T + 1):
            returned = []
            for s, p in enumerate(plan.selected[j, r - 1]):
                model.load_state_dict(global_state)
                model.train()
                opt = torch.optim.SGD(model.parameters(), lr=cfg.lr_at(r), momentum=cfg.momentum)
                order, flips, offsets = local_schedule(cfg, plan.shares[j][p], j, r, int(p))
                labels = flip_labels(y_train[order], torch.tensor(bool(plan.is_malicious[j, p])),
                                     cfg.src, cfg.tgt)  # fmt: skip
                total = 0.0
                for b in range(0, len(order), cfg.batch_size):
                    sl = slice(b, b + cfg.batch_size)
                    x = normalize(x_train[order[sl]], data.mean, data.std, dtype)
                    if AUGMENT[cfg.dataset]:
                        x = augment_crop_flip(x, flips[sl], offsets[sl])
                    with _autocast(device, precision):
                        out = model(x)
                    loss = F.cross_entropy(out.to(dtype), labels[sl])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += loss.item()
                losses[j, r - 1] += total / (len(order) // cfg.batch_size) / k
                returned.append({kk: v.detach().clone() for kk, v in model.state_dict().items()})
                if updates is not None:
                    delta = returned[-1][w_name] - global_state[w_name]
                    one = _update_rows(cfg, delta[None, None], torch.tensor([cfg.src], device=delta.device))
                    updates[j, r - 1, s] = one[0, 0].cpu().numpy()
            local = {kk: torch.stack([st[kk] for st in returned]).unsqueeze(0) for kk in returned[0]}
            one = aggregate(r, {kk: v.unsqueeze(0) for kk, v in global_state.items()}, local, [j])
            global_state = {kk: v[0] for kk, v in one.items()}
            if diverged_at[j] > T and not all(torch.isfinite(global_state[kk]).all() for kk in float_keys(global_state)):
                diverged_at[j] = r
            if r in eval_rounds:
                model.load_state_dict(global_state)
                model.eval()
                preds = []
                xt, yt = test_set(r)
                with torch.no_grad(), _autocast(device, precision):
                    for b in range(0, len(yt), 1000):
                        preds.append(model(normalize(xt[b : b + 1000], data.mean, data.std, dtype)).argmax(1))
                confusion[j, e] = confusion_counts(yt, torch.cat(preds)).cpu().numpy()
                e += 1
            if progress is not None:
                progress.update(1)
        finals.append(global_state)
    return dict(confusion=confusion, eval_rounds=eval_rounds, losses=losses,
                diverged_at=diverged_at, updates=updates, excluded=aggregate.excluded_frame(),
                model=_kept_model(cfg, stack_states(finals)))  # fmt: skip


def _kept_model(cfg: Config, glob: dict[str, torch.Tensor]) -> dict[str, np.ndarray] | None:
    """The stacked final global models [R, ...] as numpy (float32; integer buffers as they are)."""
    if not cfg.keep_model:
        return None
    return {k: (v.float() if v.is_floating_point() else v).cpu().numpy() for k, v in glob.items()}


def _updates_buffer(cfg: Config) -> np.ndarray | None:
    if cfg.record_updates == "none":
        return None
    rows = 1 if cfg.record_updates == "source" else NUM_CLASSES
    features = ARCHITECTURES[cfg.dataset][-1].args[0]
    return np.zeros((cfg.repeats, cfg.rounds, cfg.k, rows, features), np.float32)


def _update_rows(cfg: Config, delta: torch.Tensor, srcs: torch.Tensor) -> torch.Tensor:
    """Output-layer weight updates [R, k, C, F] of R federations -> the recorded rows
    [R, k, C', F]: each federation's own source row `srcs[i]` ("source"), or all."""
    if cfg.record_updates != "source":
        return delta
    return delta[torch.arange(len(srcs), device=delta.device), :, srcs].unsqueeze(2)


# ------------------------------------------------------------------------------------------
# Fast engine
# ------------------------------------------------------------------------------------------


def _eval_chunk(G: int, first_channels: int, hw: int) -> int:
    """Test images per batched evaluation pass.

    Keeps the first activation near 4 Mi elements: small enough to stay in cache, which on
    CPU made the stacked pass 2-3x faster than large batches (a one-off measurement, see
    README "Performance"; engine_speed.py times the whole round, not this choice).
    """
    return int(max(8, min(1000, 4 * 2**20 // (G * first_channels * hw))))


def _run_fast(cfg: Config, plan: Plan, device: str, precision: str, progress, feds=None) -> dict:
    """Train every federation of `feds` at once: a list of (config, plan, repeat), by default
    the repeats of `cfg`. `run_many` passes federations of several compatible configs (which
    differ only in the attack and selection: m, src, tgt, strategy, alpha, break round, seed)."""
    feds = feds or [(cfg, plan, j) for j in range(cfg.repeats)]
    data = plan.data
    spec = ARCHITECTURES[cfg.dataset]
    R, T, k, B = len(feds), cfg.rounds, cfg.k, cfg.batch_size
    G = R * k
    C, H, W = data.x_train.shape[1:]
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    dtype = _dtype(precision)
    mean = torch.tensor(data.mean, dtype=dtype, device=device).repeat(G).view(1, G * C, 1, 1)
    std = torch.tensor(data.std, dtype=dtype, device=device).repeat(G).view(1, G * C, 1, 1)
    mean_e, std_e = mean[:, : R * C], std[:, : R * C]
    eval_rounds = np.asarray(cfg.eval_rounds())
    test_set = _test_sets(cfg, x_test, y_test)
    confusion = np.zeros((R, len(eval_rounds), NUM_CLASSES, NUM_CLASSES), np.int64)
    losses = np.zeros((R, T))
    diverged_at = np.full(R, T + 1)
    updates = _updates_buffer(cfg)
    w_name = last_linear_weight_name(cfg.dataset)
    fkeys = float_keys(plan.init[0])
    param_keys = [kk for kk in fkeys if not kk.endswith(("running_mean", "running_var"))]
    glob = _to_dtype(stack_states([pl.init[j] for _, pl, j in feds]), dtype, device)  # [R, ...]
    src_t = torch.tensor([c.src for c, _, _ in feds], device=device).repeat_interleave(k)[:, None]
    tgt_t = torch.tensor([c.tgt for c, _, _ in feds], device=device).repeat_interleave(k)[:, None]
    cl = torch.channels_last
    chunk = _eval_chunk(R, spec[0].args[1], H * W)
    aggregate = Aggregation(cfg, feds, fkeys)
    e = 0
    for r in range(1, T + 1):
        # --- this round's data for each of the G = R*k models -----------------------------
        orders, flips, offsets, mal_rows = [], [], [], []
        for c, pl, j in feds:
            for p in pl.selected[j, r - 1]:
                o, f, off = local_schedule(c, pl.shares[j][p], j, r, int(p))
                orders.append(o)
                flips.append(f)
                offsets.append(off)
                mal_rows.append(bool(pl.is_malicious[j, p]))
        # Unequal shares (non-iid partitions): pad every schedule to the longest and mask the
        # models that have finished their epoch (no gradient, momentum, or BN-statistics step).
        n_steps = torch.tensor([len(o) // B for o in orders], device=device)
        ragged = bool((n_steps != n_steps[0]).any())
        if ragged:
            n_max = max(len(o) for o in orders)
            orders, flips, offsets = ([t.repeat((n_max + len(t) - 1) // len(t), *([1] * (t.dim() - 1)))[:n_max]
                                      for t in ts] for ts in (orders, flips, offsets))  # fmt: skip
        order = torch.stack(orders).to(device)  # [G, n]
        labels = flip_labels(y_train[order], torch.tensor(mal_rows, device=device)[:, None], src_t, tgt_t)
        flips_t = torch.stack(flips).to(device)
        offsets_t = torch.stack(offsets).to(device)
        steps = order.shape[1] // B
        stat_keys = [kk for kk in fkeys if kk.endswith(("running_mean", "running_var"))] if ragged else []

        # --- local training: every model one step at a time --------------------------------
        state = {kk: v.repeat_interleave(k, 0) for kk, v in glob.items()}  # [G, ...]
        params = [state[kk].requires_grad_() for kk in param_keys]
        bufs = [torch.zeros_like(p) for p in params]
        lr, mom = cfg.lr_at(r), cfg.momentum
        loss_sum = torch.zeros(G, dtype=dtype, device=device)
        for s in range(steps):
            idx = order[:, s * B : (s + 1) * B].t()  # [B, G]
            x = x_train[idx].reshape(B, G * C, H, W)
            x = (x.to(dtype) / 255.0 - mean) / std
            if AUGMENT[cfg.dataset]:
                fl = flips_t[:, s * B : (s + 1) * B].t().reshape(-1)
                of = offsets_t[:, s * B : (s + 1) * B].transpose(0, 1).reshape(-1, 2)
                x = augment_crop_flip(x.reshape(B * G, C, H, W), fl, of).reshape(B, G * C, H, W)
            x = x.contiguous(memory_format=cl)
            if ragged:
                active = n_steps > s  # [G]
                saved = {kk: state[kk].clone() for kk in stat_keys}
            with _autocast(device, precision):
                out = stacked_forward(spec, state, x, G, training=True)  # [G, B, 10]
            y = labels[:, s * B : (s + 1) * B]
            per = F.cross_entropy(out.to(dtype).reshape(G * B, -1), y.reshape(-1), reduction="none")
            per_model = per.view(G, B).mean(1)
            if ragged:
                per_model = per_model * active
            grads = torch.autograd.grad(per_model.sum(), params)
            with torch.no_grad():
                loss_sum += per_model.detach()
                if not ragged:
                    torch._foreach_mul_(bufs, mom)
                    torch._foreach_add_(bufs, grads)
                    torch._foreach_add_(params, bufs, alpha=-lr)
                    continue
                for p, b, g in zip(params, bufs, grads):
                    a = active.view(-1, *([1] * (p.dim() - 1)))
                    b.copy_(torch.where(a, b * mom + g, b))
                    p.sub_(torch.where(a, b, torch.zeros_like(b)), alpha=lr)
                for kk in stat_keys:
                    a = active.view(-1, *([1] * (saved[kk].dim() - 1)))
                    state[kk].copy_(torch.where(a, state[kk], saved[kk]))
        for p in params:
            p.requires_grad_(False)
        losses[:, r - 1] = (loss_sum / n_steps.clamp(min=1)).view(R, k).mean(1).cpu().numpy()

        # --- aggregation --------------------------------------------------------------------
        with torch.no_grad():
            if updates is not None:
                delta = state[w_name].view(R, k, *state[w_name].shape[1:]) - glob[w_name].unsqueeze(1)
                updates[:, r - 1] = _update_rows(cfg, delta, src_t[::k, 0]).cpu().numpy()
            local = {kk: v.view(R, k, *v.shape[1:]) for kk, v in state.items()}
            glob = aggregate(r, glob, local, list(range(R)))
            finite = torch.stack([torch.isfinite(glob[kk]).view(R, -1).all(1) for kk in fkeys]).all(0)
            for j in np.flatnonzero(~finite.cpu().numpy()):
                diverged_at[j] = min(diverged_at[j], r)

            # --- evaluation of every repeat's global model in one pass ----------------------
            if r in eval_rounds:
                preds = []
                xt, yt = test_set(r)
                with _autocast(device, precision):
                    for b in range(0, len(yt), chunk):
                        xe = xt[b : b + chunk]
                        xe = (xe.to(dtype).repeat(1, R, 1, 1) / 255.0 - mean_e) / std_e
                        xe = xe.contiguous(memory_format=cl)
                        preds.append(stacked_forward(spec, glob, xe, R, training=False).argmax(-1))
                pred = torch.cat(preds, dim=1)  # [R, n_test]
                confusion[:, e] = confusion_counts(yt.expand(R, -1), pred).cpu().numpy()
                e += 1
        if progress is not None:
            progress.update(1)
    return dict(confusion=confusion, eval_rounds=eval_rounds, losses=losses,
                diverged_at=diverged_at, updates=updates, excluded=aggregate.excluded_frame(),
                model=_kept_model(cfg, glob), aggregation=aggregate)  # fmt: skip


# ------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------


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
                       defense_params={}, keep_model=True)  # fmt: skip


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
        data = load_dataset(cfgs[0].dataset, root=data_root, progress=False)
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
    """The result-store key of `config` on this machine (device kind and precision resolved)."""
    from flcore.store import config_key

    return config_key(resolved(config).key_dict(), __version__)


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
    device = cfg.device

    st = None
    if store is not None:
        from flcore.store import Store

        st = Store(store)
        key = store_key(cfg)
        hit = st.get(key)
        if hit is not None:
            return Result.from_store(cfg, hit.frames, hit.arrays, hit.meta)

    t0 = time.perf_counter()
    data, (start,) = _warm_starts([cfg], store, data, data_root, progress)
    data = load_data(cfg, data, data_root)
    plan = make_plan(cfg, data, start)
    bar = None
    if progress:
        from tqdm import tqdm  # a text bar: widget bars are saved as a dead "0/N" by papermill

        bar = tqdm(total=cfg.rounds * (cfg.repeats if cfg.engine == "reference" else 1),
                   desc=f"{cfg.dataset} m={cfg.m:g} {cfg.strategy}", unit="round", leave=False)  # fmt: skip
    try:
        impl = _run_fast if cfg.engine == "fast" else _run_reference
        raw = impl(cfg, plan, device, cfg.precision, bar)
    finally:
        if bar is not None:
            bar.close()
    return _finish(cfg, plan, raw, time.perf_counter() - t0, st)


def _finish(cfg: Config, plan: Plan, raw: dict, wall_s: float, st, **extra_meta) -> Result:
    """Frames, metadata and the store entry of one configuration's raw arrays."""
    rounds, recall = _frames(cfg, plan, raw["confusion"], raw["eval_rounds"], raw["losses"],
                             raw["diverged_at"])  # fmt: skip
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
MAX_BATCHED_FEDERATIONS = {"fmnist": 30, "cifar10": 12}  # bounds memory: G = this x k models


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
        from flcore.store import Store

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
        cap = MAX_BATCHED_FEDERATIONS[cfgs[idx[0]].dataset]
        batch: list[int] = []
        for i in idx + [None]:
            if i is not None and (not batch or sum(cfgs[b].repeats for b in batch) + cfgs[i].repeats <= cap):
                batch.append(i)
                continue
            results = _run_batch([cfgs[b] for b in batch], st, data, data_root, progress)
            for b, res in zip(batch, results):
                for dup in members[store_key(cfgs[b])]:
                    out[dup] = res
            batch = [i] if i is not None else []
    return out


def _run_batch(cfgs: list[Config], st, data, data_root, progress) -> list[Result]:
    t0 = time.perf_counter()
    data, starts = _warm_starts(cfgs, None if st is None else st.path, data, data_root, progress)
    data_sub = load_data(cfgs[0], data, data_root)
    plans = [make_plan(c, data_sub, w) for c, w in zip(cfgs, starts)]
    feds = [(c, pl, j) for c, pl in zip(cfgs, plans) for j in range(c.repeats)]
    lead = cfgs[0].replace(repeats=len(feds))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=lead.rounds, desc=f"{lead.dataset}: {len(cfgs)} configs, {len(feds)} federations",
                   unit="round", leave=False)  # fmt: skip
    try:
        raw = _run_fast(lead, plans[0], lead.device, lead.precision, bar, feds=feds)
    finally:
        if bar is not None:
            bar.close()
    wall = (time.perf_counter() - t0) / len(cfgs)
    results, start = [], 0
    for c, pl in zip(cfgs, plans):
        sl = slice(start, start + c.repeats)
        start += c.repeats
        part = {"confusion": raw["confusion"][sl], "eval_rounds": raw["eval_rounds"],
                "losses": raw["losses"][sl], "diverged_at": raw["diverged_at"][sl],
                "updates": None if raw["updates"] is None else raw["updates"][sl],
                "excluded": raw["aggregation"].excluded_frame(range(sl.start, sl.stop)),
                "model": None if raw["model"] is None else {kk: v[sl] for kk, v in raw["model"].items()}}  # fmt: skip
        results.append(_finish(c, pl, part, wall, st, batched_with=len(cfgs)))
    return results
