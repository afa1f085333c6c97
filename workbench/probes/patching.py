"""Cross-prompt activation patching: the target prompt runs with chosen activations taken from a source.

Example: the keys and values at the upper bound's position in blocks 6 and 14 come from
"… [0, 5] …" while the model reads "… [0, 9] …", so those blocks attend to "5" where they would
attend to "9". Sites (``site=``, see :mod:`workbench.interventions.sites`):

- ``kv``, ``k``, ``v``, ``q``: per head (``heads`` index key/value heads for k/v, query heads for q);
- ``z``: per query head, the attention output before the output projection;
- ``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out``: the residual stream and sublayer outputs.

Blocks default to every block; positions to every position where the two prompts' tokens differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from workbench.errors import ProbeError
from workbench.interventions import Intervention, Patch
from workbench.interventions.sites import expand_site
from workbench.layers import format_blocks
from workbench.probes.base import Probe, ProbeRecord, RunContext
from workbench.probes.registry import register_probe
from workbench.results import Named
from workbench.tokens import align_prompts

PATCH_SITES = ("kv", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "q", "k", "v", "z")


def differing_positions(model, prompts: list[str], source: str) -> list[int]:
    """Positions where any prompt's tokens differ from the source's (all positions when none differ)."""
    differ: set[int] = set()
    n = 0
    for prompt in prompts:
        tokens, source_tokens = align_prompts(model, prompt, source)
        n = tokens.shape[-1]
        differ |= set((tokens[0] != source_tokens[0]).nonzero().flatten().tolist())
    return sorted(differ) or list(range(n))


@register_probe
@dataclass
class ActivationPatch(Probe):
    """Activation patching: activations of a source prompt replace the target's at chosen sites."""

    source: str = ""
    site: str = "kv"
    blocks: list[int] | int | None = None
    positions: list[str | int] | str | int | None = None
    heads: list[int] | int | None = None
    name: ClassVar[str] = "patch"
    intervenes: ClassVar[bool] = True

    def prepare(self, ctx: RunContext) -> Intervention:
        if not self.source:
            raise ProbeError(
                "ActivationPatch needs a source prompt: pass source='…' (same token length as the prompt)."
            )
        if self.site not in PATCH_SITES:
            raise ProbeError(f"Unknown patching site {self.site!r}: use one of {', '.join(PATCH_SITES)}.")
        if self.heads is not None and not all(site.heads for site in expand_site(self.site)):
            raise ProbeError(f"heads= only applies to per-head sites (q, k, v, kv, z), not {self.site!r}.")
        positions = self.positions
        if positions is None:
            positions = differing_positions(ctx.model, ctx.prompts, self.source)
        return Intervention(self.site, Patch(self.source), self.blocks, positions, self.heads)

    def interventions(self, ctx: RunContext) -> list[Intervention]:
        return [ctx.plan]

    def describe(self, plan: Intervention | None = None) -> str:
        blocks = plan.blocks if plan is not None else self.blocks
        where = "every block" if blocks is None else f"block{'s' if len(blocks) > 1 else ''} {format_blocks(blocks)}"
        positions = list(plan.positions) if plan is not None else self.positions or "where the prompts differ"
        return f"{self.site} patched from the source prompt in {where} at positions {positions}"

    def result(self, record: ProbeRecord):
        result = super().result(record)
        ctx, (resolved,) = record.context, record.resolved
        grid = torch.zeros(ctx.facts.n_layers, ctx.n_positions)
        for b in resolved.blocks:
            grid[b, resolved.positions[0]] = 1.0
        result.arrays["patched"] = Named(
            grid, ("block", "position"), {"block": list(range(ctx.facts.n_layers)), "position": ctx.str_tokens[0]}
        )
        result.meta.update(
            source=self.source,
            site=self.site,
            blocks=resolved.blocks,
            positions=resolved.positions[0],
            heads=resolved.heads,
        )
        return result
