"""Logit lens: read every residual stream through the final norm and the unembedding.

Rows follow :mod:`workbench.layers`: ``embeddings``, ``after block i``, and ``final`` (the model's
own output logits, so the row above it must equal it: the lens is exact at the last block).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from jaxtyping import Float

from workbench import plots
from workbench.errors import ProbeError
from workbench.layers import resid_labels
from workbench.metrics import kl_divergence
from workbench.probes.base import Probe, ProbeRecord, RunContext
from workbench.probes.registry import register_probe
from workbench.results import Named, Result
from workbench.tokens import position_indices


def decode_ids(tokenizer, ids: torch.Tensor) -> np.ndarray:
    """Token strings for an id tensor, decoding each distinct id once."""
    unique, inverse = np.unique(ids.cpu().numpy(), return_inverse=True)
    texts = np.array([tokenizer.decode([int(i)]) for i in unique], dtype=object)
    return texts[inverse].reshape(tuple(ids.shape))


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
        """Every saved residual row read into logits by ``read(model, resid)`` (a fitted lens passes its own)."""
        ctx, phase = record.context, record.last_phase
        labels = resid_labels(ctx.facts.n_layers)
        stack = [
            read(ctx.model, record.saved[phase][label], layer)
            if read is not self.unembed
            else read(ctx.model, record.saved[phase][label])
            for layer, label in enumerate(labels[:-1])
        ]
        stack.append(record.logits[phase][:, keep].float())
        return self._summarise(ctx, stack, labels, keep)

    @staticmethod
    def unembed(model, resid: Float[torch.Tensor, "*batch d_model"]) -> Float[torch.Tensor, "*batch vocab"]:
        """The model's own final norm and unembedding applied to a residual stream."""
        return model.unembed(resid)

    def _summarise(
        self, ctx: RunContext, stack: list[torch.Tensor], labels: list[str], keep: list[int]
    ) -> LogitLensResult:
        final_logp = stack[-1].log_softmax(-1)
        top_p, top_tok, kl, t_prob, t_rank = [], [], [], [], []
        target_ids = torch.tensor(ctx.target_ids, dtype=torch.long, device=final_logp.device)
        for logits in stack:
            logp = logits.log_softmax(-1)
            p, idx = logp.exp().topk(self.k, dim=-1)
            top_p.append(p)
            top_tok.append(decode_ids(ctx.model.tokenizer, idx))
            kl.append(kl_divergence(final_logp, logp))
            if len(target_ids):
                target_logits = logits[..., target_ids]
                t_prob.append(logp[..., target_ids].exp())
                # Rank = how many tokens have a strictly larger logit (0 = top); one target at a time
                # keeps the comparison in cache (4× faster than one [.., target, vocab] tensor).
                t_rank.append(
                    torch.stack([(logits > target_logits[..., k : k + 1]).sum(-1) for k in range(len(target_ids))], -1)
                )
        coords = dict(
            prompt=list(range(len(ctx.prompts))),
            layer=labels,
            position=[ctx.str_tokens[0][p] for p in keep],
            rank=list(range(self.k)),
            target=ctx.target_labels,
        )
        dims = ("prompt", "layer", "position")
        arrays = {
            "top_probs": Named(torch.stack(top_p, 1), dims + ("rank",), coords),
            "top_tokens": Named(np.stack(top_tok, 1), dims + ("rank",), coords),
            "kl_to_final": Named(torch.stack(kl, 1), dims, coords),
        }
        if t_prob:
            arrays["target_probs"] = Named(torch.stack(t_prob, 1), dims + ("target",), coords)
            arrays["target_ranks"] = Named(torch.stack(t_rank, 1), dims + ("target",), coords)
        return LogitLensResult(
            arrays=arrays,
            meta={
                "readout": ctx.readout,
                "positions": keep,
                "k": self.k,
                "layer_convention": "embeddings, after block i (from 0), final",
            },
        )


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
                x=array.coords["target"],
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
