"""The paper's studies: the experiments behind each notebook, their tables, texts and plots,
and `reproduce` (papermill over the notebooks)."""
