"""The federated engines: agreement, determinism, the store, and real Fashion-MNIST runs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from flcore import Config, ConfigError, run
from flcore.data import DatasetNotFoundError, load_dataset
from flcore.sim.device import cpu_flags, resolve_precision


@pytest.fixture(scope="module")
def cifar_small():
    try:
        return load_dataset("cifar10", download=False, progress=False).subset(200, 100, seed=0)
    except DatasetNotFoundError as e:
        pytest.skip(f"CIFAR-10 not found: {e}")


def tiny(dataset="fmnist", **kw):
    base = dict(dataset=dataset, m=0.2, rounds=2, repeats=2, num_participants=10, k=3,
                n_train=800, n_test=200, record_updates="all")  # fmt: skip
    base.update(kw)
    return Config(**base)


@pytest.mark.parametrize("dataset", ["fmnist", "cifar10"])
def test_fast_engine_equals_the_sequential_reference(dataset, fmnist, cifar_small):
    data = fmnist if dataset == "fmnist" else cifar_small
    cfg = tiny(dataset, precision="fp64", n_train=None if dataset == "cifar10" else 800,
               n_test=None if dataset == "cifar10" else 200)  # fmt: skip
    fast = run(cfg, store=None, data=data, progress=False)
    ref = run(cfg.replace(engine="reference"), store=None, data=data, progress=False)
    np.testing.assert_array_equal(fast.selected, ref.selected)
    np.testing.assert_array_equal(fast.malicious, ref.malicious)
    np.testing.assert_allclose(fast.updates, ref.updates, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(fast.confusion, ref.confusion)
    np.testing.assert_allclose(fast.rounds["train_loss"], ref.rounds["train_loss"], rtol=1e-9)
    assert np.abs(fast.updates).max() > 1e-3  # the comparison is not of zeros


def test_fast_and_reference_agree_in_fp32(fmnist):
    cfg = tiny(precision="fp32", rounds=1)
    fast = run(cfg, store=None, data=fmnist, progress=False)
    ref = run(cfg.replace(engine="reference"), store=None, data=fmnist, progress=False)
    np.testing.assert_array_equal(fast.selected, ref.selected)
    np.testing.assert_allclose(fast.updates, ref.updates, atol=2e-3)
    acc_f, acc_r = fast.rounds["accuracy"].to_numpy(), ref.rounds["accuracy"].to_numpy()
    assert np.abs(acc_f - acc_r).max() < 3.0


def test_same_config_and_seed_give_the_same_numbers(fmnist):
    cfg = tiny(precision="fp32")
    a = run(cfg, store=None, data=fmnist, progress=False)
    b = run(cfg, store=None, data=fmnist, progress=False)
    np.testing.assert_array_equal(a.confusion, b.confusion)
    np.testing.assert_array_equal(a.updates, b.updates)
    c = run(cfg.replace(seed=1), store=None, data=fmnist, progress=False)
    assert not np.array_equal(a.selected, c.selected)


def test_repeats_are_independent_of_batching(fmnist):
    """Repeat j of a 2-repeat run is the same federation as a 1-repeat run would be for j=0."""
    cfg = tiny(precision="fp64", rounds=1)
    both = run(cfg, store=None, data=fmnist, progress=False)
    one = run(cfg.replace(repeats=1), store=None, data=fmnist, progress=False)
    np.testing.assert_array_equal(both.confusion[:1], one.confusion)
    np.testing.assert_array_equal(both.selected[:1], one.selected)


def test_store_returns_an_identical_config_without_training(fmnist, tmp_path, monkeypatch):
    cfg = tiny(precision="fp32", rounds=1)
    first = run(cfg, store=tmp_path, data=fmnist, progress=False)
    from flcore.runs import runner as engine

    def boom(*a, **k):
        raise AssertionError("retrained a stored configuration")

    monkeypatch.setattr(engine, "simulate", boom)
    again = run(cfg, store=tmp_path, data=fmnist, progress=False)
    np.testing.assert_array_equal(first.confusion, again.confusion)
    np.testing.assert_array_equal(first.updates, again.updates)
    assert first.final().equals(again.final())


def test_recorded_updates_are_the_output_layer_deltas(fmnist):
    src = run(tiny(precision="fp64", record_updates="source", rounds=1), store=None, data=fmnist, progress=False)
    full = run(tiny(precision="fp64", rounds=1), store=None, data=fmnist, progress=False)
    assert src.updates.shape == (2, 1, 3, 1, 1568) and full.updates.shape == (2, 1, 3, 10, 1568)
    np.testing.assert_array_equal(src.updates[..., 0, :], full.updates[..., 4, :])


def test_diverging_run_is_recorded_not_averaged(fmnist):
    res = run(tiny(precision="fp32", lr=10.0, momentum=0.9, rounds=3), store=None, data=fmnist, progress=False)
    assert res.meta["status"] == "diverged"
    assert res.rounds["diverged"].any()
    assert res.summary().loc["accuracy", "runs"] < 2


@pytest.mark.slow
def test_real_fmnist_run_learns_and_a_heavy_attack_hurts_the_source(fmnist):
    common = dict(dataset="fmnist", src=4, tgt=6, rounds=2, repeats=2, num_participants=10, k=5,
                  n_train=4000, n_test=1000)  # fmt: skip
    clean = run(Config(m=0.0, **common), store=None, data=fmnist, progress=False).final()
    attacked = run(Config(m=0.5, **common), store=None, data=fmnist, progress=False).final()
    assert clean["accuracy"].min() > 60  # chance is 10%
    assert clean["source_recall"].mean() - attacked["source_recall"].mean() > 20


@pytest.mark.slow
def test_bf16_stays_within_one_point_of_fp32(fmnist):
    if resolve_precision("auto", "cpu") != "bf16":
        pytest.skip(f"bf16 is slow on this CPU (no AMX/AVX512-BF16 in {sorted(cpu_flags() & {'avx2', 'avx512f'})})")
    common = dict(dataset="fmnist", m=0.0, rounds=2, repeats=2, num_participants=10, k=5,
                  n_train=4000, n_test=2000)  # fmt: skip
    a32 = run(Config(precision="fp32", **common), store=None, data=fmnist, progress=False).final()
    a16 = run(Config(precision="bf16", **common), store=None, data=fmnist, progress=False).final()
    assert abs(a32["accuracy"].mean() - a16["accuracy"].mean()) < 1.0


@pytest.mark.parametrize("capability, flags, expected", [
    ("AVX512", {"amx_bf16", "avx512f"}, "bf16"),  # Intel Sapphire Rapids and later
    ("AVX512", {"avx512_bf16", "avx512f"}, "bf16"),  # AMD Zen 4
    ("AVX512", {"avx512f"}, "fp32"),  # AVX-512 without bf16
    ("AVX2", {"avx2"}, "fp32"),  # AMD Zen 3: bf16 emulated, several times slower
    ("AVX2", {"avx2", "amx_bf16"}, "fp32"),  # kernels capped at AVX2 on a bf16 CPU
    ("DEFAULT", {"amx_bf16"}, "fp32"),
])  # fmt: skip
def test_auto_precision_rule(capability, flags, expected, monkeypatch):
    from flcore.sim import device as dev

    monkeypatch.setattr(dev, "cpu_flags", lambda: set(flags))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"


def test_auto_precision_honours_an_avx2_cap_in_a_real_process():
    code = "from flcore.sim.device import resolve_precision as r; print(r('auto', 'cpu'))"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "fp32"


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(RuntimeError, match="no CUDA"):
        run(tiny(device="cuda"), store=None, progress=False)


def test_non_iid_shares_fast_equals_reference(fmnist):
    """Dirichlet shares differ in size: the fast engine masks models that finished their epoch."""
    cfg = tiny(precision="fp64", partition="dirichlet", beta=0.5, rounds=2, n_train=600)
    fast = run(cfg, store=None, data=fmnist, progress=False)
    ref = run(cfg.replace(engine="reference"), store=None, data=fmnist, progress=False)
    from flcore.runs.runner import load_data
    from flcore.sim.plan import make_plan

    plan = make_plan(cfg, load_data(cfg, fmnist))
    sizes = {len(plan.shares[0][p]) for p in range(cfg.num_participants)}
    assert len(sizes) > 1  # the shares really are unequal
    np.testing.assert_allclose(fast.updates, ref.updates, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(fast.confusion, ref.confusion)
    np.testing.assert_allclose(fast.rounds["train_loss"], ref.rounds["train_loss"], rtol=1e-9)


def test_run_many_batches_configs_and_each_equals_its_own_run(fmnist, tmp_path):
    """Configs differing in the attack train as one stack; in fp64 each equals its solo run."""
    from flcore.runs.runner import run_many

    base = tiny(precision="fp64", rounds=2, record_updates="none")
    cfgs = [base, base.replace(m=0.4, src=1, tgt=3), base.replace(strategy="late", break_round=2, repeats=1),
            base]  # fmt: skip  (a duplicate trains once)
    many = run_many(cfgs, store=tmp_path, data=fmnist, progress=False)
    assert many[0].meta["batched_with"] == 3 and many[3] is many[0]
    for cfg, res in zip(cfgs, many):
        solo = run(cfg, store=None, data=fmnist, progress=False)
        np.testing.assert_array_equal(res.confusion, solo.confusion)
        np.testing.assert_array_equal(res.selected, solo.selected)
        np.testing.assert_allclose(res.rounds["train_loss"], solo.rounds["train_loss"], rtol=1e-9)
    # stored under each config's own key: a second call loads everything
    again = run_many(cfgs, store=tmp_path, data=fmnist, progress=False)
    assert all("batched_with" in r.meta for r in again)
    np.testing.assert_array_equal(again[1].confusion, many[1].confusion)


def test_warm_start_begins_from_the_stored_clean_model(fmnist, tmp_path):
    """warm_start=W: every repeat starts from the clean W-round model, trained once and stored;
    rounds continue the federation's schedule, and both engines agree in fp64."""
    from flcore.runs.runner import pretrain_config, warm_state

    cfg = tiny(precision="fp64", rounds=2, warm_start=3, record_updates="none", lr_step=1,
               num_participants=10, k=5)  # fmt: skip
    pre = run(pretrain_config(cfg), store=tmp_path, data=fmnist, progress=False)
    assert pre.config.m == 0 and pre.config.rounds == 3 and pre.model is not None
    start = warm_state(cfg, store=tmp_path, data=fmnist)
    for k, v in pre.model_state(0).items():
        torch.testing.assert_close(start[k], v)
    # the attack and the aggregator do not change the warm-up: one stored model serves all
    assert pretrain_config(cfg.replace(m=0.4, src=1, tgt=3, aggregator="median")) == pretrain_config(cfg)
    fast = run(cfg, store=tmp_path, data=fmnist, progress=False)
    ref = run(cfg.replace(engine="reference"), store=None, data=fmnist, progress=False)
    np.testing.assert_array_equal(fast.confusion, ref.confusion)
    # lr_step 1 with N/k = 2: the step is 2 global rounds, so rounds 1-2 here are rounds 4-5
    assert cfg.lr_step_rounds == 2 and list(fast.rounds.query("repeat == 0")["lr"]) == [
        cfg.lr * cfg.lr_gamma, cfg.lr * cfg.lr_gamma**2]
    # a warm start is not a cold one: round 1 is at the warm-up's level, not at chance
    cold = run(cfg.replace(warm_start=0), store=None, data=fmnist, progress=False)
    warm_acc = fast.rounds.query("round == 1")["accuracy"].mean()
    assert warm_acc > cold.rounds.query("round == 1")["accuracy"].mean() + 5
    assert warm_acc > pre.rounds["accuracy"].iloc[-1] - 15


