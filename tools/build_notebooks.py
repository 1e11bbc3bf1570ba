"""Generates notebooks/01..08 (no outputs). Run: .venv/bin/python tools/build_notebooks.py"""
from pathlib import Path

import nbformat as nbf

OUT = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}

COMMON = '''profile = "dev"  # figures and tables go to <output_dir>/<profile>/
output_dir = "figures"  # relative paths are taken from the repository root
results = "results"  # result store shared by all notebooks (identical configs train once)
device = "auto"  # auto | cpu | cuda
precision = "auto"  # auto | fp32 | bf16 | fp64
seed = 0
n_train = {"fmnist": 1000, "cifar10": 1000}  # class-balanced subsets (None: the full set)
n_test = {"fmnist": 500, "cifar10": 500}
warm_start = 0  # start every run from the clean model after this many FedAvg rounds (one value or per dataset; trained once and shared; 0: from initialisation)
client_state = "stateless"  # stateless (the paper's text) | persistent (the authors' code: each participant keeps its optimizer and its own learning-rate schedule)
'''

SETUP = '''import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from flcore.studies import experiments as ex
from flcore.studies import plots

out = ex.figures_dir(output_dir, profile)
common = dict(seed=seed, n_train=n_train, n_test=n_test, warm_start=warm_start, device=device,
              precision=precision, client_state=client_state, store=results)'''


def nb(cells):
    n = nbf.v4.new_notebook()
    n.metadata["kernelspec"] = KERNEL
    n.metadata["language_info"] = {"name": "python"}
    out = []
    for i, (kind, src, *tags) in enumerate(cells):
        c = nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src)
        c["id"] = f"cell-{i:02d}"  # stable ids: regenerating changes only what changed
        if tags:
            c.metadata["tags"] = tags
        out.append(c)
    n.cells = out
    return n


def params(extra):
    return ("code", COMMON + extra, "parameters")


