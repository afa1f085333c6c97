"""Where probes are found: the built-ins, ``@register_probe`` in a notebook, and installed plugins.

A third-party package exposes a probe class through the entry-point group ``workbench.probes``::

    [project.entry-points."workbench.probes"]
    resid_norm = "my_package.probes:ResidNorm"
"""

from __future__ import annotations

from workbench.errors import ProbeError
from workbench.plugins import load_entry_points, unknown

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
    load_entry_points(ENTRY_POINT_GROUP, _REGISTRY, _PLUGIN_ERRORS, register_probe, "probe")


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
        raise ProbeError(unknown("probe", name, probes, _PLUGIN_ERRORS))
    return probes[name]
