"""Running configurations and keeping their results: `run`, `run_many`, the result store
(flcore.runs.store) and sweeps over grids (flcore.runs.sweep)."""

from flcore.runs.runner import resolved, run, run_many, store_key

__all__ = ["resolved", "run", "run_many", "store_key"]