NB = {}
NB["01_feasibility"] = [
    ("md", "# 01 Feasibility: how much damage does label flipping do?\n\n"
     "**Question.** As the fraction m of malicious participants grows, what happens to the global "
     "accuracy M_acc and to the recall of the source class c_src?\n\n"
     "**Paper (Fig 1, Table 2, Fig 2).** Source recall falls as m grows, by tens of percentage "
     "points at m = 50%, while M_acc falls far less: the attack is targeted and hides inside the "
     "overall accuracy."),
    params('''rounds = 3  # R: global rounds (the paper: 200)
repeats = 2  # repeats per poisoned setting (the paper: 10)
baseline_repeats = 2  # repeats of the clean model M_NP, shared with notebooks 02 and 03
pairs = [["fmnist", 4, 6]]  # [dataset, c_src, c_tgt]
m_values = [0.0, 0.1, 0.5]  # malicious fractions, 0 is the shared clean baseline
fig1_pairs = [["cifar10", 5, 3], ["fmnist", 4, 6]]  # panels of Fig 1 (those that were run)
curves = False  # True: poisoned runs also evaluate source and target every round (Table 2 over the last rounds too)
'''),
    ("code", SETUP),
    ("md", "## Run\nOne federation per (pair, m), all repeats batched; m = 0 is the shared clean baseline."),
    ("code", "final = ex.feasibility(pairs, m_values, rounds=rounds, repeats=repeats,\n"
             "                       baseline_repeats=baseline_repeats, curves=curves, **common)\nfinal.head()"),
    ("md", "## Table 2: loss in source recall (pp) and the clean model's m_cnt\n"
           "Loss = clean minus poisoned source recall, paired by repeat (same data split, start and selection)."),
    ("code", "t2 = ex.table2(final)\nex.save_table(t2, \"table2_source_recall_loss\", out)\nt2"),
    ("md", "## Fig 1: global accuracy and source recall vs m"),
    ("code", "fig = plots.fig1_feasibility(final, fig1_pairs)\nex.save_figure(fig, \"fig1_feasibility\", out)\nplt.show()"),
    ("md", "## Fig 2: accuracy vs source recall"),
    ("code", "fig = plots.fig2_acc_vs_recall(final)\nex.save_figure(fig, \"fig2_acc_vs_recall\", out)\nplt.show()"),
    ("md", "## Paper vs this run"),
    ("code", "cmp = ex.compare_table2(t2)\ncmp"),
    ("code", "display(Markdown(ex.agreement_table2(t2) + \" \" + ex.rounds_note(warm_start) + \" \"\n"
             "                 + ex.data_note(final[\"dataset\"])))"),
]
NB["02_targeting"] = [
    ("md", "# 02 Targeting: is the damage confined to the source and target classes?\n\n"
     "**Question.** At m = 10%, how do the recalls of the source class, the target class and all "
     "other classes change compared with the clean model?\n\n"
     "**Paper (Table 3).** The source class loses recall, the target class gains a little, and "
     "\"the recall of all remaining classes\" changes by at most 0.34 pp, an order of magnitude less.\n\n"
     "**Two readings of the third column.** Read literally, it is the *summed* change over the eight "
     "other classes (`delta_others_sum`). The paper's values (0.01–0.34 pp) have the size of a "
     "*per-class mean* change (`delta_others_mean`, which equals the change of the other classes' "
     "pooled recall on a class-balanced test set). This notebook reports both, and sets the "
     "paper's value beside each."),
    params('''rounds = 3  # must match 01 to reuse its runs and the shared baseline
repeats = 2  # one number or a dict per dataset, e.g. {"fmnist": 4, "cifar10": 2}
baseline_repeats = 2  # one number or a dict per dataset, e.g. {"fmnist": 4, "cifar10": 2}
pairs = [["fmnist", 4, 6]]
m = 0.1  # the paper's m for Table 3
curves = False  # must match 01 to reuse its runs
'''),
    ("code", SETUP),
    ("md", "## Run\nThe same configurations as notebook 01 at this m (loaded from the result store "
     "when 01 ran them); `repeats` can differ per dataset, and then the runs are new."),
    ("code", "final = ex.feasibility(pairs, [0.0, m], rounds=rounds, repeats=repeats,\n"
             "                       baseline_repeats=baseline_repeats, curves=curves, **common)"),
    ("md", "## Table 3: change due to poisoning (pp)"),
    ("code", "t3 = ex.table3(final, m)\nex.save_table(t3, \"table3_targeting\", out)\n"
             "t3.pivot_table(index=[\"dataset\", \"src\", \"tgt\"], columns=\"setting\", values=\"mean\")"),
    ("md", "## Paper vs this run"),
    ("code", "cmp = ex.compare_table3(t3)\ncmp"),
    ("code", "display(Markdown(ex.agreement_table3(t3) + \" \" + ex.rounds_note(warm_start) + \" \"\n"
             "                 + ex.data_note(final[\"dataset\"])))"),
]
NB["03_timing"] = [
    ("md", "# 03 Timing: early vs late poisoning\n\n"
     "**Question.** Does it matter when the malicious participants take part?\n\n"
     "**Paper (Figs 3, 4, Table 4).** Poisoning only before the break round (75) is forgotten: "
     "the model recovers once only honest participants train. Poisoning from the break on does "
     "lasting damage, and the final source recall is lowest when the last round's participants "
     "P_R include a malicious one."),
    params('''rounds = 3  # must match 01 to share the clean baseline
break_round = 2  # the paper: 75 of 200
repeats = 3
baseline_repeats = 2
m = 0.2  # malicious fraction for the timing runs
pairs = [["fmnist", 4, 6]]  # Table 4 pairs (late poisoning, final round only)
figure_pairs = [["fmnist", 4, 6]]  # pairs drawn in Figs 3 and 4 (early and late, every round)
'''),
    ("code", SETUP),
    ("md", "## Run\nEarly and late poisoning for the figure pairs (evaluated every round), late poisoning "
           "for every Table 4 pair; the non-poisoned curve is the shared baseline."),
    ("code", "rounds_df, late = ex.timing(pairs, m, rounds=rounds, repeats=repeats, break_round=break_round,\n"
             "                           figure_pairs=figure_pairs, baseline_repeats=baseline_repeats, **common)\n"
             "summary = ex.timing_summary(rounds_df, break_round)\nsummary"),
    ("md", "## Fig 3: early poisoning (malicious participants only in rounds r < break)"),
    ("code", "fig = plots.fig_recall_rounds(rounds_df[rounds_df[\"setting\"].isin([\"none\", \"early\"])], break_round,\n"
             "                              title=\"early poisoning\", xlabel=ex.round_label(warm_start))\nex.save_figure(fig, \"fig3_early_poisoning\", out)\nplt.show()"),
    ("md", "## Fig 4: late poisoning (malicious participants only in rounds r ≥ break)"),
    ("code", "fig = plots.fig_recall_rounds(rounds_df[rounds_df[\"setting\"].isin([\"none\", \"late\"])], break_round,\n"
             "                              title=\"late poisoning\", xlabel=ex.round_label(warm_start))\nex.save_figure(fig, \"fig4_late_poisoning\", out)\nplt.show()"),
    ("md", "## Table 4: final source recall, ≥ 1 malicious participant in P_R vs none"),
    ("code", "t4 = ex.table4(late)\nex.save_table(t4, \"table4_final_source_recall\", out)\nt4"),
    ("md", "## Paper vs this run"),
    ("code", "cmp = ex.compare_table4(t4)\ncmp"),
    ("code", "display(Markdown(ex.agreement_timing(summary) + \" \" + ex.agreement_table4(t4) + \" \"\n"
             "                 + ex.rounds_note(warm_start) + \" \" + ex.data_note(late[\"dataset\"])))"),
]
NB["04_availability"] = [
    ("md", "# 04 Availability: does a more available adversary hurt more?\n\n"
     "**Question.** With late poisoning, each of the k slots of a round is filled from the malicious "
     "pool with probability α. How does source recall depend on α and m?\n\n"
     "**Paper (Figs 5, 6, 7).** For m ≥ 10% the loss grows with α (α = 0.9 worst, losses above "
     "20%); round to round, source recall falls when more malicious participants are selected "
     "than in the previous round and rises when fewer are (Fig 7: +3 or +4 drop it by 40–60%)."),
    params('''rounds = 3
break_round = 2  # the paper: 75 of 200
repeats = 2  # the paper: 3
pairs = [["fmnist", 4, 6]]
m_values = [0.1, 0.3]
alphas = [0.6, 0.9]  # the paper: 0.6, 0.7, 0.8, 0.9
fig6_m = 0.3  # the m whose rounds Fig 6 draws for the smallest and largest α
'''),
    ("code", SETUP),
    ("md", "## Run"),
    ("code", "av = ex.availability(pairs, m_values, alphas, rounds=rounds, repeats=repeats,\n"
             "                     break_round=break_round, **common)\n"
             "t5 = ex.availability_table(av, break_round)\nt5"),
    ("md", "## Fig 5: source recall averaged over the rounds from the break on"),
    ("code", "fig = plots.fig5_availability(ex.availability_per_repeat(av, break_round))\n"
             "ex.save_figure(fig, \"fig5_availability\", out)\nplt.show()"),
    ("md", "## Fig 6: source recall per round, lowest vs highest α"),
    ("code", "sel = av[av[\"m\"].round(4).eq(round(fig6_m, 4)) & av[\"alpha\"].isin([min(alphas), max(alphas)])]\n"
             "sel = sel.assign(α=sel[\"alpha\"].map(lambda a: f\"α={a:g}\"))\n"
             "fig = plots.fig_recall_rounds(sel, break_round, hue=\"α\", title=f\"m={100 * fig6_m:g}%\",\n                              xlabel=ex.round_label(warm_start))\n"
             "ex.save_figure(fig, \"fig6_alpha_rounds\", out)\nplt.show()"),
    ("md", "## Fig 7: change of source recall vs change in the number of malicious participants"),
    ("code", "change = ex.recall_change(av, break_round)\nfig = plots.fig7_recall_change(change)\n"
             "ex.save_figure(fig, \"fig7_recall_change\", out)\nplt.show()\nchange"),
    ("md", "## Paper vs this run\nThe paper states these findings in words and figures rather than a table."),
    ("code", "display(Markdown(ex.agreement_availability(t5, change) + \" \" + ex.rounds_note(warm_start) + \" \"\n"
             "                 + ex.data_note(av[\"dataset\"])))"),
]
NB["05_defense"] = [
    ("md", "# 05 Defense: do malicious updates stand apart? (Algorithm 1)\n\n"
     "**Question.** Take every selected participant's update to the weights feeding the source "
     "class's output node, standardise, project on two principal components: are malicious and "
     "honest updates separable, and can a detector that never sees the truth pick the malicious "
     "participants out?\n\n"
     "**Paper (Fig 8).** Yes, clearly, even at m = 2%: the malicious updates form their own cluster. "
     "The paper stops at the picture; here a two-cluster model on the projection decides (the "
     "smaller cluster is called malicious, as attackers are a minority) and is scored against the truth."),
    params('''rounds = 3
repeats = 1
pairs = [["fmnist", 4, 6]]
m_values = [0.1, 0.2]  # the paper: 2, 4, 10, 20 %
rounds_from = 1  # rows from this round on (the paper: 10)
how = "mean"  # a participant's verdict: mean score of its updates | vote (majority of flags)
'''),
    ("code", SETUP),
    ("md", "## Run\nEach selected participant's output-layer update row c_src is recorded during training."),
    ("code", "res = ex.defense_updates(pairs, m_values, rounds=rounds, repeats=repeats, **common)\n"
             "pca = ex.pca_frame(res, rounds_from, how=how)\nsep = ex.pca_separation(pca)\nsep"),
    ("md", "## Fig 8: PCA of the source-class updates (malicious ×, honest ○, flagged participants ringed)"),
    ("code", "fig = plots.fig8_defense_pca(pca)\nex.save_figure(fig, \"fig8_defense_pca\", out)\nplt.show()"),
    ("md", "## Detection against the truth\n`flcore.defenses.detector.PCADetector` per run: per update (each update "
           "judged) and per participant (the scores of its updates averaged). Precision, recall, F1 and "
           "false-positive rate of the flags; ROC AUC of the scores (1 = every malicious participant scores "
           "above every honest one)."),
    ("code", "det = ex.detection_frame(res, rounds_from, how=how)\ntd = ex.detection_table(det)\n"
             "ex.save_table(td, \"table_defense_detection\", out)\ntd"),
    ("md", "## Paper vs this run\nThe paper shows the picture only; here the separation is measured as the ROC AUC "
           "of the better principal component against the known truth (1 = a line on one component splits them), "
           "and the detector's decision is scored."),
    ("code", "display(Markdown(ex.agreement_pca(sep) + \" \" + ex.agreement_detection(td) + \" \"\n"
             "                 + ex.data_note(pca[\"dataset\"])))"),
]
NB["06_defense_comparison"] = [
    ("md", "# 06 Defense comparison: the PCA detector against robust aggregation\n\n"
     "**Question.** Under label flipping at m = 10–40%, which defense keeps the source class's recall "
     "closest to a clean run: blocking the participants the online PCA detector flags, or a robust "
     "aggregation rule (coordinate-wise median, trimmed mean, Multi-Krum, FoolsGold)? And what does "
     "each cost when nobody attacks (m = 0)?\n\n"
     "**Paper.** Not studied: the paper proposes Algorithm 1 as an inspection tool. The robust rules "
     "are the usual baselines (Yin et al. 2018, Blanchard et al. 2017, Fung et al. 2020)."),
    params('''rounds = 3  # R: global rounds (the paper: 200)
repeats = 2
pairs = [["fmnist", 4, 6]]
m_values = [0.1, 0.2, 0.3, 0.4]  # the clean run (m 0, the defense cost) is always added
defenses = ["none", "pca", "median", "trimmed_mean", "multi_krum", "foolsgold"]
aggregator_params = {"trimmed_mean": {"beta": 0.2}, "multi_krum": {"f": 1}}  # with k 5, beta 0.2 trims one per end, Krum needs k > 2f + 2
pca_params = {"start_round": 2, "min_rows": 10}  # online detector (flcore.defenses.pca.PCAParams; the paper's rounds: from 10)
'''),
    ("code", SETUP),
    ("md", "## Run\nOne federation per (pair, defense, m), all repeats batched. The PCA defense fits the "
           "detector each round on the source-class updates seen so far and, from `start_round` on, "
           "excludes the participants it flags for the rest of the run."),
    ("code", "final = ex.defense_comparison(pairs, m_values, defenses, rounds=rounds, repeats=repeats,\n"
             "                              aggregator_params=aggregator_params, pca_params=pca_params, **common)\n"
             "tc = ex.comparison_table(final)\nex.save_table(tc, \"table_defense_comparison\", out)\n"
             "tc.pivot_table(index=[\"dataset\", \"src\", \"tgt\", \"setting\"], columns=\"m\",\n"
             "               values=\"source_recall_mean\", sort=False).round(1)"),
    ("md", "## Final source recall and M_acc per defense (dashed: clean run without defense)"),
    ("code", "fig = plots.fig_defense_comparison(final, order=defenses, labels=ex.DEFENSE_LABEL)\n"
             "ex.save_figure(fig, \"fig_defense_comparison\", out)\nplt.show()"),
    ("md", "## Reading"),
    ("code", "display(Markdown(ex.agreement_comparison(tc) + \" \" + ex.rounds_note(warm_start) + \" \"\n"
             "                 + ex.data_note(final[\"dataset\"])))"),
]

