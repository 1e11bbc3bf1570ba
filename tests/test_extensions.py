"""The extension points: every registered attack, defense and aggregator runs in both
engines with equal numbers in fp64, new ones plug in without an engine edit, and the two new
attacks do what they say on real Fashion-MNIST."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from flcore import Config
from flcore.attacks import ATTACKS, Attack, PoisonContext
from flcore.core.params import Params
from flcore.defenses import AGGREGATORS, DEFENSES, Defense
from flcore.runs.runner import run

# options that make each extension act within a two-round tiny run (the defaults wait longer)
ACTS_IN_TINY_RUN = {
    "pca": {"start_round": 1, "rounds_from": 1, "min_rows": 4, "min_silhouette": -1.0},
}


def tiny(**kw) -> Config:
    base = dict(dataset="fmnist", m=0.3, rounds=2, repeats=2, num_participants=10, k=5,
                n_train=200, n_test=100, precision="fp64")  # fmt: skip
    base.update(kw)
    return Config(**base)


def both_engines(cfg: Config, data):
    fast = run(cfg, store=None, data=data, progress=False)
    ref = run(cfg.replace(engine="reference"), store=None, data=data, progress=False)
    return fast, ref


def assert_equal_runs(fast, ref):
    np.testing.assert_array_equal(fast.confusion, ref.confusion)
    np.testing.assert_allclose(fast.rounds["train_loss"], ref.rounds["train_loss"], rtol=0, atol=1e-12)
    if fast.excluded is not None or ref.excluded is not None:
        assert fast.excluded.equals(ref.excluded)


def _attack_cases():
    for name in ATTACKS.names():
        yield pytest.param(name, "iid", id=f"{name}-iid")
        yield pytest.param(name, "dirichlet", id=f"{name}-dirichlet")  # unequal schedules: padding


@pytest.mark.parametrize("attack, partition", list(_attack_cases()))
def test_every_attack_engines_agree_in_fp64(attack, partition, fmnist):
    cfg = tiny(attack=attack, partition=partition, beta=0.5)
    fast, ref = both_engines(cfg, fmnist)
    assert_equal_runs(fast, ref)
    clean = run(cfg.replace(m=0.0), store=None, data=fmnist, progress=False)
    assert not np.array_equal(fast.confusion, clean.confusion)  # the attack changed the run


@pytest.mark.parametrize("defense", DEFENSES.names())
def test_every_defense_engines_agree_in_fp64(defense, fmnist):
    cfg = tiny(defense=defense, defense_params=ACTS_IN_TINY_RUN.get(defense, {}))
    fast, ref = both_engines(cfg, fmnist)
    assert_equal_runs(fast, ref)
    assert fast.excluded is not None and len(fast.excluded) > 0  # it acted: the check has teeth


@pytest.mark.parametrize("aggregator", AGGREGATORS.names())
def test_every_aggregator_engines_agree_in_fp64(aggregator, fmnist):
    fast, ref = both_engines(tiny(aggregator=aggregator), fmnist)
    assert_equal_runs(fast, ref)


# ---- a new attack with a trigger and a new defense, each one class, no engine edit ---------


@dataclass(frozen=True)
class TriggerParams(Params):
    share: float = 0.5


class Trigger(Attack):
    """Test-only backdoor: a white 3x3 patch on a share of a malicious participant's images,
    relabelled to tgt."""

    name = "test_trigger"
    Params = TriggerParams

    def poison(self, labels, ctx: PoisonContext):
        chosen = ctx.malicious[:, None] & (ctx.uniform() < self.params.share)
        return torch.where(chosen, ctx.tgt[:, None].expand_as(labels), labels), chosen

    def stamp(self, x):
        x = x.clone()
        x[..., -4:-1, -4:-1] = 1.0
        return x


class DropLowest(Defense):
    """Test-only defense: leaves out the selected participant with the lowest id, and halves
    the weight of the next one."""

    name = "test_drop_lowest"
    Params = TriggerParams  # any Params: exercises validation of an unknown key below

    def filter(self, state, rnd, updates):
        w = np.ones(len(updates.ids))
        order = np.argsort(updates.ids)
        w[order[0]], w[order[1]] = 0.0, 0.5
        return w


@pytest.fixture
def registered():
    ATTACKS.register(Trigger)
    DEFENSES.register(DropLowest)
    yield
    ATTACKS.unregister(Trigger.name)
    DEFENSES.unregister(DropLowest.name)


def test_a_new_trigger_attack_plugs_into_both_engines(registered, fmnist):
    cfg = tiny(attack="test_trigger", attack_params={"share": 0.7}, m=0.5)
    fast, ref = both_engines(cfg, fmnist)
    assert_equal_runs(fast, ref)
    no_stamp = run(cfg.replace(attack="label_flip", attack_params={}), store=None, data=fmnist, progress=False)
    assert not np.array_equal(fast.confusion, no_stamp.confusion)
    with pytest.raises(Exception, match="did you mean 'share'"):
        tiny(attack="test_trigger", attack_params={"shar": 0.7})


def test_a_new_weighting_defense_plugs_into_both_engines(registered, fmnist):
    cfg = tiny(defense="test_drop_lowest")
    fast, ref = both_engines(cfg, fmnist)
    assert_equal_runs(fast, ref)
    lowest = fast.selected.min(-1)  # [repeats, rounds]
    got = fast.excluded.sort_values(["repeat", "round"])["participant"].to_numpy()
    np.testing.assert_array_equal(got, lowest.reshape(-1))


# ---- the attacks' own contracts --------------------------------------------------------


@pytest.mark.parametrize("attack", ["label_flip", "random_flip", "many_to_one"])
def test_honest_rows_and_the_input_are_unchanged(attack):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (4, 200), generator=g)
    before = labels.clone()
    mal = torch.tensor([True, False, True, False])
    ctx = PoisonContext(mal, torch.full((4,), 4), torch.full((4,), 6), 10,
                        lambda: torch.rand(4, 200, generator=g, dtype=torch.float64))  # fmt: skip
    out, stamp = Config(attack=attack).build_attack().poison(labels, ctx)
    assert torch.equal(labels, before) and stamp is None
    assert torch.equal(out[~mal], before[~mal])
    changed = out[mal] != before[mal]
    assert changed.any()
    attacked = Config(attack=attack).build_attack().attacked_classes()
    assert torch.isin(before[mal][changed], torch.tensor(attacked)).all()


def test_random_flip_draws_other_classes_uniformly():
    n = 200_000
    labels = torch.full((1, n), 3)
    g = torch.Generator().manual_seed(1)
    ctx = PoisonContext(torch.tensor([True]), torch.tensor([4]), torch.tensor([6]), 10,
                        lambda: torch.rand(1, n, generator=g, dtype=torch.float64))  # fmt: skip
    out, _ = Config(attack="random_flip").build_attack().poison(labels, ctx)
    counts = torch.bincount(out[0], minlength=10).double() / n
    assert counts[3] == 0  # never the true class
    np.testing.assert_allclose(counts[torch.arange(10) != 3].numpy(), 1 / 9, atol=0.003)
    half, _ = Config(attack="random_flip", attack_params={"fraction": 0.5}).build_attack().poison(labels, ctx)
    assert abs((half[0] != 3).double().mean().item() - 0.5) < 0.005


def test_many_to_one_flips_exactly_its_sources():
    labels = torch.arange(10).repeat(1, 3)
    ctx = PoisonContext(torch.tensor([True]), torch.tensor([4]), torch.tensor([6]), 10)
    out, _ = Config(attack="many_to_one", attack_params={"sources": [4, 8]}).build_attack().poison(labels, ctx)
    expected = labels.clone()
    expected[(labels == 4) | (labels == 8)] = 6
    assert torch.equal(out, expected)


# ---- on real Fashion-MNIST: each attack lowers the recall of the classes it attacks -------


REAL_ATTACK = dict(dataset="fmnist", rounds=3, repeats=2, num_participants=10, k=10, n_train=4000, n_test=2000,
                   precision="fp32")  # fmt: skip


@pytest.fixture(scope="module")
def clean_real(fmnist):
    """The attack-free run the three attacks are measured against (with m = 0 the attack's
    name changes the store key, not the numbers)."""
    return run(Config(m=0.0, **REAL_ATTACK), store=None, data=fmnist, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["label_flip", "random_flip", "many_to_one"])
def test_attack_lowers_recall_of_its_classes_on_real_fmnist(attack, fmnist, clean_real):
    cfg = Config(m=0.5, attack=attack, **REAL_ATTACK)
    poisoned = run(cfg, store=None, data=fmnist, progress=False)
    clean = clean_real  # equal to this attack's own m = 0 run (the test below)
    classes = list(cfg.build_attack().attacked_classes())

    def recall(res):  # mean final recall of the attacked classes, over repeats
        r = res.recall[res.recall["round"] == cfg.rounds]
        return r[r["cls"].isin(classes)]["recall"].mean()

    assert recall(poisoned) < recall(clean) - 3.0, (recall(poisoned), recall(clean))


def test_attack_name_does_not_change_a_clean_run(fmnist):
    cfg = Config(dataset="fmnist", m=0.0, rounds=1, repeats=1, num_participants=10, k=10, n_train=500,
                 n_test=200, precision="fp32")  # fmt: skip
    ref = run(cfg, store=None, data=fmnist, progress=False)
    for attack in ("random_flip", "many_to_one"):
        other = run(cfg.replace(attack=attack), store=None, data=fmnist, progress=False)
        np.testing.assert_array_equal(other.confusion, ref.confusion)
        np.testing.assert_array_equal(other.rounds["train_loss"], ref.rounds["train_loss"])


# ---- the command line and the store key -----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["random_flip", "many_to_one"])
def test_new_attacks_run_from_the_command_line(attack, fmnist):
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "flcore", "run", "--attack", attack, "--m", "0.3", "--rounds", "2",
         "--n-train", "2000", "--n-test", "500", "--no-store", "--json", "--quiet"],
        capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["config"]["attack"] == attack and res["config"]["attack_params"] == {}
    assert 0 <= res["summary"]["source_recall"]["mean"] <= 100


def test_store_key_covers_every_resolved_default():
    from flcore.runs.runner import store_key

    implicit = Config(attack="random_flip")
    assert store_key(implicit) == store_key(implicit.replace(attack_params={"fraction": 1.0}))
    assert store_key(implicit) != store_key(implicit.replace(attack_params={"fraction": 0.5}))
    pca = Config(defense="pca")
    assert store_key(pca) == store_key(pca.replace(defense_params={"start_round": 10}))
    assert pca.key_dict()["defense_params"]["min_silhouette"] == 0.5  # defaults are in the key
    assert Config(aggregator="trimmed_mean").key_dict()["aggregator_params"] == {"beta": 0.1}


def test_a_new_dataset_is_one_spec(fmnist):
    """A registered spec is all a dataset needs: Config checks, both engines, the CLI help."""
    import dataclasses

    from flcore.core.errors import ConfigError
    from flcore.data import DATASETS

    small = fmnist.subset(600, 200, seed=1)
    small = dataclasses.replace(small, name="fmnist_small", source="a 600/200 subset, for a test")
    spec = dataclasses.replace(DATASETS.get("fmnist"), name="fmnist_small", title="F-MNIST small",
                               label="FM-small", train_size=600, test_size=200,
                               load=lambda root=None, progress=True, download=True: small)  # fmt: skip
    DATASETS.register(spec)
    try:
        cfg = tiny(dataset="fmnist_small", n_train=None, n_test=None)
        assert cfg.batch_size == 4 and cfg.spec is spec  # the spec's defaults
        fast = run(cfg, store=None, progress=False)  # loaded by the spec's own loader
        ref = run(cfg.replace(engine="reference"), store=None, progress=False)
        assert_equal_runs(fast, ref)
        assert fast.meta["data_source"] == "a 600/200 subset, for a test"
        with pytest.raises(ConfigError, match="F-MNIST small's training split has only 600 images"):
            tiny(dataset="fmnist_small", n_train=1000)
    finally:
        DATASETS.unregister("fmnist_small")
