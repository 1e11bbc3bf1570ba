"""The experiment configuration (`Config`), validated against every registered extension."""

from flcore.config.config import (
    CLIENT_STATES,
    DEVICES,
    ENGINES,
    LR_MIN,
    NUM_CLASSES,
    PARTITIONS,
    PRECISIONS,
    RECORD_UPDATES,
    STRATEGIES,
    Config,
)
from flcore.core.errors import ConfigError, suggest

__all__ = ["CLIENT_STATES", "DEVICES", "ENGINES", "LR_MIN", "NUM_CLASSES", "PARTITIONS", "PRECISIONS",
           "RECORD_UPDATES", "STRATEGIES", "Config", "ConfigError", "suggest"]  # fmt: skip
