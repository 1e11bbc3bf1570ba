"""The interactive explorer behind `notebooks/00_explore.ipynb`.

`Explorer` is a small ipywidgets panel: pick a dataset, a source → target pair, the share of
malicious participants m%, the selection strategy (with α for "availability" and the break
round for the timing strategies) and the number of rounds; it trains a reduced federation
on demand (a class-balanced subset of the data, a few rounds, one or two repeats) and redraws
one figure: source-class recall per round beside the clean run (m = 0), and the final
round's confusion matrix.

Every setting goes through the result store, so a setting seen before (and the clean
baseline, which all strategies share) comes back at once. Errors (an invalid configuration,
a missing dataset) appear as one readable line in the panel, never as a traceback.

The figure is a plain `matplotlib.figure.Figure` (not pyplot, so nothing is displayed twice
and no global state is touched), redrawn in place and shown as PNG bytes in an
`ipywidgets.Image`; that works the same in JupyterLab, VS Code and papermill.

    from flcore.explore import Explorer
    Explorer(n_train=6000, n_test=1000, rounds=10).show()

State kept for tests and curious users: `last_result` and `last_clean` (`flcore.Result`),
`last_config`, `last_error` (the exception, or None), `figure`, `redraws` (how many times
the figure was drawn from a result), `runs` (how many federations were actually trained).
"""

from __future__ import annotations

import asyncio
import html
import io
import json
import math
import time
from typing import Any

import numpy as np

from flcore.attacks import ATTACKS
from flcore.config import STRATEGIES, Config, ConfigError
from flcore.data.specs import DATASETS

# Names and the paper's source → target pairs come from the dataset specs (the first pair of
# each is the default); a registered dataset with pairs appears in the explorer by itself.
DATASET_LABELS = {name: DATASETS.get(name).title for name in DATASETS}
CLASS_NAMES = {name: DATASETS.get(name).classes for name in DATASETS}
PAIRS = {name: DATASETS.get(name).pairs for name in DATASETS if DATASETS.get(name).pairs}
STRATEGY_LABELS = {
    "random": "random selection",
    "early": "early poisoning (r < b)",
    "late": "late poisoning (r ≥ b)",
    "availability": "availability α (r ≥ b)",
}
TITLE_STRATEGY = {
    "random": "random selection",
    "early": "early poisoning",
    "late": "late poisoning",
    "availability": "late poisoning",
}
# The paper breaks at round 75 of 200; the explorer keeps that ratio for its short runs.
BREAK_FRACTION = 75 / 200


def pair_label(dataset: str, src: int, tgt: int) -> str:
    names = CLASS_NAMES[dataset]
    return f"{names[src]} ({src}) → {names[tgt]} ({tgt})"


def default_break_round(rounds: int) -> int:
    return min(rounds, max(2, round(rounds * BREAK_FRACTION)))


def _widgets():
    try:
        import ipywidgets
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the explorer needs ipywidgets: pip install -e '.[notebooks]' (or pip install ipywidgets)"
        ) from e
    return ipywidgets


