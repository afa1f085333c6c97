"""Direct logit attribution over a prompt dataset: every component per item, its mean with a bootstrap interval,
and a sign-flip test per component with Benjamini–Hochberg adjustment across components — which heads write
the answer on every paraphrase, not on one prompt.

The metric may be a template filled from each item's fields (``logit_diff:{bound},5``), so each prompt is
attributed for its own answer. Components are the same on every item (they are the model's), whatever the
prompts' lengths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
from tqdm.auto import tqdm

from workbench import plots
from workbench.attribution.dla import check_unit, direct_logit_attribution
from workbench.attribution.result import heads_figure
from workbench.datasets import Dataset, load_dataset
from workbench.errors import AttributionError
from workbench.interventions.intervention import fill
from workbench.models import load_model
from workbench.results import Named, Result
from workbench.stats import benjamini_hochberg, bootstrap_interval, require_stats_budget, rng_for, sign_flip_test


@dataclass(repr=False)
class DatasetAttributionResult(Result):
    """``per_item[item, component]`` and, per component, ``mean``, ``ci_low``/``ci_high`` (bootstrap BCa),
    ``p_value`` (sign-flip test of mean 0) and ``p_bh`` (Benjamini–Hochberg over components)."""

    kind = "dataset_attribution"

    def ranked(self, n: int = 10) -> list[dict[str, Any]]:
        """The ``n`` components of largest |mean|, with their intervals and adjusted p-values."""
        mean = self["mean"].numpy()
        order = np.argsort(-np.abs(mean))[:n]
        labels = self["mean"].coords["component"]
        return [
            {
                "component": labels[i],
                "mean": float(mean[i]),
                "ci_low": float(self["ci_low"].numpy()[i]),
                "ci_high": float(self["ci_high"].numpy()[i]),
                "p_bh": float(self["p_bh"].numpy()[i]),
            }
            for i in order
        ]

    def to_json(self) -> dict[str, Any]:
        keys = ("mean", "ci_low", "ci_high", "p_value", "p_bh")
        rows = [{**c, **{k: float(self[k].numpy()[i]) for k in keys}} for i, c in enumerate(self.meta["components"])]
        return {"metric": self.meta["metric"], "n": self.meta["n"], "unit": self.meta["unit"], "components": rows}

    def summary(self) -> str:
        top = ", ".join(
            f"{r['component']} {r['mean']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]" for r in self.ranked(3)
        )
        return f"direct attribution of {self.meta['metric']} over {self.meta['n']} prompts on {self.model}: {top}"

    def figure(self, kind: str | None = None, top: int = 20, **_: Any):
        """``components`` (the ``top`` components by |mean|, with intervals) or ``heads`` (mean per head)."""
        kind = kind or "components"
        if kind == "heads":
            if "heads" not in self.arrays:
                raise AttributionError("No per-head means: attribute the dataset with unit='head'.")
            return heads_figure(
                self["heads"].numpy(),
                self.meta["head_to_group"],
                colorbar=f"mean {self.meta['metric']}",
                title=f"Mean direct attribution per head over {self.meta['n']} prompts ({self.model})",
            )
        rows = self.ranked(top)
        fig = go.Figure(
            go.Bar(
                x=[r["component"] for r in rows],
                y=[r["mean"] for r in rows],
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=[r["ci_high"] - r["mean"] for r in rows],
                    arrayminus=[r["mean"] - r["ci_low"] for r in rows],
                ),
                hovertext=[f"BH-adjusted p {r['p_bh']:.3g}" for r in rows],
            )
        )
        fig.update_xaxes(title="component", type="category")
        fig.update_yaxes(title=f"mean contribution to {self.meta['metric']}")
        title = f"Direct attribution over {self.meta['n']} prompts, 95% bootstrap intervals ({self.model})"
        return plots.style(fig, title, height=480, width=max(760, 40 * len(rows) + 300))

    def figures(self) -> dict[str, Any]:
        return {
            "components": self.figure("components"),
            **({"heads": self.figure("heads")} if "heads" in self.arrays else {}),
        }


def attribute_dataset(
    model,
    dataset: Dataset | str,
    metric: str,
    *,
    unit: str = "head",
    position: int = -1,
    resamples: int = 9999,
    confidence: float = 0.95,
    seed: int = 0,
    progress: bool = True,
) -> DatasetAttributionResult:
    """Attribute ``metric`` (a template over each item's fields) on every item of ``dataset``; see the module
    docstring. Sizes are checked before the first forward."""
    model = load_model(model)
    check_unit(unit)
    data = load_dataset(dataset) if isinstance(dataset, str) else dataset
    if len(data) < 2:
        raise AttributionError(f"Intervals need at least 2 prompts; the dataset {data.name!r} has {len(data)}.")
    require_stats_budget(len(data), resamples)
    metrics = [fill(metric, {**item.fields, "prompt": item.prompt}, "Metric") for item in data]
    rows, components = [], None
    for item, spec in tqdm(
        list(zip(data, metrics, strict=True)), desc="attribution", unit="prompt", disable=not progress
    ):
        found = direct_logit_attribution(model, item.prompt, spec, unit=unit, position=position)
        components = components or found.components
        rows.append(found.values[0].numpy())
    assert components is not None
    per_item = np.stack(rows)  # [item, component]
    low, high, _ = bootstrap_interval(per_item.T, confidence, resamples, rng_for(seed, "attribution", "ci"))
    p = sign_flip_test(per_item.T, resamples, rng_for(seed, "attribution", "p"))
    labels = [c.label for c in components]
    coords = {"component": labels}
    arrays = {
        "per_item": Named(per_item, ("item", "component"), {"item": [it.id for it in data], "component": labels}),
        "mean": Named(per_item.mean(0), ("component",), dict(coords)),
        "ci_low": Named(low, ("component",), dict(coords)),
        "ci_high": Named(high, ("component",), dict(coords)),
        "p_value": Named(p, ("component",), dict(coords)),
        "p_bh": Named(benjamini_hochberg(p), ("component",), dict(coords)),
    }
    heads = [i for i, c in enumerate(components) if c.kind == "head"]
    if heads:
        grid = per_item[:, heads].mean(0).reshape(model.facts.n_layers, model.facts.n_heads)
        arrays["heads"] = Named(grid, ("block", "head"), {"block": list(range(model.facts.n_layers))})
    return DatasetAttributionResult(
        probe="dataset_attribution",
        model=model.facts.name,
        prompts=[item.prompt for item in data],
        arrays=arrays,
        meta={
            "metric": metric,
            "n": len(data),
            "unit": unit,
            "dataset": data.name,
            "resamples": resamples,
            "confidence": confidence,
            "seed": seed,
            "components": [c.to_dict() for c in components],
            "head_to_group": list(model.facts.head_to_group),
        },
    )
