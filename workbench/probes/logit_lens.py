"""Logit lens: read every residual stream through the final norm and the unembedding.

Rows follow :mod:`workbench.layers`: ``embeddings``, ``after block i``, and ``final`` (the model's
own output logits, so the row above it must equal it: the lens is exact at the last block).

Every position is read by default, and the memory stays bounded however long the prompt: the summaries
(top-k, KL to the output, target probabilities and ranks) are computed one chunk of (prompt, position) rows
at a time, sized by :func:`workbench.memory.memory_budget`, so no ``[layers, positions, vocab]`` tensor
ever exists (a 1,000-token prompt on SmolLM2: ``benchmarks/logit_lens_memory.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from jaxtyping import Float, Int

from workbench import plots
from workbench.errors import ProbeError
from workbench.layers import resid_labels
from workbench.memory import require_within_budget, rows_per_batch
from workbench.probes.base import Probe, ProbeRecord, RunContext
from workbench.probes.registry import register_probe
from workbench.results import LazyArrays, Named, Result
from workbench.tokens import position_indices

# A chunk of (prompt, position) rows holds at most this many vocabulary-sized float32 tensors per row at once:
# the output's log-probabilities and probabilities, the layer's logits, and either the rank comparisons'
# buffer or the layer's log-probabilities (the KL is computed in place on them).
LENS_ROW_COPIES = 4
# At most this many rows per chunk, whatever the budget: the unembedding's matmul costs about the same per row
# from ~200 rows on (SmolLM2 on 2 CPU cores: 3.7 ms a row at 28 rows, 1.4 ms at 227, 1.5 ms at 1000), so larger
# chunks would only add memory (256 rows of a 49k vocabulary: 300 MiB).
LENS_CHUNK_ROWS = 256


def decode_ids(tokenizer, ids: torch.Tensor) -> np.ndarray:
    """Token strings for an id tensor, decoding each distinct id once."""
    unique, inverse = np.unique(ids.cpu().numpy(), return_inverse=True)
    texts = np.array([tokenizer.decode([int(i)]) for i in unique], dtype=object)
    return texts[inverse].reshape(tuple(ids.shape))


def ranks_above(
    logits: Float[torch.Tensor, "*rows vocab"], targets: Float[torch.Tensor, "*rows target"]
) -> Int[torch.Tensor, "*rows target"]:
    """How many logits of each row are strictly larger than each target's (0 = top; ties count as not above).

    Each comparison is written as 0.0/1.0 into one reused float32 buffer and summed along the row: a float
    sum of ones is exact below 2**24 (far above any vocabulary), and about 4× faster than summing the
    booleans of ``(logits > target).sum(-1)``, which widens every element to int64 (SmolLM2, 256 rows:
    160 ms for ten targets, against 680 ms).
    """
    if logits.shape[-1] >= 1 << 24:  # a float32 count would no longer be exact
        return torch.stack([(logits > targets[..., j : j + 1]).sum(-1) for j in range(targets.shape[-1])], -1)
    buffer = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    ranks = torch.empty(targets.shape, dtype=torch.long, device=logits.device)
    for j in range(targets.shape[-1]):
        torch.gt(logits, targets[..., j : j + 1], out=buffer)
        ranks[..., j] = buffer.sum(-1)
    return ranks


@register_probe
@dataclass
class LogitLens(Probe):
    """Logit lens: top-k tokens, target probabilities and ranks, KL to the output, per layer."""

    k: int = 10
    positions: list[int] | None = None
    name: ClassVar[str] = "logit_lens"

    def prepare(self, ctx: RunContext) -> list[int]:
        """The absolute positions read (all by default; a subset saves the unembedding of the others)."""
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= ctx.facts.d_vocab:
            raise ProbeError(
                f"k={self.k!r} top tokens per layer: pass a whole number from 1 to the vocabulary "
                f"size ({ctx.facts.d_vocab})."
            )
        return position_indices(ctx.n_positions, self.positions)

    def hooks(self, ctx: RunContext):
        keep = self.positions_read(ctx.plan)

        def save_as(key: str):
            def hook(resid: Float[torch.Tensor, "batch pos d_model"], hook: Any) -> None:
                ctx.save(key, resid[:, keep])

            return hook

        n = ctx.facts.n_layers
        return [("blocks.0.hook_resid_pre", save_as("embeddings"))] + [
            (f"blocks.{i}.hook_resid_post", save_as(f"after block {i}")) for i in range(n)
        ]

    def positions_read(self, plan: Any) -> list[int]:
        """The absolute positions this run reads, from the plan :meth:`prepare` returned."""
        return plan

    @torch.no_grad()
    def result(self, record: ProbeRecord) -> LogitLensResult:
        return self.read_layers(record, record.plan, self.unembed)

    def read_layers(self, record: ProbeRecord, keep: list[int], read) -> LogitLensResult:
        """Every saved residual row read into logits by ``read(model, resid)`` (a fitted lens passes its own
        ``read(model, resid, layer)``), summarised chunk by chunk (see ``_summarise``)."""
        ctx, phase = record.context, record.last_phase
        labels = resid_labels(ctx.facts.n_layers)
        saved, output = record.saved[phase], record.logits[phase]
        last = len(labels) - 1
        first, run_of = keep[0], keep == list(range(keep[0], keep[0] + len(keep)))

        def logits_of(row: int, prompts: slice, columns: slice) -> Float[torch.Tensor, "batch pos vocab"]:
            if row == last:  # the model's own output logits (a view when the positions read are a run)
                picked = slice(first + columns.start, first + min(columns.stop, len(keep))) if run_of else keep[columns]
                return output[prompts, picked].float()
            resid = saved[labels[row]][prompts, columns]
            return (read(ctx.model, resid) if read is self.unembed else read(ctx.model, resid, row)).float()

        return self._summarise(ctx, logits_of, labels, keep, int(output.shape[-1]))

    @staticmethod
    def unembed(model, resid: Float[torch.Tensor, "*batch d_model"]) -> Float[torch.Tensor, "*batch vocab"]:
        """The model's own final norm and unembedding applied to a residual stream."""
        return model.unembed(resid)

    @staticmethod
    def chunk_shape(n_prompts: int, n_positions: int, d_vocab: int, device: Any = "cpu") -> tuple[int, int]:
        """(prompts, positions) per chunk: as many rows as :data:`LENS_ROW_COPIES` vocabulary-sized float32
        tensors per row allow within the memory budget, at most :data:`LENS_CHUNK_ROWS`; a row that alone
        exceeds the budget is refused (:class:`~workbench.errors.BudgetError`)."""
        bytes_per_row = LENS_ROW_COPIES * 4 * d_vocab
        require_within_budget(
            bytes_per_row,
            "The logit lens' one (layer, position) row",
            "raise WORKBENCH_MEMORY_BUDGET",
            device,
        )
        rows = rows_per_batch(bytes_per_row, device, cap=LENS_CHUNK_ROWS)
        if rows < n_prompts:
            return rows, 1
        return n_prompts, max(1, min(n_positions, rows // n_prompts))

    def _summarise(
        self,
        ctx: RunContext,
        logits_of: Callable[[int, slice, slice], torch.Tensor],
        labels: list[str],
        keep: list[int],
        d_vocab: int,
    ) -> LogitLensResult:
        """The result, whose arrays (:meth:`_arrays`) are computed when first read: ``run`` builds it for the cost
        of nothing, a table or figure pays once. The memory budget is checked now, before any work."""
        shape = self.chunk_shape(len(ctx.prompts), len(keep), d_vocab, ctx.model.device)

        def compute() -> dict[str, Named]:
            with torch.no_grad():
                return self._arrays(ctx, logits_of, labels, keep, shape)

        return LogitLensResult(
            arrays=LazyArrays(compute),
            meta={
                "readout": ctx.readout,
                "positions": keep,
                "k": self.k,
                "layer_convention": "embeddings, after block i (from 0), final",
            },
        )

    def _arrays(
        self,
        ctx: RunContext,
        logits_of: Callable[[int, slice, slice], torch.Tensor],
        labels: list[str],
        keep: list[int],
        shape: tuple[int, int],
    ) -> dict[str, Named]:
        """Top-k, KL to the output, target probabilities and ranks of every (prompt, layer, position), computed
        one chunk of (prompt, position) rows at a time, every layer of a chunk in turn: no
        ``[layers, positions, vocab]`` tensor ever exists (the largest is one layer of one chunk)."""
        n_prompts, n_layers, n_pos = len(ctx.prompts), len(labels), len(keep)
        device = ctx.model.device
        target_ids = torch.tensor(ctx.target_ids, dtype=torch.long, device=device)
        n_targets = len(target_ids)
        top_p = torch.zeros(n_prompts, n_layers, n_pos, self.k, device=device)
        top_idx = torch.zeros(n_prompts, n_layers, n_pos, self.k, dtype=torch.long, device=device)
        kl = torch.zeros(n_prompts, n_layers, n_pos, device=device)
        t_prob = torch.zeros(n_prompts, n_layers, n_pos, n_targets, device=device)
        t_rank = torch.zeros(n_prompts, n_layers, n_pos, n_targets, dtype=torch.long, device=device)
        step_b, step_p = shape
        for b0 in range(0, n_prompts, step_b):
            prompts = slice(b0, b0 + step_b)
            for p0 in range(0, n_pos, step_p):
                columns = slice(p0, p0 + step_p)
                final_logp = logits_of(n_layers - 1, prompts, columns).log_softmax(-1)
                final_p = final_logp.exp()
                for layer in range(n_layers):
                    logits = logits_of(layer, prompts, columns)
                    if n_targets:  # first, so that the comparisons' buffer and the log-probabilities never coexist
                        t_rank[prompts, layer, columns] = ranks_above(logits, logits[..., target_ids])
                    logp = logits.log_softmax(-1)
                    del logits
                    top_logp, idx = logp.topk(self.k, dim=-1)  # exp is monotone: the top-k of the probabilities
                    top_p[prompts, layer, columns] = top_logp.exp()
                    top_idx[prompts, layer, columns] = idx
                    if n_targets:
                        t_prob[prompts, layer, columns] = logp[..., target_ids].exp()
                    # KL(final ‖ layer) = Σ p_final (log p_final − log p_layer), metrics.kl_divergence's formula with
                    # the output's log-probabilities computed once per chunk rather than once per layer; in place
                    # on the layer's log-probabilities (their last use; −b + a is a − b exactly).
                    kl[prompts, layer, columns] = logp.neg_().add_(final_logp).mul_(final_p).sum(-1)
                    del logp
        top_tok = decode_ids(ctx.model.tokenizer, top_idx)
        coords = dict(
            prompt=list(range(len(ctx.prompts))),
            layer=labels,
            position=[ctx.str_tokens[0][p] for p in keep],
            rank=list(range(self.k)),
            target=ctx.target_labels,
        )
        dims = ("prompt", "layer", "position")
        arrays = {
            "top_probs": Named(top_p, dims + ("rank",), coords),
            "top_tokens": Named(top_tok, dims + ("rank",), coords),
            "kl_to_final": Named(kl, dims, coords),
        }
        if n_targets:
            arrays["target_probs"] = Named(t_prob, dims + ("target",), coords)
            arrays["target_ranks"] = Named(t_rank, dims + ("target",), coords)
        return arrays


@dataclass(repr=False)
class LogitLensResult(Result):
    """Per layer: top-k tokens and probabilities, target probabilities and ranks, KL to the final output."""

    def top_k(self, layer: str | int, position: int | None = None, prompt: int = 0) -> list[tuple[str, float]]:
        """The top-k (token, probability) pairs of one layer at one position (the readout by default)."""
        position = self.column(self.meta["readout"] if position is None else position)
        toks = self["top_tokens"].sel(prompt=prompt, layer=layer, position=position).numpy()
        probs = self["top_probs"].sel(prompt=prompt, layer=layer, position=position).numpy()
        return [(str(t), float(p)) for t, p in zip(toks, probs, strict=True)]

    def column(self, position: int) -> int:
        """Index along the ``position`` axis of an absolute token position (negative counts from the end)."""
        kept = self.meta["positions"]
        absolute = position % len(self.tokens[0])
        if absolute not in kept:
            raise ProbeError(f"Position {position} was not read by this lens (it read {kept}): pass positions=None.")
        return kept.index(absolute)

    def table(self, position: int | None = None, prompt: int = 0):
        """A DataFrame: one row per layer, the top-k tokens with probabilities at one position."""
        import pandas as pd

        rows = []
        for layer in self["top_probs"].coords["layer"]:
            pairs = self.top_k(layer, position, prompt)
            rows.append({"layer": layer, **{f"top {i + 1}": f"{t!r} {p:.3f}" for i, (t, p) in enumerate(pairs)}})
        return pd.DataFrame(rows)

    def summary(self) -> str:
        final = self.top_k("final")[:3]
        return f"logit lens on {self.model}; final top-3 at the readout: " + ", ".join(
            f"{t!r} {p:.3f}" for t, p in final
        )

    def figure(self, kind: str = "top_tokens", prompt: int = 0, **_: Any):
        """``top_tokens`` (layer × position, top-1 token and probability), ``targets``, ``ranks`` or ``kl``."""
        layers = self["top_probs"].coords["layer"]
        positions = [f"{p}:{plots.show_token(self.tokens[prompt][p])}" for p in self.meta["positions"]]
        pos = self.meta["readout"]
        if kind == "top_tokens":
            probs = self["top_probs"].sel(prompt=prompt, rank=0).numpy()
            text = self["top_tokens"].sel(prompt=prompt, rank=0).numpy()
            text = np.vectorize(lambda t: plots.show_token(t)[:8])(text)
            return plots.heatmap(
                probs,
                x=positions,
                y=layers,
                text=text,
                colorbar="p(top-1)",
                zmin=0,
                zmax=1,
                width=max(900, 75 * len(positions) + 250),
                title=f"Logit lens: top-1 token per layer and position ({self.model})",
                x_title="position: token",
                y_title="residual stream",
            )
        if kind in ("targets", "ranks"):
            array = self["target_probs" if kind == "targets" else "target_ranks"].sel(
                prompt=prompt, position=self.column(pos)
            )
            what = "probability" if kind == "targets" else "rank (0 = top)"
            return plots.heatmap(
                array.numpy(),
                x=[plots.show_token(t) for t in array.coords["target"]],
                y=layers,
                colorbar=what,
                text=np.vectorize(lambda v: f"{v:.2f}" if kind == "targets" else f"{int(v)}")(array.numpy()),
                title=f"Logit lens: target {what} per layer at position {pos} ({self.model})",
                x_title="target token",
                y_title="residual stream",
            )
        if kind == "kl":
            kl = self["kl_to_final"].sel(prompt=prompt).numpy()
            return plots.heatmap(
                kl,
                x=positions,
                y=layers,
                colorbar="KL (nats)",
                title=f"Logit lens: KL(final ‖ layer) per position ({self.model})",
                x_title="position: token",
                y_title="residual stream",
            )
        raise ProbeError(f"Unknown logit-lens figure {kind!r}: use top_tokens, targets, ranks or kl.")

    def figures(self) -> dict[str, Any]:
        kinds = ["top_tokens", "kl"] + (["targets", "ranks"] if "target_probs" in self.arrays else [])
        return {kind: self.figure(kind) for kind in kinds}
