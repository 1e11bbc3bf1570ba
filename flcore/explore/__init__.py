"""The interactive explorer for JupyterLab: sliders for m% and α over a live run."""

from flcore.explore.explorer import CLASS_NAMES, DATASET_LABELS, PAIRS, Explorer

__all__ = ["CLASS_NAMES", "DATASET_LABELS", "PAIRS", "Explorer"]
