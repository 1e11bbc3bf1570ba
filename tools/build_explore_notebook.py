"""Generates notebooks/00_explore.ipynb (no outputs). Run: .venv/bin/python tools/build_explore_notebook.py"""
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

intro = """# 00 · Explore label flipping interactively

A small, fast playground for the attack of Tolpegin et al. (ESORICS 2020): a federation of
N = 50 participants, k = 5 selected per round, of which **m %** are malicious and relabel
their **source** class as the **target** class before training.

- **dataset / source → target**: Fashion-MNIST or CIFAR-10 and one of the paper's pairs.
- **m (%)**: the share of malicious participants (0–50 %).
- **strategy**: *random* selection; *early* poisoning (malicious participants only before the
  break round b); *late* poisoning (only from b on); *availability*: late poisoning where each
  of the k slots goes to a malicious participant with probability **α** (the α slider is
  active only for this strategy).
- **rounds**, **break round b**: the length of the run and where it breaks.

Each setting trains on a reduced, class-balanced subset (`n_train`, `n_test` below), so a run
takes seconds on a GPU and some tens of seconds on a small CPU; the status line says what ran
and how long it took. Results go to the result store, so a setting seen before (and the
clean baseline, shared by all strategies) comes back at once. The figure shows the source class's recall per round beside
the clean run (m = 0), the break round, the rounds where malicious participants were
selected, and the final confusion matrix (the red box is source → target)."""

params = """# papermill parameters: the explorer's reduced setting
n_train = 6000
n_test = 1000
rounds = 10
repeats = 1
dataset = "fmnist"
m_percent = 20
strategy = "random"
store = "../results/explore"
device = "auto\""""

run = """from flcore.explore import Explorer

explorer = Explorer(
    n_train=n_train, n_test=n_test, rounds=rounds, repeats=repeats, dataset=dataset,
    m_percent=m_percent, strategy=strategy, store=store, device=device,
)
explorer.show();"""

nb = new_notebook(
    cells=[
        new_markdown_cell(intro, id="intro"),
        new_code_cell(params, id="parameters", metadata={"tags": ["parameters"]}),
        new_code_cell(run, id="explorer"),
    ],
    metadata={
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    },
)
nbformat.validate(nb)
nbformat.write(nb, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "notebooks" / "00_explore.ipynb"))