def test_kept_model_round_trips_through_the_store(fmnist, tmp_path):
    cfg = tiny(rounds=1, record_updates="none", keep_model=True)
    res = run(cfg, store=tmp_path, data=fmnist, progress=False)
    again = run(cfg, store=tmp_path, data=fmnist, progress=False)
    assert set(res.model) == set(again.model) and "0.weight" in res.model
    for k in res.model:
        assert res.model[k].shape[0] == cfg.repeats
        np.testing.assert_array_equal(res.model[k], again.model[k])
    with pytest.raises(ValueError, match="keep_model=True"):
        run(cfg.replace(keep_model=False), store=None, data=fmnist, progress=False).model_state()


@pytest.mark.parametrize("agg", [dict(aggregator="median"), dict(aggregator="foolsgold"),
                                 dict(defense="pca", defense_params=dict(start_round=1, rounds_from=1,
                                      min_rows=3, min_silhouette=0.0))])  # fmt: skip
def test_run_many_batches_defended_configs_each_equal_to_its_own_run(fmnist, agg):
    """Robust aggregators, the online defense and recorded updates batch too: in fp64 every
    config's numbers, recorded source rows and exclusions equal its solo run."""
    from flcore.runs.runner import run_many

    base = tiny(precision="fp64", rounds=3, record_updates="source", m=0.3, **agg)
    cfgs = [base, base.replace(m=0.4, src=1, tgt=3, repeats=1), base.replace(strategy="late", break_round=2)]
    many = run_many(cfgs, store=None, data=fmnist, progress=False)
    assert many[0].meta["batched_with"] == 3
    for cfg, res in zip(cfgs, many):
        solo = run(cfg, store=None, data=fmnist, progress=False)
        np.testing.assert_array_equal(res.confusion, solo.confusion)
        np.testing.assert_array_equal(res.updates, solo.updates)
        if cfg.defense:
            pd.testing.assert_frame_equal(res.excluded, solo.excluded)
    if base.defense:
        assert sum(len(r.excluded) for r in many) > 0  # the detector acted somewhere


