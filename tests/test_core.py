"""Config validation, the paper's models, the threat model and selection strategies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flcore.attacks import ATTACKS, PoisonContext
from flcore.config import Config, ConfigError
from flcore.sim.models import (
    architecture,
    build_model,
    count_parameters,
    init_state,
    stack_states,
    stacked_forward,
)
from flcore.sim.selection import Selection, malicious_set, select_participants

# ---- models ------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset,expected", [("fmnist", 29_034), ("cifar10", 551_466)])
def test_parameter_counts_match_the_paper(dataset, expected):
    assert count_parameters(build_model(dataset)) == expected


@pytest.mark.parametrize("dataset,shape", [("fmnist", (1, 28, 28)), ("cifar10", (3, 32, 32))])
def test_stacked_forward_equals_each_module(dataset, shape):
    G = 3
    states = [init_state(dataset, s) for s in range(G)]
    stacked = stack_states(states)
    x = torch.randn(5, G * shape[0], *shape[1:], dtype=torch.float64)
    stacked = {k: (v.double() if v.is_floating_point() else v) for k, v in stacked.items()}
    out = stacked_forward(architecture(dataset), stacked, x, G, training=True)
    assert out.shape == (G, 5, 10)
    for g in range(G):
        m = build_model(dataset).double()
        m.load_state_dict(states[g])
        m.train()
        ref = m(x[:, g * shape[0] : (g + 1) * shape[0]])
        torch.testing.assert_close(out[g], ref, rtol=1e-12, atol=1e-12)
        # the running statistics advanced exactly like the module's
        for k, v in m.state_dict().items():
            if v.is_floating_point():
                torch.testing.assert_close(stacked[k][g], v, rtol=1e-12, atol=1e-12)


def test_init_is_reproducible_from_the_seed():
    a, b, c = init_state("fmnist", 1), init_state("fmnist", 1), init_state("fmnist", 2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["0.weight"], c["0.weight"])


# ---- config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(m=1.5), "m=1.5"),
        (dict(m=-0.1), "m=-0.1"),
        (dict(m=10), "did you mean 0.1"),
        (dict(k=51), "k=51 > num_participants=50"),
        (dict(src=3, tgt=3), "src=tgt=3"),
        (dict(src=10), "src=10"),
        (dict(tgt=-1), "tgt=-1"),
        (dict(strategy="availability", alpha=1.2), "alpha=1.2"),
        (dict(strategy="availability"), "alpha=None"),
        (dict(strategy="late", break_round=300), "break_round=300"),
        (dict(batch_size=0), "batch_size=0"),
        (dict(rounds=0), "rounds=0"),
        (dict(repeats=-2), "repeats=-2"),
        (dict(dataset="mnist"), "dataset='mnist'"),
        (dict(strategy="lat"), "did you mean 'late'"),
        (dict(rounds=2.5), "rounds=2.5"),
        (dict(m="0.1"), "m='0.1'"),
        (dict(strategy="early", m=0.95), "honest participants"),
    ],
)
def test_config_errors_name_the_value_and_the_fix(kwargs, needle):
    with pytest.raises(ConfigError) as e:
        Config(**kwargs)
    assert needle in str(e.value)


def test_config_defaults_follow_the_reference_code():
    f, c = Config(dataset="fmnist"), Config(dataset="cifar10")
    assert (f.batch_size, f.lr, f.momentum) == (4, 0.001, 0.9)
    assert (c.batch_size, c.lr, c.momentum) == (10, 0.01, 0.5)
    # stateless participants: the per-participant step of 10 epochs is 10 * N/k = 100 rounds
    assert f.lr_step_rounds == 100
    assert f.lr_at(1) == f.lr_at(100) == 0.001
    assert f.lr_at(101) == pytest.approx(1e-4)
    assert c.lr_at(200) == 0.01


def test_unknown_config_key_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'rounds'"):
        Config.from_dict({"round": 3})


@pytest.mark.parametrize("m,expected", [(0.0, 0), (0.02, 1), (0.03, 2), (0.1, 5), (0.5, 25), (0.009, 0)])
def test_malicious_count_rounds_to_nearest(m, expected):
    assert Config(m=m).num_malicious == expected


# ---- attack ------------------------------------------------------------------------------


def test_flipping_touches_only_malicious_participants_and_only_the_source_class():
    labels = torch.arange(10).repeat(3, 4)  # 3 participants x 40 labels
    original = labels.clone()
    mal = torch.tensor([True, False, True])
    attack = Config(src=4, tgt=6).build_attack()
    assert type(attack) is ATTACKS.get("label_flip")
    out, stamp = attack.poison(labels, PoisonContext(mal, torch.full((3,), 4), torch.full((3,), 6), 10))
    assert stamp is None
    assert torch.equal(labels, original)  # the shared labels are never modified
    assert torch.equal(out[1], original[1])
    for p in (0, 2):
        changed = out[p] != original[p]
        assert torch.all(original[p][changed] == 4) and torch.all(out[p][changed] == 6)
        assert changed.sum() == (original[p] == 4).sum()


def test_malicious_set_is_seeded_and_sized():
    cfg = Config(m=0.2, repeats=3)
    a = [malicious_set(cfg, j) for j in range(3)]
    assert all(len(x) == 10 and len(set(x)) == 10 for x in a)
    assert not np.array_equal(a[0], a[1])  # repeats differ
    assert np.array_equal(a[0], malicious_set(cfg, 0))


# ---- selection strategies ------------------------------------------------------------------


def _selections(strategy, m=0.2, alpha=None, rounds=300, break_round=75):
    cfg = Config(m=m, strategy=strategy, alpha=alpha, rounds=rounds, break_round=break_round)
    mal = malicious_set(cfg, 0)
    sel = select_participants(cfg, 0, mal)
    is_mal = np.isin(sel, mal)
    return cfg, sel, is_mal


@pytest.mark.parametrize("strategy", ["random", "early", "late"])
def test_selection_is_k_distinct(strategy):
    cfg, sel, _ = _selections(strategy)
    assert sel.shape == (cfg.rounds, cfg.k)
    assert all(len(set(row)) == cfg.k for row in sel)


def test_early_poisoning_has_no_malicious_from_the_break_on():
    _, _, is_mal = _selections("early")
    assert is_mal[:74].any()
    assert not is_mal[74:].any()  # rows are rounds 1..R; round 75 is row 74


def test_late_poisoning_has_no_malicious_before_the_break():
    _, _, is_mal = _selections("late")
    assert not is_mal[:74].any()
    assert is_mal[74:].any()


@pytest.mark.parametrize("alpha", [0.6, 0.9])
def test_availability_bound_and_rate(alpha):
    cfg, sel, is_mal = _selections("availability", m=0.4, alpha=alpha, rounds=2000)
    assert not is_mal[:74].any()
    per_round = is_mal.sum(1)
    assert per_round.max() <= cfg.num_malicious
    # 20 malicious >> k=5, so the pool never runs dry: a fraction ~alpha of the slots
    assert abs(is_mal[74:].mean() - alpha) < 0.03


def test_availability_never_exceeds_the_malicious_count():
    cfg, _, is_mal = _selections("availability", m=0.04, alpha=1.0, rounds=500)  # 2 malicious
    assert cfg.num_malicious == 2
    assert is_mal[74:].sum(1).max() == 2
    assert (is_mal[74:].sum(1) == 2).all()  # alpha=1: always both, the rest honest


def test_selection_draws_are_reproducible():
    s = Selection("random", 50, 5, np.array([1, 2]))
    a = [s(r, np.random.default_rng(7)) for r in range(3)]
    b = [s(r, np.random.default_rng(7)) for r in range(3)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_confusion_counts_batched_and_single():
    """One counter for the engines (batched tensors) and for users (arrays): hand-counted."""
    from flcore.sim.metrics import confusion_counts, confusion_matrix

    y = torch.tensor([[0, 0, 1, 2], [2, 2, 2, 1]])
    pred = torch.tensor([[0, 1, 1, 2], [2, 0, 2, 1]])
    c = confusion_counts(y, pred, num_classes=3)
    assert c.shape == (2, 3, 3)
    assert c[0].tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert c[1].tolist() == [[0, 0, 0], [0, 1, 0], [1, 0, 2]]
    np.testing.assert_array_equal(confusion_matrix([2, 2, 2, 1], [2, 0, 2, 1], num_classes=3), c[1].numpy())
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix([0, 1], [0], num_classes=3)
