"""Figures and ``report.html`` of an experiment, drawn from its summary alone.

- the **forest plot**: each named condition's mean effect (condition − clean) with its interval, one
  panel per metric; filled markers are significant after Benjamini–Hochberg correction, hollow ones not;
- per grid and metric: a **heatmap** of the mean effect per cell (block × head, block × position), the
  cells not significant after correction greyed out; a grid over one axis is drawn as each cell's
  effect with its interval, grey where not significant.

Every figure carries the manifest's hash twice: in its metadata (``layout.meta``, and a ``tEXt`` chunk
of an exported PNG) and in a visible footnote, so a figure in a paper can be traced to the exact run.
"""

from __future__ import annotations

import html
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench import plots

PNG_KEY = "workbench-manifest-sha256"
SIGNIFICANT = "#1f4e99"
NOT_SIGNIFICANT = "#9a9a9a"


def footnote(summary: dict[str, Any]) -> str:
    return (
        f"manifest sha256 {summary['manifest_sha256'][:16]}… · {summary['model']} · "
        f"n = {summary['n_items']} items · {summary['method']['confidence']:.0%} intervals"
    )


def _stamp(fig: go.Figure, summary: dict[str, Any], note: str = "", shift: int = -70) -> go.Figure:
    """The manifest's hash in the figure's metadata and in a visible footnote (under ``note``)."""
    fig.update_layout(meta={"workbench_manifest_sha256": summary["manifest_sha256"]})
    fig.add_annotation(
        text=(note + "<br>" if note else "") + footnote(summary),
        xref="paper",
        yref="paper",
        x=0,
        y=0,
        yshift=shift,
        xanchor="left",
        yanchor="top",
        align="left",
        showarrow=False,
        font=dict(size=11, color="#666"),
    )
    return fig


