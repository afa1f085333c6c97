"""Direct beside total effect: a component whose total effect is large but whose direct attribution is small
works through later components (an indirect effect), and the other way round.

The direct effect is its direct logit attribution (its write along the metric's direction, final norm
frozen). The total effect is ``metric(clean) − metric(component ablated)`` through every path, one edited run
per component on the fast sweep engine: ``zero``-ablation (for which the two agree when nothing downstream
reacts), ``mean``-ablation (the component's mean over the prompt's positions, or over ``mean_prompts``) or
``resample``-ablation (its value on a ``source`` prompt of the same token length).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go

from workbench import plots
from workbench.attribution.dla import direct_logit_attribution
from workbench.errors import AttributionError
from workbench.interventions import Intervention
from workbench.interventions.operations import Mean, Operation, Patch, Zero
from workbench.metrics import Metric, resolve_metric
from workbench.models import load_model
from workbench.results import Named, Result
from workbench.sweeps.sweep import evaluate_cells

ABLATIONS = ("zero", "mean", "resample")


def ablation(kind: str, source: str | None = None, mean_prompts: Sequence[str] = ()) -> Operation:
    """The operation that removes a component for its total effect."""
    if kind == "zero":
        return Zero()
    if kind == "mean":
        return Mean(prompts=tuple(mean_prompts))
    if kind == "resample":
        if not source:
            raise AttributionError("Resample-ablation needs a source prompt: pass source='…' (same token length).")
        return Patch(source=source)
    raise AttributionError(f"Unknown ablation {kind!r}: use one of {', '.join(ABLATIONS)}.")


def _cell(component, op: Operation) -> list[Intervention] | None:
    """The edit that ablates one component, or None for those no edit removes alone (biases, the cap)."""
    if component.kind == "head":
        return [Intervention("z", op, blocks=(component.block,), heads=(component.head,))]
    if component.kind == "attn":
        return [Intervention("attn_out", op, blocks=(component.block,))]
    if component.kind == "mlp":
        return [Intervention("mlp_out", op, blocks=(component.block,))]
    if component.kind == "embed":
        return [Intervention("resid_pre", op, blocks=(0,))]
    return None


@dataclass(repr=False)
class DirectTotalResult(Result):
    """Per component: ``direct`` (DLA), ``total`` (metric(clean) − metric(ablated)) and ``indirect`` (their
    difference)."""

    kind = "direct_vs_total"

    def summary(self) -> str:
        indirect = self["indirect"].numpy()
        labels = self["indirect"].coords["component"]
        i = int(np.nanargmax(np.abs(indirect))) if np.isfinite(indirect).any() else 0
        return (
            f"direct vs total ({self.meta['ablation']}-ablation) of {self.meta['metric']} on {self.model}: "
            f"most indirect {labels[i]} ({indirect[i]:+.4f})"
        )

    def figure(self, **_: Any):
        direct, total = self["direct"].numpy(), self["total"].numpy()
        labels = self["direct"].coords["component"]
        finite = np.isfinite(direct) & np.isfinite(total)
        span = float(np.abs(np.concatenate([direct[finite], total[finite]])).max()) if finite.any() else 1.0
        fig = go.Figure(
            [
                go.Scatter(
                    x=direct[finite],
                    y=total[finite],
                    mode="markers",
                    text=[labels[i] for i in np.flatnonzero(finite)],
                    hovertemplate="%{text}<br>direct %{x:.4f}<br>total %{y:.4f}<extra></extra>",
                    name="component",
                ),
                go.Scatter(
                    x=[-span, span], y=[-span, span], mode="lines", line=dict(dash="dot"), name="direct = total"
                ),
            ]
        )
        fig.update_xaxes(title=f"direct effect on {self.meta['metric']} (DLA)")
        fig.update_yaxes(title=f"total effect ({self.meta['ablation']}-ablation)")
        return plots.style(fig, f"Direct vs total effect per component ({self.model})", height=620, width=720)


def direct_vs_total(
    model,
    prompt: str,
    metric: str | Metric,
    *,
    unit: str = "head",
    ablation_kind: str = "zero",
    source: str | None = None,
    mean_prompts: Sequence[str] = (),
    method: str = "auto",
) -> DirectTotalResult:
    """Each component's direct attribution beside its total effect (see the module docstring); ``unit`` is
    ``head`` or ``component``. The edited runs are one batched sweep (fast engine, or hooks with a warning)."""
    model = load_model(model)
    if unit not in ("head", "component"):
        raise AttributionError(f"Direct vs total compares heads or components, not {unit!r}: use head or component.")
    op = ablation(ablation_kind, source, mean_prompts)
    direct = direct_logit_attribution(model, prompt, metric, unit=unit)
    metric_fn = resolve_metric(model, metric)
    cells = [(i, _cell(c, op)) for i, c in enumerate(direct.components)]
    runnable = [(i, cell) for i, cell in cells if cell is not None]
    evaluation = evaluate_cells(model, prompt, [cell for _, cell in runnable], method=method)
    base = metric_fn(evaluation.clean[None], evaluation.clean)[0]
    ablated = metric_fn(evaluation.logits, evaluation.clean)
    total = np.full(len(direct.components), np.nan)
    total[[i for i, _ in runnable]] = (base - ablated).double().numpy()
    values = direct.values[0].numpy()
    labels = [c.label for c in direct.components]
    coords = {"component": labels}
    return DirectTotalResult(
        probe="direct_vs_total",
        model=model.facts.name,
        prompts=[prompt],
        arrays={
            "direct": Named(values, ("component",), dict(coords)),
            "total": Named(total, ("component",), dict(coords)),
            "indirect": Named(total - values, ("component",), dict(coords)),
        },
        meta={
            "metric": direct.metric,
            "ablation": ablation_kind,
            "engine": evaluation.engine,
            "components": [c.to_dict() for c in direct.components],
            "note": "total = metric(clean) − metric(ablated); NaN for components no single edit removes (biases)",
        },
    )
