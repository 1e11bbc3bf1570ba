"""flcore: data-poisoning attacks and defenses in federated learning, reproducing and
extending Tolpegin et al., "Data Poisoning Attacks Against Federated Learning Systems"
(ESORICS 2020).

    from flcore import Config, run
    result = run(Config(dataset="fmnist", m=0.1, src=4, tgt=6, rounds=20, repeats=3))
    result.summary()

`import flcore` and `from flcore import Config` load neither scikit-learn, matplotlib, Dask
nor papermill: `run`, `run_many`, `Result` and `sweep` are imported on first use.
"""

__version__ = "0.1.0"

from flcore.config import Config, ConfigError  # noqa: E402

_LAZY = {
    "run": ("flcore.runs.runner", "run"),
    "run_many": ("flcore.runs.runner", "run_many"),
    "Result": ("flcore.sim.result", "Result"),
    "sweep": ("flcore.runs.sweep", "sweep"),
}

__all__ = ["Config", "ConfigError", "Result", "run", "run_many", "sweep", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flcore' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
