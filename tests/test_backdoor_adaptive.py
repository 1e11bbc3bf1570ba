"""The backdoor (a pixel trigger, relabelled tgt; attack success rate beside the clean accuracy)
and the adaptive label flipper (the targeted flip blended with an honest twin's update):
their contracts by hand, both engines and run_many batching equal in fp64, and their effect
on real Fashion-MNIST."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flcore import Config
from flcore.attacks import CraftContext, PoisonContext
from flcore.core.errors import ConfigError
from flcore.runs.runner import run, run_many

# fmt: off


def tiny(**kw) -> Config:
    base = dict(dataset="fmnist", m=0.5, rounds=2, repeats=2, num_participants=10, k=5,
                n_train=200, n_test=100, precision="fp64")
    base.update(kw)
    return Config(**base)


def assert_same_numbers(a, b):
    """Two results with the same numbers (fp64: the engines and batchings agree)."""
    np.testing.assert_array_equal(a.confusion, b.confusion)
    np.testing.assert_allclose(a.rounds["train_loss"], b.rounds["train_loss"], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(a.rounds["attack_success"], b.rounds["attack_success"])  # NaN == NaN here
    if a.updates is not None or b.updates is not None:
        np.testing.assert_allclose(a.updates, b.updates, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------
# backdoor
# ------------------------------------------------------------------------------------------


def test_backdoor_stamps_its_trigger_and_relabels_the_stamped_samples_only():
    attack = Config(attack="backdoor", attack_params={"size": 2, "margin": 1}).build_attack()
    x = torch.zeros(3, 1, 8, 8, dtype=torch.float64)
    out = attack.stamp(x)
    expected = torch.zeros_like(x)
    expected[:, :, 5:7, 5:7] = 1.0  # 2x2 white, 1 pixel from the bottom and right edges
    assert torch.equal(out, expected) and not x.any()  # the input is untouched
    rgb = torch.full((1, 3, 6, 6), 0.5)
    checker = Config(attack="backdoor", attack_params={"size": 3, "margin": 0, "corner": "top_left",
                                                       "pattern": "checker"}).build_attack().stamp(rgb)
    patch = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    assert all(torch.equal(checker[0, ch, :3, :3], patch) for ch in range(3))  # every channel
    assert (checker[0, :, 3:, :] == 0.5).all() and (checker[0, :, :, 3:] == 0.5).all()

    labels = torch.tensor([[0, 1, 2, 3, 6, 5], [0, 1, 2, 3, 6, 5]])
    u = torch.tensor([[0.1, 0.9, 0.4, 0.6, 0.2, 0.49]] * 2, dtype=torch.float64)
    ctx = PoisonContext(torch.tensor([True, False]), torch.tensor([4, 4]), torch.tensor([6, 6]), 10,
                        lambda: u)
    new, stamp = attack.poison(labels, ctx)  # fraction 0.5: draws below 0.5 are stamped
    assert torch.equal(stamp, torch.tensor([[True, False, True, False, True, True], [False] * 6]))
    assert torch.equal(new, torch.tensor([[6, 1, 6, 3, 6, 6], [0, 1, 2, 3, 6, 5]]))
    assert attack.has_trigger and not Config(attack="label_flip").build_attack().has_trigger


def test_attack_success_rate_counts_other_classes_classified_as_the_target():
    from flcore.sim.metrics import attack_success_rate

    y = torch.tensor([0, 6, 1, 6, 2])
    pred = torch.tensor([[6, 6, 1, 0, 6],   # tgt 6: images 0, 2, 4 count; 0 and 4 hit
                         [2, 2, 2, 2, 2]])  # tgt 2: images 0, 1, 2, 3 count; all hit
    np.testing.assert_allclose(attack_success_rate(y, pred, torch.tensor([6, 2])), [200 / 3, 100.0])
    assert np.isnan(attack_success_rate(torch.tensor([6, 6]), torch.tensor([[6, 6]]), torch.tensor([6]))[0])


@pytest.mark.parametrize("params, says", [
    ({"size": 28}, "size=28 with margin=1 needs 29 pixels"),
    ({"size": 4, "margin": 25}, "lower size or margin"),
    ({"size": 0}, "size=0 must be in [1, inf)"),
    ({"fraction": 0.0}, "fraction=0.0 must be in (0, 1]"),
    ({"corner": "bottom-right"}, "did you mean 'bottom_right'"),
    ({"pattern": "chess"}, "valid: square, checker"),
])
def test_backdoor_bad_options_fail_at_config_time(params, says):
    with pytest.raises(ConfigError, match="attack_params") as ei:
        Config(attack="backdoor", attack_params=params)
    assert says in str(ei.value)
    Config(dataset="cifar10", attack="backdoor", attack_params={"size": 30, "margin": 2})  # 32x32 fits


def test_backdoor_engines_and_batching_agree_in_fp64(fmnist):
    cfg = tiny(attack="backdoor", attack_params={"pattern": "checker"}, eval_every=2, rounds=3)
    fast = run(cfg, store=None, data=fmnist, progress=False)
    ref = run(cfg.replace(engine="reference"), store=None, data=fmnist, progress=False)
    assert_same_numbers(fast, ref)
    asr = fast.rounds.pivot(index="repeat", columns="round", values="attack_success")
    assert asr[1].isna().all() and asr[3].notna().all() and asr[2].notna().all()  # evaluated rounds only
    # two targets in one stack: each federation's ASR counts its own target
    other = cfg.replace(tgt=2)
    batched = run_many([cfg, other], store=None, data=fmnist, progress=False)
    assert batched[0].meta["batched_with"] == 2
    assert_same_numbers(batched[0], fast)
    assert_same_numbers(batched[1], run(other, store=None, data=fmnist, progress=False))
    assert not np.array_equal(batched[0].rounds["attack_success"], batched[1].rounds["attack_success"])
    # an attack without a trigger: the column is there, NaN
    flip = run(cfg.replace(attack="label_flip", attack_params={}), store=None, data=fmnist, progress=False)
    assert flip.rounds["attack_success"].isna().all()


@pytest.mark.slow
def test_backdoor_is_learned_on_real_fmnist(fmnist):
    """At m = 50% the global model classifies most triggered images as tgt; the clean model
    trained without the attack (m = 0, measured with the same trigger) does not."""
    cfg = Config(dataset="fmnist", attack="backdoor", m=0.5, rounds=3, repeats=2, num_participants=10,
                 k=10, n_train=2000, n_test=500, precision="fp32")
    poisoned, clean = run_many([cfg, cfg.replace(m=0.0)], store=None, data=fmnist, progress=False)
    last = cfg.rounds

    def asr(res):
        return res.rounds[res.rounds["round"] == last]["attack_success"].to_numpy()

    def acc(res):
        return res.rounds[res.rounds["round"] == last]["accuracy"].mean()

    assert asr(poisoned).min() > asr(clean).max() + 40.0, (asr(poisoned), asr(clean))
    assert acc(poisoned) > acc(clean) - 10.0  # the clean task still works


# ------------------------------------------------------------------------------------------
# adaptive_flip
# ------------------------------------------------------------------------------------------


def _craft_with(params: dict, honest: torch.Tensor, poisoned: torch.Tensor) -> torch.Tensor:
    attack = Config(attack="adaptive_flip", attack_params=params).build_attack()
    n = len(honest)
    return attack.craft(honest, poisoned, CraftContext(torch.full((n,), 4), torch.full((n,), 6), 10, 1))


def test_adaptive_flip_blend_arithmetic():
    h = torch.tensor([[1.0, 2.0, 0.1], [0.0, 3.0, -0.7]], dtype=torch.float64)
    p = torch.tensor([[3.0, -2.0, 0.3], [4.0, 3.0, 0.9]], dtype=torch.float64)
    assert torch.equal(_craft_with({"strength": 0.0}, h, p), h)  # undetectable: exactly honest
    assert torch.equal(_craft_with({"strength": 1.0}, h, p), p)  # full strength: exactly poisoned
    quarter = _craft_with({"strength": 0.25}, h, p)
    torch.testing.assert_close(quarter, torch.tensor([[1.5, 1.0, 0.15], [1.0, 3.0, -0.3]], dtype=torch.float64),
                               rtol=0, atol=1e-15)
    # norm_match: the blend's direction, the honest update's length (row by row)
    matched = _craft_with({"strength": 0.25, "norm_match": True}, h, p)
    torch.testing.assert_close(matched.norm(dim=1), h.norm(dim=1), rtol=1e-15, atol=0)
    torch.testing.assert_close(matched / matched.norm(dim=1, keepdim=True),
                               quarter / quarter.norm(dim=1, keepdim=True), rtol=1e-15, atol=1e-15)
    assert torch.equal(_craft_with({"strength": 0.0, "norm_match": True}, h, p), h)  # still exact


def test_adaptive_flip_poisons_the_source_class_in_its_rounds_only():
    attack = Config(attack="adaptive_flip", attack_params={"every": 3}).build_attack()
    labels = torch.tensor([[4, 1, 4, 6], [4, 1, 4, 6]])

    def poison(rnd):
        return attack.poison(labels, PoisonContext(torch.tensor([True, False]), torch.tensor([4, 4]),
                                                   torch.tensor([6, 6]), 10, rnd=rnd))

    for rnd in (1, 4, 7):  # rounds 1, 1 + every, 1 + 2 * every
        new, stamp = poison(rnd)
        assert stamp is None and torch.equal(new, torch.tensor([[6, 1, 6, 6], [4, 1, 4, 6]]))
    for rnd in (2, 3, 5, 6):
        assert torch.equal(poison(rnd)[0], labels)


def test_the_engines_send_exactly_the_model_whose_update_craft_returns():
    """`_craft` turns the sent updates back into models without the rounding of
    glob + (model - glob): sending the honest (poisoned) update sends exactly that model."""
    from flcore.sim.engine import _craft

    glob = {"w": torch.tensor([[5.0, 0.33, 0.2]], dtype=torch.float64)}
    honest = {"w": torch.tensor([[0.3, 0.123456, 0.9]], dtype=torch.float64)}
    poisoned = {"w": torch.tensor([[0.7, 0.9, 1.1]], dtype=torch.float64)}
    assert not torch.equal(glob["w"] + (honest["w"] - glob["w"]), honest["w"])  # the rounding exists
    ctx = CraftContext(torch.tensor([4]), torch.tensor([6]), 10, 1)
    for strength, expected in ((0.0, honest["w"]), (1.0, poisoned["w"])):
        attack = Config(attack="adaptive_flip", attack_params={"strength": strength}).build_attack()
        assert torch.equal(_craft(attack, glob, honest, poisoned, ctx)["w"], expected)
    half = Config(attack="adaptive_flip", attack_params={"strength": 0.5}).build_attack()
    torch.testing.assert_close(_craft(half, glob, honest, poisoned, ctx)["w"],
                               (honest["w"] + poisoned["w"]) / 2, rtol=0, atol=1e-15)


@pytest.mark.parametrize("params, extra, says", [
    ({"strength": 1.5}, {}, "strength=1.5 must be in [0, 1]"),
    ({"strength": -0.1}, {}, "0 sends the honest update"),
    ({"every": 0}, {}, "every=0 must be in [1, inf)"),
    ({"norm_match": "yes"}, {}, "must be true or false"),
    ({}, {"client_state": "persistent"}, "use client_state='stateless'"),
])
def test_adaptive_flip_bad_options_fail_at_config_time(params, extra, says):
    with pytest.raises(ConfigError, match="attack_params") as ei:
        Config(attack="adaptive_flip", attack_params=params, **extra)
    assert says in str(ei.value)


@pytest.mark.parametrize("extra", [
    pytest.param({"attack_params": {"strength": 0.7, "norm_match": True, "every": 2}}, id="norm_match-every2"),
    pytest.param({"aggregator": "fltrust", "partition": "dirichlet"}, id="fltrust-server-rows-dirichlet"),
])
def test_adaptive_flip_engines_and_batching_agree_in_fp64(extra, fmnist):
    cfg = tiny(attack="adaptive_flip", record_updates="source", **extra)
    fast = run(cfg, store=None, data=fmnist, progress=False)
    ref = run(cfg.replace(engine="reference"), store=None, data=fmnist, progress=False)
    assert_same_numbers(fast, ref)
    other = cfg.replace(src=0, m=0.3)  # another source class in the same stack
    batched = run_many([cfg, other], store=None, data=fmnist, progress=False)
    assert batched[0].meta["batched_with"] == 2
    assert_same_numbers(batched[0], fast)
    assert_same_numbers(batched[1], run(other, store=None, data=fmnist, progress=False))
    flip = run(cfg.replace(attack="label_flip", attack_params={}), store=None, data=fmnist, progress=False)
    assert not np.array_equal(fast.updates, flip.updates)  # the blend is not the plain flip


def test_adaptive_flip_at_strength_0_is_an_honest_run_and_at_1_the_plain_flip(fmnist):
    """Strength 0: every update, hence every number, is the attack-free run's (m = 0: the same
    selections). Strength 1: the plain targeted flip's."""
    cfg = tiny(attack="adaptive_flip", record_updates="source", rounds=3)
    s0, s1 = run_many([cfg.replace(attack_params={"strength": 0.0}), cfg.replace(attack_params={"strength": 1.0})],
                      store=None, data=fmnist, progress=False)
    clean, flip = run_many([cfg.replace(m=0.0, attack="label_flip"), cfg.replace(attack="label_flip")],
                           store=None, data=fmnist, progress=False)
    assert (s0.rounds["n_malicious"] > 0).any()  # malicious participants were selected
    np.testing.assert_array_equal(s0.updates, clean.updates)
    np.testing.assert_array_equal(s0.confusion, clean.confusion)
    np.testing.assert_array_equal(s1.updates, flip.updates)
    np.testing.assert_array_equal(s1.confusion, flip.confusion)
    np.testing.assert_array_equal(s1.rounds["train_loss"], flip.rounds["train_loss"])
    assert not np.array_equal(s0.updates, s1.updates)


@pytest.mark.slow
def test_adaptive_flip_strength_trades_damage_on_real_fmnist(fmnist):
    """At m = 50% full strength all but erases the source class; strength 0 leaves it as the
    attack-free run has it."""
    cfg = Config(dataset="fmnist", attack="adaptive_flip", m=0.5, rounds=3, repeats=2, num_participants=10,
                 k=10, n_train=2000, n_test=500, precision="fp32")
    full, none = run_many([cfg.replace(attack_params={"strength": 1.0}),
                           cfg.replace(attack_params={"strength": 0.0})], store=None, data=fmnist, progress=False)

    def source_recall(res):
        r = res.recall[(res.recall["round"] == cfg.rounds) & (res.recall["cls"] == cfg.src)]
        return r["recall"].mean()

    assert source_recall(full) < source_recall(none) - 30.0, (source_recall(full), source_recall(none))