def test_eval_classes_evaluates_earlier_rounds_on_those_classes_only(fmnist):
    """eval_classes: rounds before the last see only those classes' test images (same recall
    as a full evaluation, no M_acc); the last round is whole; both engines agree."""
    cfg = tiny(precision="fp64", rounds=3, record_updates="none")
    full = run(cfg, store=None, data=fmnist, progress=False)
    part = run(cfg.replace(eval_classes=[6, 4, 4]), store=None, data=fmnist, progress=False)
    assert part.config.eval_classes == (4, 6)
    ref = run(part.config.replace(engine="reference"), store=None, data=fmnist, progress=False)
    np.testing.assert_array_equal(part.confusion, ref.confusion)
    for cls in range(10):
        a = full.recall.query("cls == @cls and round < 3")["recall"].to_numpy()
        b = part.recall.query("cls == @cls and round < 3")["recall"].to_numpy()
        if cls in (4, 6):
            np.testing.assert_array_equal(a, b)
        else:
            assert np.isnan(b).all()
    assert part.rounds.query("round < 3")["accuracy"].isna().all()
    np.testing.assert_array_equal(part.confusion[:, -1], full.confusion[:, -1])
    assert part.confusion[:, 0].sum() == 2 * 2 * 20  # 2 repeats x 2 classes x 20 test images


