"""Any list of interventions as a probe: how raw :class:`~workbench.interventions.Intervention`
descriptions (built-in or plugin operations) run through ``run`` and report like the built-in probes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from workbench.errors import ProbeError
from workbench.interventions import Intervention
from workbench.probes.base import Probe, RunContext
from workbench.probes.registry import register_probe


@register_probe
@dataclass
class Intervene(Probe):
    """Interventions: any list of edits described as data (site, operation, blocks, positions, heads)."""

    edits: list[dict] = field(default_factory=list)
    label: str = ""
    name: ClassVar[str] = "intervention"
    intervenes: ClassVar[bool] = True

    def __init__(self, *interventions: Intervention | dict, edits: list | None = None, label: str = ""):
        flat = []
        for item in [*interventions, *(edits or [])]:
            flat.extend(item if isinstance(item, (list, tuple)) else [item])
        self.edits = [item if isinstance(item, Intervention) else Intervention.from_dict(item) for item in flat]
        self.label = label
        if not self.edits:
            raise ProbeError("Intervene needs at least one intervention, e.g. Intervene(identity(blocks=3)).")

    def interventions(self, ctx: RunContext) -> list[Intervention]:
        return list(self.edits)

    def describe(self, plan=None) -> str:
        return self.label or "; ".join(item.describe() for item in self.edits)
