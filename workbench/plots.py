"""Plotly figures for results: labelled heatmaps, before/after bars and per-head attention grids.

Figures are meant for a paper: white template, readable fonts, every axis titled, layer labels that
follow :mod:`workbench.layers`. Plotting depends on results' arrays, never the reverse.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

FONT = dict(family="Arial, Helvetica, sans-serif", size=14)
SEQUENTIAL = "Viridis"
DIVERGING = "RdBu_r"


def wrap(title: str, width: int = 80) -> str:
    """Break a long title into lines (plotly does not wrap) at spaces."""
    lines, line = [], ""
    for word in title.split(" "):
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return "<br>".join(lines + [line])


def style(fig: go.Figure, title: str, *, height: int | None = None, width: int | None = None) -> go.Figure:
    fig.update_layout(
        title=dict(text=wrap(title), x=0.5, xanchor="center"),
        template="plotly_white",
        font=FONT,
        margin=dict(l=80, r=40, t=80, b=80),
        height=height,
        width=width,
    )
    return fig


def show_token(token: str) -> str:
    """A token as readable text: spaces as ␣, newlines as ⏎, other control characters escaped."""
    text = str(token).replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def tick_labels(labels: Sequence, indexed: bool = True) -> list[str]:
    """Visible tick labels: tokens shown with :func:`show_token`, prefixed by their index (positions),
    or with ``indexed=False`` only where two labels would otherwise collide."""
    shown = [show_token(label) if isinstance(label, str) else str(label) for label in labels]
    if not indexed and len(set(shown)) == len(shown):
        return shown
    return [f"{i}:{text}" for i, text in enumerate(shown)]


def heatmap(
    z,
    *,
    x: Sequence,
    y: Sequence,
    title: str,
    x_title: str,
    y_title: str,
    colorbar: str = "",
    text: np.ndarray | None = None,
    diverging: bool = False,
    zmin: float | None = None,
    zmax: float | None = None,
    height: int | None = None,
    width: int | None = None,
) -> go.Figure:
    z = np.asarray(z, dtype=float)
    if diverging and zmin is None and zmax is None:
        bound = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
        zmin, zmax = -bound, bound
    trace = go.Heatmap(
        z=z,
        x=list(x),
        y=list(y),
        colorscale=DIVERGING if diverging else SEQUENTIAL,
        zmin=zmin,
        zmax=zmax,
        colorbar=dict(title=colorbar),
        hoverongaps=False,
        text=text,
        texttemplate="%{text}" if text is not None else None,
        textfont=dict(size=10),
    )
    fig = go.Figure(trace)
    fig.update_xaxes(title=x_title, tickangle=-45, type="category")
    fig.update_yaxes(title=y_title, type="category", autorange="reversed")
    rows = z.shape[0] if z.ndim == 2 else 1
    return style(fig, title, height=height or max(420, 22 * rows + 200), width=width)


def bars(
    groups: dict[str, Sequence[float]],
    *,
    labels: Sequence,
    title: str,
    x_title: str,
    y_title: str,
) -> go.Figure:
    """Grouped bars, one series per key (e.g. ``before`` / ``after``)."""
    fig = go.Figure(
        [go.Bar(name=name, x=tick_labels(labels, indexed=False), y=list(values)) for name, values in groups.items()]
    )
    fig.update_layout(barmode="group")
    fig.update_xaxes(title=x_title, type="category")
    fig.update_yaxes(title=y_title)
    return style(fig, title, height=480, width=max(760, 40 * len(labels) * max(1, len(groups)) + 300))


def auto(array, *, title: str, diverging: bool = False) -> go.Figure:
    """A reasonable figure for any numeric named array: bars for 1-D, a heatmap for 2-D, first slice beyond."""
    while array.values.ndim > 2:
        array = array.sel(**{array.dims[0]: 0})
    values = array.numpy().astype(float)
    if values.ndim == 0:
        values, array = values.reshape(1), array
        return bars({"value": values}, labels=["value"], title=title, x_title="", y_title="value")
    if values.ndim == 1:
        return bars(
            {array.dims[0]: values},
            labels=array.coords[array.dims[0]],
            title=title,
            x_title=array.dims[0],
            y_title="value",
        )
    return heatmap(
        values,
        x=tick_labels(array.coords[array.dims[1]]),
        y=tick_labels(array.coords[array.dims[0]]),
        title=title,
        x_title=array.dims[1],
        y_title=array.dims[0],
        diverging=diverging,
    )


def head_grid(
    patterns: np.ndarray,
    *,
    heads: Sequence[int],
    groups: Sequence[int],
    query_labels: Sequence[str],
    key_labels: Sequence[str],
    title: str,
    columns: int | None = None,
    zmax: float | None = None,
) -> go.Figure:
    """One query × key heatmap per head, titled with the key/value group the head reads."""
    n = len(heads)
    columns = columns or min(n, max(1, math.ceil(math.sqrt(n))))
    rows = math.ceil(n / columns)
    titles = [f"head {h} · kv group {g}" for h, g in zip(heads, groups, strict=True)]
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=titles, horizontal_spacing=0.04, vertical_spacing=0.08)
    zmax = zmax if zmax is not None else float(np.nanmax(patterns)) if np.isfinite(patterns).any() else 1.0
    xs, ys = tick_labels(key_labels), tick_labels(query_labels)
    for i in range(n):
        fig.add_trace(
            go.Heatmap(
                z=patterns[i],
                x=xs,
                y=ys,
                coloraxis="coloraxis",
                hoverongaps=False,
                hovertemplate="query %{y}<br>key %{x}<br>attention %{z:.3f}<extra></extra>",
            ),
            row=i // columns + 1,
            col=i % columns + 1,
        )
    fig.update_xaxes(type="category", tickangle=-60, tickfont=dict(size=9))
    fig.update_yaxes(type="category", autorange="reversed", tickfont=dict(size=9))
    fig.update_layout(coloraxis=dict(colorscale=SEQUENTIAL, cmin=0, cmax=zmax, colorbar=dict(title="attention")))
    size = 330
    return style(fig, title, height=rows * size + 120, width=columns * size + 160)
