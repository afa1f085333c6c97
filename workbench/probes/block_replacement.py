"""Block replacement: make a block the identity, or ablate its attention or MLP.

``identity``: the block's output equals its input (the residual passes through untouched).
``zero_attn`` / ``zero_mlp``: that sublayer adds nothing to the residual.
``mean_attn`` / ``mean_mlp``: that sublayer adds its mean over positions and prompts of this run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from workbench.errors import ProbeError
from workbench.layers import describe_blocks, resolve_blocks, scale_block
from workbench.probes.base import Probe, ProbeRecord, RunContext
from workbench.probes.intervention import InterventionResult, distribution_arrays
from workbench.probes.registry import register_probe
from workbench.results import Named

MODES = ("identity", "zero_attn", "zero_mlp", "mean_attn", "mean_mlp")
STUDY_BLOCK = 21


@register_probe
@dataclass
class BlockReplacement(Probe):
    """Block replacement: a block becomes the identity, or its attention/MLP is zero- or mean-ablated."""

    blocks: list[int] | int | None = None
    mode: str = "identity"
    name: ClassVar[str] = "block_replacement"
    intervenes: ClassVar[bool] = True
    _blocks: list[int] = field(default_factory=list, init=False, repr=False)
    _note: str = field(default="", init=False, repr=False)

    def prepare(self, ctx: RunContext) -> None:
        if self.mode not in MODES:
            raise ProbeError(f"Unknown block replacement mode {self.mode!r}: use one of {', '.join(MODES)}.")
        if self.blocks is None:
            block = scale_block(STUDY_BLOCK, ctx.facts.n_layers)
            self._blocks = [block]
            self._note = "" if block == STUDY_BLOCK else f"study block {STUDY_BLOCK} scaled to {block} ({ctx.facts.n_layers} blocks)"
        else:
            self._blocks = resolve_blocks(ctx.facts, self.blocks)

    def describe(self) -> str:
        blocks = describe_blocks(self._blocks, self.blocks, f"block {STUDY_BLOCK}")
        what = {"identity": "identity", "zero_attn": "attention zeroed", "zero_mlp": "MLP zeroed",
                "mean_attn": "attention mean-ablated", "mean_mlp": "MLP mean-ablated"}[self.mode]
        return f"{blocks} → {what}"

    def hooks(self, ctx: RunContext):
        hooks = []
        for block in self._blocks:
            if self.mode == "identity":
                def keep_input(resid, hook, block=block):
                    ctx.saved[f"input {block}"] = resid

                def return_input(resid, hook, block=block):
                    return ctx.saved.pop(f"input {block}")

                hooks += [(f"blocks.{block}.hook_resid_pre", keep_input), (f"blocks.{block}.hook_resid_post", return_input)]
            else:
                kind, sublayer = self.mode.split("_")
                point = f"blocks.{block}.hook_{sublayer}_out"

                def ablate(out: torch.Tensor, hook, kind=kind):
                    if kind == "zero":
                        return torch.zeros_like(out)
                    return out.mean(dim=(0, 1), keepdim=True).expand_as(out).clone()

                hooks.append((point, ablate))
        return hooks

    def result(self, record: ProbeRecord) -> InterventionResult:
        ctx = record.context
        arrays = distribution_arrays(record)
        arrays["replaced"] = Named(torch.tensor([b in self._blocks for b in range(ctx.facts.n_layers)]).float(),
                                   ("block",), {"block": list(range(ctx.facts.n_layers))})
        return InterventionResult(
            probe=self.name, model=ctx.facts.name, prompts=ctx.prompts, tokens=ctx.str_tokens, arrays=arrays,
            meta={"description": self.describe(), "blocks": self._blocks, "mode": self.mode, "note": self._note,
                  "interventions": record.interventions, "readout": ctx.readout},
        )
