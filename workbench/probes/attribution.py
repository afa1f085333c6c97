"""The ``dla`` probe: direct logit attribution inside :func:`~workbench.run.run`, so it composes with edits (what
each head writes after block 21 became the identity) and reports its clean baseline beside them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from workbench.attribution import attribute, check_unit, dla_reads
from workbench.attribution.result import AttributionResult, attribution_result
from workbench.errors import AttributionError
from workbench.probes.base import Probe, ProbeRecord, RunContext
from workbench.probes.registry import register_probe
from workbench.reads import read_hooks


@register_probe
@dataclass
class DirectLogitAttribution(Probe):
    """Direct logit attribution: the metric at the readout split into what each head, MLP and bias wrote."""

    metric: str = ""
    unit: str = "head"
    name: ClassVar[str] = "dla"

    def prepare(self, ctx: RunContext) -> list:
        if not self.metric:
            raise AttributionError("dla needs a metric: -o metric=logit_diff:1,5 (or logit:T, prob:…, digits_above:N).")
        check_unit(self.unit)
        return dla_reads(ctx.model, self.unit, ctx.readout)

    def hooks(self, ctx: RunContext):
        def store(key, tensor):
            ctx.save(f"{key[0]}@{key[1]}", tensor)

        return read_hooks(ctx.plan, {}, store)

    def result(self, record: ProbeRecord) -> AttributionResult:
        ctx, phase = record.context, record.last_phase
        cache: dict[tuple[str, int], Any] = {}
        for key, value in record.saved[phase].items():
            site, _, block = key.partition("@")
            cache[(site, int(block))] = value
        found = attribute(ctx.model, cache, record.logits[phase], self.metric, unit=self.unit, readout=ctx.readout)
        return attribution_result(found, ctx.model, ctx.prompts)

    def describe(self, plan: Any = None) -> str:
        return f"direct logit attribution of {self.metric} per {self.unit}"
