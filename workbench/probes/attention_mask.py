"""Attention masking: set the pre-softmax scores toward chosen keys to −∞, so softmax renormalises.

Keys are located by token text (e.g. the "9" of "[0, 9]") or given as positions; the probe needs
them (there is no default key). A query whose every visible key would be masked has no distribution
to renormalise (softmax would spread over future positions), so that case is refused before the pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from workbench.errors import ProbeError
from workbench.interventions import mask_keys
from workbench.layers import format_blocks, resolve_blocks
from workbench.probes.base import Probe, ProbeRecord, RunContext
from workbench.probes.registry import register_probe
from workbench.results import Named


@register_probe
@dataclass
class AttentionMask(Probe):
    """Attention masking: scores toward chosen keys set to −∞ in chosen blocks (every block by default) and heads."""

    keys: list[str | int] | str | int | None = None
    blocks: list[int] | int | None = None
    heads: list[int] | int | None = None
    queries: list[int] | None = None
    name: ClassVar[str] = "attention_mask"
    intervenes: ClassVar[bool] = True

    def prepare(self, ctx: RunContext) -> list[int]:
        if self.keys is None:
            raise ProbeError(
                "AttentionMask needs the keys to mask: pass keys='9' (token text) or keys=[12] (positions)."
            )
        return resolve_blocks(ctx.facts, self.blocks)

    def interventions(self, ctx: RunContext):
        return [mask_keys(self.keys, blocks=ctx.plan, queries=self.queries, heads=self.heads)]

    def describe(self, plan: list[int] | None = None) -> str:
        span = (
            f"blocks {format_blocks(plan)}"
            if plan
            else "every block"
            if self.blocks is None
            else f"blocks {self.blocks}"
        )
        return f"attention to {self.keys!r} masked in {span}"

    def result(self, record: ProbeRecord):
        result = super().result(record)
        ctx, (resolved,) = record.context, record.resolved
        keys = resolved.state["keys"]
        grid = torch.zeros(ctx.facts.n_layers, ctx.n_positions)
        for b in resolved.blocks:
            grid[b, keys[0]] = 1.0
        result.arrays["masked"] = Named(
            grid, ("block", "key"), {"block": list(range(ctx.facts.n_layers)), "key": ctx.str_tokens[0]}
        )
        result.meta.update(
            blocks=resolved.blocks, heads=resolved.heads or list(range(ctx.facts.n_heads)), key_positions=keys
        )
        return result
