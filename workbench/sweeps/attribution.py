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
from workbench.errors import ProbeError
from workbench.models import load_model
from workbench.results import Named, Result
from workbench.sweeps import engine as fast
from workbench.sweeps.cells import PATCH_SITES
from workbench.sweeps.metrics import resolve_metric
from workbench.sweeps.result import SweepResult, sweep_arrays
from workbench.sweeps.sweep import patch_grid, patch_sweep
from workbench.tokens import str_tokens


def attribution_sweep(model, prompt: str, source: str, *, site: str = "resid_pre", metric=None, blocks=None,
                      positions=None, heads=None, by_position: bool = False, readout: int = -1) -> SweepResult:
    """The attribution estimate of :func:`~workbench.sweeps.patch_sweep` with the same grid and arguments."""
    model = load_model(model)
    if site in PATCH_SITES and not fast.supports(model):
        raise ProbeError(f"Attribution patching runs on the engine, which supports {', '.join(fast.SUPPORTED_FAMILIES)}.")
    grid = patch_grid(model, prompt, source, site, blocks, positions, heads, by_position)
    tokens, source_tokens, blocks, pos = grid.tokens, grid.source_tokens, grid.blocks, grid.positions
    specs, dims, coords = grid.specs, grid.dims, grid.coords
    n = tokens.shape[-1]
    readout %= n
    metric = resolve_metric(model, metric)
    began = time.perf_counter()
    eng = fast.Engine(model, tokens)
    with torch.no_grad():
        source_acts, source_logits = eng.capture(source_tokens, {site}, readout)
    with torch.enable_grad():
        acts, logits = eng.capture(tokens, {site}, readout, grad=True)
        clean = logits[0].detach()
        value = metric(logits, clean).sum()
        kept = [acts[site][b] for b in range(model.facts.n_layers)]
        grads = torch.autograd.grad(value, kept, allow_unused=True)
    estimates = []
    for spec in specs:
        grad = grads[spec.block]
        if grad is None:  # the metric does not depend on this site
            estimates.append(0.0)
            continue
        delta = (source_acts[site][spec.block] - acts[site][spec.block][0].detach())[list(spec.positions)]
        g = grad[0][list(spec.positions)]
        if spec.heads is not None:
            delta, g = delta[:, list(spec.heads)], g[:, list(spec.heads)]
        estimates.append(float((delta * g).sum()))
    seconds = time.perf_counter() - began
    base = float(metric(clean[None], clean)[0])
    source_value = float(metric(source_logits, clean)[0])
    shape = [len(coords[d]) for d in dims]
    values = base + torch.tensor(estimates).reshape(shape)
    return SweepResult(
        probe="attribution_sweep", model=model.facts.name, prompts=[prompt, source], tokens=[str_tokens(model, prompt)],
        arrays=sweep_arrays(values, dims, coords, base, source_value),
        meta=dict(description=f"{site} attribution patching (gradient estimate)", sweep="patch", site=site,
                  source=source, metric=metric.name, base=base, source_value=source_value, method="attribution",
                  cells=len(specs), seconds=seconds, readout=readout, positions=pos,
                  block_convention="blocks counted from 0"),
    )


def compare_attribution(model, prompt: str, source: str, *, site: str = "resid_pre", metric=None, blocks=None,
                        **options: Any) -> AttributionComparison:
    """Exact patching and its attribution estimate on the same cells (pick a subset with ``blocks`` /
    ``positions`` / ``heads``), side by side, with a scatter to show where the estimate holds."""
    exact = patch_sweep(model, prompt, source, site=site, metric=metric, blocks=blocks, **options)
    estimate = attribution_sweep(model, prompt, source, site=site, metric=metric, blocks=blocks, **options)
    e, a = exact["delta"], estimate["delta"]
    error = Named(torch.as_tensor(a.numpy() - e.numpy()), e.dims, dict(e.coords))
    x, y = e.numpy().ravel(), a.numpy().ravel()
    corr = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else float("nan")
    return AttributionComparison(
        probe="attribution_comparison", model=exact.model, prompts=exact.prompts, tokens=exact.tokens,
        arrays={"exact": e, "attribution": a, "error": error},
        meta=dict(exact.meta, description=f"{site}: attribution vs exact patching", correlation=corr,
                  max_abs_error=float(np.abs(y - x).max()), exact_seconds=exact.meta["seconds"],
                  attribution_seconds=estimate.meta["seconds"]),
    )


@dataclass(repr=False)
class AttributionComparison(Result):
    """``exact`` and ``attribution`` deltas of the same cells and their ``error`` (attribution − exact)."""

    def summary(self) -> str:
        return (f"{self.meta['description']} on {self.model}: correlation {self.meta['correlation']:.3f}, "
                f"max |error| {self.meta['max_abs_error']:.4f} ({self.meta['cells']} cells)")

    def figure(self, **_: Any):
        """Exact Δ, attribution Δ and a scatter of one against the other (the diagonal is agreement)."""
        exact, estimate = self["exact"], self["attribution"]
        if exact.values.ndim == 3:
            exact, estimate = (Named(a.values.sum(-1), a.dims[:2], dict(a.coords)) for a in (exact, estimate))
        bound = float(max(np.abs(exact.numpy()).max(), np.abs(estimate.numpy()).max(), 1e-12))
        fig = make_subplots(rows=1, cols=3, subplot_titles=["exact patching Δ", "attribution estimate Δ",
                                                             f"estimate vs exact (r = {self.meta['correlation']:.3f})"],
                            horizontal_spacing=0.1)
        columns = exact.coords[exact.dims[1]]
        x = plots.tick_labels(columns) if any(isinstance(c, str) for c in columns) else [str(c) for c in columns]
        y = [f"{exact.dims[0]} {r}" for r in exact.coords[exact.dims[0]]]
        for col, array in ((1, exact), (2, estimate)):
            fig.add_trace(go.Heatmap(z=array.numpy(), x=x, y=y, coloraxis="coloraxis", hoverongaps=False), row=1, col=col)
        labels = [f"{y_} · {x_}" for y_ in y for x_ in x] if self["exact"].values.ndim == 2 else None
        fig.add_trace(go.Scatter(x=self["exact"].numpy().ravel(), y=self["attribution"].numpy().ravel(), mode="markers",
                                 text=labels, name="cell", marker=dict(size=6, opacity=0.7)), row=1, col=3)
        fig.add_trace(go.Scatter(x=[-bound, bound], y=[-bound, bound], mode="lines", name="agreement",
                                 line=dict(dash="dash", color="grey")), row=1, col=3)
        fig.update_yaxes(autorange="reversed", type="category", row=1, col=1)
        fig.update_yaxes(autorange="reversed", type="category", row=1, col=2)
        fig.update_xaxes(type="category", tickangle=-45, row=1, col=1)
        fig.update_xaxes(type="category", tickangle=-45, row=1, col=2)
        fig.update_xaxes(title="exact Δ", row=1, col=3)
        fig.update_yaxes(title="attribution Δ", row=1, col=3)
        fig.update_layout(coloraxis=dict(colorscale=plots.DIVERGING, cmin=-bound, cmax=bound,
                                         colorbar=dict(title=f"Δ {self.meta['metric']}", x=0.62)), showlegend=False)
        return plots.style(fig, f"{self.meta['description']} ({self.model}, {self.meta['metric']})",
                           height=max(460, 16 * len(y) + 220), width=1500)
