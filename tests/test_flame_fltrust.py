"""FLAME and FLTrust: hand-computed cases, no silent fallback to the mean under attack, the
server's root set in the plan, bad options, and both engines (and run_many) equal in fp64 on
tiny real Fashion-MNIST runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flcore.config import Config
from flcore.core.errors import ConfigError
from flcore.core.streams import STREAM_AGGREGATOR, STREAM_PARTITION, torch_generator
from flcore.data import partition_dirichlet, partition_iid
from flcore.defenses import AGGREGATORS, RoundInfo
from flcore.defenses import flame as flame_mod
from flcore.defenses import fltrust as fltrust_mod
from flcore.defenses.aggregators import build, fedavg
from flcore.defenses.flame import flame, flame_admitted
from flcore.defenses.fltrust import fltrust, trust_scores


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def polar(norm, degrees):
    a = math.radians(degrees)
    return [norm * math.cos(a), norm * math.sin(a)]


# ---- FLAME -----------------------------------------------------------------------------------

# Four updates within 40 degrees of each other, as two tight pairs (0/10 and 30/40 degrees),
# and one pointing the other way with a large norm. Single linkage on the cosine distances
# joins the pairs at 1 - cos 10deg, the pairs at 1 - cos 20deg and the fifth only at
# 1 - cos 140deg; with min_cluster_size = 5 // 2 + 1 = 3 the fifth leaves the cluster first,
# and the four then fall apart into two pairs of 2 < 3 at once: all four are the cluster.
FLAME_ROWS = [polar(1, 0), polar(2, 10), polar(3, 30), polar(4, 40), polar(10, 180)]


def test_flame_by_hand():
    x = t(FLAME_ROWS)
    assert flame_admitted(x).tolist() == [True, True, True, True, False]
    # S = median of ALL five norms (1, 2, 3, 4, 10) = 3, not of the four admitted (2.5):
    # the norm-4 update is scaled to 3, the others are within the bound
    expected = (t(polar(1, 0)) + t(polar(2, 10)) + t(polar(3, 30)) + t(polar(3, 40))) / 4
    out = flame(x, noise=0.0)
    assert torch.allclose(out, expected, rtol=0, atol=1e-12)
    # the registered rule, noise off, in float32
    rule = build("flame", {"noise": 0.0}, {"k": 5})
    out32 = rule(x.float())
    assert out32.dtype == torch.float32 and torch.allclose(out32.double(), expected, atol=1e-6)
    # a defense's weights weight the mean of the clipped admitted updates (the rejected row's
    # weight does not matter)
    w = torch.tensor([1.0, 1.0, 2.0, 0.0, 5.0], dtype=torch.float64)
    weighted = (t(polar(1, 0)) + t(polar(2, 10)) + 2 * t(polar(3, 30))) / 4
    assert torch.allclose(flame(x, w), weighted, atol=1e-12)


def test_flame_noise_is_lambda_times_the_bound_from_the_federation_stream():
    g = torch.Generator().manual_seed(0)
    n, p = 5, 20_000
    x = torch.randn(n, p, generator=g, dtype=torch.float64) + 0.5  # one cloud: cosines ~0.2
    bound = float(np.median(x.norm(dim=1).numpy()))
    rule = build("flame", {"noise": 0.01}, {"k": 5})
    info = RoundInfo(seed=3, repeat=1, rnd=2, global_round=7)
    out = rule(x, info=info)
    clean = flame(x, noise=0.0)
    z = torch.randn(p, generator=torch_generator(3, 1, STREAM_AGGREGATOR, 7), dtype=torch.float64)
    assert torch.allclose(out - clean, 0.01 * bound * z, rtol=0, atol=1e-12)
    assert abs((out - clean).std().item() / (0.01 * bound) - 1) < 0.03  # N(0, (lambda S)^2)
    assert torch.equal(rule(x, info=info), out)  # reproducible
    other = rule(x, info=RoundInfo(seed=3, repeat=1, rnd=3, global_round=8))
    assert not torch.allclose(other, out)  # a fresh draw every round
    with pytest.raises(ValueError, match="pass info="):
        rule(x)


def test_flame_changes_the_aggregate_under_attack():
    """No silent fallback: two scaled-up attackers pointing elsewhere are rejected and the rest
    clipped, where FedAvg follows the attackers."""
    g = np.random.default_rng(1)
    honest = np.array([1.0, 1.0, 0.0, 0.0]) + g.normal(0, 0.05, size=(6, 4))
    attackers = np.array([0.0, -1.0, 4.0, 4.0]) + g.normal(0, 0.05, size=(2, 4))
    x = t(np.vstack([honest, attackers]))
    admitted = flame_admitted(x)
    assert not admitted[6:].any() and admitted.sum() >= 5  # a majority, no attacker
    out, mean = flame(x), fedavg(x)
    assert not torch.allclose(out, mean, atol=1e-3)
    assert out[2:].abs().max() < 0.2 < mean[2:].abs().min()  # the attackers' coordinates stay out
    norms = x.norm(dim=1)
    bound = float(np.median(norms.numpy()))  # k = 8: the mean of the two middle norms
    scale = torch.clamp(bound / norms, max=1.0)
    expected = (x * scale[:, None])[torch.as_tensor(admitted)].mean(0)
    assert torch.allclose(out, expected, atol=1e-12)


def test_flame_edge_cases():
    assert flame_admitted(t([[1.0, 2.0]])).tolist() == [True]
    assert torch.allclose(flame(t([[3.0, 4.0]])), t([3.0, 4.0]))  # one row: its own median norm
    same = t([[1.0, 1.0]] * 4)
    assert flame_admitted(same).all() and torch.allclose(flame(same), t([1.0, 1.0]))
    zero = t([[0.0, 0.0], [1.0, 0.0], [1.0, 0.1]])
    assert torch.isfinite(flame(zero)).all()


# ---- FLTrust ---------------------------------------------------------------------------------


def test_fltrust_by_hand():
    s = t([3.0, 4.0])  # the server's update, norm 5
    x = t([[1.0, 0.0], [0.0, 2.0], [-3.0, -4.0], [0.0, 0.0]])
    # cosines with s: 3/5, 8/10, -1, (zero row) 0 -> trust 0.6, 0.8, 0, 0
    assert torch.allclose(trust_scores(x, s), t([0.6, 0.8, 0.0, 0.0]), atol=1e-15)
    # rescaled to norm 5: (5, 0) and (0, 5); (0.6 (5, 0) + 0.8 (0, 5)) / 1.4 = (15/7, 20/7)
    expected = t([15 / 7, 20 / 7])
    assert torch.allclose(fltrust(x, s), expected, atol=1e-12)
    rule = build("fltrust", {}, {})
    assert rule.root_size() == 100
    info = RoundInfo(seed=0, repeat=0, rnd=1, global_round=1, server_update=s.float())
    out32 = rule(x.float(), info=info)
    assert out32.dtype == torch.float32 and torch.allclose(out32.double(), expected, atol=1e-6)
    # a defense's weights multiply the trust scores: (0.6 * 2 (5, 0) + 0.8 (0, 5)) / 2.0
    w = torch.tensor([2.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    assert torch.allclose(fltrust(x, s, w), t([3.0, 2.0]), atol=1e-12)
    with pytest.raises(ValueError, match="server's update"):
        rule(x)


def test_fltrust_with_no_trust_leaves_the_model_unchanged():
    s = t([1.0, 0.0])
    assert fltrust(t([[-1.0, 0.0], [0.0, 1.0], [-2.0, 5.0]]), s) is None  # cosines -1, 0, < 0
    assert fltrust(t([[1.0, 0.0]]), t([0.0, 0.0])) is None  # a zero server update


def test_fltrust_changes_the_aggregate_under_attack():
    """No silent fallback: attackers that reverse and scale up their updates get trust 0 and
    the norms are equalised, where FedAvg is dragged backwards."""
    g = np.random.default_rng(2)
    direction = np.array([1.0, 2.0, -1.0, 0.5])
    honest = direction + g.normal(0, 0.2, size=(3, 4))
    attackers = -10 * direction + g.normal(0, 0.2, size=(2, 4))
    x, s = t(np.vstack([honest, attackers])), t(direction * 0.5)
    ts = trust_scores(x, s)
    assert (ts[:3] > 0.8).all() and (ts[3:] == 0).all()
    out, mean = fltrust(x, s), fedavg(x)
    assert not torch.allclose(out, mean, atol=1e-3)
    assert torch.dot(mean, s) < 0 < torch.dot(out, s)
    assert math.isclose(out.norm().item(), s.norm().item(), rel_tol=0.1)  # about the server's norm


# ---- configuration ---------------------------------------------------------------------------


def test_both_are_registered_and_say_what_they_need():
    assert {"flame", "fltrust"} <= set(AGGREGATORS)
    assert Config(aggregator="flame").resolved_params()["aggregator_params"] == {"noise": 0.001}
    assert Config(aggregator="fltrust").resolved_params()["aggregator_params"] == {"root_size": 100}
    assert Config(aggregator="flame").build_aggregator().root_size() == 0


@pytest.mark.parametrize("kw, match", [
    (dict(aggregator="flame", k=2), r"flame with k=2.*raise k to at least 3"),
    (dict(aggregator="flame", aggregator_params={"noise": -0.1}), r"noise=-0.1 must be in \[0, inf\)"),
    (dict(aggregator="flame", aggregator_params={"lambda": 0.1}), r"unknown key 'lambda'"),
    (dict(aggregator="fltrust", aggregator_params={"root_size": 2}), r"root_size=2 < batch_size=4"),
    (dict(aggregator="fltrust", n_train=1000, aggregator_params={"root_size": 1001}),
     r"needs 101 images of each of the 10 classes.*at most 800"),
    (dict(aggregator="fltrust", n_train=250, aggregator_params={"root_size": 200}),
     r"leaves 50 of n_train=250.*at most 50"),
    (dict(aggregator="fltrust", n_train=200), r"raise n_train to at least 300"),
    (dict(aggregator="fltrust", client_state="persistent"), r"use client_state='stateless'"),
])  # fmt: skip
def test_bad_options_fail_at_config_time(kw, match):
    with pytest.raises(ConfigError, match=match):
        Config(**kw)


# ---- the plan: the server's root set ---------------------------------------------------------


def _plan(fmnist, **kw):
    from flcore.runs.runner import load_data
    from flcore.sim.plan import make_plan

    cfg = Config(**{**dict(dataset="fmnist", num_participants=10, k=5, n_train=600, n_test=100, repeats=2), **kw})
    return cfg, make_plan(cfg, load_data(cfg, fmnist))


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_the_root_set_is_class_balanced_and_in_no_share(partition, fmnist):
    cfg, plan = _plan(fmnist, aggregator="fltrust", aggregator_params={"root_size": 100}, partition=partition)
    y = plan.data.y_train
    assert len(plan.roots) == 2 and not torch.equal(plan.roots[0], plan.roots[1])  # drawn per repeat
    for j, root in enumerate(plan.roots):
        assert len(root) == 100 and len(torch.unique(root)) == 100
        assert torch.equal(torch.bincount(y[root], minlength=10), torch.full((10,), 10))
        shared = torch.cat(list(plan.shares[j]))
        assert not torch.isin(root, shared).any()  # kept out of every participant's share
        assert len(shared) + 100 <= len(y)
        if partition == "iid":
            assert len(shared) == 500  # everything else is dealt out


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_without_a_root_set_the_partition_is_unchanged(partition, fmnist):
    cfg, plan = _plan(fmnist, aggregator="flame", partition=partition)
    assert plan.roots is None
    n = len(plan.data.y_train)
    for j in range(cfg.repeats):
        gen = torch_generator(cfg.seed, j, STREAM_PARTITION)
        want = (partition_iid(n, 10, gen) if partition == "iid" else
                partition_dirichlet(plan.data.y_train, 10, cfg.beta, gen, min_size=cfg.batch_size))  # fmt: skip
        assert all(torch.equal(a, b) for a, b in zip(plan.shares[j], want))


# ---- real runs: both engines and run_many equal in fp64; the rules act -------------------------


def _recording(monkeypatch, module, name):
    """Record every call of the rule's function `module.name`: (args, output, the original)."""
    calls, fn = [], getattr(module, name)

    def wrapped(*args, **kw):
        out = fn(*args, **kw)
        calls.append((args, out))
        return out

    monkeypatch.setattr(module, name, wrapped)
    return calls, fn


