"""Section 9 of the study: who writes the digits.

Direct logit attribution of the study's digit metric — the probability of the digits above the source's bound,
attributed along its gradient at the final logits (a linearisation, said in the report) — per head and MLP at
the readout; path patching from the heads that attend most to the upper bound into the logits and the late
blocks' MLPs (source: the prompt with the source's bound); and, with a dataset, the per-head attribution over
every prompt with bootstrap intervals and BH-adjusted p-values. Everything the figures need is in the record.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workbench import plots
from workbench.attribution import direct_logit_attribution
from workbench.attribution.path import path_patching
from workbench.attribution.result import heads_figure
from workbench.studies.figure import Figure

SECTION = "9. Who writes the digits"
SENDERS = 4  # the heads that attend most to the bound, as path-patching senders


def measure_writers(model, prompt: str, source: str, bound_attention, late_blocks: list[int], src: str) -> dict:
    """The record of section 9 for one prompt (``bound_attention``: ``[block, head]`` attention from the readout
    to the bound)."""
    metric = f"digits_above:{src}"
    found = direct_logit_attribution(model, prompt, metric, unit="head")
    facts = model.facts
    values = found.values[0].numpy()
    heads = [i for i, c in enumerate(found.components) if c.kind == "head"]
    grid = values[heads].reshape(facts.n_layers, facts.n_heads)
    order = np.argsort(-np.abs(values))[:10]
    attention = np.asarray(bound_attention, dtype=float)
    ranked = np.argsort(-attention, axis=None)[:SENDERS]
    senders = [f"a{b}.h{h}" for b, h in zip(*np.unravel_index(ranked, attention.shape), strict=True)]
    receivers = ["logits", *(f"m{b}" for b in late_blocks)]
    paths = path_patching(model, prompt, source, senders=senders, receivers=receivers, metric=metric)
    effect = paths["effect"].numpy()
    return {
        "metric": found.metric,
        "exact": found.exact,
        "total": float(found.total[0]),
        "metric_value": float(found.metric_value[0]),
        "heads": grid.tolist(),
        "attn": found.attn[0].tolist(),
        "mlp": found.mlp[0].tolist(),
        "head_to_group": list(facts.head_to_group),
        "top": [[found.components[i].label, float(values[i])] for i in order],
        "path": {
            "senders": senders,
            "receivers": receivers,
            "effect": [[None if not np.isfinite(v) else float(v) for v in row] for row in effect],
            "source": source,
        },
    }


def writers_over_dataset(model, dataset, resamples: int) -> dict[str, Any]:
    """Per-head attribution of each prompt's own digit metric over the dataset, with intervals."""
    from workbench.attribution.dataset import attribute_dataset

    over = attribute_dataset(model, dataset, "digits_above:{source_bound}", unit="head", resamples=resamples)
    return {"n": over.meta["n"], "ranked": over.ranked(15), "heads": over["heads"].numpy().tolist()}


def writers_figures(record: dict[str, Any]):
    if "writers" not in record:
        return
    w, name = record["writers"], record["model"]["name"]
    how = "linearised at the final logits" if not w["exact"] else "exact"
    yield Figure(
        "writers_heads",
        "Direct attribution per head",
        f"What each query head writes into {w['metric']} at the last position ({how}; final norm frozen), blocks × "
        f"heads grouped by key/value head. The parts sum to {w['total']:+.4f}; the metric is {w['metric_value']:.4f}. "
        "Largest: " + ", ".join(f"{label} {value:+.3f}" for label, value in w["top"][:5]) + ".",
        heads_figure(
            np.asarray(w["heads"]),
            w["head_to_group"],
            colorbar=w["metric"],
            title=f"Direct attribution of {w['metric']} per head ({name})",
        ),
        SECTION,
    )
    blocks = [f"block {b}" for b in range(len(w["attn"]))]
    yield Figure(
        "writers_blocks",
        "Direct attribution per block",
        f"What each block's attention and MLP write into {w['metric']} at the last position.",
        plots.bars(
            {"attention": w["attn"], "MLP": w["mlp"]},
            labels=blocks,
            title=f"Direct attribution of {w['metric']} per block ({name})",
            x_title="block",
            y_title=f"contribution to {w['metric']}",
        ),
        SECTION,
    )
    path = w["path"]
    effect = np.asarray([[np.nan if v is None else v for v in row] for row in path["effect"]], dtype=float)
    yield Figure(
        "writers_paths",
        "Path patching from the heads that read the bound",
        f"The change in {w['metric']} when one head that attends most to the upper bound is patched from the "
        "prompt with the source's bound and only one receiver (the logits, or a late block's MLP input) sees it.",
        plots.heatmap(
            effect.T,
            x=path["senders"],
            y=path["receivers"],
            colorbar=f"Δ {w['metric']}",
            diverging=True,
            title=f"Path patching: bound-reading heads → late blocks ({name})",
            x_title="sender",
            y_title="receiver",
        ),
        SECTION,
    )
    if "dataset" in w:
        rows = w["dataset"]["ranked"]
        yield Figure(
            "writers_dataset",
            "Direct attribution over the dataset",
            f"Mean direct attribution of each prompt's p(digit above its source's bound) over {w['dataset']['n']} "
            "prompts, the 15 largest components, with 95% bootstrap intervals.",
            plots.bars(
                {"mean": [r["mean"] for r in rows]},
                labels=[r["component"] for r in rows],
                title=f"Who writes the digits over {w['dataset']['n']} prompts ({name})",
                x_title="component",
                y_title="mean direct attribution",
            ),
            SECTION,
        )


def writers_headline(record: dict[str, Any]) -> list[str]:
    if "writers" not in record:
        return []
    w = record["writers"]
    head = max(
        ((label, v) for label, v in w["top"] if label.startswith("a")), key=lambda item: abs(item[1]), default=None
    )
    line = "Who writes the digits: largest direct writers of " + w["metric"] + " "
    line += ", ".join(f"{label} {value:+.3f}" for label, value in w["top"][:3])
    if head is not None:
        line += f"; strongest head {head[0]} {head[1]:+.3f}"
    return [line + "."]
