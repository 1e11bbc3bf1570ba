"""Validated parameter sets: the `*_params` dicts of a Config, checked before anything runs.

Each attack, defense and aggregator declares its parameters as a frozen dataclass deriving
from `Params`: field names, types and defaults in one place, value checks in `check`.
`validate_params(cls, given, field, context)` turns a user's dict into that dataclass, or
raises `ConfigError` naming the key, the value and the fix (unknown keys get the closest
valid name). The resolved dataclass, with every default filled in, is what the result
store's key hashes, so changing a default can never serve an old result as current.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from flcore.core.errors import ConfigError, suggest


@dataclasses.dataclass(frozen=True)
class Params:
    """Base class of a validated parameter set (subclass it as a frozen dataclass)."""

    def check(self, context: dict) -> None:
        """Raise `ConfigError` for a bad value. context: the Config's values (k, dataset, ...)."""

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class NoParams(Params):
    """The parameter set of an extension without options."""


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def _coerce(name: str, value: Any, hint: Any, field: str) -> Any:
    """The value converted to the field's declared type, or ConfigError."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or (origin is not None and type(None) in args and len(args) > 1):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0], field) if len(inner) == 1 else value
    bad = f"{field}: {name}={value!r} ({type(value).__name__})"
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{bad} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{bad} must be an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{bad} must be a number")
        if not math.isfinite(value):
            raise ConfigError(f"{bad} must be a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{bad} must be a string")
        return value
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{bad} must be a list")
        elem = args[0] if args else Any
        return tuple(_coerce(f"{name}[{i}]", v, elem, field) for i, v in enumerate(value))
    return value


def validate_params(cls: type[Params], given: Any, field: str, context: dict | None = None) -> Params:
    """`given` (a dict or an instance of `cls`) as a checked instance of `cls`."""
    if isinstance(given, cls):
        given = given.to_dict()
    if not isinstance(given, dict):
        raise ConfigError(
            f"{field}={given!r} ({type(given).__name__}): {field} must be a mapping of options "
            f"(valid keys: {', '.join(f.name for f in dataclasses.fields(cls)) or 'none'})"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in given:
        if key not in fields:
            valid = ", ".join(fields) or "none: this one takes no options"
            raise ConfigError(f"{field}: unknown key {key!r}{suggest(key, fields)} (valid: {valid})")
    values = {k: _coerce(k, v, hints[k], field) for k, v in given.items()}
    params = cls(**values)
    params.check(dict(context or {}))
    return params


def check_range(field: str, name: str, value, lo=None, hi=None, *, lo_open=False, hi_open=False,
                fix: str = "") -> None:  # fmt: skip
    """ConfigError unless lo <(=) value <(=) hi; the message gives the range and `fix`."""
    low_ok = lo is None or (value > lo if lo_open else value >= lo)
    high_ok = hi is None or (value < hi if hi_open else value <= hi)
    if low_ok and high_ok:
        return
    left = "" if lo is None else ("(" if lo_open else "[") + f"{lo:g}"
    right = "" if hi is None else f"{hi:g}" + (")" if hi_open else "]")
    span = f"{left or '(-inf'}, {right or 'inf)'}"
    raise ConfigError(f"{field}: {name}={value!r} must be in {span}" + (f"; {fix}" if fix else ""))
