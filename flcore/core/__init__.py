"""The bottom layer: errors, random streams, registries and validated parameter sets.

Nothing here imports another part of flcore; every other layer may import this one.
"""

from flcore.core.errors import ConfigError, suggest
from flcore.core.params import Params, validate_params
from flcore.core.registry import Registry

__all__ = ["ConfigError", "Params", "Registry", "suggest", "validate_params"]
