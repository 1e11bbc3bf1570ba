"""The paper's figures, drawn from the tidy frames of `flcore.experiments`.

Each function takes a frame and returns a matplotlib Figure; nothing here trains, so a figure
can be redrawn from stored results.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from flcore.data.specs import label as _label

sns.set_theme(style="whitegrid", context="notebook")


def pair_title(dataset: str, src: int, tgt: int) -> str:
    return f"{_label(dataset)} {src}→{tgt}"


def _panels(n: int, width: float = 4.2, height: float = 3.3, ncols: int | None = None):
    ncols = min(n, 3) if ncols is None else ncols
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def fig1_feasibility(final: pd.DataFrame, pairs=None):
    """Fig 1: mean M_acc and source recall (%) vs m, bars with standard-deviation error bars,
    one panel per (dataset, src, tgt)."""
    groups = list(final.groupby(["dataset", "src", "tgt"], sort=True))
    if pairs is not None:
        want = {tuple(p) for p in pairs}
        groups = [g for g in groups if g[0] in want] or groups
    fig, axes = _panels(len(groups))
    for ax, ((d, s, t), g) in zip(axes, groups):
        long = g.melt(id_vars=["m"], value_vars=["accuracy", "source_recall"], var_name="metric")
        long["metric"] = long["metric"].map({"accuracy": "global accuracy", "source_recall": "source recall"})
        long["m%"] = (100 * long["m"]).round(1).map(lambda v: f"{v:g}")
        order = [f"{v:g}" for v in sorted((100 * g["m"]).round(1).unique())]
        sns.barplot(long, x="m%", y="value", hue="metric", order=order, errorbar="sd", capsize=0.15,
                    err_kws={"linewidth": 1}, ax=ax)  # fmt: skip
        ax.set(title=pair_title(d, s, t), xlabel="malicious participants m (%)", ylabel="%", ylim=(0, 100))
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize="small", frameon=False)
    fig.tight_layout()
    return fig


def fig2_acc_vs_recall(final: pd.DataFrame):
    """Fig 2: mean global accuracy against mean source recall, one point per (pair, m)."""
    g = final.groupby(["dataset", "src", "tgt", "m"], as_index=False)[["accuracy", "source_recall"]].mean()
    g["pair"] = [pair_title(d, s, t) for d, s, t in zip(g["dataset"], g["src"], g["tgt"])]
    g["m%"] = 100 * g["m"]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    sns.lineplot(g.sort_values("m"), x="source_recall", y="accuracy", hue="pair", sort=False,
                 estimator=None, ax=ax, legend=False, alpha=0.4)  # fmt: skip
    sns.scatterplot(g, x="source_recall", y="accuracy", hue="pair", size="m%", sizes=(30, 160), ax=ax)
    ax.set(xlabel="source class recall (%)", ylabel="global accuracy M_acc (%)",
           title="Accuracy hides the damage to the source class")  # fmt: skip
    ax.legend(fontsize="small", bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig


def fig_recall_rounds(rounds: pd.DataFrame, break_round: int, hue: str = "setting", title: str = "",
                      xlabel: str = "round"):  # fmt: skip
    """Figs 3, 4, 6: source recall per round (mean over repeats, band = ± sd), the break round
    marked by a vertical line; one panel per (dataset, src, tgt)."""
    groups = list(rounds.groupby(["dataset", "src", "tgt"], sort=True))
    fig, axes = _panels(len(groups), width=5.2, height=3.6, ncols=min(len(groups), 2))
    for ax, ((d, s, t), g) in zip(axes, groups):
        sns.lineplot(g, x="round", y="source_recall", hue=hue, errorbar="sd", ax=ax, marker="o",
                     markersize=3)  # fmt: skip
        ax.axvline(break_round, color="tab:blue", linestyle="--", linewidth=1.2)
        ax.set(title=f"{title} {pair_title(d, s, t)}".strip(), xlabel=xlabel,
               ylabel="source class recall (%)", ylim=(0, 100))  # fmt: skip
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize="small", loc="lower left")
    fig.tight_layout()
    return fig


def fig5_availability(per_repeat: pd.DataFrame):
    """Fig 5: source recall averaged over the rounds ≥ break round, per m, bars per α, error
    bars = standard deviation over repeats (`experiments.availability_per_repeat`)."""
    groups = list(per_repeat.groupby(["dataset", "src", "tgt"], sort=True))
    fig, axes = _panels(len(groups))
    for ax, ((d, s, t), g) in zip(axes, groups):
        g = g.assign(**{"m%": (100 * g["m"]).map(lambda v: f"{v:g}"),
                        "α": g["alpha"].map(lambda a: f"{a:g}")})  # fmt: skip
        order = sorted(g["m%"].unique(), key=float)
        hue_order = sorted(g["α"].unique(), key=float)
        sns.barplot(g, x="m%", y="source_recall", hue="α", order=order, hue_order=hue_order,
                    errorbar="sd", capsize=0.15, err_kws={"linewidth": 1}, palette="rocket_r", ax=ax)  # fmt: skip
        ax.set(title=pair_title(d, s, t), xlabel="malicious participants m (%)",
               ylabel="source recall, rounds ≥ break (%)", ylim=(0, 100))  # fmt: skip
    fig.tight_layout()
    return fig


def fig7_recall_change(change: pd.DataFrame):
    """Fig 7: mean change in source recall between consecutive rounds vs change in the number
    of malicious participants selected."""
    groups = list(change.groupby(["dataset", "src", "tgt"], sort=True))
    fig, axes = _panels(len(groups))
    for ax, ((d, s, t), g) in zip(axes, groups):
        g = g.sort_values("delta_malicious")
        colors = ["tab:red" if v < 0 else "tab:green" for v in g["mean"]]
        ax.bar(g["delta_malicious"], g["mean"], color=colors, yerr=g["std"].fillna(0), capsize=3)
        ax.axhline(0, color="k", linewidth=0.8)
        for x, y, n in zip(g["delta_malicious"], g["mean"], g["runs"]):
            ax.annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(0, 4 if y >= 0 else -12),
                        ha="center", fontsize="x-small")  # fmt: skip
        ax.set(title=pair_title(d, s, t), xlabel="Δ malicious participants (round r − (r−1))",
               ylabel="Δ source recall (pp)")  # fmt: skip
        ax.set_xticks(g["delta_malicious"])
    fig.tight_layout()
    return fig


def fig8_defense_pca(pca: pd.DataFrame):
    """Fig 8: the two principal components of the source-class updates, malicious × and
    honest ○, one panel per (dataset, m), drawn for one repeat of each (every repeat has its
    own projection): the first with the most malicious updates, so that a panel shows
    attackers whenever any run selected one. With the detector's decision in the frame
    (`experiments.pca_frame`: participant_flagged), updates of flagged participants are
    ringed in black and the title counts the flagged participants and the malicious among them."""
    if "repeat" in pca:
        keys = ["dataset", "src", "tgt", "m"]
        n_mal = pca.groupby(keys + ["repeat"], as_index=False)["malicious"].sum()
        best = n_mal.sort_values(["malicious", "repeat"], ascending=[False, True]).drop_duplicates(keys)
        pca = pca.merge(best[keys + ["repeat"]], on=keys + ["repeat"])
    groups = list(pca.groupby(["dataset", "src", "tgt", "m"], sort=True))
    fig, axes = _panels(len(groups), width=3.6, height=3.3, ncols=min(len(groups), 4))
    for ax, ((d, s, t, m), g) in zip(axes, groups):
        h = g[~g["malicious"]]
        mal = g[g["malicious"]]
        ax.scatter(h["pc1"], h["pc2"], marker="o", facecolors="none", edgecolors="tab:blue",
                   s=18, linewidths=0.8, label="honest")  # fmt: skip
        ax.scatter(mal["pc1"], mal["pc2"], marker="x", color="tab:red", s=24, linewidths=1.0,
                   label="malicious")  # fmt: skip
        title = f"{_label(d)} {s}→{t}, m={100 * m:g}%"
        sep = g["separation"].iloc[0]
        if "participant_flagged" in g:
            fl = g[g["participant_flagged"]]
            ax.scatter(fl["pc1"], fl["pc2"], marker="o", s=70, facecolors="none", edgecolors="k",
                       linewidths=0.7, label="flagged")  # fmt: skip
            who = g.drop_duplicates("participant")
            tp = int((who["malicious"] & who["participant_flagged"]).sum())
            title += f"\nflagged {int(who['participant_flagged'].sum())}: {tp} of {int(who['malicious'].sum())} malicious"
        elif np.isfinite(sep):
            title += f", AUC {sep:.2f}"
        ax.set(title=title, xlabel="PC 1", ylabel="PC 2")
        ax.title.set_fontsize("small")
        ax.legend(fontsize="x-small", loc="best")
    fig.tight_layout()
    return fig


def fig_defense_comparison(final: pd.DataFrame, order=None, labels=None):
    """Final source recall and M_acc (%) vs m for each defense (mean over repeats, error bars
    = standard deviation), m = 0 being the clean-run cost; the dashed line is the clean run
    without defense. One row of two panels per (dataset, src, tgt)."""
    groups = list(final.groupby(["dataset", "src", "tgt"], sort=True))
    order = [d for d in (order or sorted(final["defense"].unique())) if d in set(final["defense"])]
    labels = labels or {}
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 3.8 * len(groups)), squeeze=False)
    for row, ((d, s, t), g) in zip(axes, groups):
        g = g.assign(**{"m%": (100 * g["m"]).round(1).map(lambda v: f"{v:g}"),
                        "defense ": g["defense"].map(lambda x: labels.get(x, x))})  # fmt: skip
        m_order = sorted(g["m%"].unique(), key=float)
        for ax, (col, name) in zip(row, (("source_recall", "source class recall"), ("accuracy", "global accuracy M_acc"))):
            sns.pointplot(g, x="m%", y=col, hue="defense ", order=m_order,
                          hue_order=[labels.get(x, x) for x in order], errorbar="sd", dodge=0.5,
                          capsize=0.08, err_kws={"linewidth": 1}, markersize=4, linewidth=1.2, ax=ax)  # fmt: skip
            clean = g[(g["defense"] == "none") & (g["m"] == 0)][col].mean()
            if np.isfinite(clean):
                ax.axhline(clean, color="k", linestyle="--", linewidth=0.8)
            ax.set(title=f"{pair_title(d, s, t)}: {name}", xlabel="malicious participants m (%)", ylabel="%")
            if col == "source_recall":
                ax.set_ylim(0, 100)
        handles, names = row[0].get_legend_handles_labels()
        for ax in row:
            ax.get_legend().remove()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 6), fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.08 / len(groups), 1, 1))
    return fig


def _shares(beta: float) -> str:
    return "iid (β = ∞)" if np.isinf(beta) else f"Dirichlet β = {beta:g}"


def fig_noniid_damage(table: pd.DataFrame, order=None, labels=None):
    """Notebook 07: damage (source recall of the clean undefended run at the same β minus this
    run's, pp) and the loss in M_acc against m for each defense, one column per β (iid first)
    and two rows per pair; m = 0 is the defense's clean-run cost. Mean over repeats, error bars
    = standard deviation (`noniid.noniid_table`)."""
    t = table[table["metric"].isin(["damage", "accuracy_loss"])]
    pairs = list(t.groupby(["dataset", "src", "tgt"], sort=True))
    betas = sorted(t["beta"].unique(), reverse=True)
    order = [d for d in (order or list(dict.fromkeys(t["defense"]))) if d in set(t["defense"])]
    labels = labels or {}
    colors = dict(zip(order, sns.color_palette("tab10", len(order))))
    fig, axes = plt.subplots(2 * len(pairs), len(betas), figsize=(3.6 * len(betas), 3.0 * 2 * len(pairs)),
                             squeeze=False, sharey="row")  # fmt: skip
    for p, ((d, s, tg), g) in enumerate(pairs):
        for r, (metric, name) in enumerate((("damage", "source recall loss (pp)"), ("accuracy_loss", "M_acc loss (pp)"))):
            for c, b in enumerate(betas):
                ax = axes[2 * p + r, c]
                gb = g[(g["metric"] == metric) & (g["beta"] == b)]
                ms = sorted(gb["m"].unique())
                for i, dname in enumerate(order):
                    v = gb[gb["defense"] == dname].set_index("m").reindex(ms)
                    x = np.arange(len(ms)) + (i - (len(order) - 1) / 2) * 0.8 / max(1, len(order))
                    ax.errorbar(x, v["mean"], yerr=v["std"].fillna(0), marker="o", markersize=4, linewidth=1,
                                capsize=2, color=colors[dname], label=labels.get(dname, dname))  # fmt: skip
                ax.axhline(0, color="k", linewidth=0.8, linestyle="--")
                ax.set_xticks(np.arange(len(ms)), [f"{100 * m:g}" for m in ms])
                ax.set(title=f"{pair_title(d, s, tg)}, {_shares(b)}", xlabel="malicious participants m (%)",
                       ylabel=name if c == 0 else "")  # fmt: skip
                ax.title.set_fontsize("small")
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 6), fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.06 / len(pairs), 1, 1))
    return fig


def fig_noniid_roc(curves: pd.DataFrame, roc_table: pd.DataFrame | None = None, level: str = "update"):
    """Notebook 07: ROC curves of the offline PCA detector's scores on the undefended runs'
    recorded source-row updates, one curve per β (mean over repeats, `noniid.roc_curve_table`),
    one panel per (pair, m); the legend gives the ROC AUC (mean ± sd over repeats)."""
    c = curves[curves["level"] == level]
    groups = list(c.groupby(["dataset", "src", "tgt", "m"], sort=True))
    fig, axes = _panels(max(1, len(groups)), width=4.0, height=3.8)
    if not groups:
        axes[0].text(0.5, 0.5, "no run with malicious and honest updates", ha="center", va="center")
    betas = sorted(c["beta"].unique(), reverse=True)
    colors = dict(zip(betas, sns.color_palette("viridis_r", len(betas))))
    for ax, ((d, s, t, m), g) in zip(axes, groups):
        for b in betas:
            gb = g[g["beta"] == b].sort_values("fpr")
            if gb.empty:
                continue
            lab = "iid" if np.isinf(b) else f"β = {b:g}"
            if roc_table is not None:
                r = roc_table[(roc_table["dataset"] == d) & (roc_table["src"] == s) & (roc_table["tgt"] == t)
                              & (roc_table["beta"] == b) & np.isclose(roc_table["m"], m)
                              & (roc_table["level"] == level)]  # fmt: skip
                if len(r) and np.isfinite(r["roc_auc"].iloc[0]):
                    sd = r["roc_auc_std"].iloc[0]
                    lab += f": AUC {r['roc_auc'].iloc[0]:.2f}" + (f" ± {sd:.2f}" if np.isfinite(sd) else "")
            ax.plot(gb["fpr"], gb["tpr"], color=colors[b], linewidth=1.5, label=lab)
            ax.fill_between(gb["fpr"], (gb["tpr"] - gb["tpr_std"].fillna(0)).clip(0, 1),
                            (gb["tpr"] + gb["tpr_std"].fillna(0)).clip(0, 1), color=colors[b], alpha=0.12)  # fmt: skip
        ax.plot([0, 1], [0, 1], color="k", linestyle=":", linewidth=0.8)
        ax.set(title=f"{pair_title(d, s, t)}, m={100 * m:g}% (per {level})", xlabel="false-positive rate",
               ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1.02))  # fmt: skip
        ax.title.set_fontsize("small")
        ax.legend(fontsize="x-small", loc="lower right")
    fig.tight_layout()
    return fig


def fig_scoreboard(table: pd.DataFrame, order=None, labels=None, attack_labels=None):
    """Notebook 08: defense x attack heatmaps, one row of panels per pair: the worst (lowest)
    final source recall over m (the clean run, m = 0, as its first column), the worst M_acc over
    m and, where an attack has a trigger, the highest backdoor success rate over m. Each cell
    is annotated with its mean (%) over repeats (`scoreboard.scoreboard_table`)."""
    from flcore.studies import scoreboard as sb

    labels, attack_labels = labels or {}, attack_labels or sb.ATTACK_LABEL
    panels = [("source_recall", "min", "worst source recall over m (%)", "RdYlGn"),
              ("accuracy", "min", "worst M_acc over m (%)", "RdYlGn"),
              ("attack_success", "max", "highest attack success\nover m (%)", "RdYlGn_r")]  # fmt: skip
    frames = {p[0]: sb.heatmap_frame(table, p[0], p[1]) for p in panels}
    panels = [p for p in panels if len(frames[p[0]])]
    pairs = list(table[["dataset", "src", "tgt"]].drop_duplicates().itertuples(index=False, name=None))
    defenses = [d for d in (order or list(dict.fromkeys(table["defense"]))) if d in set(table["defense"])]
    widths = [max(2, frames[p[0]]["attack"].nunique()) for p in panels]
    fig, axes = plt.subplots(max(1, len(pairs)), len(panels),
                             figsize=(0.9 * sum(widths) + 2.2 * len(panels), 0.42 * len(defenses) * max(1, len(pairs)) + 1.6),
                             squeeze=False, gridspec_kw={"width_ratios": widths})  # fmt: skip
    for i, (d, s, t) in enumerate(pairs):
        for j, (metric, _, title, cmap) in enumerate(panels):
            ax = axes[i, j]
            f = frames[metric]
            f = f[(f["dataset"] == d) & (f["src"] == s) & (f["tgt"] == t)]
            cols = [a for a in (sb.CLEAN, *sb.ATTACKS) if a in set(f["attack"])]
            w = f.pivot(index="defense", columns="attack", values="value").reindex(index=defenses, columns=cols)
            sns.heatmap(w, ax=ax, annot=True, fmt=".0f", cmap=cmap, vmin=0, vmax=100, cbar=False,
                        linewidths=0.5, annot_kws={"fontsize": "x-small"})  # fmt: skip
            ax.set_xticklabels([attack_labels.get(a, a) for a in cols], rotation=35, ha="right", fontsize="x-small")
            if j == 0:
                ax.set_yticklabels([labels.get(x, x) for x in defenses], rotation=0, fontsize="x-small")
            else:
                ax.tick_params(labelleft=False)
            ax.set(xlabel="", ylabel="", title=f"{pair_title(d, s, t)}\n{title}")
            ax.title.set_fontsize("small")
    fig.tight_layout()
    return fig


def fig_adaptive_tradeoff(table: pd.DataFrame):
    """Notebook 08's trade-off of the adaptive flip (`adaptive.tradeoff_table`), one row of
    two panels per pair: left, the damage it does unopposed (pp of final source recall,
    paired against strength 0) against the offline PCA detector's per-participant ROC AUC,
    one point per strength (labelled; bars: ± std over repeats); right, against the strength,
    the online PCA defense's recall (share of malicious participant-rounds excluded) and the
    damage without and with that defense."""
    groups = list(table.groupby(["dataset", "src", "tgt"], sort=False))
    fig, axes = plt.subplots(len(groups), 2, figsize=(10, 3.8 * len(groups)), squeeze=False)
    for (key, g), (ax, ax2) in zip(groups, axes):

        def series(metric, defense, g=g):
            s = g[(g["metric"] == metric) & (g["defense"] == defense)].set_index("strength").sort_index()
            return s["mean"], s["std"].fillna(0.0)

        dmg, dmg_sd = series("damage", "none")
        auc, auc_sd = series("detection_auc", "none")
        both = dmg.index.intersection(auc.index)
        ax.errorbar(auc[both], dmg[both], xerr=auc_sd[both], yerr=dmg_sd[both], fmt="o-", capsize=3)
        for st in both:
            ax.annotate(f"{st:g}", (auc[st], dmg[st]), textcoords="offset points", xytext=(5, 5), fontsize=9)
        ax.axvline(0.5, color="grey", ls=":", lw=1)
        ax.set_xlabel("offline detector AUC per participant (0.5: chance)")
        ax.set_ylabel("source recall loss, unopposed (pp)")
        ax.set_title(f"{pair_title(*key)}: damage vs detectability (labels: strength)")
        rec, rec_sd = series("detection_recall", "pca")
        ax2.errorbar(rec.index, rec, yerr=rec_sd, fmt="s-", color="C3", capsize=3, label="online recall")
        ax2.axhline(0.5, color="C3", ls=":", lw=1)
        ax2.set_ylim(-0.05, 1.05)
        ax2.set_xlabel("adaptive flip strength")
        ax2.set_ylabel("malicious participant-rounds excluded", color="C3")
        ax3 = ax2.twinx()
        ax3.grid(False)
        for defense, style, lab in (("none", "o--", "damage, no defense"), ("pca", "^-", "damage, PCA defense")):
            d, sd = series("damage", defense)
            ax3.errorbar(d.index, d, yerr=sd, fmt=style, color="C0" if defense == "none" else "C2", capsize=3, label=lab)
        ax3.set_ylabel("source recall loss (pp)")
        lines = ax2.get_legend_handles_labels()
        lines3 = ax3.get_legend_handles_labels()
        ax2.legend(lines[0] + lines3[0], lines[1] + lines3[1], fontsize=8, loc="upper left")
        ax2.set_title("online PCA defense vs strength")
    fig.tight_layout()
    return fig