NB["07_noniid"] = [
    ("md", "# 07 Non-iid shares: label flipping and the defenses when participants' data differ\n\n"
     "**Question.** The paper splits the training set iid. When each participant's share is drawn from "
     "Dirichlet(β) class proportions (small β: each participant holds a few classes), how much damage "
     "does the targeted label flip do, what does each defense cost on a clean run, and can the PCA "
     "detector still tell malicious from honest updates? β = ∞ is the iid split.\n\n"
     "**Measured per β.** *Damage*: the source recall of the clean run without defense at the same β "
     "minus this run's, paired by repeat (at m = 0 it is the defense's clean-run cost; the M_acc loss "
     "likewise). *Exclusions*: of the participant-rounds (one participant selected in one round), the "
     "fraction of malicious ones (TPR) and of honest ones (FPR) the defense left out of the aggregate "
     "(`Result.excluded`; only the PCA defense flags participants, the aggregation rules get NaN). "
     "*Offline detection*: the PCA detector (notebook 05's, rule `smaller`) fitted on the recorded "
     "source-row updates of the undefended poisoned runs, scored by ROC curves and their AUC.\n\n"
     "**Warm start.** `pretrain_config` keeps the partition, so with `warm_start` each β has its own "
     "clean warm-up, trained on the same Dirichlet(β) shares (β = ∞: the iid warm-up the other notebooks "
     "share). The whole federation, warm-up included, runs on the β shares.\n\n"
     "**Paper.** Not studied: the paper's shares are iid. The quick profile runs a subset of the "
     "defenses (see its parameters); the paper profile runs all of them."),
    params('''rounds = 3  # R: global rounds after the warm-up (the paper: 200)
repeats = 2
pairs = [["fmnist", 4, 6]]
m_values = [0.3]  # the clean run (m 0: the reference of the damage and each defense's cost) is always added
betas = ["iid", 0.5]  # Dirichlet concentrations of the shares: iid or None means the iid split, written inf in CSV files
defenses = ["none", "pca", "median", "flame"]  # names of ex.DEFENSES; "none" is always run (the reference, and the ROC's updates)
aggregator_params = {"trimmed_mean": {"beta": 0.2}, "multi_krum": {"f": 1}}  # overrides of ex.DEFENSES' parameters per rule
pca_params = {"start_round": 2, "min_rows": 10}  # online detector (flcore.defenses.pca.PCAParams)
roc_rounds_from = 1  # the offline detector reads the recorded updates from this round on (the paper: 10)
'''),
    ("code", SETUP + "\nfrom flcore.studies import noniid as nx"),
    ("md", "## Run\nOne federation per (pair, β, defense, m), all repeats batched; the runs without defense "
           "record every selected participant's update of the source class's output row."),
    ("code", "res = nx.noniid(pairs, m_values, betas, defenses, rounds=rounds, repeats=repeats,\n"
             "                aggregator_params=aggregator_params, pca_params=pca_params,\n"
             "                roc_rounds_from=roc_rounds_from, **common)\n"
             "tn = nx.noniid_table(res.final)\nex.save_table(tn, \"table_noniid\", out)\n"
             "tn.pivot_table(index=[\"dataset\", \"src\", \"tgt\", \"shares\", \"setting\"], columns=[\"metric\", \"m\"],\n"
             "               values=\"mean\", sort=False)[[\"source_recall\", \"damage\", \"tpr\", \"fpr\"]].round(2)"),
    ("md", "## Damage and clean-run cost per β\nSource recall and M_acc lost against the clean run without "
           "defense at the same β (pp; m = 0: the defense's clean-run cost). Error bars: standard deviation "
           "over repeats."),
    ("code", "fig = plots.fig_noniid_damage(tn, order=defenses, labels=ex.DEFENSE_LABEL)\n"
             "ex.save_figure(fig, \"fig_noniid_damage\", out)\nplt.show()"),
    ("md", "## Offline detection: ROC of the PCA detector's scores per β\nOne curve per β (mean over repeats, "
           "band = ± sd); per update (each recorded update scored) and, in the table, per participant (the mean "
           "score of its updates)."),
    ("code", "tr = nx.noniid_roc_table(res.detection)\nex.save_table(tr, \"table_noniid_roc\", out)\n"
             "curves = nx.roc_curve_table(res.roc)\nex.save_table(curves, \"table_noniid_roc_curve\", out, float_format=\"%.3f\")\n"
             "fig = plots.fig_noniid_roc(curves, tr)\nex.save_figure(fig, \"fig_noniid_roc\", out)\nplt.show()\ntr"),
    ("md", "## Reading"),
    ("code", "display(Markdown(nx.agreement_noniid(tn, tr) + \" \" + ex.rounds_note(warm_start) + \" \"\n"
             "                 + ex.data_note(res.final[\"dataset\"])))"),
]

