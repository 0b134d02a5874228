"""Names of a package loaded on first use (PEP 562): a package's ``__init__`` lists which of
its modules gives each name, and only the modules a caller touches are imported. This keeps
what the daemon's long-lived processes load small (tests/test_footprint.py): e.g. the serving
process takes ``ConfigError`` without loading pydantic."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(
    package: str, modules: Mapping[str, list[str]], namespace: MutableMapping[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The package's ``__getattr__`` and ``__dir__``: ``modules`` maps each of its modules
    to the names it gives; a name is imported on first use and kept in ``namespace`` (the
    package's globals)."""
    exports = {name: module for module, names in modules.items() for name in names}

    def getattr_(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return getattr_, dir_
