"""Store keys are pinned: a change that moves them invalidates every stored run, including the
long paper-scale computation committed in figures/paper-fmnist/runs/.

A key moves when a `Config` field is added without an entry in `KEY_NEUTRAL`, when a default
changes, when an extension's parameter is added, or when the flcore or numerics version, or a
dataset's numerics revision, is bumped. The last two are deliberate (the numbers changed) and
then the literals below are updated with them; anything else should leave them alone.
"""

from __future__ import annotations

import pytest

from flcore import Config
from flcore.config.config import KEY_NEUTRAL
from flcore.runs.runner import store_key

PINNED = {
    # a paper-fmnist Table 2 run
    "6a3fc49437bc8719": Config(dataset="fmnist", m=0.1, src=4, tgt=6, rounds=200, repeats=3, precision="fp32",
                               device="cpu", eval_every=1, eval_classes=(4, 6)),
    # a quick-profile defended run
    "048b05a3a8a72209": Config(dataset="fmnist", m=0.2, rounds=8, repeats=2, n_train=15000, warm_start=20,
                               defense="pca", device="cpu", precision="fp32"),
    # a robust rule with an attack's parameters resolved (CIFAR-10 numerics revision 1)
    "cee64a46f0514c8d": Config(dataset="cifar10", m=0.3, aggregator="trimmed_mean", aggregator_params={"beta": 0.2},
                               attack="random_flip", device="cpu", precision="bf16"),
}  # fmt: skip


@pytest.mark.parametrize("key", list(PINNED))
def test_store_key_is_stable(key):
    got = store_key(PINNED[key])
    assert got == key, (
        f"the store key of {PINNED[key]} moved ({key} -> {got}): every stored run would be "
        "recomputed. A new Config field belongs in flcore.config.config.KEY_NEUTRAL with the value "
        "that reproduces the old numbers; if the numbers really changed, bump NUMERICS_VERSION (or the "
        "dataset's entry of DATASET_REVISIONS) and update these literals."
    )


def test_key_neutral_fields_exist_with_their_defaults():
    defaults = Config()
    for name, neutral in KEY_NEUTRAL.items():
        assert hasattr(defaults, name), f"KEY_NEUTRAL names {name!r}, which Config does not have"
        assert getattr(defaults, name) == neutral, f"{name}'s default is not its neutral value {neutral!r}"


def test_a_neutral_field_is_left_out_of_the_key(monkeypatch):
    """Marking a field neutral at its value drops it from the key dict (and only then)."""
    import flcore.config.config as cc

    cfg = Config()
    assert "keep_model" in cfg.key_dict()
    monkeypatch.setitem(cc.KEY_NEUTRAL, "keep_model", False)
    assert "keep_model" not in cfg.key_dict()
    assert "keep_model" in cfg.replace(keep_model=True).key_dict()
