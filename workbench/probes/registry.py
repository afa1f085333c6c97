"""Where probes are found: the built-ins, ``@register_probe`` in a notebook, and installed plugins.

A third-party package exposes a probe class through the entry-point group ``workbench.probes``::

    [project.entry-points."workbench.probes"]
    resid_norm = "my_package.probes:ResidNorm"
"""

from __future__ import annotations

from importlib.metadata import entry_points

from workbench.errors import ProbeError

ENTRY_POINT_GROUP = "workbench.probes"
_REGISTRY: dict[str, type] = {}
_PLUGIN_ERRORS: dict[str, str] = {}


def register_probe(cls: type) -> type:
    """Class decorator: make a Probe subclass available by its ``name`` (CLI, ``get_probe``)."""
    from workbench.probes.base import Probe

    if not (isinstance(cls, type) and issubclass(cls, Probe)):
        raise ProbeError(f"{cls!r} is not a Probe subclass: subclass workbench.Probe before registering it.")
    if not cls.name:
        raise ProbeError(f"{cls.__name__} has no `name`: set a class attribute such as name = 'resid_norm'.")
    _REGISTRY[cls.name] = cls
    return cls


def _load_plugins() -> None:
    """Import each plugin once; whatever it does at import (raise, ``sys.exit``, ``KeyboardInterrupt``,
    print, register something else or replace a probe) is contained and reported, never fatal."""
    import contextlib
    import sys

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY or ep.name in _PLUGIN_ERRORS:
            continue
        before = dict(_REGISTRY)
        try:
            with contextlib.redirect_stdout(sys.stderr):  # stdout belongs to the command (e.g. --json)
                cls = ep.load()
            register_probe(cls)
            if cls.name != ep.name:
                _REGISTRY[ep.name] = cls
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # a broken plugin must not break the workbench
            _PLUGIN_ERRORS[ep.name] = _one_line(f"{type(exc).__name__}: {exc}")
        replaced = sorted(name for name, cls in before.items() if _REGISTRY.get(name) is not cls)
        if replaced:
            _REGISTRY.update(before)
            _PLUGIN_ERRORS[ep.name] = f"tried to replace the probe(s) {', '.join(replaced)}; kept the originals"


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())[:500]


def available_probes() -> dict[str, type]:
    """Every registered probe by name: built-ins first, then plugins."""
    import workbench.probes  # noqa: F401  (registers the built-ins)

    _load_plugins()
    return dict(_REGISTRY)


def plugin_errors() -> dict[str, str]:
    """Entry points that failed to load, with the reason (shown by ``workbench probes list``)."""
    _load_plugins()
    return dict(_PLUGIN_ERRORS)


def get_probe(name: str) -> type:
    probes = available_probes()
    if name not in probes:
        raise ProbeError(f"Unknown probe {name!r}: available are {', '.join(sorted(probes))}.")
    return probes[name]