def forest_plot(summary: dict[str, Any]) -> go.Figure:
    """Mean effect ± interval of every named condition, one panel per metric."""
    conditions = list(summary["conditions"])
    metrics = list(summary["clean_values"])
    labels = summary.get("metric_labels", {})
    fig = make_subplots(
        rows=1,
        cols=len(metrics),
        shared_yaxes=True,
        horizontal_spacing=0.06,
        subplot_titles=[f"Δ {labels.get(m, m)}" for m in metrics],
    )
    for col, metric in enumerate(metrics, start=1):
        rows = [summary["conditions"][c].get(metric) for c in conditions]
        for significant in (True, False):
            chosen = [
                (c, r) for c, r in zip(conditions, rows, strict=True) if r and bool(r["significant"]) == significant
            ]
            if not chosen:
                continue
            mean = [r["mean"] for _, r in chosen]
            fig.add_trace(
                go.Scatter(
                    x=mean,
                    y=[c for c, _ in chosen],
                    mode="markers",
                    marker=dict(
                        size=11,
                        symbol="circle" if significant else "circle-open",
                        color=SIGNIFICANT if significant else NOT_SIGNIFICANT,
                        line=dict(width=2),
                    ),
                    error_x=dict(
                        type="data",
                        symmetric=False,
                        array=[_gap(r["ci_high"], r["mean"]) for _, r in chosen],
                        arrayminus=[_gap(r["mean"], r["ci_low"]) for _, r in chosen],
                        thickness=1.8,
                        width=6,
                    ),
                    name="significant (BH)" if significant else "not significant",
                    legendgroup=str(significant),
                    showlegend=col == 1,
                    customdata=[[r["ci_low"], r["ci_high"], r["p_value"], r["p_adjusted"], r["n"]] for _, r in chosen],
                    hovertemplate="%{y}<br>mean %{x:.4g} [%{customdata[0]:.4g}, %{customdata[1]:.4g}]<br>"
                    "p %{customdata[2]:.3g} (adjusted %{customdata[3]:.3g}), n %{customdata[4]}<extra></extra>",
                ),
                row=1,
                col=col,
            )
        fig.add_vline(x=0, line=dict(color="#444", width=1, dash="dot"), row=1, col=col)
        fig.update_xaxes(title_text="effect (condition − clean)", row=1, col=col, zeroline=False)
    fig.update_yaxes(autorange="reversed", ticksuffix="  ")
    fig.update_yaxes(title_text="condition", row=1, col=1)
    title = (
        f"{summary.get('experiment') or 'experiment'}: effect of each condition vs the clean run "
        f"({summary['model']}, {summary['n_items']} items)"
    )
    width = max(720, 380 * len(metrics))
    plots.style(fig, title, height=max(360, 200 + 55 * len(conditions)), width=width)
    fig.update_layout(
        title=dict(text=plots.wrap(title, width // 11)), margin=dict(l=160, r=40, t=120, b=130), showlegend=False
    )
    return _stamp(
        fig,
        summary,
        f"filled: significant after Benjamini–Hochberg (α = {summary['method']['alpha']}); "
        f"hollow: not; bars: {summary['method']['confidence']:.0%} bootstrap intervals",
    )


def _gap(a, b) -> float:
    return 0.0 if a is None or b is None else max(0.0, a - b)


def grid_effects(summary: dict[str, Any], grid: str, metric: str) -> go.Figure:
    """A grid swept over one axis: each cell's mean effect with its interval, grey where it is not
    significant after correction over the grid's cells."""
    entry = summary["grids"][grid]
    cells = entry["metrics"][metric]
    axis = entry["over"][0]
    label = summary.get("metric_labels", {}).get(metric, metric)
    fig = go.Figure()
    for significant in (False, True):
        chosen = [c for c in cells if c["mean"] is not None and bool(c["significant"]) == significant]
        if not chosen:
            continue
        color = SIGNIFICANT if significant else NOT_SIGNIFICANT
        fig.add_trace(
            go.Scatter(
                x=[str(c[axis]) for c in chosen],
                y=[c["mean"] for c in chosen],
                mode="markers",
                marker=dict(size=9, color=color, symbol="circle" if significant else "circle-open", line=dict(width=2)),
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=[_gap(c["ci_high"], c["mean"]) for c in chosen],
                    arrayminus=[_gap(c["mean"], c["ci_low"]) for c in chosen],
                    color=color,
                    thickness=1.5,
                    width=4,
                ),
                name="significant (BH)" if significant else "not significant",
                customdata=[[c["ci_low"], c["ci_high"], c["p_adjusted"]] for c in chosen],
                hovertemplate=f"{axis} " + "%{x}: mean %{y:.4g} [%{customdata[0]:.4g}, %{customdata[1]:.4g}], "
                "p adjusted %{customdata[2]:.3g}<extra></extra>",
            )
        )
    order = [str(c[axis]) for c in cells]
    width = max(720, 200 + 26 * len(cells))
    plots.style(fig, f"{grid}: Δ {label} per {axis}", height=460, width=width)
    fig.update_xaxes(
        title_text=axis, categoryorder="array", categoryarray=order, tickangle=-45 if len(cells) > 12 else 0
    )
    fig.update_yaxes(title_text=f"Δ {label} (condition − clean)", zeroline=True, zerolinecolor="#444")
    fig.update_layout(
        title=dict(text=plots.wrap(f"{grid}: Δ {label} per {axis}", width // 11)),
        margin=dict(l=90, r=40, t=90, b=170),
        legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"),
    )
    return _stamp(
        fig,
        summary,
        f"filled: significant after Benjamini–Hochberg over the {len(cells)} cells "
        f"(α = {summary['method']['alpha']}); bars: {summary['method']['confidence']:.0%} "
        "bootstrap intervals",
        shift=-110 if len(cells) > 12 else -70,
    )


def grid_heatmap(summary: dict[str, Any], grid: str, metric: str) -> go.Figure:
    """Mean effect per cell of a grid; cells not significant after correction are grey. One swept axis is
    drawn as a strip (its values across), two as rows × columns (block down, head or position across)."""
    entry = summary["grids"][grid]
    cells = entry["metrics"][metric]
    over = entry["over"]
    labels = summary.get("metric_labels", {})
    label = labels.get(metric, metric)
    if len(over) == 1:
        row_key, col_keys = None, over
    else:
        row_key, col_keys = over[0], over[1:]
    ys = list(dict.fromkeys(c[row_key] for c in cells)) if row_key else [None]
    xs = list(dict.fromkeys(tuple(c.get(a) for a in col_keys) for c in cells))
    z = np.full((len(ys), len(xs)), np.nan)
    grey = np.full_like(z, np.nan)
    text = np.full(z.shape, "", dtype=object)
    for cell in cells:
        i = ys.index(cell[row_key]) if row_key else 0
        j = xs.index(tuple(cell.get(a) for a in col_keys))
        if cell["mean"] is None:
            continue
        (z if cell["significant"] else grey)[i, j] = cell["mean"]
        text[i, j] = (
            f"{cell['condition']}<br>mean {cell['mean']:.4g} [{_fmt(cell['ci_low'])}, {_fmt(cell['ci_high'])}]"
            f"<br>p adjusted {_fmt(cell['p_adjusted'])}"
        )
    x_labels = [" · ".join(f"{a} {v}" for a, v in zip(col_keys, key, strict=True)) for key in xs]
    y_labels = [f"{row_key} {v}" for v in ys] if row_key else [f"Δ {label}"]
    finite = np.concatenate([z[np.isfinite(z)], grey[np.isfinite(grey)], [0.0]])
    bound = float(np.abs(finite).max()) or 1.0
    fig = go.Figure()
    fig.add_trace(
        go.Heatmap(
            z=np.where(np.isfinite(grey), 0.0, np.nan),
            x=x_labels,
            y=y_labels,
            colorscale=[[0, "#d9d9d9"], [1, "#d9d9d9"]],
            showscale=False,
            text=text,
            hovertemplate="%{text}<br>(not significant after BH)<extra></extra>",
            name="not significant",
        )
    )
    fig.add_trace(
        go.Heatmap(
            z=z,
            x=x_labels,
            y=y_labels,
            colorscale=plots.DIVERGING,
            zmid=0,
            zmin=-bound,
            zmax=bound,
            text=text,
            hovertemplate="%{text}<extra></extra>",
            colorbar=dict(title=dict(text=f"Δ {_short(label, 24)}")),
            name="significant",
        )
    )
    width = max(720, 200 + 34 * len(xs))
    plots.style(fig, f"{grid}: Δ {label} per cell", height=max(440, 290 + 28 * len(ys)), width=width)
    fig.update_layout(
        title=dict(text=plots.wrap(f"{grid}: Δ {label} per cell", width // 11)), margin=dict(l=140, r=40, t=100, b=170)
    )
    fig.update_xaxes(title_text=" × ".join(col_keys), tickangle=-45 if len(xs) > 12 else 0)
    fig.update_yaxes(title_text=row_key or "", autorange="reversed", tickmode="array", tickvals=y_labels)
    return _stamp(
        fig,
        summary,
        f"grey: not significant after Benjamini–Hochberg over the {len(cells)} cells "
        f"(α = {summary['method']['alpha']})",
        shift=-110 if len(xs) > 12 else -70,
    )


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.3g}"


def figures(summary: dict[str, Any]) -> dict[str, go.Figure]:
    """``forest`` (when there are named conditions) and ``<grid>/<metric>`` for every grid."""
    out = {}
    if summary["conditions"]:
        out["forest"] = forest_plot(summary)
    for grid, entry in summary["grids"].items():
        for metric in entry["metrics"]:
            draw = grid_effects if len(entry["over"]) == 1 else grid_heatmap
            out[f"{grid}/{metric}"] = draw(summary, grid, metric)
    return out


STYLE = """
body { font-family: Arial, Helvetica, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.7em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: .9em; }
td, th { border: 1px solid #ddd; padding: .25em .5em; text-align: left; } th { background: #f5f5f5; }
.muted { color: #666; }
footer { margin-top: 3em; font-size: .85em; color: #555; border-top: 1px solid #ddd; padding-top: .5em; }
code { background: #f3f3f3; padding: 0 .2em; }
"""


def render_html(summary: dict[str, Any], manifest: dict[str, Any]) -> str:
    """A self-contained page (plotly.js inline): method, the effects table, the forest plot, the grids."""
    esc = html.escape
    method = summary["method"]
    figs = figures(summary)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><meta name='generator' content='workbench'>"
        f"<meta name='workbench-manifest-sha256' content='{esc(summary['manifest_sha256'])}'>"
        f"<title>{esc(summary.get('experiment') or 'experiment')}</title><style>{STYLE}</style></head><body>",
        f"<h1>{esc(summary.get('experiment') or 'experiment')}</h1>",
        f"<p>{esc(summary['model'])} · {summary['n_items']} items · clean condition "
        f"<code>{esc(summary['clean'])}</code></p>",
        "<h2>Method</h2><ul>",
        *(
            f"<li><b>{k}</b>: {esc(str(method[k]))}</li>"
            for k in ("effect", "interval", "test", "correction", "effect_size")
        ),
        f"<li><b>seed</b>: {method['seed']}; α = {method['alpha']}</li></ul>",
    ]
    if summary["conditions"]:
        parts.append(
            "<h2>Effects of the named conditions</h2><table><tr><th>condition</th><th>metric</th>"
            "<th>mean effect</th><th>interval</th><th>p</th><th>p (BH)</th><th>d_z</th><th>n</th>"
            "<th>no-op items</th></tr>"
        )
        for name, metrics in summary["conditions"].items():
            for metric, row in metrics.items():
                parts.append(
                    f"<tr><td>{esc(name)}</td><td>{esc(metric)}</td><td>{_fmt(row['mean'])}</td>"
                    f"<td>[{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]"
                    f"{'' if row['ci_method'].startswith('BCa') else ' *'}</td><td>{_fmt(row['p_value'])}</td>"
                    f"<td>{_fmt(row['p_adjusted'])}{' ✓' if row['significant'] else ''}</td>"
                    f"<td>{_fmt(row['effect_size'])}</td><td>{row['n']}</td><td>{row['noop_items']}</td></tr>"
                )
        parts.append(
            "</table><p class='muted'>✓ significant after correction; * interval by percentiles (BCa "
            "undefined) or a single value. The clean values: "
            + "; ".join(
                f"{esc(m)} {_fmt(v['mean'])} [{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}]"
                for m, v in summary["clean_values"].items()
            )
            + ".</p>"
        )
    first = True
    for name, fig in figs.items():
        heading = "Forest plot" if name == "forest" else "Grid " + name.replace("/", " · ", 1)
        parts.append(f"<h2>{esc(heading)}</h2>")
        parts.append(
            fig.to_html(full_html=False, include_plotlyjs="inline" if first else False, div_id=f"figure-{len(parts)}")
        )
        first = False
    versions = ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items())
    parts.append(
        f"<footer>manifest sha256 <code>{esc(summary['manifest_sha256'])}</code> · dataset sha256 "
        f"<code>{esc(manifest['dataset']['sha256'][:16])}…</code> · model {esc(manifest['model']['name'])} "
        f"({esc(manifest['model']['fingerprint']['kind'])} sha256 "
        f"<code>{esc(manifest['model']['fingerprint']['sha256'][:16])}…</code>), "
        f"{esc(manifest['model']['dtype'])} on {esc(manifest['model']['device'])} · {esc(versions)}</footer>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_png(fig: go.Figure, path: str | Path, manifest_sha256: str, scale: float = 2) -> Path:
    """A PNG of ``fig`` (through kaleido and Chromium) with the manifest's hash in a ``tEXt`` chunk."""
    from workbench.errors import ExportError
    from workbench.experiments.storage import Folder
    from workbench.export import _require_browser

    path = Path(path)
    _require_browser()
    try:
        data = fig.to_image(format="png", scale=scale)
    except Exception as exc:  # kaleido wraps browser failures in many types
        raise ExportError(f"Could not render {path.name} with kaleido ({exc}): use report.html instead.") from None
    # Only into an experiment folder, through its marker: an existing forest.png is replaced only when listed.
    return Folder(path.parent).write_bytes(path.name, png_with_text(data, PNG_KEY, manifest_sha256))


def png_with_text(data: bytes, key: str, value: str) -> bytes:
    """``data`` (a PNG) with a ``tEXt`` chunk ``key: value`` after its header chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    body = key.encode("latin-1") + b"\0" + value.encode("latin-1")
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body) & 0xFFFFFFFF)
    end_of_header = 8 + 8 + struct.unpack(">I", data[8:12])[0] + 4
    return data[:end_of_header] + chunk + data[end_of_header:]


def png_text(data: bytes) -> dict[str, str]:
    """The ``tEXt`` chunks of a PNG (to read the manifest hash back)."""
    out, at = {}, 8
    while at < len(data):
        length = struct.unpack(">I", data[at : at + 4])[0]
        kind = data[at + 4 : at + 8]
        if kind == b"tEXt":
            key, _, value = data[at + 8 : at + 8 + length].partition(b"\0")
            out[key.decode("latin-1")] = value.decode("latin-1")
        at += 12 + length
    return out
