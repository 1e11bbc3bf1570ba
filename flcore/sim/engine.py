"""The federated simulator: both engines, simulating a prepared plan (flcore.sim.plan).

`simulate(cfg, plan, ...)` trains `cfg.repeats` federations (or the federations `feds` of
several compatible configs) and returns raw arrays; flcore.runs turns them into a `Result`,
stores it and handles warm starts and data loading. Two implementations agree to float
tolerance, and exactly in fp64:

- `engine="reference"`: the textbook loop. One `nn.Module` and one `torch.optim.SGD` per
  selected participant, one repeat after another. Small and obviously right.
- `engine="fast"` (default): every selected participant of a round *and* every federation
  train at once as one stacked model (`flcore.sim.models.stacked_forward`: grouped
  convolutions and batched matmuls over a leading model dimension). One SGD step advances
  all of them, and all federations' global models are evaluated in one batched pass.

Each engine calls every extension hook in exactly one place: the attack's `poison` (labels
of a local schedule), `stamp` (images, for a trigger: training images, and once more the test
images for the attack success rate) and `craft` (an honest twin's attack), and `Aggregation`
(the defense's `filter`, then the aggregation rule). Every random draw comes from the plan's
streams.

A rule with a root set (FLTrust, `Aggregator.root_size() > 0`) needs the server's own update:
each round the engines also train one server model per federation from the global model on
its root set (`Plan.roots`), with the participants' settings (stateless: a fresh momentum
buffer, the round's learning rate) and its own schedule (`server_schedule`), and hand it to
`Aggregation`. The reference engine trains it after the participants; the fast engine stacks
the R server models after the R*k participants' in the same step. Without such a rule nothing
of this runs.

Two optional attack hooks work the same way. An attack with a trigger (`Attack.has_trigger`)
makes the engines evaluate each global model also on the stamped test images, for the attack
success rate (`attack_success`: raw [R, n_eval], which the runner hands to `frames`). An attack that needs an honest twin (`Attack.needs_honest_twin`) makes
them train, for each malicious model whose labels or images `poison` changed this round, a
second model from the same start on the same schedule with the true labels, and send
`Attack.craft(honest, poisoned)` instead of the poisoned update (`_craft`; the reference engine
trains the twin right after its model, the fast engine stacks the twins after all other
models in the same step). Without such an attack nothing of this runs.

Local training (documented choices, docs/SETTING.md):
- participants are stateless: a fresh SGD momentum buffer every round, and the learning rate
  follows the global round (`Config.lr_at`); with `client_state="persistent"` (the authors'
  reference code) each participant keeps its momentum buffer between its selections and its
  learning rate follows its own count of training calls (`Config.lr_after_calls`);
- an epoch is `floor(n_i / batch_size)` full batches of a fresh shuffle of the participant's
  share (with the paper's iid shares of 1,200 / 1,000 images nothing is dropped);
- datasets whose spec sets `augment` (CIFAR-10) get a random horizontal flip and a random
  crop with 4 pixels of zero padding per training sample, from the participant's stream.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from flcore.attacks import CraftContext, PoisonContext
from flcore.config import Config
from flcore.data import augment_crop_flip, normalize
from flcore.sim.aggregation import Aggregation
from flcore.sim.device import autocast, dtype_of, to_dtype
from flcore.sim.metrics import attack_success_rate, confusion_counts
from flcore.sim.models import (
    architecture,
    build_model,
    float_keys,
    last_linear_weight_name,
    stack_states,
    stacked_forward,
    training_layout,
)
from flcore.sim.plan import (
    AttackDraws,
    Plan,
    learning_rates,
    local_schedule,
    pad_like_schedule,
    server_schedule,
)


def simulate(cfg: Config, plan: Plan, progress=None, feds=None, checkpoint=None) -> dict:
    """Train the federations of `plan` (or `feds`: (config, plan, repeat) of several configs
    that `run_many` may stack) on `cfg.device` in `cfg.precision` (both resolved); returns
    the raw arrays: confusion, eval_rounds, losses, diverged_at, updates, excluded, model,
    and `aggregation` (the `Aggregation`, for per-config excluded frames).

    checkpoint: the fast engine only; an object with `load(device)` (the state saved by an earlier,
    killed training of the same federations, or None), `due()` and `save(state)`
    (flcore.runs.checkpoint). The engine resumes after the saved round and saves its state
    after each round the checkpoint says is due; every random draw is keyed by the round, so
    a resumed training gives the numbers of one that was never stopped."""
    if cfg.device == "auto" or cfg.precision == "auto":
        raise ValueError("simulate() needs a resolved config (flcore.runs.resolved)")
    if cfg.engine == "reference":
        if feds is not None:
            raise ValueError("the reference engine trains one config's repeats; use engine='fast' to stack")
        return _run_reference(cfg, plan, cfg.device, cfg.precision, progress)
    return _run_fast(cfg, plan, cfg.device, cfg.precision, progress, feds=feds, checkpoint=checkpoint)


def _test_sets(cfg: Config, x_test: torch.Tensor, y_test: torch.Tensor):
    """round -> the test images (x, y) evaluated in that round: all in the last round (and
    without `eval_classes`), else only those of `eval_classes` (selected once per run)."""
    full = (x_test, y_test)
    if cfg.eval_classes is None:
        return lambda rnd: full
    keep = torch.isin(y_test, torch.tensor(cfg.eval_classes, device=y_test.device))
    part = (x_test[keep], y_test[keep])
    return lambda rnd: full if rnd == cfg.rounds else part


def frames(cfg: Config, plan: Plan, confusion: np.ndarray, eval_rounds: np.ndarray,
            losses: np.ndarray, diverged_at: np.ndarray, attack_success: np.ndarray | None = None):  # fmt: skip
    """Tidy per-round and per-class frames from the raw arrays (attack_success: [R, n_eval],
    a trigger attack's success rate in %, or None)."""
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
    asr = np.full((R, T), np.nan)  # a trigger's attack success rate (%), in evaluated rounds
    if attack_success is not None:
        asr[:, eval_rounds - 1] = attack_success
        asr[diverged] = np.nan
    rounds = pd.DataFrame(
        {
            "repeat": np.repeat(np.arange(R), T),
            "round": np.tile(rnd, R),
            "accuracy": acc.reshape(-1),
            "n_malicious": n_mal.reshape(-1).astype(np.int64),
            "lr": (np.tile([cfg.lr_at(r) for r in rnd], R) if cfg.client_state == "stateless" else
                   np.concatenate([learning_rates(cfg, plan.selected[j]).mean(1) for j in range(R)])),  # fmt: skip
            "train_loss": losses.reshape(-1),
            "diverged": diverged.reshape(-1),
            "attack_success": asr.reshape(-1),
        }
    )
    C = confusion.shape[-1]
    support = confusion.sum(-1)  # [R, E, C]
    recall = 100.0 * np.diagonal(confusion, axis1=-2, axis2=-1) / np.maximum(support, 1)
    recall = np.where(support > 0, recall, np.nan)
    recall[diverged[:, eval_rounds - 1]] = np.nan
    E = len(eval_rounds)
    rec = pd.DataFrame(
        {
            "repeat": np.repeat(np.arange(R), E * C),
            "round": np.tile(np.repeat(eval_rounds, C), R),
            "cls": np.tile(np.arange(C), R * E),
            "recall": recall.reshape(-1),
        }
    )
    return rounds, rec


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
    confusion = np.zeros((R, len(eval_rounds), cfg.num_classes, cfg.num_classes), np.int64)
    losses = np.zeros((R, T))
    diverged_at = np.full(R, T + 1)
    updates = _updates_buffer(cfg)
    w_name = last_linear_weight_name(cfg.dataset)
    dtype = dtype_of(precision)
    model = build_model(cfg.dataset).to(device, dtype)
    aggregate = Aggregation(cfg, [(cfg, plan, j) for j in range(R)], float_keys(plan.init[0]))
    attack = cfg.build_attack()
    src1, tgt1 = torch.tensor([cfg.src], device=device), torch.tensor([cfg.tgt], device=device)
    finals = []
    persistent = cfg.client_state == "persistent"
    if persistent and attack.needs_honest_twin:  # Config rejects it (flcore.attacks.adaptive_flip)
        raise ValueError("an attack with an honest twin trains statelessly: use client_state='stateless'")
    fkeys = float_keys(plan.init[0])
    asr = np.full((R, len(eval_rounds)), np.nan) if attack.has_trigger else None
    for j in range(R):
        global_state = to_dtype(plan.init[j], dtype, device)
        lrs = learning_rates(cfg, plan.selected[j])  # [rounds, k]
        momentum: dict[int, list[torch.Tensor]] = {}  # persistent: participant -> its buffers
        e = 0
        for r in range(1, T + 1):
            returned = []
            for s, p in enumerate(plan.selected[j, r - 1]):
                model.load_state_dict(global_state)
                model.train()
                opt = torch.optim.SGD(model.parameters(), lr=float(lrs[r - 1, s]), momentum=cfg.momentum)
                if persistent and int(p) in momentum:  # its optimizer, kept from its last call
                    for q, b in zip(model.parameters(), momentum[int(p)]):
                        opt.state[q]["momentum_buffer"] = b.clone()
                order, flips, offsets = local_schedule(cfg, plan.shares[j][p], j, r, int(p))
                mal = torch.tensor([bool(plan.is_malicious[j, p])], device=device)
                draws = AttackDraws([(cfg, j, int(p))], r, [len(order)], len(order), device)
                labels, stamp = attack.poison(y_train[order][None], PoisonContext(
                    mal, src1, tgt1, cfg.num_classes, draws, rnd=r))  # fmt: skip
                labels, stamp = labels[0], None if stamp is None else stamp[0]
                total = _train_reference(cfg, model, opt, x_train, order, labels, stamp, flips, offsets,
                                         attack, data, dtype, device, precision)  # fmt: skip
                losses[j, r - 1] += total / (len(order) // cfg.batch_size) / k
                if persistent:
                    momentum[int(p)] = [opt.state[q]["momentum_buffer"].clone() for q in model.parameters()]
                returned.append({kk: v.detach().clone() for kk, v in model.state_dict().items()})
                if attack.needs_honest_twin and mal[0] and ((labels != y_train[order]).any() or (
                        stamp is not None and stamp.any())):  # fmt: skip  (its honest twin)
                    model.load_state_dict(global_state)
                    opt = torch.optim.SGD(model.parameters(), lr=float(lrs[r - 1, s]), momentum=cfg.momentum)
                    _train_reference(cfg, model, opt, x_train, order, y_train[order], None, flips, offsets,
                                     attack, data, dtype, device, precision)  # fmt: skip
                    twin_state = model.state_dict()
                    honest = {kk: twin_state[kk].detach().clone()[None] for kk in fkeys}
                    crafted = _craft(attack, {kk: global_state[kk][None] for kk in fkeys}, honest,
                                     {kk: returned[-1][kk][None] for kk in fkeys},
                                     CraftContext(src1, tgt1, cfg.num_classes, r))  # fmt: skip
                    returned[-1].update({kk: v[0] for kk, v in crafted.items()})
                if updates is not None:
                    delta = returned[-1][w_name] - global_state[w_name]
                    one = _update_rows(cfg, delta[None, None], torch.tensor([cfg.src], device=delta.device))
                    updates[j, r - 1, s] = one[0, 0].cpu().numpy()
            server = None
            if aggregate.root_size:  # the server's own update on its root set (FLTrust)
                model.load_state_dict(global_state)
                model.train()
                opt = torch.optim.SGD(model.parameters(), lr=cfg.lr_at(r), momentum=cfg.momentum)
                order, flips, offsets = server_schedule(cfg, plan.roots[j], j, r)
                _train_reference(cfg, model, opt, x_train, order, y_train[order], None, flips, offsets,
                                 attack, data, dtype, device, precision)  # fmt: skip
                server = {kk: v.detach().clone().unsqueeze(0) for kk, v in model.state_dict().items()}
            local = {kk: torch.stack([st[kk] for st in returned]).unsqueeze(0) for kk in returned[0]}
            one = aggregate(r, {kk: v.unsqueeze(0) for kk, v in global_state.items()}, local, [j], server)
            global_state = {kk: v[0] for kk, v in one.items()}
            if diverged_at[j] > T and not all(torch.isfinite(global_state[kk]).all() for kk in float_keys(global_state)):
                diverged_at[j] = r
            if r in eval_rounds:
                model.load_state_dict(global_state)
                model.eval()
                preds = []
                xt, yt = test_set(r)
                with torch.no_grad(), autocast(device, precision):
                    for b in range(0, len(yt), 1000):
                        preds.append(model(normalize(xt[b : b + 1000], data.mean, data.std, dtype)).argmax(1))
                confusion[j, e] = confusion_counts(yt, torch.cat(preds)).cpu().numpy()
                if asr is not None:  # the same images with the trigger
                    preds = []
                    with torch.no_grad(), autocast(device, precision):
                        for b in range(0, len(yt), 1000):
                            xs = attack.stamp(xt[b : b + 1000].to(dtype) / 255.0)
                            preds.append(model(normalize(xs, data.mean, data.std, dtype)).argmax(1))
                    asr[j, e] = attack_success_rate(yt, torch.cat(preds)[None], tgt1)[0]
                e += 1
            if progress is not None:
                progress.update(1)
        finals.append(global_state)
    return dict(confusion=confusion, eval_rounds=eval_rounds, losses=losses,
                diverged_at=diverged_at, updates=updates, excluded=aggregate.excluded_frame(),
                model=_kept_model(cfg, stack_states(finals)), attack_success=asr)  # fmt: skip


def _train_reference(cfg: Config, model, opt, x_train, order, labels, stamp, flips, offsets, attack, data,
                     dtype, device, precision) -> float:  # fmt: skip
    """One model's local epochs in the reference engine: SGD steps over the batches of its
    schedule `order` with `labels` (stamped images where `stamp` is set); the summed loss."""
    total = 0.0
    for b in range(0, len(order), cfg.batch_size):
        sl = slice(b, b + cfg.batch_size)
        if stamp is not None and stamp[sl].any():  # a trigger: on [0, 1] pixels
            x = x_train[order[sl]].to(dtype) / 255.0
            x[stamp[sl]] = attack.stamp(x[stamp[sl]])
        else:
            x = x_train[order[sl]]
        x = normalize(x, data.mean, data.std, dtype)
        if cfg.spec.augment:
            x = augment_crop_flip(x, flips[sl], offsets[sl])
        with autocast(device, precision):
            out = model(x)
        loss = F.cross_entropy(out.to(dtype), labels[sl])
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item()
    return total


def _craft(attack, glob: dict, honest: dict, poisoned: dict, ctx: CraftContext) -> dict:
    """The models that send `attack.craft`'s updates, for G' poisoning malicious models.

    glob, honest, poisoned: floating-point state name -> [G', ...], the global model each
    started from, its honest twin and itself. `craft` gets the updates (minus global) flattened
    in that order, [G', P]; each coordinate of its answer becomes glob + sent, except one equal
    to the honest or the poisoned update, which keeps that model's own value, so sending either
    update sends exactly that model (no rounding of glob + (model - glob))."""
    n = len(ctx.src)
    h = torch.cat([(honest[kk] - glob[kk]).reshape(n, -1) for kk in glob], 1)
    p = torch.cat([(poisoned[kk] - glob[kk]).reshape(n, -1) for kk in glob], 1)
    sent = attack.craft(h, p, ctx)
    if sent.shape != h.shape or sent.dtype != h.dtype:
        raise ValueError(f"attack {attack.name!r}: craft() returned {tuple(sent.shape)} {sent.dtype}, "
                         f"expected the updates' {tuple(h.shape)} {h.dtype}")  # fmt: skip
    out, offset = {}, 0
    for kk, g in glob.items():
        size = g[0].numel()
        sl = slice(offset, offset + size)
        s_, h_, p_ = (t[:, sl].reshape(g.shape) for t in (sent, h, p))
        out[kk] = torch.where(s_ == h_, honest[kk], torch.where(s_ == p_, poisoned[kk], g + s_))
        offset += size
    return out


def _kept_model(cfg: Config, glob: dict[str, torch.Tensor]) -> dict[str, np.ndarray] | None:
    """The stacked final global models [R, ...] as numpy (float32; integer buffers as they are)."""
    if not cfg.keep_model:
        return None
    return {k: (v.float() if v.is_floating_point() else v).cpu().numpy() for k, v in glob.items()}


def _updates_buffer(cfg: Config) -> np.ndarray | None:
    if cfg.record_updates == "none":
        return None
    rows = 1 if cfg.record_updates == "source" else cfg.num_classes
    features = architecture(cfg.dataset)[-1].args[0]
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

    Keeps the first activation near 4 Mi elements, small enough to stay in cache on a CPU
    (benchmarks/engine_speed.py times the whole round, which includes this choice).
    """
    return int(max(8, min(1000, 4 * 2**20 // (G * first_channels * hw))))


# Per-image elements of the first activation from which one model's test pass is evaluated on
# its own rather than stacked with the other repeats' models (see `_evaluate`).
PER_MODEL_EVAL_FROM = 2**15


def _evaluate(spec, glob: dict, images, R: int, hw: int, device: str, precision: str) -> torch.Tensor:
    """Predicted classes [R, n] of the R global models `glob` ([R, ...] tensors) on `images`,
    a callable (b, e) -> float images [e - b, C, H, W] normalised for one model.

    Small models (the Fashion-MNIST CNN) are evaluated as one stack: grouped convolutions over
    cache-sized chunks. For a model whose first activation is large (the CIFAR-10 CNN: 32
    channels of 32 x 32), a stack can only hold a dozen test images per chunk and the grouped
    convolutions run far below the dense ones; each model is then evaluated on its own, at
    the chunk size that suits one model (`python benchmarks/engine_speed.py` times both
    datasets' rounds, evaluation included)."""
    n, first = images.n, spec[0].args[1]
    G = 1 if first * hw >= PER_MODEL_EVAL_FROM else R  # models per forward pass
    models = [glob] if G == R else [{kk: v[g : g + 1] for kk, v in glob.items()} for g in range(R)]
    chunk = _eval_chunk(G, first, hw)
    preds = []
    with autocast(device, precision):
        for b in range(0, n, chunk):
            xe = images(b, min(b + chunk, n))
            xe = (xe.repeat(1, G, 1, 1) if G > 1 else xe).contiguous(memory_format=torch.channels_last)
            preds.append(torch.cat([stacked_forward(spec, m, xe, G, training=False).argmax(-1) for m in models]))
    return torch.cat(preds, dim=1)


class _TestImages:
    """The test images of one evaluation, normalised for one model, a slice at a time
    (`stamp`: with the attack's trigger)."""

    def __init__(self, xt, dtype, mean, std, stamp=None):
        self.xt, self.dtype, self.mean, self.std, self.stamp = xt, dtype, mean, std, stamp
        self.n = len(xt)

    def __call__(self, b: int, e: int) -> torch.Tensor:
        x = self.xt[b:e].to(self.dtype) / 255.0
        if self.stamp is not None:
            x = self.stamp(x)
        return (x - self.mean) / self.std


def _run_fast(cfg: Config, plan: Plan, device: str, precision: str, progress, feds=None,
              checkpoint=None) -> dict:  # fmt: skip
    """Train every federation of `feds` at once: a list of (config, plan, repeat), by default
    the repeats of `cfg`. `run_many` passes federations of several compatible configs (which
    differ only in the attack and selection: m, src, tgt, strategy, alpha, break round, seed)."""
    feds = feds or [(cfg, plan, j) for j in range(cfg.repeats)]
    data = plan.data
    spec = architecture(cfg.dataset)
    R, T, k, B = len(feds), cfg.rounds, cfg.k, cfg.batch_size
    G = R * k
    aggregate = Aggregation(cfg, feds, float_keys(plan.init[0]))
    server = aggregate.root_size > 0  # FLTrust: R server models stacked after the G participants
    M_base = G + R if server else G  # models trained at once (then the round's honest twins)
    attack = cfg.build_attack()
    C, H, W = data.x_train.shape[1:]
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    dtype = dtype_of(precision)
    most = M_base + (G if attack.needs_honest_twin else 0)
    mean_all = torch.tensor(data.mean, dtype=dtype, device=device).repeat(most).view(1, most * C, 1, 1)
    std_all = torch.tensor(data.std, dtype=dtype, device=device).repeat(most).view(1, most * C, 1, 1)
    mean_1, std_1 = mean_all[:, :C], std_all[:, :C]  # one model's (the test images')
    eval_rounds = np.asarray(cfg.eval_rounds())
    test_set = _test_sets(cfg, x_test, y_test)
    confusion = np.zeros((R, len(eval_rounds), cfg.num_classes, cfg.num_classes), np.int64)
    losses = np.zeros((R, T))
    diverged_at = np.full(R, T + 1)
    updates = _updates_buffer(cfg)
    w_name = last_linear_weight_name(cfg.dataset)
    fkeys = float_keys(plan.init[0])
    param_keys = [kk for kk in fkeys if not kk.endswith(("running_mean", "running_var"))]
    glob = to_dtype(stack_states([pl.init[j] for _, pl, j in feds]), dtype, device)  # [R, ...]
    src_t = torch.tensor([c.src for c, _, _ in feds], device=device).repeat_interleave(k)[:, None]
    tgt_t = torch.tensor([c.tgt for c, _, _ in feds], device=device).repeat_interleave(k)[:, None]
    cl = torch.channels_last
    augment = cfg.spec.augment
    persistent = cfg.client_state == "persistent"
    if persistent and server:  # Config rejects it (flcore.defenses.fltrust)
        raise ValueError("a root-set rule's server trains statelessly: use client_state='stateless'")
    if persistent and attack.needs_honest_twin:  # Config rejects it (flcore.attacks.adaptive_flip)
        raise ValueError("an attack with an honest twin trains statelessly: use client_state='stateless'")
    asr = np.full((R, len(eval_rounds)), np.nan) if attack.has_trigger else None
    tgt_f = tgt_t[::k, 0]  # [R]: each federation's target
    lr_tables = [learning_rates(c, pl.selected[j]) for c, pl, j in feds] if persistent else None
    fed_of = torch.arange(R, device=device).repeat_interleave(k)  # [G]: the model's federation
    momentum = None  # persistent: [R, N, ...] buffers per parameter, by participant
    e, done = 0, 0
    resume = checkpoint.load(device) if checkpoint is not None else None
    if resume is not None:  # resume after the last saved round of a killed training
        done, e = resume["round"], resume["e"]
        for name, arr in (("confusion", confusion), ("losses", losses), ("diverged_at", diverged_at),
                          ("updates", updates), ("asr", asr)):  # fmt: skip
            if arr is not None:
                arr[...] = resume[name]
        glob = {kk: v.to(device) for kk, v in resume["glob"].items()}
        if resume["momentum"] is not None:
            momentum = [m.to(device) for m in resume["momentum"]]
        aggregate.load_state_dict(resume["aggregation"])
        if progress is not None:
            progress.update(done)
    for r in range(done + 1, T + 1):
        # --- this round's data for each of the G = R*k models (then the R servers') --------
        orders, flips, offsets, mal_rows, models = [], [], [], [], []
        for c, pl, j in feds:
            for p in pl.selected[j, r - 1]:
                o, f, off = local_schedule(c, pl.shares[j][p], j, r, int(p))
                orders.append(o)
                flips.append(f)
                offsets.append(off)
                mal_rows.append(bool(pl.is_malicious[j, p]))
                models.append((c, j, int(p)))
        lengths = [len(o) for o in orders]
        if server:  # each federation's server on its root set, after the participants
            for c, pl, j in feds:
                o, f, off = server_schedule(c, pl.roots[j], j, r)
                orders.append(o)
                flips.append(f)
                offsets.append(off)
        # Unequal shares (non-iid partitions): pad every schedule to the longest and mask the
        # models that have finished their epoch (no gradient, momentum, or BN-statistics step).
        n_steps = torch.tensor([len(o) // B for o in orders], device=device)
        ragged = bool((n_steps != n_steps[0]).any())
        if ragged:
            n_max = max(len(o) for o in orders)
            orders, flips, offsets = ([pad_like_schedule(t, n_max) for t in ts] for ts in (orders, flips, offsets))
        order = torch.stack(orders).to(device)  # [M, n]
        mal_t = torch.tensor(mal_rows, device=device)
        labels, stamp = attack.poison(y_train[order[:G]], PoisonContext(
            mal_t, src_t[:, 0], tgt_t[:, 0], cfg.num_classes,
            AttackDraws(models, r, lengths, order.shape[1], device), rnd=r))  # fmt: skip
        if server:  # the server's labels are clean
            labels = torch.cat([labels, y_train[order[G:]]])
            if stamp is not None:
                stamp = torch.cat([stamp, torch.zeros_like(stamp[:R])])
        flips_t = torch.stack(flips).to(device)
        offsets_t = torch.stack(offsets).to(device)
        M, twin = M_base, None
        if attack.needs_honest_twin:  # an honest twin of each poisoning malicious model, stacked last
            changed = (labels[:G] != y_train[order[:G]]).any(1)
            if stamp is not None:
                changed |= stamp[:G].any(1)
            twin = torch.nonzero(mal_t & changed).flatten()  # rows of the G participants
            order = torch.cat([order, order[twin]])
            labels = torch.cat([labels, y_train[order[twin]]])  # true labels, unstamped images
            if stamp is not None:
                stamp = torch.cat([stamp, torch.zeros_like(stamp[twin])])
            flips_t, offsets_t, n_steps = (torch.cat([t, t[twin]]) for t in (flips_t, offsets_t, n_steps))
            M += len(twin)
        mean, std = mean_all[:, : M * C], std_all[:, : M * C]
        steps = order.shape[1] // B
        stat_keys = [kk for kk in fkeys if kk.endswith(("running_mean", "running_var"))] if ragged else []

        # --- local training: every model one step at a time --------------------------------
        state = {kk: v.repeat_interleave(k, 0) for kk, v in glob.items()}  # [G, ...]
        if server:
            state = {kk: torch.cat([v, glob[kk]]) for kk, v in state.items()}  # [M, ...]
        if twin is not None:  # each twin starts where its participant starts
            state = {kk: torch.cat([v, v[twin]]) for kk, v in state.items()}
        state = training_layout(state)
        params = [state[kk].requires_grad_() for kk in param_keys]
        mom = cfg.momentum
        if persistent:
            if momentum is None:
                momentum = [torch.zeros(R, cfg.num_participants, *p.shape[1:], dtype=p.dtype, device=device)
                            for p in params]  # fmt: skip
            pid = torch.as_tensor(np.concatenate([pl.selected[j, r - 1] for _, pl, j in feds]), device=device)
            bufs = [m[fed_of, pid].clone() for m in momentum]
            lr_g = torch.tensor(np.concatenate([t[r - 1] for t in lr_tables]), dtype=dtype, device=device)
            lr_views = [lr_g.view(-1, *([1] * (p.dim() - 1))) for p in params]
        else:
            bufs = [torch.zeros_like(p) for p in params]
            lr = cfg.lr_at(r)
        loss_sum = torch.zeros(M, dtype=dtype, device=device)
        for s in range(steps):
            idx = order[:, s * B : (s + 1) * B].t()  # [B, M]
            x = x_train[idx]  # [B, M, C, H, W]
            if stamp is not None and stamp[:, s * B : (s + 1) * B].any():  # a trigger: on [0, 1] pixels
                x = x.to(dtype) / 255.0
                rows = stamp[:, s * B : (s + 1) * B].t()  # [B, M]
                x[rows] = attack.stamp(x[rows])
                x = (x.reshape(B, M * C, H, W) - mean) / std
            else:
                x = (x.reshape(B, M * C, H, W).to(dtype) / 255.0 - mean) / std
            if augment:
                fl = flips_t[:, s * B : (s + 1) * B].t().reshape(-1)
                of = offsets_t[:, s * B : (s + 1) * B].transpose(0, 1).reshape(-1, 2)
                x = augment_crop_flip(x.reshape(B * M, C, H, W), fl, of).reshape(B, M * C, H, W)
            x = x.contiguous(memory_format=cl)
            if ragged:
                active = n_steps > s  # [M]
                saved = {kk: state[kk].clone() for kk in stat_keys}
            with autocast(device, precision):
                out = stacked_forward(spec, state, x, M, training=True)  # [M, B, 10]
            y = labels[:, s * B : (s + 1) * B]
            per = F.cross_entropy(out.to(dtype).reshape(M * B, -1), y.reshape(-1), reduction="none")
            per_model = per.view(M, B).mean(1)
            if ragged:
                per_model = per_model * active
            grads = torch.autograd.grad(per_model.sum(), params)
            with torch.no_grad():
                loss_sum += per_model.detach()
                if not ragged:
                    torch._foreach_mul_(bufs, mom)
                    torch._foreach_add_(bufs, grads)
                    if persistent:  # one learning rate per model
                        torch._foreach_sub_(params, torch._foreach_mul(bufs, lr_views))
                    else:
                        torch._foreach_add_(params, bufs, alpha=-lr)
                    continue
                for i, (p, b, g) in enumerate(zip(params, bufs, grads)):
                    a = active.view(-1, *([1] * (p.dim() - 1)))
                    b.copy_(torch.where(a, b * mom + g, b))
                    if persistent:
                        p.sub_(torch.where(a, b * lr_views[i], torch.zeros_like(b)))
                    else:
                        p.sub_(torch.where(a, b, torch.zeros_like(b)), alpha=lr)
                for kk in stat_keys:
                    a = active.view(-1, *([1] * (saved[kk].dim() - 1)))
                    state[kk].copy_(torch.where(a, state[kk], saved[kk]))
        for p in params:
            p.requires_grad_(False)
        state = {kk: v.contiguous() for kk, v in state.items()}  # aggregation as ever, on contiguous tensors
        if persistent:  # each participant's optimizer state, kept for its next selection
            for m, b in zip(momentum, bufs):
                m[fed_of, pid] = b
        if twin is not None and len(twin):  # each poisoning model sends what the attack crafts
            with torch.no_grad():
                crafted = _craft(attack, {kk: glob[kk][fed_of[twin]] for kk in fkeys},
                                 {kk: state[kk][M_base:] for kk in fkeys}, {kk: state[kk][twin] for kk in fkeys},
                                 CraftContext(src_t[twin, 0], tgt_t[twin, 0], cfg.num_classes, r))  # fmt: skip
                for kk, v in crafted.items():
                    state[kk][twin] = v
        losses[:, r - 1] = (loss_sum[:G] / n_steps[:G].clamp(min=1)).view(R, k).mean(1).cpu().numpy()

        # --- aggregation --------------------------------------------------------------------
        with torch.no_grad():
            if updates is not None:
                delta = state[w_name][:G].view(R, k, *state[w_name].shape[1:]) - glob[w_name].unsqueeze(1)
                updates[:, r - 1] = _update_rows(cfg, delta, src_t[::k, 0]).cpu().numpy()
            local = {kk: v[:G].view(R, k, *v.shape[1:]) for kk, v in state.items()}
            glob = aggregate(r, glob, local, list(range(R)), {kk: v[G:M_base] for kk, v in state.items()} if server else None)
            finite = torch.stack([torch.isfinite(glob[kk]).view(R, -1).all(1) for kk in fkeys]).all(0)
            for j in np.flatnonzero(~finite.cpu().numpy()):
                diverged_at[j] = min(diverged_at[j], r)

            # --- evaluation of every repeat's global model in one pass ----------------------
            if r in eval_rounds:
                xt, yt = test_set(r)
                pred = _evaluate(spec, glob, _TestImages(xt, dtype, mean_1, std_1), R, H * W,
                                 device, precision)  # [R, n_test]  # fmt: skip
                confusion[:, e] = confusion_counts(yt.expand(R, -1), pred).cpu().numpy()
                if asr is not None:  # the same images with the trigger
                    stamped = _TestImages(xt, dtype, mean_1, std_1, attack.stamp)
                    asr[:, e] = attack_success_rate(yt, _evaluate(spec, glob, stamped, R, H * W, device, precision), tgt_f)
                e += 1
        if checkpoint is not None and r < T and checkpoint.due():
            checkpoint.save(dict(round=r, e=e, glob=glob, momentum=momentum, confusion=confusion,
                                 losses=losses, diverged_at=diverged_at, updates=updates, asr=asr,
                                 aggregation=aggregate.state_dict()))  # fmt: skip
        if progress is not None:
            progress.update(1)
    return dict(confusion=confusion, eval_rounds=eval_rounds, losses=losses,
                diverged_at=diverged_at, updates=updates, excluded=aggregate.excluded_frame(),
                model=_kept_model(cfg, glob), aggregation=aggregate, attack_success=asr)  # fmt: skip