def test_run_many_loads_each_warm_up_once(fmnist, monkeypatch):
    """A batch of warm-started configs needs its warm-up model once, not once per config."""
    from flcore.runs import runner as engine
    from flcore.runs.runner import run_many

    calls = []
    real = engine.warm_state
    monkeypatch.setattr(engine, "warm_state", lambda cfg, **kw: calls.append(cfg) or real(cfg, **kw))
    base = tiny(rounds=1, warm_start=1, record_updates="none")
    many = run_many([base, base.replace(m=0.4), base.replace(src=1, tgt=3)], store=None, data=fmnist,
                    progress=False)  # fmt: skip
    assert many[0].meta["batched_with"] == 3
    assert len([c for c in calls if c.warm_start]) == 1  # (the warm-up run itself asks with warm_start=0)


def test_training_calls_count_each_participants_own_selections():
    from flcore.sim.plan import learning_rates, training_calls

    sel = np.array([[0, 1], [1, 2], [0, 1], [2, 3]])
    np.testing.assert_array_equal(training_calls(sel), [[0, 0], [1, 0], [1, 2], [1, 0]])
    cfg = Config(client_state="persistent", lr=0.1, lr_gamma=0.5, lr_step=2, rounds=4)
    # participant 1's third call (two before it) is one step down; everyone else at lr
    np.testing.assert_allclose(learning_rates(cfg, sel), [[0.1, 0.1], [0.1, 0.1], [0.1, 0.05], [0.1, 0.1]])


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_persistent_clients_fast_equals_reference(fmnist, partition):
    """The reference code's client state: momentum kept between a participant's selections,
    its learning rate by its own training calls; both engines, equal in fp64."""
    cfg = tiny(precision="fp64", client_state="persistent", lr_step=1, rounds=3, num_participants=6,
               k=3, n_train=240, partition=partition, beta=0.5)  # fmt: skip
    fast = run(cfg, store=None, data=fmnist, progress=False)
    ref = run(cfg.replace(engine="reference"), store=None, data=fmnist, progress=False)
    np.testing.assert_array_equal(fast.confusion, ref.confusion)
    np.testing.assert_allclose(fast.rounds["train_loss"], ref.rounds["train_loss"], rtol=0, atol=1e-12)
    stateless = run(cfg.replace(client_state="stateless"), store=None, data=fmnist, progress=False)
    # round 1 is everyone's first call with lr: the same; later rounds differ
    first = fast.rounds["round"] == 1
    np.testing.assert_allclose(fast.rounds["train_loss"][first], stateless.rounds["train_loss"][first], atol=1e-12)
    assert not np.allclose(fast.rounds["train_loss"][~first], stateless.rounds["train_loss"][~first])


