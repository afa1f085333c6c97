"""Package namespaces whose names are imported on first use, so ``workbench --help`` answers before torch loads.

A package lists ``{module: names}``; :func:`lazy_exports` turns it into a namespace that imports each name
from its module when first read (PEP 562). The same names are imported under ``if TYPE_CHECKING:`` in the
package, for type checkers and the API docs. A name that is also a submodule (``workbench.run`` the function,
``workbench/run.py`` the module) keeps meaning the name: importing the submodule does not replace it.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Mapping, Sequence
from typing import Any


class _LazyPackage(types.ModuleType):
    _where: dict[str, str]

    def __getattr__(self, name: str) -> Any:
        module = self.__dict__.get("_where", {}).get(name)
        if module is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        self.__dict__[name] = value  # read once, then a plain attribute
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in self.__dict__.get("_where", {}):
            return  # the import system binding a submodule of the same name: the exported name wins
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(self.__dict__) | set(self.__dict__.get("_where", {})))


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]) -> None:
    """Make ``package`` import each of ``exports``' names (``{module: names}``) from its module on first use."""
    module = sys.modules[package]
    module.__class__ = _LazyPackage
    module.__dict__["_where"] = {name: source for source, names in exports.items() for name in names}
