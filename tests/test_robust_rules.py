"""Geometric median (RFA), Bulyan and centered clipping against hand-computed results, on
data with an outlier, and their parameter checks through `Config`."""

import math

import numpy as np
import pytest
import torch

from flcore.config import Config
from flcore.core.errors import ConfigError
from flcore.defenses import AGGREGATORS
from flcore.defenses.aggregators import build
from flcore.defenses.bulyan import bulyan, bulyan_select
from flcore.defenses.centered_clipping import centered_clip
from flcore.defenses.geometric_median import geometric_median


def t(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


def rule(name, k=5, **params):
    return build(name, params, {"k": k})


def honest_and_outlier(n_honest=4, seed=0):
    """n_honest rows near 0 (|x| < 0.1 per coordinate) and one row at 100, in 3 dims."""
    g = np.random.default_rng(seed)
    honest = g.uniform(-0.1, 0.1, size=(n_honest, 3))
    return t(np.vstack([honest, np.full((1, 3), 100.0)])), t(honest.mean(0))


def assert_robust(out, x, honest_mean):
    """Not the mean (no silent fallback) and closer to the honest rows' mean than the mean is."""
    mean = x.mean(0)
    assert not torch.allclose(out, mean, atol=1e-3)
    assert (out - honest_mean).norm() < (mean - honest_mean).norm() / 10


# ---- geometric median ----------------------------------------------------------------------


def test_geometric_median_is_the_fermat_point_by_hand():
    # triangle (0,0), (4,0), (0,4): all angles < 120 deg, so the geometric median is the
    # Fermat point (t, t) on the symmetry axis, where d/dt [2 sqrt((4-t)^2 + t^2) + sqrt(2) t]
    # = 0 gives 3t^2 - 12t + 8 = 0, t = 2 - 2/sqrt(3) = 0.8453 (the mean is (4/3, 4/3))
    x = t([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    tt = 2 - 2 / math.sqrt(3)
    out = geometric_median(x)
    assert torch.allclose(out, t([tt, tt]), atol=1e-5)
    out32 = rule("geometric_median")(x.float())
    assert out32.dtype == torch.float32 and torch.allclose(out32, t([tt, tt]).float(), atol=1e-4)


def test_geometric_median_in_one_dim_is_the_weighted_median():
    x = t([[0.0], [1.0], [10.0]])
    assert torch.allclose(geometric_median(x), t([1.0]), atol=1e-6)  # the mean is 11/3
    # weights 1, 1, 3: the row at 10 holds more than half the weight (the mean is 6.2)
    w = torch.tensor([1.0, 1.0, 3.0], dtype=torch.float64)
    assert torch.allclose(rule("geometric_median")(x, weights=w), t([10.0]), atol=1e-6)


def test_geometric_median_one_weiszfeld_step_by_hand():
    # max_iter=1: one step from the mean z0 = 11/3; distances 11/3, 8/3, 19/3
    x = t([[0.0], [1.0], [10.0]])
    b = [3 / 11, 3 / 8, 3 / 19]
    z1 = (0 * b[0] + 1 * b[1] + 10 * b[2]) / sum(b)
    assert torch.allclose(rule("geometric_median", max_iter=1)(x), t([z1]))
    # a loose relative tolerance stops after that first step as well: |z1 - z0| / |z0| < 0.5
    assert torch.allclose(rule("geometric_median", tol=0.5)(x), t([z1]))


def test_geometric_median_smoothing_when_the_estimate_is_a_row():
    # at row 1, (0, 0), the unit vectors to the other rows sum to (-1,0) + (1,0) + (0,1) +
    # (0,-1) = 0, of norm < its weight 1: row 1 is the geometric median. The iterations land
    # on it (distance 0, smoothed to eps) without a NaN. The mean is (0, 0.5).
    x = t([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.0, -0.5]])
    out = geometric_median(x)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, t([0.0, 0.0]), atol=1e-6)


def test_geometric_median_resists_an_outlier():
    x, honest = honest_and_outlier()
    assert_robust(rule("geometric_median")(x), x, honest)


@pytest.mark.parametrize("params, match", [
    ({"max_itr": 5}, r"unknown key 'max_itr'; did you mean 'max_iter'\?"),
    ({"max_iter": 0}, r"max_iter=0 must be in \[1, inf\)"),
    ({"tol": 0.0}, r"tol=0.0 must be in \(0, inf\)"),
    ({"eps": -1e-8}, r"eps=-1e-08 must be in \(0, inf\)"),
    ({"max_iter": 2.5}, r"max_iter=2.5 \(float\) must be an integer"),
])  # fmt: skip
def test_geometric_median_params_are_checked(params, match):
    with pytest.raises(ConfigError, match=match):
        Config(aggregator="geometric_median", aggregator_params=params)


def test_geometric_median_params_defaults():
    assert Config(aggregator="geometric_median").key_dict()["aggregator_params"] == {
        "max_iter": 100, "tol": 1e-6, "eps": 1e-8}  # fmt: skip


# ---- Bulyan --------------------------------------------------------------------------------

BULYAN_X = [[0.0, 0.0], [1.0, 0.0], [2.0, 1.0], [3.5, 0.0], [4.0, 9.0], [20.0, 0.0], [40.0, 40.0]]


def test_bulyan_by_hand():
    """k=7, f=1: theta = 5 picks by Krum, then beta = 3 values per coordinate."""
    x = t(BULYAN_X)
    # pick 1, all 7 rows, Krum with f=1 sums the 4 nearest squared distances; row 2 (2, 1):
    #   to row 1: 1+1 = 2, row 3: 2.25+1 = 3.25, row 0: 4+1 = 5, row 4: 4+64 = 68 -> 78.25,
    #   the lowest (row 1: 1 + 4 + 6.25 + 88 = 99.25; row 3: 103)
    # pick 2, rows {0,1,3,4,5,6}, the 3 nearest; row 1: 1 + 6.25 + 90 = 97.25, row 3: 12.25 +
    #   6.25 + 81.25 = 99.75 -> row 1
    # pick 3, rows {0,3,4,5,6}: 2 nearest; row 3: 12.25 + 81.25 = 93.5, row 0: 12.25 + 97 =
    #   109.25 -> row 3
    # pick 4, rows {0,4,5,6}: 4 rows < 2f + 3, so f drops to (4 - 3) // 2 = 0 and the 2 nearest
    #   count; row 0: 97 + 400 = 497, row 4: 97 + 337 = 434 -> row 4
    # pick 5, rows {0,5,6}: f = 0, 1 nearest; row 0: 400, row 5: 400 (a tie: lowest index),
    #   row 6: 2000 -> row 0
    assert bulyan_select(x, f=1).tolist() == [2, 1, 3, 4, 0]
    # selection rows 2, 1, 3, 4, 0: coordinate 0 values 2, 1, 3.5, 4, 0, median 2, the three
    # closest 2, 1, 3.5 -> 6.5 / 3; coordinate 1 values 1, 0, 0, 9, 0, median 0 -> 0, 0, 0
    out = rule("bulyan", k=7, f=1)(x)
    assert torch.allclose(out, t([6.5 / 3, 0.0]))
    # not the mean (10.07, 7.14), the coordinate median (3.5, 0) or Krum (row 2)
    assert torch.allclose(x.mean(0), t([70.5 / 7, 50 / 7]))
    # the default f = 0 keeps everything in both stages: the mean
    assert torch.allclose(rule("bulyan", k=7)(x), x.mean(0))


def test_bulyan_coordinate_stage_by_hand():
    # k=11, f=2: theta = 7, beta = 3. Krum keeps the 7 rows of the bulk and leaves out the 4
    # far ones; the second stage, checked with numpy: per coordinate, the 3 values of the 7
    # closest to their median, averaged
    base = np.array([[0.0, 0.0], [0.5, 3.0], [1.0, -1.0], [1.5, 0.5], [2.0, -2.5], [2.5, 1.0],
                     [3.0, 0.0], [30.0, 0.0], [-30.0, 0.0], [0.0, 40.0], [0.0, -40.0]])  # fmt: skip
    x = t(base)
    sel = bulyan_select(x, f=2).tolist()
    assert sorted(sel) == [0, 1, 2, 3, 4, 5, 6]  # the four far rows are left out
    s = base[:7]
    med = np.median(s, axis=0)  # (1.5, 0)
    closest = np.sort(np.abs(s - med), axis=0)  # unique distances per coordinate here
    expected = [np.mean([v for v in s[:, j] if abs(v - med[j]) <= closest[2, j]]) for j in range(2)]
    # coordinate 0: 1.5 (0), 1.0 and 2.0 (0.5) -> 1.5; coordinate 1: 0, 0 (0), 0.5 -> 1/6
    assert np.allclose(expected, [1.5, 1 / 6])
    assert torch.allclose(bulyan(x, f=2), t(expected))


def test_bulyan_resists_an_outlier():
    x, honest = honest_and_outlier(n_honest=6)  # k = 7 = 4f + 3 with f = 1
    out = rule("bulyan", k=7, f=1)(x)
    assert_robust(out, x, honest)
    assert 6 not in bulyan_select(x, f=1).tolist()  # the outlier


def test_bulyan_runtime_rows_must_be_enough():
    # a defense may leave fewer rows than k: the rule names the requirement, not a Krum error
    with pytest.raises(ValueError, match=r"k=6, f=1: Bulyan needs k >= 4f \+ 3 = 7"):
        bulyan(torch.zeros(6, 2), f=1)


@pytest.mark.parametrize("k, f, match", [
    (5, 1, r"f=1 with k=5: Bulyan needs k >= 4f \+ 3 = 7 participants per round; lower f to "
           r"at most 0 or raise k to at least 7"),
    (10, 2, r"f=2 with k=10: Bulyan needs k >= 4f \+ 3 = 11 participants per round; lower f "
            r"to at most 1 or raise k to at least 11"),
    (2, 0, r"f=0 with k=2: Bulyan needs k >= 4f \+ 3 = 3 participants per round; raise k to "
           r"at least 3"),
])  # fmt: skip
def test_bulyan_k_at_least_4f_plus_3_at_config_time(k, f, match):
    with pytest.raises(ConfigError, match=match):
        Config(aggregator="bulyan", k=k, aggregator_params={"f": f})


def test_bulyan_params_are_checked():
    assert Config(aggregator="bulyan").key_dict()["aggregator_params"] == {"f": 0}
    assert Config(aggregator="bulyan", k=7, aggregator_params={"f": 1})  # 7 = 4f + 3
    assert Config(aggregator="bulyan", k=11, aggregator_params={"f": 2})
    with pytest.raises(ConfigError, match=r"f=-1 must be in \[0, inf\)"):
        Config(aggregator="bulyan", aggregator_params={"f": -1})
    with pytest.raises(ConfigError, match=r"unknown key 'ff'; did you mean 'f'\?"):
        Config(aggregator="bulyan", aggregator_params={"ff": 1})


# ---- centered clipping ---------------------------------------------------------------------


def test_centered_clipping_by_hand_and_state_carries_v():
    cc = rule("centered_clipping", tau=1.0)
    state = cc.init(10, 1, torch.zeros(3, 1, dtype=torch.float64))
    x = t([[0.0], [0.0], [3.0]])
    # round 1, v = 0: x - v = 0, 0, 3; the 3 is clipped to 1 -> v = (0 + 0 + 1) / 3
    assert torch.allclose(cc(x, state=state), t([1 / 3]))  # the mean is 1
    assert torch.allclose(state["v"], t([1 / 3]))
    # round 2, same rows, v = 1/3: x - v = -1/3, -1/3, 8/3 -> -1/3, -1/3, 1 -> v += 1/9
    assert torch.allclose(cc(x, state=state), t([4 / 9]))
    # without the carried state round 2 would give 1/3 again
    fresh = cc.init(10, 1, x)
    assert torch.allclose(cc(x, state=fresh), t([1 / 3]))
    # iters=2 in one round is the same two steps
    cc2 = rule("centered_clipping", tau=1.0, iters=2)
    assert torch.allclose(cc2(x, state=cc2.init(10, 1, x)), t([4 / 9]))


def test_centered_clipping_clips_the_row_norm_around_the_center():
    # (3, 4) has norm 5 -> (0.6, 0.8) with tau = 1; (0, 0) stays; mean (0.3, 0.4), not (1.5, 2)
    x = t([[3.0, 4.0], [0.0, 0.0]])
    assert torch.allclose(centered_clip(x, tau=1.0), t([0.3, 0.4]))
    # around the center (3, 0): x - c = (0, 4) -> (0, 1) and (-3, 0) -> (-1, 0); c + (-0.5, 0.5)
    assert torch.allclose(centered_clip(x, t([3.0, 0.0]), tau=1.0), t([2.5, 0.5]))
    # weights 3, 1 around 0: (3 * (0.6, 0.8) + 0) / 4
    w = torch.tensor([3.0, 1.0], dtype=torch.float64)
    cc = rule("centered_clipping", tau=1.0)
    assert torch.allclose(cc(x, weights=w, state=cc.init(2, 2, x)), t([0.45, 0.6]))
    f32 = cc(x.float(), state=cc.init(2, 2, x.float()))
    assert f32.dtype == torch.float32


def test_centered_clipping_resists_an_outlier():
    x, honest = honest_and_outlier()
    cc = rule("centered_clipping", tau=1.0)
    out = cc(x, state=cc.init(5, 3, x))
    # the honest rows (norm < 0.2) pass whole, the outlier counts with norm 1: its share 1/5
    unit = torch.full((3,), 1 / math.sqrt(3), dtype=torch.float64)
    assert torch.allclose(out, (x[:4].sum(0) + unit) / 5)
    assert_robust(out, x, honest)


@pytest.mark.parametrize("params, match", [
    ({"tua": 1.0}, r"unknown key 'tua'; did you mean 'tau'\?"),
    ({"tau": 0.0}, r"tau=0.0 must be in \(0, inf\)"),
    ({"tau": -2}, r"tau=-2.0 must be in \(0, inf\)"),
    ({"iters": 0}, r"iters=0 must be in \[1, inf\)"),
])  # fmt: skip
def test_centered_clipping_params_are_checked(params, match):
    with pytest.raises(ConfigError, match=match):
        Config(aggregator="centered_clipping", aggregator_params=params)


def test_the_three_rules_are_registered():
    assert AGGREGATORS.get("centered_clipping").stateful
    assert not AGGREGATORS.get("bulyan").stateful
    assert not AGGREGATORS.get("geometric_median").stateful


# ---- in a federated run, with options that make the rule act ------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("aggregator, params, k", [
    ("bulyan", {"f": 1}, 7),  # the default f = 0 is the mean
    ("centered_clipping", {"tau": 0.05, "iters": 2}, 5),  # tau = 10 may clip nothing here
])  # fmt: skip
def test_acting_rules_engines_agree_in_fp64(aggregator, params, k, fmnist):
    from flcore.runs.runner import run

    cfg = Config(dataset="fmnist", m=0.3, rounds=2, repeats=2, num_participants=10, k=k,
                 n_train=200, n_test=100, precision="fp64", aggregator=aggregator,
                 aggregator_params=params)  # fmt: skip
    fast = run(cfg, store=None, data=fmnist, progress=False)
    ref = run(cfg.replace(engine="reference"), store=None, data=fmnist, progress=False)
    np.testing.assert_array_equal(fast.confusion, ref.confusion)
    np.testing.assert_allclose(
        fast.rounds["train_loss"], ref.rounds["train_loss"], rtol=0, atol=1e-12
    )
    mean = run(cfg.replace(aggregator="fedavg", aggregator_params={}), store=None, data=fmnist,
               progress=False)  # fmt: skip
    assert not np.allclose(fast.rounds["train_loss"], mean.rounds["train_loss"])  # it acted