@pytest.mark.parametrize("aggregator", ["flame", "fltrust"])
def test_engines_and_run_many_agree_in_fp64_and_the_rule_acts(aggregator, fmnist, monkeypatch):
    from flcore.runs.runner import run, run_many

    calls, fn = _recording(monkeypatch, flame_mod if aggregator == "flame" else fltrust_mod, aggregator)
    base = dict(dataset="fmnist", m=0.4, rounds=2, repeats=2, num_participants=10, k=5, n_train=200,
                n_test=100, precision="fp64", aggregator=aggregator)  # fmt: skip
    cfgs = [Config(**base), Config(**{**base, "m": 0.2, "src": 1, "tgt": 3})]  # batchable
    fast = run_many(cfgs, store=None, data=fmnist, progress=False)
    assert all(r.meta["batched_with"] == 2 for r in fast)
    for cfg, got in zip(cfgs, fast):
        ref = run(cfg.replace(engine="reference"), store=None, data=fmnist, progress=False)
        np.testing.assert_array_equal(got.confusion, ref.confusion)
        np.testing.assert_allclose(got.rounds["train_loss"], ref.rounds["train_loss"], rtol=0, atol=1e-12)
    # the rule saw every round of every federation (2 configs x 2 repeats x 2 rounds, twice:
    # batched, then each config in the reference engine) and never fell back to the mean
    assert len(calls) == 16
    for args, out in calls:
        rows = args[0]
        assert out is not None
        if aggregator == "flame":  # without its noise, which alone would differ from the mean
            assert not torch.allclose(fn(rows, noise=0.0), rows.mean(0), rtol=0, atol=1e-6)
        else:  # the server's update: trained, flattened like the rows
            assert args[1].shape == rows.shape[1:] and args[1].norm() > 0
            assert not torch.allclose(out, rows.mean(0), rtol=0, atol=1e-6)
    if aggregator == "flame":  # on these label-flipping rounds HDBSCAN rejected some updates
        assert any(not flame_admitted(args[0]).all() for args, _ in calls)
