"""Block replacement: make a block the identity, or ablate its attention or MLP.

``identity``: the block's output equals its input (the residual passes through untouched).
``zero_attn`` / ``zero_mlp``: that sublayer adds nothing to the residual.
``mean_attn`` / ``mean_mlp``: that sublayer adds its mean over the run's prompts and positions.

Each mode is one :class:`~workbench.interventions.Intervention`; the probe names the blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from workbench.errors import ProbeError
from workbench.interventions import Identity, Intervention, Mean, Zero
from workbench.layers import format_blocks, resolve_blocks
from workbench.probes.base import Probe, ProbeRecord, RunContext
from workbench.probes.registry import register_probe
from workbench.results import Named

MODES = {
    "identity": ("block", Identity(), "identity"),
    "zero_attn": ("attn_out", Zero(), "attention zeroed"),
    "zero_mlp": ("mlp_out", Zero(), "MLP zeroed"),
    "mean_attn": ("attn_out", Mean(), "attention mean-ablated"),
    "mean_mlp": ("mlp_out", Mean(), "MLP mean-ablated"),
}


def replacement(mode: str, blocks) -> Intervention:
    """The intervention of one block-replacement mode at ``blocks``."""
    if mode not in MODES:
        raise ProbeError(f"Unknown block replacement mode {mode!r}: use one of {', '.join(MODES)}.")
    site, op, _ = MODES[mode]
    return Intervention(site, op, blocks)


@register_probe
@dataclass
class BlockReplacement(Probe):
    """Block replacement: a block becomes the identity, or its attention/MLP is zero- or mean-ablated."""

    blocks: list[int] | int | None = None
    mode: str = "identity"
    name: ClassVar[str] = "block_replacement"
    intervenes: ClassVar[bool] = True

    def prepare(self, ctx: RunContext) -> list[int]:
        if self.mode not in MODES:
            raise ProbeError(f"Unknown block replacement mode {self.mode!r}: use one of {', '.join(MODES)}.")
        if self.blocks is None:
            raise ProbeError(
                f"BlockReplacement needs the blocks to replace: pass blocks=[...] "
                f"({ctx.facts.name} has blocks 0–{ctx.facts.n_layers - 1})."
            )
        return resolve_blocks(ctx.facts, self.blocks)

    def interventions(self, ctx: RunContext) -> list[Intervention]:
        return [replacement(self.mode, ctx.plan)]

    def describe(self, plan: list[int] | None = None) -> str:
        blocks = plan if plan is not None else ([self.blocks] if isinstance(self.blocks, int) else self.blocks)
        where = f"block{'s' if blocks and len(blocks) > 1 else ''} {format_blocks(blocks)}" if blocks else "no block"
        return f"{where} → {MODES.get(self.mode, (None, None, self.mode))[2]}"

    def result(self, record: ProbeRecord):
        result = super().result(record)
        n = record.context.facts.n_layers
        result.arrays["replaced"] = Named(
            torch.tensor([float(b in record.plan) for b in range(n)]), ("block",), {"block": list(range(n))}
        )
        result.meta.update(blocks=record.plan, mode=self.mode)
        return result
