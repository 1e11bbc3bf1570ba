"""The explorer's callback, driven directly (no browser): runs, redraws, caching, errors."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("ipywidgets")

from flcore.config import ConfigError
from flcore.data import DatasetNotFoundError, load_dataset
from flcore.explore import PAIRS, Explorer

TINY = {"n_train": 500, "n_test": 200, "rounds": 3}


@pytest.fixture(scope="module", autouse=True)
def fmnist():
    try:
        return load_dataset("fmnist", download=False, progress=False)
    except DatasetNotFoundError as e:
        pytest.skip(f"Fashion-MNIST not installed (apt-get install dataset-fashion-mnist): {e}")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return str(tmp_path_factory.mktemp("explore-store"))


def explorer(store, **kw) -> Explorer:
    return Explorer(**{**TINY, "store": store, "debounce_s": 0, "device": "cpu", **kw})


def lines_by_label(ex: Explorer) -> dict:
    return {line.get_label(): line for line in ex.ax_recall.get_lines()}


def test_first_update_draws_recall_and_confusion(store):
    ex = explorer(store, m_percent=20)
    assert ex.redraws == 0 and bytes(ex.image_w.value).startswith(b"\x89PNG")  # placeholder
    placeholder = bytes(ex.image_w.value)
    result = ex.update()
    assert result is ex.last_result and ex.last_error is None
    assert ex.last_config.m == pytest.approx(0.2) and ex.last_config.strategy == "random"
    assert ex.last_clean.config.m == 0
    assert ex.redraws == 1 and "redraw #1" in ex.status_w.value
    assert bytes(ex.image_w.value).startswith(b"\x89PNG") and bytes(ex.image_w.value) != placeholder

    assert ex.figure.axes == [ex.ax_recall, ex.ax_confusion]
    lines = lines_by_label(ex)
    poisoned = lines["source recall, m = 20%"]
    clean = lines["source recall, clean (m = 0)"]
    assert "target recall, m = 20%" in lines
    assert list(poisoned.get_xdata()) == [1, 2, 3] and list(clean.get_xdata()) == [1, 2, 3]
    rec = result.recall[result.recall["cls"] == 4].sort_values("round")["recall"].to_numpy()
    assert np.allclose(poisoned.get_ydata(), rec)
    assert ex.ax_recall.get_xlabel() == "round" and ex.ax_recall.get_ylabel() == "recall (%)"
    (image,) = ex.ax_confusion.get_images()
    assert image.get_array().shape == (10, 10)
    assert ex.ax_confusion.get_ylabel() == "true class"
    assert "coat" in ex.ax_recall.get_title() and "shirt" in ex.ax_recall.get_title()
    assert "✔" in ex.status_w.value and "Fashion-MNIST 4→6" in ex.status_w.value


def test_changing_m_changes_result_and_redraws(store):
    ex = explorer(store, m_percent=0)
    clean = ex.update()
    assert clean is ex.last_clean  # m = 0 is the baseline itself: one run, not two
    before = bytes(ex.image_w.value)
    poisoned = ex.update(m_percent=50)
    assert ex.m_w.value == 50 and ex.last_config.m == pytest.approx(0.5)
    assert ex.redraws == 2 and bytes(ex.image_w.value) != before
    assert len(poisoned.malicious[0]) == 25
    assert not np.array_equal(poisoned.confusion, clean.confusion)
    assert "source recall, m = 50%" in lines_by_label(ex)


def test_attack_dropdown_offers_every_registered_attack(store):
    from flcore.attacks import ATTACKS

    ex = explorer(store, m_percent=50)
    assert list(ex.attack_w.options) == list(ATTACKS.names())
    flip = ex.update()
    rnd = ex.update(attack="random_flip")
    assert ex.attack_w.value == "random_flip" and ex.last_config.attack == "random_flip"
    assert ex.last_clean.config.attack == "label_flip"  # one clean run for every attack
    assert not np.array_equal(rnd.confusion, flip.confusion)
    assert "random_flip" in ex.ax_recall.get_title()


def test_strategy_alpha_and_break_round(store):
    ex = explorer(store, m_percent=20)
    assert ex.alpha_w.disabled and ex.break_w.disabled
    ex.update(strategy="late")
    assert ex.alpha_w.disabled and not ex.break_w.disabled
    b = ex.last_config.break_round
    assert ex.last_config.strategy == "late" and 1 <= b <= 3
    per_round = ex.last_result.rounds.groupby("round")["n_malicious"].max()
    assert (per_round[per_round.index < b] == 0).all()
    assert any(np.allclose(line.get_xdata(), b - 0.5) for line in ex.ax_recall.get_lines())

    a = ex.update(strategy="availability", alpha=0.5)
    assert not ex.alpha_w.disabled and ex.last_config.alpha == pytest.approx(0.5)
    assert "α = 0.5" in ex.ax_recall.get_title()
    b1 = ex.update(alpha=1.0)
    assert ex.last_config.alpha == pytest.approx(1.0) and ex.redraws == 3
    sel_a = a.rounds.groupby("round")["n_malicious"].sum()
    sel_b = b1.rounds.groupby("round")["n_malicious"].sum()
    assert sel_b.sum() >= sel_a.sum()  # α = 1 fills every slot it can from the malicious pool
    assert sel_b[sel_b.index >= b].min() == 5  # 10 malicious ≥ k = 5 slots

    ex.update(strategy="early")  # break round: malicious only before b
    per_round = ex.last_result.rounds.groupby("round")["n_malicious"].max()
    assert (per_round[per_round.index >= ex.last_config.break_round] == 0).all()
    assert ex.last_config.alpha is None


def test_repeated_settings_come_from_cache_and_store(store):
    ex = explorer(store, m_percent=20)
    ex.update()
    runs = ex.runs
    ex.update(m_percent=20)
    assert ex.runs == runs and "cached" in ex.status_w.value and ex.redraws == 2

    fresh = explorer(store, m_percent=20)  # a new panel (a new kernel) on the same store
    fresh.update()
    assert fresh.runs == 0 and "from store" in fresh.status_w.value
    assert np.array_equal(fresh.last_result.confusion, ex.last_result.confusion)


def test_slider_change_and_button_run_the_callback(store):
    # settings of the tests above, so that the shared store answers them
    ex = explorer(store, m_percent=50)
    ex.m_w.value = 20  # what moving the slider in the browser does
    assert ex.redraws == 1 and ex.last_config.m == pytest.approx(0.2)
    ex.strategy_w.value = "late"
    assert ex.redraws == 2 and ex.last_config.strategy == "late" and ex.alpha_w.disabled

    ex.auto_w.value = False
    ex.strategy_w.value = "random"
    ex.m_w.value = 50
    assert ex.redraws == 2 and "press <b>Run</b>" in ex.status_w.value
    ex.run_w.click()
    assert ex.redraws == 3 and ex.last_config.m == pytest.approx(0.5)
    assert ex.last_config.strategy == "random" and not ex.run_w.disabled


def test_dataset_change_offers_its_pairs():
    ex = Explorer(**TINY, store=None, auto_run=False)
    assert [v for _, v in ex.pair_w.options] == list(PAIRS["fmnist"])
    ex.dataset_w.value = "cifar10"
    assert [v for _, v in ex.pair_w.options] == list(PAIRS["cifar10"])
    assert ex.pair_w.label == "dog (5) → cat (3)"
    assert ex.config_for(ex.settings()).dataset == "cifar10"
    assert ex.redraws == 0


def test_rounds_slider_moves_break_round():
    ex = Explorer(**{**TINY, "rounds": 20}, store=None, auto_run=False)
    assert ex.break_w.value == 8 and ex.break_w.max == 20  # 75/200 of the run, as in the paper
    ex.rounds_w.value = 4
    assert ex.break_w.max == 4 and ex.break_w.value <= 4


def test_debounce_coalesces_a_burst_of_changes(store):
    ex = explorer(store, m_percent=20, debounce_s=0.2)

    async def burst():
        for m in (22, 24, 26, 50):  # a slider stepped by keyboard: four changes
            ex.m_w.value = m
            await asyncio.sleep(0.01)
        assert ex.redraws == 0
        while ex.redraws == 0:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.4)

    asyncio.run(asyncio.wait_for(burst(), 120))
    assert ex.redraws == 1 and ex.last_config.m == pytest.approx(0.5)


@pytest.mark.parametrize(
    "make, change, needle",
    [
        ({}, {"m_percent": 150}, "m_percent=150"),
        ({"config": {"k": 60}}, {}, "k=60"),
        ({"config": {"n_train": 100}}, {}, "n_train=100"),
        ({}, {"colour": "red"}, "unknown explorer setting 'colour'"),
    ],
)
def test_bad_setting_shows_a_message_not_an_exception(store, make, change, needle):
    ex = explorer(store, **make)
    figure_before = bytes(ex.image_w.value)
    assert ex.update(**change) is None
    assert isinstance(ex.last_error, ConfigError)
    assert needle in ex.status_w.value and "ConfigError" in ex.status_w.value
    assert "Traceback" not in ex.status_w.value and 'data-kind="error"' in ex.status_w.value
    assert ex.redraws == 0 and bytes(ex.image_w.value) == figure_before
    assert not ex.run_w.disabled


def test_unexpected_failure_is_one_readable_line(store, monkeypatch):
    import flcore.runs.runner

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory\n  File 'engine.py', line 1\n    more detail")

    monkeypatch.setattr(flcore.runs.runner, "run", broken)
    ex = Explorer(**TINY, store=None, debounce_s=0, device="cpu")
    ex.m_w.value = 30  # through the slider callback: must not raise either
    assert isinstance(ex.last_error, RuntimeError)
    assert "RuntimeError</b>: CUDA out of memory" in ex.status_w.value
    assert "File" not in ex.status_w.value
    monkeypatch.undo()
    ex.store = store
    assert (
        ex.update(m_percent=20) is not None and ex.last_error is None and "✔" in ex.status_w.value
    )
