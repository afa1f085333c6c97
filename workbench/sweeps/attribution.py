"""Attribution patching: the first-order estimate of every patching cell from one backward pass.

``metric(patched) − metric(prompt) ≈ (a_source − a_prompt) · ∂metric/∂a`` at the prompt's own run,
summed over the patched positions (and the head's slice). One forward of the prompt with gradients,
one forward of the source, one backward: the whole grid for the price of three passes.

The estimate is exact when the metric is linear in the activation along the path from prompt to
source; it fails where attention saturates or the metric curves (a KL to the prompt's own
distribution has zero gradient there, so its estimate is always 0). :func:`compare_attribution` shows
where it holds next to exact patching on a chosen subset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from workbench import plots
from workbench.errors import SweepError
from workbench.interventions.sites import SITES, head_kind
from workbench.layers import resolve_blocks, resolve_heads
from workbench.metrics import resolve_metric
from workbench.models import load_model
from workbench.results import Named, Result
from workbench.sweeps.result import SweepResult, sweep_arrays
from workbench.sweeps.sweep import HEAD_SITES, PATCH_SITES, patch_sweep
from workbench.tokens import align_prompts, position_indices, resolve_readout


def attribution_sweep(
    model,
    prompt: str,
    source: str,
    *,
    site: str = "resid_pre",
    metric=None,
    blocks=None,
    positions=None,
    heads=None,
    by_position: bool = False,
    readout: int = -1,
) -> SweepResult:
    """The attribution estimate of :func:`~workbench.sweeps.patch_sweep` with the same grid and arguments.

    Runs on the bridge's hook points (every family): the prompt's activations at ``site`` are made
    leaves of the autograd graph, one backward pass gives every gradient."""
    model = load_model(model)
    if site not in PATCH_SITES:
        raise SweepError(f"Unknown sweep site {site!r}: use one of {', '.join(PATCH_SITES)}.")
    tokens, source_tokens = align_prompts(model, prompt, source)
    n = tokens.shape[-1]
    readout = resolve_readout(n, readout)
    block_list = resolve_blocks(model.facts, blocks)
    pos = position_indices(n, positions)
    head_list = resolve_heads(model.facts, heads, head_kind(site)) if site in HEAD_SITES else None
    metric = resolve_metric(model, metric)
    spec = SITES[site]
    read = {b: spec.hook_name(b) for b in block_list}
    # resid_mid enters the rest of the model only through attn_out (resid_mid = resid_pre + attn_out).
    grad_at = {b: (f"blocks.{b}.hook_attn_out" if site == "resid_mid" else read[b]) for b in block_list}
    began = time.perf_counter()
    source_acts = _capture(model, source_tokens, list(read.values()))
    with torch.no_grad():
        source_logits = model.bridge(source_tokens)[:, readout].float()
    leaves: dict[str, torch.Tensor] = {}

    def leaf(name):
        # The first hooked activation becomes a leaf of the graph (the weights may not require grad);
        # later ones stay connected to it, so one backward reaches every site.
        def hook(act, hook):
            if not act.requires_grad:
                act = act.detach().requires_grad_(True)
            leaves[name] = act
            return act

        return hook

    values: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(act, hook):
            values[name] = act.detach().clone()

        return hook

    hooks = [(name, keep(name)) for name in read.values()] + [(name, leaf(name)) for name in set(grad_at.values())]
    with torch.enable_grad(), model.bridge.hooks(fwd_hooks=hooks):
        logits = model.bridge(tokens)[:, readout].float()
        clean = logits[0].detach()
        value = metric(logits, clean).sum()
        names = sorted(leaves)
        grads = dict(zip(names, torch.autograd.grad(value, [leaves[k] for k in names], allow_unused=True), strict=True))
    over = (
        ("block", "position", "head")
        if site in HEAD_SITES and by_position
        else ("block", "head")
        if site in HEAD_SITES
        else ("block", "position")
    )
    estimates = []
    for b in block_list:
        grad = grads.get(grad_at[b])
        delta_full = (source_acts[read[b]] - values[read[b]])[0]
        g_full = grad[0] if grad is not None else torch.zeros_like(delta_full)
        cells = [
            (p_list, h)
            for p_list in ([[p] for p in pos] if "position" in over else [pos])
            for h in (head_list if head_list is not None else [None])
        ]
        for p_list, h in cells:
            d, g = delta_full[p_list], g_full[p_list]
            if h is not None:
                d, g = d[:, h], g[:, h]
            estimates.append(float((d * g).sum()))
    seconds = time.perf_counter() - began
    base = float(metric(clean[None], clean)[0])
    source_value = float(metric(source_logits, clean)[0])
    names = [model.tokenizer.decode([t]) for t in tokens[0].tolist()]
    coords = {"block": block_list, "position": [names[p] for p in pos], "head": head_list}
    coords = {d: coords[d] for d in over}
    shape = [len(coords[d]) for d in over]
    estimate = torch.tensor(estimates).reshape(shape)
    if over == ("block", "position", "head"):
        estimate = estimate.reshape(len(block_list), len(head_list), len(pos)).transpose(1, 2)
    return SweepResult(
        probe="attribution_sweep",
        model=model.facts.name,
        prompts=[prompt, source],
        tokens=[names],
        arrays=sweep_arrays(base + estimate, over, coords, base, source_value),
        meta=dict(
            description=f"{site} attribution patching (gradient estimate)",
            sweep="patch",
            site=site,
            source=source,
            metric=metric.name,
            base=base,
            source_value=source_value,
            method="attribution",
            cells=int(estimate.numel()),
            seconds=seconds,
            readout=readout,
            positions=pos,
            block_convention="blocks counted from 0",
        ),
    )


@torch.no_grad()
def _capture(model, tokens: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    kept: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(act, hook):
            kept[name] = act.detach().clone()

        return hook

    with model.bridge.hooks(fwd_hooks=[(name, keep(name)) for name in names]):
        model.bridge(tokens.to(model.device))
    return kept


def compare_attribution(
    model, prompt: str, source: str, *, site: str = "resid_pre", metric=None, blocks=None, **options: Any
) -> AttributionComparison:
    """Exact patching and its attribution estimate on the same cells (pick a subset with ``blocks`` /
    ``positions`` / ``heads``), side by side, with a scatter to show where the estimate holds."""
    exact = patch_sweep(model, prompt, source, site=site, metric=metric, blocks=blocks, **options)
    estimate = attribution_sweep(model, prompt, source, site=site, metric=metric, blocks=blocks, **options)
    e, a = exact["delta"], estimate["delta"]
    error = Named(torch.as_tensor(a.numpy() - e.numpy()), e.dims, dict(e.coords))
    x, y = e.numpy().ravel(), a.numpy().ravel()
    corr = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else float("nan")
    return AttributionComparison(
        probe="attribution_comparison",
        model=exact.model,
        prompts=exact.prompts,
        tokens=exact.tokens,
        arrays={"exact": e, "attribution": a, "error": error},
        meta=dict(
            exact.meta,
            description=f"{site}: attribution vs exact patching",
            correlation=corr,
            max_abs_error=float(np.abs(y - x).max()),
            exact_seconds=exact.meta["seconds"],
            attribution_seconds=estimate.meta["seconds"],
        ),
    )


@dataclass(repr=False)
class AttributionComparison(Result):
    """``exact`` and ``attribution`` deltas of the same cells and their ``error`` (attribution − exact)."""

    def summary(self) -> str:
        return (
            f"{self.meta['description']} on {self.model}: correlation {self.meta['correlation']:.3f}, "
            f"max |error| {self.meta['max_abs_error']:.4f} ({self.meta['cells']} cells)"
        )

    def figure(self, **_: Any):
        """Exact Δ, attribution Δ and a scatter of one against the other (the diagonal is agreement)."""
        exact, estimate = self["exact"], self["attribution"]
        if exact.values.ndim == 3:
            exact, estimate = (Named(a.values.sum(-1), a.dims[:2], dict(a.coords)) for a in (exact, estimate))
        bound = float(max(np.abs(exact.numpy()).max(), np.abs(estimate.numpy()).max(), 1e-12))
        fig = make_subplots(
            rows=1,
            cols=3,
            subplot_titles=[
                "exact patching Δ",
                "attribution estimate Δ",
                f"estimate vs exact (r = {self.meta['correlation']:.3f})",
            ],
            horizontal_spacing=0.1,
        )
        columns = exact.coords[exact.dims[1]]
        x = plots.tick_labels(columns) if any(isinstance(c, str) for c in columns) else [str(c) for c in columns]
        y = [f"{exact.dims[0]} {r}" for r in exact.coords[exact.dims[0]]]
        for col, array in ((1, exact), (2, estimate)):
            fig.add_trace(
                go.Heatmap(z=array.numpy(), x=x, y=y, coloraxis="coloraxis", hoverongaps=False), row=1, col=col
            )
        labels = [f"{y_} · {x_}" for y_ in y for x_ in x] if self["exact"].values.ndim == 2 else None
        fig.add_trace(
            go.Scatter(
                x=self["exact"].numpy().ravel(),
                y=self["attribution"].numpy().ravel(),
                mode="markers",
                text=labels,
                name="cell",
                marker=dict(size=6, opacity=0.7),
            ),
            row=1,
            col=3,
        )
        fig.add_trace(
            go.Scatter(
                x=[-bound, bound],
                y=[-bound, bound],
                mode="lines",
                name="agreement",
                line=dict(dash="dash", color="grey"),
            ),
            row=1,
            col=3,
        )
        fig.update_yaxes(autorange="reversed", type="category", row=1, col=1)
        fig.update_yaxes(autorange="reversed", type="category", row=1, col=2)
        fig.update_xaxes(type="category", tickangle=-45, row=1, col=1)
        fig.update_xaxes(type="category", tickangle=-45, row=1, col=2)
        fig.update_xaxes(title="exact Δ", row=1, col=3)
        fig.update_yaxes(title="attribution Δ", row=1, col=3)
        fig.update_layout(
            coloraxis=dict(
                colorscale=plots.DIVERGING,
                cmin=-bound,
                cmax=bound,
                colorbar=dict(title=f"Δ {self.meta['metric']}", x=0.62),
            ),
            showlegend=False,
        )
        return plots.style(
            fig,
            f"{self.meta['description']} ({self.model}, {self.meta['metric']})",
            height=max(460, 16 * len(y) + 220),
            width=1500,
        )
