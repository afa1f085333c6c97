"""What every intervention reports: the next-token distribution before and after the edit.

Block replacement, attention masking and patching all answer one question ("what does the output
become?"), so they share one result type; each adds the arrays that describe its own edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from workbench import plots
from workbench.errors import ProbeError
from workbench.metrics import kl_divergence
from workbench.probes.base import CLEAN, INTERVENED, ProbeRecord
from workbench.results import Named, Result

TOP = 10


def distribution_arrays(record: ProbeRecord) -> dict[str, Named]:
    """Target-token probabilities and the top tokens, clean vs intervened, at the readout position."""
    ctx = record.context
    tokenizer = ctx.model.tokenizer
    phases = [CLEAN, INTERVENED]
    logits = torch.stack([record.readout_logits(p).float() for p in phases])  # phase batch vocab
    probs = logits.softmax(-1)
    top_p, top_i = probs.topk(TOP, dim=-1)
    top_t = np.vectorize(lambda i: tokenizer.decode([int(i)]), otypes=[object])(top_i.cpu().numpy())
    coords = dict(phase=phases, prompt=list(range(len(ctx.prompts))), target=ctx.target_labels, rank=list(range(TOP)))
    arrays = {
        "top_probs": Named(top_p, ("phase", "prompt", "rank"), coords),
        "top_tokens": Named(top_t, ("phase", "prompt", "rank"), coords),
        "kl": Named(kl_divergence(logits[0], logits[1]), ("prompt",), coords),
        "total_variation": Named(0.5 * (probs[0] - probs[1]).abs().sum(-1), ("prompt",), coords),
    }
    if ctx.target_ids:
        arrays["target_probs"] = Named(probs[..., ctx.target_ids], ("phase", "prompt", "target"), coords)
    return arrays


def intervention_result(record: ProbeRecord, description: str) -> InterventionResult:
    """The default result of an intervention probe: before/after distributions and what was edited.
    An edit that selected nothing is labelled a no-op, never reported as an edit."""
    ctx = record.context
    notes = [note for resolved in record.resolved for note in resolved.notes]
    noop = bool(record.resolved) and all(resolved.is_noop() for resolved in record.resolved)
    if noop:
        description = f"{description} (no-op: nothing was edited)"
    return InterventionResult(
        arrays=distribution_arrays(record),
        meta={
            "description": description,
            "interventions": record.interventions,
            "edits": [resolved.intervention.to_dict() for resolved in record.resolved],
            "notes": notes,
            "noop": noop,
            "readout": ctx.readout,
        },
    )


@dataclass(repr=False)
class InterventionResult(Result):
    """Before/after next-token distributions of an intervention, plus arrays describing the edit."""

    def distribution(self, phase: str = INTERVENED, prompt: int = 0) -> dict[str, float]:
        """Target token → probability at the readout position (``clean`` or ``intervened``)."""
        array = self["target_probs"].sel(phase=phase, prompt=prompt)
        return {t: float(p) for t, p in zip(array.coords["target"], array.numpy(), strict=True)}

    def top_k(self, phase: str = INTERVENED, prompt: int = 0) -> list[tuple[str, float]]:
        toks = self["top_tokens"].sel(phase=phase, prompt=prompt).numpy()
        probs = self["top_probs"].sel(phase=phase, prompt=prompt).numpy()
        return [(str(t), float(p)) for t, p in zip(toks, probs, strict=True)]

    def summary(self) -> str:
        kl = float(self["kl"].numpy()[0])
        before, after = self.top_k(CLEAN)[0], self.top_k(INTERVENED)[0]
        return (
            f"{self.meta.get('description', self.probe)}: top token {before[0]!r} {before[1]:.3f} → "
            f"{after[0]!r} {after[1]:.3f}, KL(clean ‖ intervened) = {kl:.4f} nats"
        )

    def sites(self) -> Named | None:
        """Where the edit was made: a block × position grid (1 = edited), or None for whole-block edits."""
        return next((self.arrays[k] for k in ("patched", "masked") if k in self.arrays), None)

    def figure(self, kind: str = "distribution", prompt: int = 0, **_: Any):
        """``distribution``: target probabilities before and after (grouped bars); ``top``: the top tokens;
        ``sites``: the block × position grid of what was edited (patching and masking)."""
        title = f"{self.meta.get('description', self.probe)} ({self.model})"
        if kind == "sites":
            grid = self.sites()
            if grid is None:
                raise ProbeError(f"{self.probe} edits whole blocks; it has no block × position sites to draw.")
            dims = grid.dims
            return plots.heatmap(
                grid.numpy(),
                x=plots.tick_labels(grid.coords[dims[1]]),
                y=[f"block {b}" for b in grid.coords[dims[0]]],
                zmin=0,
                zmax=1,
                colorbar="edited",
                title=f"Edited sites: {title}",
                x_title=f"{dims[1]}: token",
                y_title="block",
            )
        if kind == "distribution" and "target_probs" in self.arrays:
            before, after = self.distribution(CLEAN, prompt), self.distribution(INTERVENED, prompt)
            return plots.bars(
                {"clean": list(before.values()), "intervened": list(after.values())},
                labels=list(before),
                title=title,
                x_title="next token",
                y_title="probability",
            )
        before, after = self.top_k(CLEAN, prompt), self.top_k(INTERVENED, prompt)
        labels = list(dict.fromkeys([t for t, _ in before] + [t for t, _ in after]))
        b, a = dict(before), dict(after)
        return plots.bars(
            {"clean": [b.get(t, 0.0) for t in labels], "intervened": [a.get(t, 0.0) for t in labels]},
            labels=labels,
            title=title + ": top tokens (0 = not in that top-10)",
            x_title="next token",
            y_title="probability",
        )

    def figures(self) -> dict[str, Any]:
        out = {"distribution": self.figure("distribution"), "top": self.figure("top")}
        if self.sites() is not None:
            out["sites"] = self.figure("sites")
        return out
