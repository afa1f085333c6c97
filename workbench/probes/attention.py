"""Attention capture: per-head patterns for grouped-query attention, the sink, and display options.

With grouped-query attention several query heads read one key/value head (Qwen2.5-0.5B: 14 query
heads in 2 groups; SmolLM2: 9 in 3). Every pattern is labelled with its group, group means are
reported, and the attention sink (the share of attention on the first token) is measured per head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from workbench import plots
from workbench.layers import resolve_blocks, resolve_heads
from workbench.probes.base import Probe, ProbeRecord, RunContext
from workbench.probes.registry import register_probe
from workbench.results import Named, Result


@register_probe
@dataclass
class AttentionCapture(Probe):
    """Attention capture: per-head query × key patterns with GQA groups, group means and the sink share."""

    blocks: list[int] | int | None = None
    heads: list[int] | int | None = None
    name: ClassVar[str] = "attention"

    def prepare(self, ctx: RunContext) -> tuple[list[int], list[int]]:
        ctx.model.require_editable_attention("Attention capture")
        return resolve_blocks(ctx.facts, self.blocks), resolve_heads(ctx.facts, self.heads, "query")

    def hooks(self, ctx: RunContext):
        blocks, heads = ctx.plan
        index = torch.tensor(heads)

        def save(block: int):
            def hook(pattern, hook):  # [batch, head, query, key]
                ctx.save(f"block {block}", pattern[:, index.to(pattern.device)].float())

            return hook

        return [(f"blocks.{b}.attn.hook_pattern", save(b)) for b in blocks]

    def result(self, record: ProbeRecord) -> AttentionResult:
        return self._summarise(record, record.last_phase)

    def _summarise(self, record: ProbeRecord, phase: str) -> AttentionResult:
        ctx = record.context
        blocks, heads = record.plan
        pattern = torch.stack([record.saved[phase][f"block {b}"] for b in blocks], 1)  # prompt block head q k
        groups = [ctx.facts.head_to_group[h] for h in heads]
        n_groups = ctx.facts.n_kv_heads
        group_mean = torch.stack(
            [
                pattern[:, :, [i for i, g in enumerate(groups) if g == group]].mean(2)
                if group in groups
                else torch.full_like(pattern[:, :, 0], float("nan"))
                for group in range(n_groups)
            ],
            2,
        )
        coords = dict(
            prompt=list(range(len(ctx.prompts))),
            block=blocks,
            head=heads,
            group=list(range(n_groups)),
            query=ctx.str_tokens[0],
            key=ctx.str_tokens[0],
        )
        # The sink share averages over queries 1…n-1: query 0 can only attend to the first token.
        sink = pattern[..., 1:, 0].mean(-1) if pattern.shape[-1] > 1 else pattern[..., 0, 0]
        arrays = {
            "pattern": Named(pattern, ("prompt", "block", "head", "query", "key"), coords),
            "group_mean": Named(group_mean, ("prompt", "block", "group", "query", "key"), coords),
            "sink_share": Named(sink, ("prompt", "block", "head"), coords),
            "readout_attention": Named(pattern[:, :, :, ctx.readout], ("prompt", "block", "head", "key"), coords),
        }
        return AttentionResult(
            arrays=arrays,
            meta={
                "readout": ctx.readout,
                "head_to_group": dict(zip(heads, groups, strict=True)),
                "n_kv_heads": n_groups,
                "block_convention": "blocks counted from 0",
            },
        )


def display_pattern(
    pattern: np.ndarray, *, hide_diagonal: bool = False, hide_sink: bool = False, renormalise: bool = False
) -> np.ndarray:
    """Apply the study's display options to ``[..., query, key]`` patterns.

    Hidden entries become NaN (blank in a heatmap). With ``renormalise`` each row's remaining
    attention is rescaled to sum to 1 (rows with nothing left stay NaN).
    """
    out = np.array(pattern, dtype=float, copy=True)
    n_q, n_k = out.shape[-2:]
    if hide_diagonal:
        idx = np.arange(min(n_q, n_k))
        out[..., idx, idx] = np.nan
    if hide_sink:
        out[..., 0] = np.nan
    if renormalise:
        total = np.nansum(out, axis=-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(total > 0, out / total, np.nan)
        # Future keys (above the diagonal) are not attention, keep them blank.
        future = np.triu(np.ones((n_q, n_k), dtype=bool), k=1)
        out[..., future] = np.nan
    return out


@dataclass(repr=False)
class AttentionResult(Result):
    """Per-head patterns ``[prompt, block, head, query, key]``, GQA group means and the sink share per head."""

    def patterns(self, block: int, prompt: int = 0, **display: bool) -> np.ndarray:
        """``[head, query, key]`` of one block, with ``hide_diagonal`` / ``hide_sink`` / ``renormalise``."""
        return display_pattern(self["pattern"].sel(prompt=prompt, block=block).numpy(), **display)

    def attention_to(self, position: int, prompt: int = 0) -> Named:
        """Attention from the readout position to one key position, ``[block, head]``."""
        return self["readout_attention"].sel(prompt=prompt, key=position)

    def summary(self) -> str:
        sink = self["sink_share"].sel(prompt=0).numpy()
        blocks = self["sink_share"].coords["block"]
        strongest = blocks[int(sink.mean(-1).argmax())]
        return (
            f"attention of {len(blocks)} blocks × {sink.shape[-1]} heads on {self.model}; "
            f"strongest sink: block {strongest} ({sink.mean(-1).max():.2f} of attention on the first token)"
        )

    def figure(
        self,
        kind: str = "heads",
        block: int | None = None,
        prompt: int = 0,
        hide_diagonal: bool = False,
        hide_sink: bool = False,
        renormalise: bool = False,
        group_means: bool = False,
        **_: Any,
    ):
        """``heads``: query × key per head of one block; ``sink``: sink share per block × head;
        ``readout``: attention from the readout position to every key, per block × head (one row per pair)."""
        blocks = self["pattern"].coords["block"]
        labels = self.tokens[prompt]
        if kind == "sink":
            sink = self["sink_share"].sel(prompt=prompt)
            return plots.heatmap(
                sink.numpy(),
                x=[f"head {h} · g{self.meta['head_to_group'][h]}" for h in sink.coords["head"]],
                y=[f"block {b}" for b in blocks],
                zmin=0,
                zmax=1,
                colorbar="share",
                title=f"Attention sink: share of attention on the first token ({self.model})",
                x_title="query head · kv group",
                y_title="block",
            )
        if kind == "readout":
            attn = self["readout_attention"].sel(prompt=prompt).numpy()  # block head key
            rows = [f"block {b} · head {h}" for b in blocks for h in self["pattern"].coords["head"]]
            values = attn.reshape(-1, attn.shape[-1])
            if hide_sink:
                values = values.copy()
                values[:, 0] = np.nan
            return plots.heatmap(
                values,
                x=plots.tick_labels(labels),
                y=rows,
                colorbar="attention",
                title=f"Attention from the readout position {self.meta['readout']} ({self.model})",
                x_title="key: token",
                y_title="block · head",
                height=max(500, 12 * len(rows) + 200),
            )
        block = blocks[0] if block is None else block
        options = dict(hide_diagonal=hide_diagonal, hide_sink=hide_sink, renormalise=renormalise)
        if group_means:
            data = display_pattern(self["group_mean"].sel(prompt=prompt, block=block).numpy(), **options)
            heads = self["group_mean"].coords["group"]
            groups = heads
            title = f"Block {block}: attention averaged per key/value group"
        else:
            data = self.patterns(block, prompt, **options)
            heads = self["pattern"].coords["head"]
            groups = [self.meta["head_to_group"][h] for h in heads]
            title = f"Block {block}: attention per query head"
        shown = [name for name, on in options.items() if on]
        title += f" ({self.model}{'; ' + ', '.join(shown).replace('_', ' ') if shown else ''})"
        fig = plots.head_grid(data, heads=heads, groups=groups, query_labels=labels, key_labels=labels, title=title)
        if group_means:
            for annotation, g in zip(fig.layout.annotations, groups, strict=False):
                annotation.text = f"kv group {g} (mean)"
        return fig

    def figures(self) -> dict[str, Any]:
        out = {"sink": self.figure("sink"), "readout": self.figure("readout")}
        for block in self["pattern"].coords["block"]:
            out[f"block_{block}"] = self.figure("heads", block=block)
        return out