def test_persistent_clients_batch_like_solo_runs(fmnist):
    from flcore.runs.runner import run_many

    cfgs = [tiny(precision="fp64", client_state="persistent", lr_step=1, rounds=3, m=m) for m in (0.0, 0.3)]
    together = run_many(cfgs, store=None, data=fmnist, progress=False)
    for c, t in zip(cfgs, together):
        alone = run(c, store=None, data=fmnist, progress=False)
        np.testing.assert_array_equal(t.confusion, alone.confusion)


def test_persistent_clients_refuse_a_warm_start():
    with pytest.raises(ConfigError, match="client_state='persistent' with warm_start=5"):
        Config(client_state="persistent", warm_start=5)
    with pytest.raises(ConfigError, match="did you mean 'persistent'"):
        Config(client_state="persistant")


def test_stacks_count_twins_and_server_models_against_the_memory_bound():
    """A stack holds at most max_batched_federations x k models: an attack with honest twins
    doubles a federation's models (adaptive_flip), a root-set rule adds the server's
    (fltrust), and the stacks shrink accordingly; the caller's federation cap still holds."""
    from flcore.runs.runner import batches, models_per_federation, resolved

    def grid(**kw):
        return [resolved(Config(dataset="fmnist", m=m, repeats=5, **kw)) for m in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)]

    plain, twins, server = grid(), grid(attack="adaptive_flip"), grid(aggregator="fltrust")
    assert [models_per_federation(g[0]) for g in (plain, twins, server)] == [5, 10, 6]
    cap = plain[0].spec.max_batched_federations  # 30 federations of 5 models = 150 models
    assert [sum(c.repeats for c in s) for s in batches(plain)] == [30]
    assert [sum(c.repeats for c in s) for s in batches(twins)] == [15, 15]  # 15 x 10 = 150
    assert [sum(c.repeats for c in s) for s in batches(server)] == [25, 5]  # 25 x 6 = 150
    assert all(sum(c.repeats for c in s) * 10 <= cap * 5 for s in batches(twins))
    assert [sum(c.repeats for c in s) for s in batches(twins, max_federations=10)] == [10, 10, 10]


