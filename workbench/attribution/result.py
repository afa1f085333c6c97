"""Direct attribution as a :class:`~workbench.results.Result`: named arrays, JSON, and the figures of a write-up
(heads × blocks with query heads grouped by key/value head, components per block, the accumulated residual)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from workbench import plots
from workbench.attribution.dla import Attribution
from workbench.errors import ResultError
from workbench.layers import resid_labels
from workbench.results import Named, Result

NOTE = (
    "final norm (and any post-attention/post-MLP norm) frozen at the scale this forward computed; "
    "the values sum to total"
)


def heads_figure(grid: np.ndarray, head_to_group: list[int], *, colorbar: str, title: str):
    """Blocks × query heads, the heads grouped by the key/value head they read (``h2 · kv0``): what DLA, its
    dataset means and the study draw per head."""
    order = sorted(range(len(head_to_group)), key=lambda h: (head_to_group[h], h))
    return plots.heatmap(
        np.asarray(grid)[:, order],
        x=[f"h{h} · kv{head_to_group[h]}" for h in order],
        y=[f"block {b}" for b in range(np.asarray(grid).shape[0])],
        colorbar=colorbar,
        diverging=True,
        title=title,
        x_title="query head · key/value head",
        y_title="block",
    )


def attribution_result(attribution: Attribution, model, prompts: list[str]) -> AttributionResult:
    """The result of :func:`~workbench.attribution.direct_logit_attribution` with its figures. Arrays stay
    float64 (numpy), so the saved values still sum to ``total`` to the last digit."""
    a, facts = attribution, model.facts
    labels = [c.label for c in a.components]
    blocks = list(range(facts.n_layers))
    prompt_axis = list(range(a.values.shape[0]))
    arrays = {
        "values": Named(a.values.numpy(), ("prompt", "component"), {"prompt": prompt_axis, "component": labels}),
        "attn": Named(a.attn.numpy(), ("prompt", "block"), {"prompt": prompt_axis, "block": blocks}),
        "mlp": Named(a.mlp.numpy(), ("prompt", "block"), {"prompt": prompt_axis, "block": blocks}),
        "accumulated": Named(
            a.accumulated.numpy(),
            ("prompt", "layer"),
            {"prompt": prompt_axis, "layer": resid_labels(facts.n_layers)[:-1]},
        ),
    }
    heads = [i for i, c in enumerate(a.components) if c.kind == "head"]
    if heads:
        grid = a.values[:, heads].numpy().reshape(len(prompt_axis), facts.n_layers, facts.n_heads)
        arrays["heads"] = Named(grid, ("prompt", "block", "head"), {"prompt": prompt_axis, "block": blocks})
    return AttributionResult(
        probe="dla",
        model=facts.name,
        prompts=list(prompts),
        tokens=[[model.tokenizer.decode([t]) for t in model.to_tokens(p)[0].tolist()] for p in prompts],
        arrays=arrays,
        meta={
            "metric": a.metric,
            "exact": a.exact,
            "unit": a.unit,
            "readout": a.readout,
            "total": a.total.tolist(),
            "metric_value": a.metric_value.tolist(),
            "components": [c.to_dict() for c in a.components],
            "head_to_group": list(facts.head_to_group),
            "note": NOTE if a.exact else NOTE + " (a linearisation: the metric's gradient at the final logits)",
        },
    )


@dataclass(repr=False)
class AttributionResult(Result):
    """Direct logit attribution per component (see :mod:`workbench.attribution.dla`)."""

    kind = "attribution"

    def to_json(self, prompt: int = 0) -> dict[str, Any]:
        """``{"metric", "total", "components": [{kind, block, head, kv_head, value}, …]}`` for one prompt; the
        values sum to ``total``."""
        values = self["values"].numpy()[prompt]
        components = [{**c, "value": float(v)} for c, v in zip(self.meta["components"], values, strict=True)]
        return {
            "metric": self.meta["metric"],
            "total": float(self.meta["total"][prompt]),
            "metric_value": float(self.meta["metric_value"][prompt]),
            "exact": self.meta["exact"],
            "unit": self.meta["unit"],
            "position": self.meta["readout"],
            "note": self.meta["note"],
            "components": components,
        }

    def top(self, n: int = 10, prompt: int = 0) -> list[tuple[str, float]]:
        """The ``n`` components of largest |value|, largest first."""
        values = self["values"].numpy()[prompt]
        order = np.argsort(-np.abs(values))[:n]
        labels = self["values"].coords["component"]
        return [(labels[i], float(values[i])) for i in order]

    def summary(self) -> str:
        total = self.meta["total"][0]
        best = ", ".join(f"{label} {value:+.3f}" for label, value in self.top(3))
        return f"direct attribution of {self.meta['metric']} on {self.model}: total {total:+.4f}; largest {best}"

    def figure(self, kind: str | None = None, prompt: int = 0, **_: Any):
        """``heads`` (blocks × query heads grouped by key/value head), ``components`` (attention and MLP per
        block) or ``layers`` (the accumulated residual stream); the first that applies by default."""
        kind = kind or ("heads" if "heads" in self.arrays else "components")
        metric = self.meta["metric"]
        if kind == "heads":
            if "heads" not in self.arrays:
                raise ResultError("This attribution has no per-head values: run it with unit='head'.")
            return heads_figure(
                self["heads"].numpy()[prompt],
                self.meta["head_to_group"],
                colorbar=metric,
                title=f"Direct logit attribution per head: {metric} ({self.model})",
            )
        if kind == "components":
            blocks = self["attn"].coords["block"]
            return plots.bars(
                {"attention": self["attn"].numpy()[prompt].tolist(), "MLP": self["mlp"].numpy()[prompt].tolist()},
                labels=[f"block {b}" for b in blocks],
                title=f"Direct logit attribution per block: {metric} ({self.model})",
                x_title="block",
                y_title=f"contribution to {metric}",
            )
        if kind == "layers":
            layers = self["accumulated"].coords["layer"]
            return plots.bars(
                {"accumulated residual": self["accumulated"].numpy()[prompt].tolist()},
                labels=layers,
                title=f"Accumulated residual stream read as {metric} (final norm frozen) ({self.model})",
                x_title="residual stream",
                y_title=metric,
            )
        raise ResultError(f"Unknown attribution figure {kind!r}: use heads, components or layers.")

    def figures(self) -> dict[str, Any]:
        kinds = (["heads"] if "heads" in self.arrays else []) + ["components", "layers"]
        return {kind: self.figure(kind) for kind in kinds}