NB["08_scoreboard"] = [
    ("md", "# 08 Scoreboard: every defense against every attack\n\n"
     "**Question.** Which defense holds up in its worst case? Every defense of notebooks 06 and 07 meets "
     "every attack: the paper's targeted flip (`label_flip`), untargeted random flipping (`random_flip`), "
     "many-to-one flipping (`many_to_one`), a pixel-trigger backdoor (`backdoor`) and the adaptive flip "
     "that blends its poisoned update with an honest one against the PCA detector (`adaptive_flip`), at "
     "every m, and each defense runs once clean (m = 0).\n\n"
     "**Reported per defense** (`table_scoreboard_summary`): its *worst* final source recall and M_acc "
     "over attacks and m, the highest attack success rate of the backdoor (the share of stamped test "
     "images of the other classes classified as the target; NaN for attacks without a trigger), each "
     "against the undefended worst case; its clean-run cost (m = 0 against the undefended m = 0, paired "
     "by repeat); and, for a defense that flags participants (the PCA detector), the precision and "
     "recall of its exclusions over participant-rounds (one participant selected in one round). "
     "Every cell is in `table_scoreboard` (tidy: mean, std and runs over repeats).\n\n"
     "**Paper.** Not studied: the paper has one attack (the targeted flip) and one defense "
     "(Algorithm 1, a picture). The untargeted, many-to-one, backdoor and adaptive attacks, the "
     "robust aggregation rules and the worst case over attacks are this workbench's."),
    params('''rounds = 3  # R: global rounds after the warm-up (the paper: 200)
repeats = 2
pairs = [["fmnist", 4, 6]]
m_values = [0.1, 0.2, 0.3, 0.4]  # the clean run (m 0: each defense's cost) is always added
defenses = ["none", "pca", "median", "trimmed_mean", "multi_krum", "foolsgold", "geometric_median", "bulyan", "centered_clipping", "flame", "fltrust"]  # names of ex.DEFENSES; "none" is always run (the reference)
attacks = ["label_flip", "random_flip", "many_to_one", "backdoor", "adaptive_flip"]
aggregator_params = {"trimmed_mean": {"beta": 0.2}, "multi_krum": {"f": 1}}  # overrides of ex.DEFENSES' parameters per rule
pca_params = {"start_round": 2, "min_rows": 10}  # online detector (flcore.defenses.pca.PCAParams)
attack_params = {"adaptive_flip": {"strength": 0.5}}  # per attack ({attack: options}, or {attack: {dataset: options}}); others at their defaults
tradeoff_m = 0.3  # the adaptive flip's trade-off curve: m, strengths (0 is always run), rounds and repeats
tradeoff_strengths = [0.25, 0.5, 0.75, 1.0]
tradeoff_rounds = 4
tradeoff_repeats = 2
'''),
    ("code", SETUP + "\nfrom flcore.studies import scoreboard as sb"),
    ("md", "## Run\nOne federation per (pair, defense, attack, m), all repeats batched; the m values of one "
           "defense and attack train as one stack (the clean run with the targeted flip's)."),
    ("code", "final = sb.scoreboard(pairs, m_values, defenses, attacks, rounds=rounds, repeats=repeats,\n"
             "                      aggregator_params=aggregator_params, pca_params=pca_params,\n"
             "                      attack_params=attack_params, **common)\n"
             "ts = sb.scoreboard_table(final)\nex.save_table(ts, \"table_scoreboard\", out)\n"
             "ts[ts[\"metric\"] == \"source_recall\"].pivot_table(index=[\"dataset\", \"src\", \"tgt\", \"defense\"],\n"
             "    columns=[\"attack\", \"m\"], values=\"mean\", sort=False).round(1)"),
    ("md", "## The scoreboard: each defense's worst case\nWorst source recall and M_acc over attacks and m "
           "(with the attack and m where it happens), the backdoor's highest success rate, each against the "
           "undefended worst case (`vs_none_*`, pp, with the two cells' standard deviations in quadrature), "
           "the clean-run cost and the detection of a flagging defense."),
    ("code", "summary = sb.scoreboard_summary(ts, final)\nex.save_table(summary, \"table_scoreboard_summary\", out)\n"
             "summary[[\"dataset\", \"src\", \"tgt\", \"setting\", \"worst_source_recall\", \"worst_source_recall_attack\",\n"
             "         \"worst_accuracy\", \"worst_attack_success\", \"vs_none_source_recall\", \"vs_none_source_recall_std\",\n"
             "         \"clean_cost_accuracy\", \"clean_cost_accuracy_std\", \"detection_precision\", \"detection_recall\"]].round(2)"),
    ("md", "## Heatmap: defense × attack\nPer cell the worst (lowest) mean over m of the final source recall and "
           "M_acc, and the backdoor's highest attack success rate; the first column is the clean run (m = 0)."),
    ("code", "fig = plots.fig_scoreboard(ts, order=defenses, labels=ex.DEFENSE_LABEL)\n"
             "ex.save_figure(fig, \"fig_scoreboard\", out)\nplt.show()"),
    ("md", "## The adaptive attacker's trade-off\nThe adaptive flip sends `honest + strength × (poisoned − honest)`: "
           "0 is an honest update, 1 the plain targeted flip. Per strength, at m = `tradeoff_m`, the same seed twice: "
           "unopposed, with every source-row update recorded for the offline PCA detector (its per-participant ROC AUC), "
           "and against the online PCA defense (the share of malicious participant-rounds it excludes). Damage is the "
           "loss in final source recall against strength 0 of the same repeat (`flcore.studies.adaptive`)."),
    ("code", "from flcore.studies import adaptive as ad\n"
             "tf = ad.tradeoff(pairs, tradeoff_m, tradeoff_strengths, rounds=tradeoff_rounds, repeats=tradeoff_repeats,\n"
             "                 pca_params=pca_params, **common)\n"
             "tt = ad.tradeoff_table(tf)\nex.save_table(tt, \"table_adaptive_tradeoff\", out)\n"
             "fig = plots.fig_adaptive_tradeoff(tt)\nex.save_figure(fig, \"fig_adaptive_tradeoff\", out)\nplt.show()\n"
             "display(Markdown(ad.agreement_tradeoff(tt)))\n"
             "tt.pivot_table(index=[\"defense\", \"strength\"], columns=\"metric\", values=\"mean\", sort=False).round(2)"),
    ("md", "## Reading\nEach headline difference (a defense's worst source recall and its backdoor success rate "
           "against the undefended worst case, its clean-run cost in M_acc) is said to be larger than its "
           "standard deviation over repeats, or not: one that is not cannot rank the defenses at these "
           "repeats and rounds."),
    ("code", "display(Markdown(sb.agreement_scoreboard(summary) + \" \" + ex.rounds_note(warm_start) + \" \"\n"
             "                 + ex.data_note(final[\"dataset\"])))"),
]

for name, cells in NB.items():
    nbf.write(nb(cells), OUT / f"{name}.ipynb")
    print("wrote", name)