class Explorer:
    """An ipywidgets panel that runs small label-flipping experiments on demand.

    n_train, n_test:  class-balanced subset sizes (the full sets take minutes per run).
    rounds:           initial value of the rounds slider (2 … max_rounds).
    repeats:          federations per setting (1–2 keeps a run to seconds).
    store:            result-store directory (None: keep results in memory only).
    dataset, pair, m_percent, strategy, alpha, break_round: initial widget values.
    auto_run:         re-run when a control changes (after `debounce_s` of quiet).
    run_on_show:      `show()` runs the initial setting right after displaying the panel.
    data_root:        passed to `flcore.data.load_dataset` (None: its usual search).
    config:           further `Config` fields for every run (e.g. num_participants, k).
    """

    def __init__(
        self,
        *,
        n_train: int = 6000,
        n_test: int = 1000,
        rounds: int = 10,
        max_rounds: int = 30,
        repeats: int = 1,
        store: str | None = "results/explore",
        dataset: str = "fmnist",
        pair: tuple[int, int] | None = None,
        m_percent: int = 20,
        strategy: str = "random",
        attack: str = "label_flip",
        alpha: float = 0.9,
        break_round: int | None = None,
        seed: int = 0,
        device: str = "auto",
        auto_run: bool = True,
        debounce_s: float = 0.6,
        run_on_show: bool = True,
        data_root: str | None = None,
        config: dict | None = None,
    ) -> None:
        if dataset not in PAIRS:
            raise ConfigError(f"dataset={dataset!r}: the explorer knows {', '.join(PAIRS)}")
        self.n_train, self.n_test, self.repeats, self.seed = n_train, n_test, repeats, seed
        self.store, self.device, self.data_root = store, device, data_root
        self.extra_config = dict(config or {})
        self.debounce_s = debounce_s
        self.run_on_show = run_on_show

        self.last_result = None
        self.last_clean = None
        self.last_config: Config | None = None
        self.last_error: BaseException | None = None
        self.redraws = 0
        self.runs = 0
        self._memory: dict[str, Any] = {}
        self._pending = None
        self._quiet = False
        self._running = False

        w = _widgets()
        self._w = w
        style = {"description_width": "initial"}
        self.dataset_w = w.Dropdown(
            options=[(DATASET_LABELS[d], d) for d in PAIRS],
            value=dataset,
            description="dataset",
            style=style,
        )
        self.pair_w = w.Dropdown(
            description="source → target", style=style, layout=w.Layout(width="330px")
        )
        self._set_pair_options(dataset, pair)
        self.strategy_w = w.Dropdown(
            options=[(STRATEGY_LABELS[s], s) for s in STRATEGIES],
            value=strategy,
            description="strategy",
            style=style,
        )
        self.attack_w = w.Dropdown(
            options=list(ATTACKS.names()),  # every registered attack, new ones included
            value=attack,
            description="attack",
            style=style,
        )
        self.m_w = w.IntSlider(
            value=int(m_percent),
            min=0,
            max=50,
            step=2,
            description="m (%)",
            continuous_update=False,
            style=style,
        )
        self.alpha_w = w.FloatSlider(
            value=alpha,
            min=0.5,
            max=1.0,
            step=0.05,
            description="α",
            readout_format=".2f",
            continuous_update=False,
            style=style,
        )
        self.rounds_w = w.IntSlider(
            value=rounds,
            min=2,
            max=max(max_rounds, rounds),
            step=1,
            description="rounds",
            continuous_update=False,
            style=style,
        )
        self.break_w = w.IntSlider(
            value=break_round or default_break_round(rounds),
            min=1,
            max=rounds,
            description="break round b",
            continuous_update=False,
            style=style,
        )
        self.run_w = w.Button(
            description="Run",
            button_style="primary",
            icon="play",
            tooltip="train this setting (cached settings return at once)",
        )
        self.auto_w = w.Checkbox(value=auto_run, description="run on change", indent=False)
        self.status_w = w.HTML(value="<i>ready</i>")
        self.image_w = w.Image(format="png", layout=w.Layout(max_width="100%"))
        self.widget = w.VBox(
            [
                w.HBox([self.dataset_w, self.pair_w, self.strategy_w, self.attack_w]),
                w.HBox([self.m_w, self.alpha_w]),
                w.HBox([self.rounds_w, self.break_w, self.run_w, self.auto_w]),
                self.status_w,
                self.image_w,
            ]
        )
        self.widget.add_class("flcore-explorer")
        self.status_w.add_class("flcore-explorer-status")
        self.image_w.add_class("flcore-explorer-figure")

        self._make_figure()
        self._draw_placeholder()
        self._sync_enabled()

        self.dataset_w.observe(self._on_dataset, names="value")
        for control in (self.pair_w, self.strategy_w, self.attack_w, self.m_w, self.alpha_w, self.break_w):
            control.observe(self._on_change, names="value")
        self.rounds_w.observe(self._on_rounds, names="value")
        self.run_w.on_click(lambda _button: self.update())

    # ---- display -------------------------------------------------------------------------
    def show(self) -> None:
        """Display the panel, then (with `run_on_show`) run the initial setting."""
        from IPython.display import display

        display(self.widget)
        if self.run_on_show:
            self.update()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # ---- settings ------------------------------------------------------------------------
    def settings(self) -> dict:
        """The controls' current values."""
        return {
            "dataset": self.dataset_w.value,
            "pair": tuple(self.pair_w.value),
            "strategy": self.strategy_w.value,
            "attack": self.attack_w.value,
            "m_percent": self.m_w.value,
            "alpha": self.alpha_w.value,
            "rounds": self.rounds_w.value,
            "break_round": self.break_w.value,
        }

    def config_for(self, s: dict) -> Config:
        """The `Config` of one setting (m in percent as on the slider); raises ConfigError."""
        src, tgt = s["pair"]
        timed = s["strategy"] != "random"
        fields = {
            "dataset": s["dataset"],
            "m": s["m_percent"] / 100,
            "src": src,
            "tgt": tgt,
            "rounds": s["rounds"],
            "strategy": s["strategy"],
            "attack": s["attack"],
            "alpha": s["alpha"] if s["strategy"] == "availability" else None,
            "break_round": s["break_round"] if timed else Config.break_round,
            "repeats": self.repeats,
            "seed": self.seed,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "device": self.device,
        }
        fields.update(self.extra_config)
        return Config(**fields)

    def _set_pair_options(self, dataset: str, pair=None) -> None:
        options = [(pair_label(dataset, s, t), (s, t)) for s, t in PAIRS[dataset]]
        valid = [p for _, p in options]
        pair = tuple(pair) if pair is not None else None
        if pair is not None and pair not in valid:
            options.append((pair_label(dataset, *pair), pair))
        self.pair_w.options = options
        self.pair_w.value = pair if pair is not None else valid[0]

    def _apply(self, s: dict) -> None:
        """Show a requested setting on the controls without firing their callbacks."""
        self._quiet = True
        try:
            if s["dataset"] in PAIRS and s["dataset"] != self.dataset_w.value:
                self.dataset_w.value = s["dataset"]
                self._set_pair_options(s["dataset"], s["pair"])
            if tuple(s["pair"]) != tuple(self.pair_w.value) and s["dataset"] in PAIRS:
                self._set_pair_options(s["dataset"], s["pair"])
            if s["strategy"] in STRATEGIES:
                self.strategy_w.value = s["strategy"]
            if s["attack"] in ATTACKS:
                self.attack_w.value = s["attack"]
            if s["rounds"] >= self.rounds_w.min:
                self.rounds_w.max = max(self.rounds_w.max, s["rounds"])
                self.rounds_w.value = s["rounds"]
                self.break_w.max = s["rounds"]
            for control, name in (
                (self.m_w, "m_percent"),
                (self.alpha_w, "alpha"),
                (self.break_w, "break_round"),
            ):
                if control.min <= s[name] <= control.max:
                    control.value = s[name]
            self._sync_enabled()
        finally:
            self._quiet = False

    def _sync_enabled(self) -> None:
        self.alpha_w.disabled = self.strategy_w.value != "availability"
        self.break_w.disabled = self.strategy_w.value == "random"

    # ---- callbacks -----------------------------------------------------------------------
    def _on_dataset(self, change) -> None:
        if self._quiet:
            return
        self._quiet = True
        try:
            self._set_pair_options(change["new"])
        finally:
            self._quiet = False
        self._on_change(change)

    def _on_rounds(self, change) -> None:
        if self._quiet:
            return
        rounds = change["new"]
        self._quiet = True
        try:
            old = self.break_w.value
            self.break_w.max = rounds
            if old > rounds or old == default_break_round(change["old"]):
                self.break_w.value = default_break_round(rounds)
        finally:
            self._quiet = False
        self._on_change(change)

    def _on_change(self, change=None) -> None:
        if self._quiet:
            return
        self._sync_enabled()
        if not self.auto_w.value:
            self._status("settings changed: press <b>Run</b>", kind="info")
            return
        self._schedule()

    def _schedule(self) -> None:
        """Run after `debounce_s` without further changes (a dragged or key-stepped slider
        fires several changes; only the last one trains)."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self.debounce_s <= 0:
            self.update()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (plain Python): run now
            self.update()
            return
        self._pending = loop.call_later(self.debounce_s, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self.update()

    # ---- the experiment ------------------------------------------------------------------
    def update(self, **changes: Any):
        """Run the current setting (after applying `changes`) and redraw; returns the Result.

        changes: any of dataset, pair (src, tgt), strategy, attack, m_percent (0–100), alpha, rounds,
        break_round. Errors are shown in the panel and kept in `last_error`; the return value
        is then None and the previous figure stays.
        """
        unknown = set(changes) - set(self.settings())
        if unknown:
            name = min(unknown)
            self._error(
                ConfigError(
                    f"unknown explorer setting {name!r} (valid: {', '.join(self.settings())})"
                )
            )
            return None
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        s = {**self.settings(), **changes}
        if not 0 <= s["m_percent"] <= 100:
            self._error(
                ConfigError(
                    f"m_percent={s['m_percent']}: m is a percentage of the "
                    f"participants, 0 to 100 (the slider offers 0 to 50)"
                )
            )
            return None
        self._apply(s)
        self._running = True
        self.run_w.disabled = True
        t0 = time.perf_counter()
        try:
            cfg = self.config_for(s)
            self._status(f"running {self._describe(cfg)} …", kind="busy")
            clean_cfg = cfg.replace(  # one clean run shared by every attack and strategy
                m=0.0, strategy="random", alpha=None, break_round=Config.break_round,
                attack="label_flip", attack_params={},
            )
            clean, clean_how = self._run(clean_cfg)
            result, how = (clean, clean_how) if cfg == clean_cfg else self._run(cfg)
        except Exception as e:  # noqa: BLE001 - every failure becomes one readable line
            self._error(e)
            return None
        finally:
            self._running = False
            self.run_w.disabled = False
        elapsed = time.perf_counter() - t0
        self.last_result, self.last_clean, self.last_config, self.last_error = (
            result,
            clean,
            cfg,
            None,
        )
        self._draw(cfg, result, clean)
        self._done(cfg, result, clean, how, clean_how, elapsed)
        return result

    def _run(self, cfg: Config):
        """One federation through the in-memory cache and the result store."""
        from flcore.runs.runner import run

        key = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
        if key in self._memory:
            return self._memory[key], "cached"
        t0 = time.perf_counter()
        data = None
        if self.data_root is not None:
            from flcore.data import load_dataset

            data = load_dataset(cfg.dataset, self.data_root, progress=False)
        result = run(cfg, store=self.store, data=data, progress=False)
        took = time.perf_counter() - t0
        stored = result.meta.get("wall_s") is not None and took < 0.5 * result.meta["wall_s"]
        if not stored:
            self.runs += 1
        self._memory[key] = result
        return result, ("from store" if stored else f"trained in {took:.1f} s")

    # ---- drawing -------------------------------------------------------------------------
    def _make_figure(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(11.5, 4.4), dpi=80, layout="constrained")
        FigureCanvasAgg(self.figure)
        self.ax_recall, self.ax_confusion = self.figure.subplots(
            1, 2, gridspec_kw={"width_ratios": [1.25, 1]}
        )

    def _render(self) -> None:
        buf = io.BytesIO()
        self.figure.savefig(buf, format="png")
        self.image_w.value = buf.getvalue()

    def _draw_placeholder(self) -> None:
        for ax in (self.ax_recall, self.ax_confusion):
            ax.clear()
            ax.set_axis_off()
        self.ax_recall.text(
            0.5,
            0.5,
            "press Run (or move a slider)",
            ha="center",
            va="center",
            fontsize=13,
            color="0.4",
            transform=self.ax_recall.transAxes,
        )
        self._render()

    def _draw(self, cfg: Config, result, clean) -> None:
        names = CLASS_NAMES[cfg.dataset]
        ax = self.ax_recall
        ax.clear()
        ax.set_axis_on()

        def per_round(res, cls):
            rec = res.recall[res.recall["cls"] == cls].pivot(
                index="round", columns="repeat", values="recall"
            )
            return rec.index.to_numpy(), rec.to_numpy()

        x, y = per_round(result, cfg.src)
        ax.plot(
            x, y.mean(1), "-o", color="C3", ms=4, lw=2, label=f"source recall, m = {cfg.m * 100:g}%"
        )
        if y.shape[1] > 1:
            ax.fill_between(x, y.min(1), y.max(1), color="C3", alpha=0.15, lw=0)
        xc, yc = per_round(clean, cfg.src)
        ax.plot(xc, yc.mean(1), "--", color="0.35", lw=1.8, label="source recall, clean (m = 0)")
        xt, yt = per_round(result, cfg.tgt)
        ax.plot(
            xt, yt.mean(1), ":", color="C0", lw=1.5, label=f"target recall, m = {cfg.m * 100:g}%"
        )

        sel = result.rounds.groupby("round")["n_malicious"].mean()
        hit = sel[sel > 0]
        if len(hit):
            ax.scatter(
                hit.index,
                np.full(len(hit), -4.0),
                s=18 + 22 * hit.to_numpy(),
                marker="^",
                color="C1",
                zorder=3,
                label="malicious selected (▲ size: count)",
            )
        if cfg.strategy != "random":
            ax.axvline(cfg.break_round - 0.5, color="k", lw=1, alpha=0.6)
            ax.text(
                cfg.break_round - 0.5,
                98,
                f" break round b = {cfg.break_round}",
                va="top",
                fontsize=9,
            )
        ax.set_xlim(0.5, cfg.rounds + 0.5)
        ax.set_ylim(-8, 102)  # the strip below 0 holds the malicious-selection markers
        ax.set_yticks(range(0, 101, 20))
        step = max(1, math.ceil(cfg.rounds / 15))
        ax.set_xticks(range(1, cfg.rounds + 1, step))
        ax.set_xlabel("round")
        ax.set_ylabel("recall (%)")
        ax.set_title(
            f"{DATASET_LABELS[cfg.dataset]}: {names[cfg.src]} → {names[cfg.tgt]}, "
            f"{TITLE_STRATEGY[cfg.strategy]}"
            + (f", α = {cfg.alpha:g}" if cfg.alpha is not None else "")
            + (f", {cfg.attack}" if cfg.attack != "label_flip" else ""),
            fontsize=11,
        )
        ax.grid(alpha=0.3)
        ax.legend(
            loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8.5, frameon=False
        )

        cm = result.confusion[:, -1].sum(0).astype(float)
        cm = 100 * cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax = self.ax_confusion
        ax.clear()
        ax.set_axis_on()
        ax.imshow(cm, cmap="Blues", vmin=0, vmax=100)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                if cm[i, j] >= 0.5:
                    ax.text(
                        j,
                        i,
                        f"{cm[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if cm[i, j] > 60 else "black",
                    )
        from matplotlib.patches import Rectangle

        ax.add_patch(Rectangle((cfg.tgt - 0.5, cfg.src - 0.5), 1, 1, fill=False, ec="C3", lw=2))
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(
            f"confusion, round {int(result.eval_rounds[-1])} (% of true class)", fontsize=11
        )
        self._render()
        self.redraws += 1

    # ---- status line ---------------------------------------------------------------------
    @staticmethod
    def _describe(cfg: Config) -> str:
        what = f"{DATASET_LABELS[cfg.dataset]} {cfg.src}→{cfg.tgt}, m = {cfg.m * 100:g}%, {cfg.strategy}"
        if cfg.attack != "label_flip":
            what += f", {cfg.attack}"
        if cfg.strategy != "random":
            what += f" (b = {cfg.break_round})"
        if cfg.alpha is not None:
            what += f", α = {cfg.alpha:g}"
        n = f"{cfg.repeats} repeats" if cfg.repeats > 1 else "1 repeat"
        return f"{what}, {cfg.rounds} rounds × {n}"

    def _status(self, text: str, kind: str = "ok") -> None:
        color = {"ok": "#1a7f37", "busy": "#9a6700", "info": "#555", "error": "#cf222e"}[kind]
        icon = {"ok": "✔", "busy": "⏳", "info": "ℹ", "error": "⚠"}[kind]
        self.status_w.value = (
            f'<span style="color:{color}" data-kind="{kind}">{icon} {text}</span>'
            f' <span style="color:#888">· redraw #{self.redraws}</span>'
        )

    def _done(self, cfg, result, clean, how, clean_how, elapsed) -> None:
        src = result.final()["source_recall"].mean()
        src0 = clean.final()["source_recall"].mean()
        acc = result.final()["accuracy"].mean()
        acc0 = clean.final()["accuracy"].mean()
        self._status(
            f"{html.escape(self._describe(cfg), quote=False)}: {how}, clean baseline {clean_how} "
            f"({elapsed:.1f} s) · final source recall <b>{src:.1f}%</b> (clean {src0:.1f}%), "
            f"accuracy {acc:.1f}% (clean {acc0:.1f}%)",
            kind="ok",
        )

    def _error(self, e: BaseException) -> None:
        self.last_error = e
        text = str(e).strip() or repr(e)
        if isinstance(e, (ConfigError, FileNotFoundError)):
            # their messages already say what to do; long ones (data search) keep all lines
            text = html.escape(text, quote=False).replace("\n", "<br>")
        else:
            text = html.escape(text.splitlines()[0], quote=False)
        self._status(f"<b>{type(e).__name__}</b>: {text}", kind="error")
