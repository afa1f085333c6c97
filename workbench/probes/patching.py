"""Cross-prompt activation patching: run a source prompt, then the target with chosen activations replaced.

The study's default: the keys and values at the upper bound's position in blocks 6 and 14 come from
"… [0, 5] …" while the model reads "… [0, 9] …", so those blocks attend to "5" where they would
attend to "9". Sites (``site=``):

- ``kv``, ``k``, ``v``, ``q``: per head (``heads`` index key/value heads for k/v, query heads for q);
- ``z``: per query head, the attention output before the output projection;
- ``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out``: the residual stream and sublayer outputs.

Positions default to every position where the two prompts' tokens differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from workbench.errors import ProbeError
from workbench.layers import describe_blocks, resolve_blocks, scale_block
from workbench.probes.attention_mask import resolve_positions
from workbench.probes.base import Probe, ProbeRecord, RunContext
from workbench.probes.intervention import InterventionResult, distribution_arrays
from workbench.probes.registry import register_probe
from workbench.results import Named
from workbench.tokens import align_prompts

# Where each site is read; all but resid_mid are also written there.
SITE_HOOKS = {
    "resid_pre": "blocks.{}.hook_resid_pre",
    "resid_mid": "blocks.{}.hook_resid_mid",
    "resid_post": "blocks.{}.hook_resid_post",
    "attn_out": "blocks.{}.hook_attn_out",
    "mlp_out": "blocks.{}.hook_mlp_out",
    "q": "blocks.{}.attn.hook_q",
    "k": "blocks.{}.attn.hook_k",
    "v": "blocks.{}.attn.hook_v",
    "z": "blocks.{}.attn.hook_z",
}
PER_HEAD = {"q", "k", "v", "z"}
SITES = ("kv", *SITE_HOOKS)
STUDY_BLOCKS = (6, 14)


def site_parts(site: str) -> list[str]:
    if site not in SITES:
        raise ProbeError(f"Unknown patching site {site!r}: use one of {', '.join(SITES)}.")
    return ["k", "v"] if site == "kv" else [site]


def patch_values(act: torch.Tensor, source: torch.Tensor, positions: list[int], heads: list[int] | None) -> torch.Tensor:
    """``act`` with ``[:, positions(, heads)]`` taken from ``source`` (broadcast over the batch)."""
    out = act.clone()
    pos = torch.tensor(positions, device=act.device)
    src = source.to(act.device, act.dtype).expand(act.shape[0], *source.shape[1:])
    if heads is None:
        out[:, pos] = src[:, pos]
    else:
        h = torch.tensor(heads, device=act.device)
        out[:, pos[:, None], h[None, :]] = src[:, pos[:, None], h[None, :]]
    return out


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
    _blocks: list[int] = field(default_factory=list, init=False, repr=False)
    _positions: list[int] = field(default_factory=list, init=False, repr=False)
    _heads: list[int] | None = field(default=None, init=False, repr=False)
    _source_acts: dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False)
    _note: str = field(default="", init=False, repr=False)

    def prepare(self, ctx: RunContext) -> None:
        if not self.source:
            raise ProbeError("ActivationPatch needs a source prompt: pass source='… [0, 5] …'.")
        parts = site_parts(self.site)
        n = ctx.facts.n_layers
        if self.blocks is None:
            self._blocks = sorted({scale_block(b, n) for b in STUDY_BLOCKS})
            scaled = tuple(self._blocks) != STUDY_BLOCKS
            self._note = f"study blocks {STUDY_BLOCKS} scaled to {tuple(self._blocks)}" if scaled else ""
        else:
            self._blocks = resolve_blocks(ctx.facts, self.blocks)
        source_tokens = None
        for prompt in ctx.prompts:
            target_tokens, source_tokens = align_prompts(ctx.model, prompt, self.source)
        if self.positions is None:
            differ = (ctx.tokens != source_tokens.to(ctx.tokens.device)).any(0).nonzero().flatten().tolist()
            if not differ:
                differ = list(range(ctx.n_positions))
            self._positions = differ
        else:
            self._positions = resolve_positions(ctx, self.positions, 0)
        self._heads = self._resolve_heads(ctx, parts)
        names = [SITE_HOOKS[part].format(b) for b in self._blocks for part in parts]
        saved: dict[str, torch.Tensor] = {}

        def keep(act, hook, name=None):
            saved[name] = act.detach().clone()

        with torch.no_grad(), ctx.model.bridge.hooks(fwd_hooks=[(name, _named(keep, name)) for name in names]):
            ctx.model.bridge(source_tokens.to(ctx.tokens.device))
        self._source_acts = saved

    def _resolve_heads(self, ctx: RunContext, parts: list[str]) -> list[int] | None:
        if self.heads is None:
            return None
        if not set(parts) <= PER_HEAD:
            raise ProbeError(f"heads= only applies to per-head sites (q, k, v, kv, z), not {self.site!r}.")
        heads = [self.heads] if isinstance(self.heads, int) else list(self.heads)
        limit = ctx.facts.n_kv_heads if set(parts) & {"k", "v"} else ctx.facts.n_heads
        for h in heads:
            if not 0 <= h < limit:
                kind = "key/value" if limit == ctx.facts.n_kv_heads else "query"
                raise ProbeError(f"Head {h} does not exist: {ctx.facts.name} has {kind} heads 0–{limit - 1}.")
        return heads

    def describe(self) -> str:
        blocks = describe_blocks(self._blocks, self.blocks, "blocks 6, 14")
        positions = self._positions or self.positions or "where the prompts differ"
        return f"{self.site} patched from the source prompt in {blocks} at positions {positions}"

    def hooks(self, ctx: RunContext):
        hooks = []
        for b in self._blocks:
            for part in site_parts(self.site):
                name = SITE_HOOKS[part].format(b)
                source = self._source_acts[name]
                if part == "resid_mid":
                    hooks += self._resid_mid_hooks(ctx, b, source)
                    continue

                def replace(act, hook, source=source):
                    return patch_values(act, source, self._positions, self._heads)

                hooks.append((name, replace))
        return hooks

    def _resid_mid_hooks(self, ctx: RunContext, block: int, source: torch.Tensor):
        """resid_mid = resid_pre + attn_out; the skip connection does not pass through a hook point,
        so the patch is written into attn_out as ``source_mid − resid_pre``."""
        key = f"resid_pre {block}"

        def keep_pre(resid, hook):
            ctx.saved[key] = resid

        def write(attn_out, hook):
            wanted = patch_values(ctx.saved[key] + attn_out, source, self._positions, None)
            return wanted - ctx.saved.pop(key)

        return [(f"blocks.{block}.hook_resid_pre", keep_pre), (f"blocks.{block}.hook_attn_out", write)]

    def result(self, record: ProbeRecord) -> InterventionResult:
        ctx = record.context
        arrays = distribution_arrays(record)
        grid = torch.zeros(ctx.facts.n_layers, ctx.n_positions)
        for b in self._blocks:
            grid[b, self._positions] = 1.0
        arrays["patched"] = Named(grid, ("block", "position"),
                                  {"block": list(range(ctx.facts.n_layers)), "position": ctx.str_tokens[0]})
        return InterventionResult(
            probe=self.name, model=ctx.facts.name, prompts=ctx.prompts, tokens=ctx.str_tokens, arrays=arrays,
            meta={"description": self.describe(), "source": self.source, "site": self.site, "blocks": self._blocks,
                  "positions": self._positions, "heads": self._heads, "note": self._note,
                  "interventions": record.interventions, "readout": ctx.readout},
        )


def _named(fn, name):
    def hook(act, hook):
        return fn(act, hook, name=name)

    return hook
