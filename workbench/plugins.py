"""Loading plugins from entry points, once, contained: a plugin can break only itself, never the workbench.

Probes (``workbench.probes``), operations (``workbench.operations``) and result classes (``workbench.results``,
for :func:`~workbench.results.load_result`) are all found this way.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from importlib.metadata import entry_points


def load_entry_points(
    group: str, registry: dict[str, type], errors: dict[str, str], register: Callable[[type], type], kind: str
) -> None:
    """Import each plugin of ``group`` not seen yet and ``register`` it into ``registry``. Whatever it does
    at import (raise, ``sys.exit``, ``KeyboardInterrupt``, print, register something else or replace a
    built-in) is contained and reported in ``errors``, never fatal."""
    for ep in entry_points(group=group):
        if ep.name in registry or ep.name in errors:
            continue
        before = dict(registry)
        try:
            with contextlib.redirect_stdout(sys.stderr):  # stdout belongs to the command (e.g. --json)
                cls = ep.load()
            register(cls)
            if registry.get(ep.name) is not cls:  # registered under another name (or a registry by class name)
                registry[ep.name] = cls
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # a broken plugin must not break the workbench
            errors[ep.name] = one_line(f"{type(exc).__name__}: {exc}")
        replaced = sorted(name for name, cls in before.items() if registry.get(name) is not cls)
        if replaced:
            registry.update(before)
            if ep.name not in before:
                registry.pop(ep.name, None)  # the impostor is not kept under its own name either
            errors[ep.name] = f"tried to replace the {kind}(s) {', '.join(replaced)}; kept the originals"


def one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())[:500]


def unknown(kind: str, name: str, known: dict, errors: dict[str, str]) -> str:
    """The message for a name nothing registered: a plugin that failed to load says why."""
    if name in errors:
        return f"The {kind} plugin {name!r} failed to load ({errors[name]}): fix or reinstall it."
    return f"Unknown {kind} {name!r}: available are {', '.join(sorted(known))}."
