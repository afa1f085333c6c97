"""Attention masking: set the pre-softmax scores toward chosen keys to −∞, so softmax renormalises.

Keys are located by token text (e.g. the "9" of "[0, 9]") or given as positions. A query whose every
visible key would be masked has no distribution to renormalise (softmax would spread over future
positions or give NaN), so that case is refused before the forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from workbench.errors import ProbeError
from workbench.layers import describe_blocks, resolve_blocks, resolve_heads, scale_block
from workbench.probes.base import Probe, ProbeRecord, RunContext
from workbench.probes.intervention import InterventionResult, distribution_arrays
from workbench.probes.registry import register_probe
from workbench.results import Named
from workbench.tokens import find_position, position_indices

STUDY_FIRST_BLOCK = 13


def resolve_positions(ctx: RunContext, where: list[str | int] | str | int, prompt: int) -> list[int]:
    """Token positions from text (a ``str``, located in the prompt) or indices (an ``int``; negative
    counts from the end). The text "9" is the token 9, never position 9."""
    items = [where] if isinstance(where, (str, int)) else list(where)
    found = {find_position(ctx.model, ctx.prompts[prompt], item) for item in items if isinstance(item, str)}
    indices = position_indices(ctx.n_positions, [item for item in items if not isinstance(item, str)])
    return sorted(found | set(indices))


@register_probe
@dataclass
class AttentionMask(Probe):
    """Attention masking: scores toward chosen keys set to −∞ in chosen blocks and heads."""

    keys: list[str | int] | str | int = "9"
    blocks: list[int] | int | None = None
    heads: list[int] | int | None = None
    queries: list[int] | None = None
    name: ClassVar[str] = "attention_mask"
    intervenes: ClassVar[bool] = True
    _blocks: list[int] = field(default_factory=list, init=False, repr=False)
    _heads: list[int] = field(default_factory=list, init=False, repr=False)
    _keys: list[list[int]] = field(default_factory=list, init=False, repr=False)
    _queries: list[int] = field(default_factory=list, init=False, repr=False)
    _note: str = field(default="", init=False, repr=False)

    def prepare(self, ctx: RunContext) -> None:
        ctx.model.require_editable_attention("Attention masking")
        n = ctx.facts.n_layers
        if self.blocks is None:
            first = scale_block(STUDY_FIRST_BLOCK, n)
            self._blocks = list(range(first, n))
            self._note = "" if first == STUDY_FIRST_BLOCK else f"study block {STUDY_FIRST_BLOCK} scaled to {first}"
        else:
            self._blocks = resolve_blocks(ctx.facts, self.blocks)
        self._heads = resolve_heads(ctx.facts, self.heads)
        self._keys = [resolve_positions(ctx, self.keys, p) for p in range(len(ctx.prompts))]
        self._queries = resolve_positions(ctx, list(range(ctx.n_positions)) if self.queries is None
                                          else [int(q) for q in self.queries], 0)
        for p, keys in enumerate(self._keys):
            for q in self._queries:
                if set(range(q + 1)) <= set(keys):
                    raise ProbeError(
                        f"Masking keys {keys} leaves query position {q} with no visible key (it only sees "
                        f"positions 0–{q}), so softmax has nothing to renormalise: keep at least one, or pass "
                        f"queries=[...] without position {q}."
                    )

    def describe(self) -> str:
        span = describe_blocks(self._blocks, self.blocks, f"blocks {STUDY_FIRST_BLOCK}–last")
        return f"attention to {self.keys!r} masked in {span}"

    def hooks(self, ctx: RunContext):
        n = ctx.n_positions
        mask = torch.zeros(len(ctx.prompts), ctx.facts.n_heads, n, n, dtype=torch.bool)
        queries = self._queries
        if not any(self._keys) or not queries:
            return []  # nothing to mask: the run is exactly the clean one
        q_index = torch.tensor(queries, dtype=torch.long)[:, None]
        for p, keys in enumerate(self._keys):
            for h in self._heads:
                mask[p, h][q_index, torch.tensor(keys, dtype=torch.long)[None, :]] = True

        def apply(scores, hook):  # [batch, head, query, key], after the causal mask
            return scores.masked_fill(mask.to(scores.device), float("-inf"))

        return [(f"blocks.{b}.attn.hook_attn_scores", apply) for b in self._blocks]

    def result(self, record: ProbeRecord) -> InterventionResult:
        ctx = record.context
        arrays = distribution_arrays(record)
        grid = torch.zeros(ctx.facts.n_layers, ctx.n_positions)
        for b in self._blocks:
            grid[b, self._keys[0]] = 1.0
        arrays["masked"] = Named(grid, ("block", "key"), {"block": list(range(ctx.facts.n_layers)), "key": ctx.str_tokens[0]})
        return InterventionResult(
            probe=self.name, model=ctx.facts.name, prompts=ctx.prompts, tokens=ctx.str_tokens, arrays=arrays,
            meta={"description": self.describe(), "blocks": self._blocks, "heads": self._heads,
                  "key_positions": self._keys, "note": self._note, "interventions": record.interventions,
                  "readout": ctx.readout},
        )
