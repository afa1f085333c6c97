"""Plotly figures for results: labelled heatmaps, before/after bars and per-head attention grids.

Figures are meant for a paper: white template, readable fonts, every axis titled, layer labels that
follow :mod:`workbench.layers`. Plotting depends on results' arrays, never the reverse.

Every figure must also export as PNG/SVG whatever the model's tokens and numbers: the helpers here give
printable text (control characters escaped: one in a label makes kaleido's PNG export fail), unique axis
categories (two equal tokens would otherwise merge into one row), and finite colour values (±inf drawn at
the scale's end and named in the cell as +∞/−∞; NaN stays an empty cell).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

FONT = dict(family="Arial, Helvetica, sans-serif", size=14)
SEQUENTIAL = "Viridis"
DIVERGING = "RdBu_r"


EMPTY = "∅"  # an empty label (a token that decodes to nothing), visible
# Characters XML 1.0 forbids (C0 controls but tab, newline and return; lone surrogates; U+FFFE/U+FFFF): in a
# figure they break the SVG that kaleido renders (PNG export fails with "Error 525: plotly.js error").
_XML_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def printable(text: Any, empty: str = EMPTY) -> str:
    """``text`` as a string every renderer shows: non-printable characters (controls, lone surrogates,
    format characters) escaped as ``\\xNN``/``\\uNNNN``, spaces kept, an empty string as ``empty``."""
    text = str(text)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text or empty


def category_labels(labels: Sequence) -> list[str]:
    """Axis categories a renderer keeps apart: :func:`printable`, and unique (a repeated label gets
    `` (2)``, `` (3)``…), so no two rows or columns merge into one and none breaks a static export."""
    shown = [printable(label) for label in labels]
    taken, out = set(shown), []
    seen: dict[str, int] = {}
    for text in shown:
        seen[text] = seen.get(text, 0) + 1
        if seen[text] == 1:
            out.append(text)
            continue
        n = seen[text]
        while f"{text} ({n})" in taken:
            n += 1
        taken.add(f"{text} ({n})")
        out.append(f"{text} ({n})")
    return out


def finite_cells(
    z: np.ndarray, text: np.ndarray | None = None, zmin: float | None = None, zmax: float | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """``z`` with +inf/-inf drawn at the top/bottom of the colour scale (``zmax``/``zmin``, else the largest/
    smallest finite value), and ``text`` (made when missing) naming those cells ``+∞``/``−∞``; NaN is kept
    (an empty cell). Text cells are made :func:`printable`."""
    z = np.asarray(z, dtype=float)
    if text is not None:
        text = np.vectorize(lambda t: printable(t, empty=""), otypes=[object])(np.asarray(text, dtype=object))
    infinite = np.isinf(z)
    if not infinite.any():
        return z, text
    finite = z[np.isfinite(z)]
    top = zmax if zmax is not None and math.isfinite(zmax) else float(finite.max()) if finite.size else 1.0
    bottom = zmin if zmin is not None and math.isfinite(zmin) else float(finite.min()) if finite.size else 0.0
    names = np.where(z > 0, "+∞", "−∞")
    text = np.full(z.shape, "", dtype=object) if text is None else text.copy()
    text[infinite] = names[infinite]
    return np.where(z == np.inf, top, np.where(z == -np.inf, bottom, z)), text


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def static_safe(value: Any) -> Any:
    """A copy of a figure's dict (``fig.to_dict()``) with every string free of the characters that break a
    static export (``_XML_UNSAFE``, escaped); numbers and everything else untouched. The last line of
    defence for figures drawn without these helpers (export runs it on every PNG/SVG/PDF)."""
    if isinstance(value, str):
        return _XML_UNSAFE.sub(lambda m: repr(m.group())[1:-1], value) if _XML_UNSAFE.search(value) else value
    if isinstance(value, dict):
        return {key: static_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(static_safe(item) for item in value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "OUS":
        return np.vectorize(static_safe, otypes=[object])(value) if value.size else value
    return value


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
        title=dict(text=wrap(printable(title, empty="")), x=0.5, xanchor="center"),
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
    return printable(text)


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
    """A labelled heatmap whose axes are categories (made unique and printable, :func:`category_labels`) and
    whose cells are finite (±inf at the scale's ends, named in the cell: :func:`finite_cells`)."""
    z = np.asarray(z, dtype=float)
    zmin, zmax = _finite_or_none(zmin), _finite_or_none(zmax)
    if diverging and zmin is None and zmax is None:
        finite = np.abs(z[np.isfinite(z)])
        bound = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        zmin, zmax = -bound, bound
    z, text = finite_cells(z, text, zmin, zmax)
    trace = go.Heatmap(
        z=z,
        x=category_labels(x),
        y=category_labels(y),
        colorscale=DIVERGING if diverging else SEQUENTIAL,
        zmin=zmin,
        zmax=zmax,
        colorbar=dict(title=printable(colorbar, empty="")),
        hoverongaps=False,
        text=text,
        texttemplate="%{text}" if text is not None else None,
        textfont=dict(size=10),
    )
    fig = go.Figure(trace)
    fig.update_xaxes(title=printable(x_title, empty=""), tickangle=-45, type="category")
    fig.update_yaxes(title=printable(y_title, empty=""), type="category", autorange="reversed")
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
    """Grouped bars, one series per key (e.g. ``before`` / ``after``); an infinite value is drawn at the
    largest finite height (of its sign) and labelled ``+∞``/``−∞``, NaN as no bar."""
    series = {name: np.asarray(list(values), dtype=float) for name, values in groups.items()}
    finite = np.concatenate([v[np.isfinite(v)] for v in series.values()] or [np.zeros(0)])
    top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    bottom = float(finite.min()) if finite.size and finite.min() < 0 else -1.0
    x = tick_labels(labels, indexed=False)
    traces = []
    for name, values in series.items():
        infinite = np.isinf(values)
        text = [("+∞" if v > 0 else "−∞") if inf else "" for v, inf in zip(values, infinite, strict=True)]
        shown = np.where(values == np.inf, top, np.where(values == -np.inf, bottom, values))
        traces.append(go.Bar(name=printable(name), x=x, y=list(shown), text=text if infinite.any() else None))
    fig = go.Figure(traces)
    fig.update_layout(barmode="group")
    fig.update_xaxes(title=printable(x_title, empty=""), type="category")
    fig.update_yaxes(title=printable(y_title, empty=""))
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
    patterns = np.asarray(patterns, dtype=float)
    finite = patterns[np.isfinite(patterns)]
    zmax = _finite_or_none(zmax)
    zmax = zmax if zmax is not None else float(finite.max()) if finite.size else 1.0
    xs, ys = tick_labels(key_labels), tick_labels(query_labels)
    for i in range(n):
        fig.add_trace(
            go.Heatmap(
                z=finite_cells(patterns[i], zmin=0.0, zmax=zmax)[0],
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
