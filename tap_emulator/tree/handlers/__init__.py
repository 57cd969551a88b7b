"""The object handlers, one module per object, found by the alias the model gives the object.

Each module of this package defines its handler class with ``@handles("alias")``; every module is
imported here, so adding an object is adding its model XML and, if it does more than store values, a
handler module: nothing else names it. Objects without a handler get `ObjectHandler`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import TypeVar

from tap_emulator.tree.handlers.base import FactoryInstance, ObjectHandler, StoredInstance, Target

__all__ = ["FactoryInstance", "ObjectHandler", "StoredInstance", "Target", "handler_class", "handles"]

_REGISTRY: dict[str, type[ObjectHandler]] = {}
H = TypeVar("H", bound=type[ObjectHandler])


def handles(alias: str) -> Callable[[H], H]:
    """Class decorator: the handler of the model object whose alias is ``alias``."""

    def register(cls: H) -> H:
        if alias in _REGISTRY:
            raise LookupError(f"two handlers for object {alias!r}")
        cls.alias = alias
        _REGISTRY[alias] = cls
        return cls

    return register


def handler_class(alias: str | None) -> type[ObjectHandler]:
    return _REGISTRY.get(alias or "", ObjectHandler)


for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
