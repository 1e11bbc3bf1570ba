"""Aggregation rules against hand-computed results on tiny tensors."""

import numpy as np
import pytest
import torch

from flcore.core.errors import ConfigError
from flcore.defenses import aggregators as agg


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_fedavg_plain_and_weighted():
    x = t([[1.0, 2.0], [3.0, 6.0]])
    assert torch.allclose(agg.fedavg(x), t([2.0, 4.0]))
    assert torch.allclose(agg.fedavg(x, weights=[1.0, 3.0]), t([2.5, 5.0]))
    assert agg.fedavg(x).dtype == torch.float32


def test_fedavg_rejects_bad_weights():
    x = t([[1.0], [2.0]])
    with pytest.raises(ValueError, match="weights"):
        agg.fedavg(x, weights=[1.0])
    with pytest.raises(ValueError, match="non-negative"):
        agg.fedavg(x, weights=[1.0, -1.0])


def test_median_odd_and_even():
    odd = t([[1.0, 10.0], [5.0, -3.0], [2.0, 100.0]])
    assert torch.allclose(agg.coordinate_median(odd), t([2.0, 10.0]))
    even = t([[1.0, 0.0], [4.0, 8.0], [2.0, 2.0], [100.0, -50.0]])
    # middle pairs: (2, 4) and (0, 2)
    assert torch.allclose(agg.coordinate_median(even), t([3.0, 1.0]))


def test_trimmed_mean_drops_extremes():
    x = t([[1.0], [2.0], [3.0], [4.0], [1000.0], [-1000.0], [5.0], [6.0], [7.0], [8.0]])
    # beta=0.1, k=10: drop one from each end -> mean of 1..8
    assert torch.allclose(agg.trimmed_mean(x, beta=0.1), t([4.5]))
    assert torch.allclose(agg.trimmed_mean(x, beta=0.0), agg.fedavg(x))
    # beta=0.2 drops two from each end: mean of 2..7
    assert torch.allclose(agg.trimmed_mean(x, beta=0.2), t([4.5]))
    y = t([[0.0], [1.0], [2.0], [30.0], [-40.0]])
    assert torch.allclose(agg.trimmed_mean(y, beta=0.2), t([1.0]))


@pytest.mark.parametrize("beta", [0.5, -0.1, 0.7])
def test_trimmed_mean_validation_names_beta(beta):
    with pytest.raises(ValueError, match=rf"beta={beta}.*k=3"):
        agg.trimmed_mean(t([[0.0], [1.0], [2.0]]), beta=beta)


def _cluster_with_outlier():
    # four updates near (1, 1), one far outlier
    return t([[1.0, 1.0], [1.1, 0.9], [0.9, 1.1], [1.0, 1.2], [50.0, -50.0]])


def test_krum_scores_by_hand():
    x = t([[0.0], [1.0], [3.0], [10.0], [11.0]])
    # k=5, f=1: sum of squared distances to the 2 nearest neighbours
    expected = torch.tensor([1 + 9, 1 + 4, 4 + 9, 1 + 49, 1 + 64], dtype=torch.float64)
    assert torch.allclose(agg.krum_scores(x, f=1), expected)
    assert torch.equal(agg.krum(x, f=1), t([1.0]))  # score 5 is the lowest


def test_krum_picks_update_closest_to_neighbours():
    x = _cluster_with_outlier()
    out = agg.krum(x, f=1)
    assert any(torch.equal(out, row) for row in x[:4])
    scores = agg.krum_scores(x, f=1)
    assert int(scores.argmax()) == 4


def test_multi_krum_excludes_outlier():
    x = _cluster_with_outlier()
    idx = agg.multi_krum_select(x, f=1)
    assert idx.dtype == torch.long and len(idx) == 4  # m defaults to k - f
    assert 4 not in idx.tolist()
    assert torch.allclose(agg.multi_krum(x, f=1), x[:4].mean(dim=0))
    assert torch.equal(agg.multi_krum(x, f=1, m=1), agg.krum(x, f=1))


def test_krum_validation_names_k_and_f():
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"k=4, f=1.*2f \+ 2"):
        agg.krum(x, f=1)
    with pytest.raises(ValueError, match="f=-1"):
        agg.krum_scores(torch.zeros(6, 2), f=-1)
    with pytest.raises(ValueError, match="m=9"):
        agg.multi_krum(torch.zeros(5, 2), f=1, m=9)


def _foolsgold(**params):
    return agg.FoolsGold(agg.FoolsGold.validate(params, {"k": 5}))


