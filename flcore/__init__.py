"""flcore: label-flipping data poisoning in federated learning (Tolpegin et al., ESORICS 2020).

    from flcore import Config, run
    result = run(Config(dataset="fmnist", m=0.1, src=4, tgt=6, rounds=20, repeats=3))
    result.summary()
"""

__version__ = "0.1.0"

from flcore import sweep  # noqa: E402  (the module is callable: flcore.sweep(grid))
from flcore.config import Config, ConfigError  # noqa: E402
from flcore.engine import Result, run  # noqa: E402

__all__ = ["Config", "ConfigError", "Result", "run", "sweep", "__version__"]
