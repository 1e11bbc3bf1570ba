"""Named extension points: one registry per kind (attack, defense, aggregator, dataset).

    from flcore.attacks import ATTACKS, Attack

    @ATTACKS.register
    class MyAttack(Attack):
        name = "my_attack"
        ...

A registry maps a name to a class (or object) with a `name` attribute. Looking up an unknown
name raises `ConfigError` with the closest registered name and the full list, so a typo in a
YAML file, a sweep grid or on the command line fails before anything runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from flcore.core.errors import ConfigError, suggest

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, field: str) -> None:
        """kind: what is registered ("attack"); field: the Config field that names one."""
        self.kind, self.field = kind, field
        self._items: dict[str, T] = {}

    def register(self, item: T) -> T:
        """Register `item` under `item.name` (usable as a class decorator)."""
        name = getattr(item, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"a registered {self.kind} needs a non-empty string attribute 'name'")
        if name in self._items and self._items[name] is not item:
            raise ValueError(f"{self.kind} {name!r} is already registered ({self._items[name]!r})")
        self._items[name] = item
        return item

    def unregister(self, name: str) -> T:
        """Remove and return the entry `name` (for tests and interactive redefinition)."""
        return self._items.pop(name)

    def get(self, name: Any) -> T:
        if name not in self._items:
            raise ConfigError(
                f"{self.field}={name!r}: unknown {self.kind}{suggest(name, self._items)} "
                f"(registered: {', '.join(self._items)})"
            )
        return self._items[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind}: {', '.join(self._items)})"
