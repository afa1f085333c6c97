"""The reference path: one hooked forward of the whole model per cell, through the bridge's hook points.

This is what TransformerLens' ``patching`` module does, with the workbench's own probes supplying the
hooks (``SITE_HOOKS``/``patch_values`` for patching, ``BlockReplacement`` and ``AttentionMask`` for the
other sweeps). It is slow and obviously right; the fast engine is tested against it.
"""

from __future__ import annotations

import torch

from workbench.probes.attention_mask import AttentionMask
from workbench.probes.base import RunContext
from workbench.probes.block_replacement import BlockReplacement
from workbench.probes.patching import SITE_HOOKS, patch_values
from workbench.sweeps.cells import MaskSpec, PatchSpec, ReplaceSpec


@torch.no_grad()
def capture_sites(model, tokens: torch.Tensor, sites: set[str], blocks: list[int]) -> dict[str, torch.Tensor]:
    """Activations of ``tokens`` at ``SITE_HOOKS[site].format(block)``, by hook name."""
    kept: dict[str, torch.Tensor] = {}

    def keep(name):
        # Keyed by the name asked for: the bridge's hook points carry aliased names (hook_q is attn.q.hook_out).
        def hook(act, hook):
            kept[name] = act.detach().clone()

        return hook

    names = [SITE_HOOKS[s].format(b) for s in sites for b in blocks]
    with model.bridge.hooks(fwd_hooks=[(name, keep(name)) for name in names]):
        model.bridge(tokens.to(model.device))
    return kept


def patch_hooks(spec: PatchSpec, source_acts: dict[str, torch.Tensor]):
    positions, heads = list(spec.positions), None if spec.heads is None else list(spec.heads)
    name = SITE_HOOKS[spec.site].format(spec.block)
    source = source_acts[name]
    if spec.site == "resid_mid":
        # resid_mid is read at ln2's input but written through attn_out (as the ActivationPatch probe does).
        saved = {}

        def keep_pre(resid, hook):
            saved["pre"] = resid

        def write(attn_out, hook):
            return patch_values(saved["pre"] + attn_out, source, positions, None) - saved["pre"]

        return [(f"blocks.{spec.block}.hook_resid_pre", keep_pre), (f"blocks.{spec.block}.hook_attn_out", write)]

    def replace(act, hook):
        return patch_values(act, source, positions, heads)

    return [(name, replace)]


def probe_hooks(model, tokens: torch.Tensor, prompt: str, spec: ReplaceSpec | MaskSpec):
    from workbench.tokens import str_tokens

    ctx = RunContext(model=model, prompts=[prompt], tokens=tokens, str_tokens=[str_tokens(model, prompt)],
                     readout=tokens.shape[-1] - 1, target_ids=[], target_labels=[])
    if isinstance(spec, ReplaceSpec):
        probe = BlockReplacement(blocks=[spec.block], mode=spec.mode)
    else:
        probe = AttentionMask(keys=list(spec.keys), blocks=list(spec.blocks), queries=list(spec.queries))
    probe.prepare(ctx)
    return probe.hooks(ctx)


@torch.no_grad()
def run_naive(model, prompt: str, tokens: torch.Tensor, specs: list, readout: int,
              source_acts: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Readout logits ``[cell, vocab]``: one full hooked forward per spec."""
    rows = []
    for spec in specs:
        hooks = patch_hooks(spec, source_acts) if isinstance(spec, PatchSpec) else probe_hooks(model, tokens, prompt, spec)
        with model.bridge.hooks(fwd_hooks=hooks):
            rows.append(model.bridge(tokens)[0, readout].float())
    return torch.stack(rows)