def test_foolsgold_downweights_sybils_keeps_honest():
    g = torch.Generator().manual_seed(0)
    honest = torch.randn(3, 100, generator=g)
    sybil = torch.randn(1, 100, generator=g)
    x = torch.cat([honest, sybil, sybil.clone()])
    w = agg.foolsgold_weights(x)
    assert w.shape == (5,)
    assert torch.all(w[3:] < 1e-6)
    assert torch.all(w[:3] > 0.5)
    # the stateful rule: weights from the output-layer rows, applied to the full updates
    rule = _foolsgold()
    state = rule.init(6, 100, x)
    full = torch.cat([x, torch.ones(5, 3)], 1)  # [5, 103]: 3 more coordinates
    out = rule(full, state=state, ids=np.array([0, 1, 2, 3, 4]), out_rows=x)
    assert torch.allclose(out, (w[:3, None].float() * full[:3]).sum(0) / w[:3].sum().float(), atol=1e-5)
    assert torch.equal(state[:5], x) and torch.all(state[5] == 0)  # history of the five


def test_foolsgold_state_accumulates_per_participant():
    """Round 2's weights use each participant's summed past (the rule's state)."""
    g = torch.Generator().manual_seed(4)
    rule = _foolsgold()
    first = torch.randn(4, 20, generator=g, dtype=torch.float64)
    state = rule.init(4, 20, first)
    first[1] = first[0]  # 0 and 1 collude in round 1
    rule(first, state=state, ids=np.arange(4), out_rows=first)
    second = torch.randn(2, 20, generator=g, dtype=torch.float64)
    out = rule(second, state=state, ids=np.array([0, 1]), out_rows=second)
    w = agg.foolsgold_weights(second, first[:2])
    assert torch.allclose(out, agg.fedavg(second, w)) if w.sum() > 0 else out is None
    assert torch.allclose(state[:2], first[:2] + second)


def test_foolsgold_history_decides_similarity():
    g = torch.Generator().manual_seed(1)
    updates = torch.randn(4, 50, generator=g)
    # participants 0 and 1 have identical (large) pasts: sybils over time
    past = torch.randn(4, 50, generator=g)
    past[1] = past[0]
    history = 100.0 * past
    w = agg.foolsgold_weights(updates, history=history)
    assert w[0] < 0.2 and w[1] < 0.2
    assert torch.all(w[2:] > 0.5)


def test_foolsgold_all_identical_leaves_the_model_unchanged():
    x = torch.ones(3, 4)
    assert torch.all(agg.foolsgold_weights(x) == 0)
    rule = _foolsgold()
    assert rule(x, state=rule.init(3, 4, x), ids=np.arange(3), out_rows=x) is None


def test_registry_and_unknown_name_suggests_closest():
    assert set(agg.AGGREGATORS) == {"fedavg", "median", "trimmed_mean", "krum", "multi_krum", "foolsgold",
                                    "geometric_median", "bulyan", "centered_clipping", "flame", "fltrust"}
    assert agg.AGGREGATORS.get("foolsgold").stateful
    with pytest.raises(ConfigError, match=r"did you mean 'trimmed_mean'") as info:
        agg.AGGREGATORS.get("trimmed-mean")
    assert "fedavg" in str(info.value)


@pytest.mark.parametrize(
    "name, params",
    [
        ("fedavg", {}),
        ("median", {}),
        ("trimmed_mean", {"beta": 0.2}),
        ("krum", {"f": 1}),
        ("multi_krum", {"f": 1, "m": 3}),
    ],
)
def test_registered_rule_calls_its_function_with_its_params(name, params):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 7, generator=g)
    rule = agg.build(name, params, {"k": 6})
    fn = {"fedavg": agg.fedavg, "median": agg.coordinate_median, "trimmed_mean": agg.trimmed_mean,
          "krum": agg.krum, "multi_krum": agg.multi_krum}[name]  # fmt: skip
    assert torch.equal(rule(x), fn(x, **params))
    if name in ("trimmed_mean", "multi_krum"):  # the parameters reach the function
        other = {"trimmed_mean": {"beta": 0.4}, "multi_krum": {"f": 1, "m": 1}}[name]
        assert not torch.equal(agg.build(name, other, {"k": 6})(x), rule(x))


def test_fedavg_rule_takes_a_defense_weights():
    x = t([[1.0, 2.0], [3.0, 6.0]])
    rule = agg.build("fedavg", {}, {"k": 2})
    assert torch.allclose(rule(x, weights=torch.tensor([1.0, 3.0])), t([2.5, 5.0]))


@pytest.mark.parametrize("name, params, match", [
    ("trimmed_mean", {"beta": 0.5}, r"beta=0.5 must be in \[0, 0.5\)"),
    ("trimmed_mean", {"betta": 0.2}, "did you mean 'beta'"),
    ("krum", {"f": 2}, r"k > 2f \+ 2 = 6"),
    ("multi_krum", {"m": 9}, r"m=9 must be in \[1, k=5\]"),
    ("foolsgold", {"kappa": 0}, "kappa=0"),
    ("median", {"beta": 0.1}, "unknown key 'beta'"),
])  # fmt: skip
def test_bad_rule_params_fail_at_validation(name, params, match):
    with pytest.raises(ConfigError, match=match):
        agg.build(name, params, {"k": 5})
