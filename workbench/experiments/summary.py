"""From results.parquet to summary.json: every condition's effect on every metric, with its statistics.

The summary is a function of the results table and the manifest it carries, nothing else (no model), so
``workbench experiment summarize DIR`` rebuilds it identically. Statistics are those of
:mod:`workbench.stats`: effects are paired differences (condition − clean, item by item).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from workbench import stats

SUMMARY_FORMAT = "workbench-experiment-summary/1"


def summarize_table(table: pa.Table, manifest: dict[str, Any]) -> dict[str, Any]:
    """``summary.json``'s content: method, per-condition effects, per-grid cells, the clean values."""
    options = manifest["stats"]
    confidence, resamples, alpha, seed = (
        options["confidence"],
        options["resamples"],
        options["alpha"],
        options["seed"],
    )
    analysis = manifest["analysis"]
    clean_name = analysis["clean"]
    metrics = analysis["metrics"]
    frame = table.select(
        ["item_index", "condition", "grid", "block", "head", "position", "metric", "value", "noop"]
    ).to_pandas()
    conditions = list(dict.fromkeys(frame["condition"]))
    cells = frame.drop_duplicates("condition").set_index("condition")
    summary: dict[str, Any] = {
        "format": SUMMARY_FORMAT,
        "manifest_sha256": manifest["sha256"],
        "experiment": manifest.get("name"),
        "model": manifest["model"]["name"],
        "n_items": int(frame["item_index"].nunique()),
        "clean": clean_name,
        "metric_labels": manifest.get("metric_labels", {}),
        "method": {
            "effect": "mean over items of (condition − clean), paired by item",
            "interval": f"{confidence:.0%} {stats.CI_BCA} ({resamples} resamples; the percentile interval "
            "where BCa is undefined, stated per cell)",
            "test": stats.TEST,
            "correction": stats.CORRECTION,
            "effect_size": stats.EFFECT_SIZE,
            "confidence": confidence,
            "resamples": resamples,
            "alpha": alpha,
            "seed": seed,
        },
        "clean_values": {},
        "conditions": {},
        "grids": {},
    }
    for metric in metrics:
        by_metric = frame[frame["metric"] == metric]
        wide = by_metric.pivot(index="condition", columns="item_index", values="value").reindex(conditions)
        noops = by_metric.pivot(index="condition", columns="item_index", values="noop").reindex(conditions)
        wide = wide.loc[:, wide.notna().all(axis=0)]  # items every condition holds (all of them, once finished)
        clean = wide.loc[clean_name].to_numpy(float)
        low, high, methods = stats.bootstrap_interval(
            clean[None], confidence, resamples, stats.rng_for(seed, clean_name, metric)
        )
        summary["clean_values"][metric] = {
            "mean": _num(clean.mean()),
            "ci_low": _num(low[0]),
            "ci_high": _num(high[0]),
            "ci_method": methods[0],
            "n": int(len(clean)),
        }
        named = [c for c in conditions if c != clean_name and _missing(cells.loc[c, "grid"])]
        if named:
            rows = [
                _with_noops(e, noops.loc[c])
                for c, e in zip(named, _effects(wide, named, clean, confidence, resamples, seed, metric), strict=True)
            ]
            _adjust(rows, alpha)
            for name, row in zip(named, rows, strict=True):
                summary["conditions"].setdefault(name, {})[metric] = row
        grids = list(dict.fromkeys(g for g in cells["grid"] if not _missing(g)))
        for grid in grids:
            members = [c for c in conditions if cells.loc[c, "grid"] == grid]
            rows = _effects(wide, members, clean, confidence, resamples, seed, metric, grid)
            rows = [_with_noops(e, noops.loc[c]) for c, e in zip(members, rows, strict=True)]
            _adjust(rows, alpha)
            entry = summary["grids"].setdefault(grid, {"over": _axes(cells, members), "metrics": {}})
            entry["metrics"][metric] = [
                {"condition": c, **_coords(cells, c), **row} for c, row in zip(members, rows, strict=True)
            ]
    return summary


def _effects(wide, names, clean, confidence, resamples, seed, metric, grid=None) -> list[dict[str, Any]]:
    matrix = wide.loc[names].to_numpy(float)
    rng = stats.rng_for(seed, grid or "conditions", metric)
    return stats.paired_effects(matrix, clean, confidence=confidence, resamples=resamples, rng=rng)


def _with_noops(row: dict[str, Any], noop) -> dict[str, Any]:
    count = int(np.asarray(noop.dropna(), bool).sum())
    return {**row, "noop_items": count}


def _adjust(rows: list[dict[str, Any]], alpha: float) -> None:
    adjusted = stats.benjamini_hochberg([r["p_value"] if r["p_value"] is not None else np.nan for r in rows])
    for row, p in zip(rows, adjusted, strict=True):
        row["p_adjusted"] = _num(p)
        row["significant"] = bool(np.isfinite(p) and p < alpha)


def _axes(cells, members) -> list[str]:
    return [axis for axis in ("block", "head", "position") if cells.loc[members, axis].notna().any()]


def _coords(cells, condition) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for axis in ("block", "head"):
        value = cells.loc[condition, axis]
        if not _missing(value):
            out[axis] = int(value)
    if not _missing(cells.loc[condition, "position"]):
        out["position"] = str(cells.loc[condition, "position"])
    return out


def _missing(value) -> bool:
    return value is None or bool(pd.isna(value))


def _num(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def dataset_effects(summary: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{condition: {metric: {mean, ci_low, ci_high, n, p_value}}}`` of the named conditions: the
    shape a study's ``results.json`` reports under ``dataset_effects``."""
    keys = ("mean", "ci_low", "ci_high", "n", "p_value")
    return {
        name: {metric: {k: row[k] for k in keys} for metric, row in metrics.items()}
        for name, metrics in summary["conditions"].items()
    }