@pytest.mark.parametrize("dataset", ["fmnist", "cifar10"])
def test_both_evaluation_layouts_predict_alike(dataset, monkeypatch):
    """`_evaluate` stacks small models and evaluates large ones one by one; in fp64 both
    layouts give the same predictions, and the layout follows the first activation's size."""
    import flcore.sim.engine as eng
    from flcore.sim.models import architecture, init_state, stack_states

    spec, R = architecture(dataset), 3
    C, H = (1, 28) if dataset == "fmnist" else (3, 32)
    glob = {k: v.double() if v.is_floating_point() else v
            for k, v in stack_states([init_state(dataset, s) for s in range(R)]).items()}  # fmt: skip
    for k in glob:  # BN statistics away from their initial values, as after training
        if k.endswith("running_mean"):
            glob[k] += 0.1 * torch.randn(glob[k].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    xt = torch.randint(0, 256, (40, C, H, H), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images = eng._TestImages(xt, torch.float64, torch.zeros(1, C, 1, 1, dtype=torch.float64),
                             torch.ones(1, C, 1, 1, dtype=torch.float64))  # fmt: skip
    calls = []
    real_forward = eng.stacked_forward
    monkeypatch.setattr(eng, "stacked_forward", lambda *a, **k: calls.append(a[3]) or real_forward(*a, **k))
    default = eng._evaluate(spec, glob, images, R, H * H, "cpu", "fp64")
    assert set(calls) == ({R} if dataset == "fmnist" else {1})  # CIFAR-10: model by model
    monkeypatch.setattr(eng, "PER_MODEL_EVAL_FROM", 0)  # force model by model
    one_by_one = eng._evaluate(spec, glob, images, R, H * H, "cpu", "fp64")
    monkeypatch.setattr(eng, "PER_MODEL_EVAL_FROM", 2**40)  # force one stack
    stacked = eng._evaluate(spec, glob, images, R, H * H, "cpu", "fp64")
    assert default.shape == (R, 40)
    assert not torch.equal(stacked[0], stacked[1])  # the models differ, so a mix-up would show
    assert torch.equal(one_by_one, stacked) and torch.equal(default, stacked)
    for g in range(R):  # and each model's own plain forward pass
        one = {k: v[g : g + 1] for k, v in glob.items()}
        assert torch.equal(real_forward(spec, one, xt.double() / 255.0, 1, training=False).argmax(-1)[0], stacked[g])


def test_stacks_on_a_gpu_hold_more_federations():
    """The stack bound follows the device the configurations train on: on a CUDA GPU larger
    stacks keep paying (Fashion-MNIST up to 240 federations, CIFAR-10 up to 30), on a CPU the
    bounds stay 30 and 12. The key's device decides, so a plan made here for a GPU is cut as
    the GPU will train it."""
    from flcore.runs.runner import batches

    def sizes(dataset, device, n=12):
        cfgs = [Config(dataset=dataset, m=0.1 + 0.01 * i, repeats=10, device=device, precision="fp32")
                for i in range(n)]  # fmt: skip
        return [sum(c.repeats for c in s) for s in batches(cfgs)]

    assert sizes("fmnist", "cpu") == [30, 30, 30, 30]
    assert sizes("fmnist", "cuda", 30) == [240, 60]
    assert sizes("cifar10", "cpu", 3) == [10, 10, 10]  # 12 federations: no two configs of 10 fit
    assert sizes("cifar10", "cuda", 6) == [30, 30]
    from flcore.data.specs import DATASETS

    assert DATASETS.get("fmnist").stack_cap("mps") == 30  # anything else counts as a CPU
