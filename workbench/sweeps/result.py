"""What a sweep returns: the metric per cell, its change from the unedited prompt, and a heatmap."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from workbench import plots
from workbench.errors import ProbeError
from workbench.results import Named, Result

KINDS = ("delta", "metric", "normalized")


def sweep_arrays(
    values: torch.Tensor, dims: tuple[str, ...], coords: dict, base: float, source: float | None
) -> dict[str, Named]:
    """``metric`` per cell, ``delta`` = metric − base and, with a source prompt, ``normalized`` =
    (metric − base) / (source − base): 0 = nothing moved, 1 = the cell alone recovers the source."""
    values = values.detach().float().cpu()
    arrays = {"metric": Named(values, dims, dict(coords)), "delta": Named(values - base, dims, dict(coords))}
    if source is not None and abs(source - base) > 1e-12:
        arrays["normalized"] = Named((values - base) / (source - base), dims, dict(coords))
    return arrays


@dataclass(repr=False)
class SweepResult(Result):
    """One metric per cell of a sweep (``block × position``, ``block × head``, ``mode × block`` …).

    ``meta`` holds ``base`` (the metric on the unedited prompt), ``source`` (on the source prompt, for
    patching), ``metric``, ``site``, ``method`` (``fast``, ``naive`` or ``attribution``), ``cells`` and
    ``seconds``. Blocks are counted from 0 (:mod:`workbench.layers`).
    """

    def values(self, kind: str = "metric") -> np.ndarray:
        return self[kind].numpy()

    def top_cells(self, k: int = 5, kind: str = "delta") -> list[tuple[dict, float]]:
        """The ``k`` cells with the largest absolute ``kind`` value, as (coordinates, value)."""
        array = self[kind]
        flat = array.numpy().ravel()
        order = np.argsort(-np.abs(np.nan_to_num(flat)))[:k]
        out = []
        for i in order:
            index = np.unravel_index(i, array.shape)
            out.append(({d: array.coords[d][j] for d, j in zip(array.dims, index, strict=True)}, float(flat[i])))
        return out

    def summary(self) -> str:
        cell, value = self.top_cells(1)[0]
        where = ", ".join(f"{d} {v!r}" for d, v in cell.items())
        return (
            f"{self.meta.get('description', self.probe)} on {self.model}, {self.meta.get('cells')} cells "
            f"({self.meta.get('method')}, {self.meta.get('seconds', 0):.2f} s); metric {self.meta.get('metric')}: "
            f"base {self.meta.get('base'):.4f}; largest change {value:+.4f} at {where}"
        )

    def figure(self, kind: str = "delta", **_: Any):
        """Heatmap of ``delta`` (default), ``metric`` or ``normalized``; a third dimension (heads by
        position) becomes ``block · head`` rows."""
        if kind not in self.arrays:
            raise ProbeError(f"No {kind!r} array in this sweep; it has {sorted(self.arrays)}.")
        array = self[kind]
        values = array.numpy().astype(float)
        dims = list(array.dims)
        rows = [f"{dims[0]} {r}" if isinstance(r, int) else str(r) for r in array.coords[dims[0]]]
        if values.ndim == 3:  # block position head → (block·head) × position
            heads = array.coords[dims[2]]
            values = values.transpose(0, 2, 1).reshape(-1, values.shape[1])
            rows = [f"{r} · head {h}" for r in rows for h in heads]
            dims = [f"{dims[0]} · {dims[2]}", dims[1]]
        if values.ndim == 1:  # one swept axis: a single row of cells
            values = values[None, :]
            dims = ["sweep", dims[0]]
            columns, rows = array.coords[array.dims[0]], [str(self.meta.get("site", "cells"))]
        else:
            columns = array.coords[array.dims[1]]
        x = (
            plots.tick_labels(columns)
            if any(isinstance(c, str) for c in columns)
            else [f"{dims[1]} {c}" for c in columns]
        )
        label = {
            "delta": f"Δ {self.meta.get('metric')}",
            "metric": str(self.meta.get("metric")),
            "normalized": "normalized Δ",
        }[kind]
        title = f"{self.meta.get('description', self.probe)}: {label} ({self.model}, {self.meta.get('method')})"
        return plots.heatmap(
            values,
            x=x,
            y=rows,
            title=title,
            x_title=dims[1],
            y_title=dims[0],
            colorbar=label,
            diverging=kind != "metric",
            height=max(420, 16 * len(rows) + 200),
        )

    def figures(self) -> dict[str, Any]:
        return {kind: self.figure(kind) for kind in KINDS if kind in self.arrays}
