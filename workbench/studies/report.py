"""Write a study to a folder: ``report.html`` (self-contained, offline), ``figures/`` and ``results.json``,
and read one back.

The folder is written through :func:`workbench.outputs.output_folder`: into a temporary sibling, swapped
into place at the end, and only over a folder that is new, empty, or an earlier report (marked as
such). ``results.json`` holds the record and every probe result exactly, so :func:`load_study` (and
``workbench report DIR``) rebuilds the figures and the page without the model.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

from workbench.errors import ExportError
from workbench.export import write_figures
from workbench.outputs import STUDY, check_folder, output_folder
from workbench.plots import show_token
from workbench.serialization import decode, dumps, encode, read_json, result_from_dict

KIND = STUDY
RESULTS = "results.json"

STYLE = """
body { font-family: Arial, Helvetica, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.8em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: .9em; }
td, th { border: 1px solid #ddd; padding: .25em .5em; text-align: left; }
th { background: #f5f5f5; } .caption { color: #555; font-size: .95em; max-width: 60em; }
.figure { margin: 1.5em 0 2.5em; } .note { background: #fff8e1; padding: .5em 1em; border-left: 4px solid #f0b400; }
code { background: #f3f3f3; padding: 0 .2em; }
"""


def check_report_folder(out: str | Path) -> Path:
    """Refuse, before any work, a folder that is neither new, empty nor an earlier report (nothing is written)."""
    return check_folder(out, KIND)


def write_report(
    study,
    out: str | Path,
    *,
    static: bool = True,
    progress: Callable[[str], None] | None = None,
    figures_html: str = "shared",
) -> Path:
    """Write ``report.html``, ``figures/`` (HTML, and PNG + SVG when a browser exists) and ``results.json``.

    ``report.html`` carries plotly.js itself; ``figures_html`` says how ``figures/*.html`` get it
    (``shared``, ``inline`` or ``cdn``: see :func:`workbench.export.write_figures`)."""
    step = progress or (lambda _: None)
    with output_folder(out, KIND) as tmp:
        step("writing figures")
        _, note = write_figures(
            {fig.key: fig.figure for fig in study.figures},
            tmp / "figures",
            static=("png", "svg") if static else (),
            plotlyjs=figures_html,
        )
        if note:
            study.record["warnings"] = [note]
        else:
            study.record.pop("warnings", None)
        (tmp / RESULTS).write_text(study_json(study), encoding="utf-8")
        step("writing report.html")
        (tmp / "report.html").write_text(render_html(study), encoding="utf-8")
    return Path(out) / "report.html"


def study_json(study) -> str:
    """``results.json``: the record (plain JSON where it can be) plus every probe result, exactly."""
    probe_results = {name: result.to_dict() for name, result in study.results.items()}
    return dumps(KIND, encode(study.record) | {"probe_results": probe_results}, indent=1)


def load_study(path: str | Path):
    """A :class:`~workbench.studies.random_number.StudyResult` rebuilt from a report folder (or its
    ``results.json``): the record, every probe result and every figure, without loading the model."""
    from workbench.outputs import MARK_KEY
    from workbench.studies.random_number import StudyResult, plan_from_record, study_figures

    path = Path(path)
    data = read_json(path / RESULTS if path.is_dir() else path, KIND)
    if "probe_results" not in data:
        raise ExportError(f"{path} holds no probe results (an older report): rerun the study to redraw it.")
    results = {name: result_from_dict(result) for name, result in data.pop("probe_results").items()}
    data.pop(MARK_KEY)
    record = decode(data)
    return StudyResult(
        record=record, figures=study_figures(record, results), results=results, plan=plan_from_record(record)
    )


def render_html(study) -> str:
    """One page: headline numbers, tables, then every figure with its caption; plotly.js inlined once."""
    from plotly.offline import get_plotlyjs

    record = study.record
    facts = record["model"]
    e = html.escape
    parts = [
        '<!DOCTYPE html><html><head><meta name="generator" content="workbench"><meta charset=\'utf-8\'>',
        f"<title>Is an LLM's random number random? — {e(facts['name'])}</title>",
        f"<style>{STYLE}</style><script type='text/javascript'>{get_plotlyjs()}</script></head><body>",
        f"<h1>Is an LLM's random number random?</h1><p>Model <b>{e(facts['name'])}</b> "
        f"({facts['n_layers']} blocks, {facts['n_heads']} query heads in {facts['n_kv_heads']} key/value groups, "
        f"d_model {facts['d_model']}, vocabulary {facts['d_vocab']}; source <code>{e(facts['source'])}</code>).</p>",
        f"<p>Prompt: <code>{e(record['prompt'])}</code> — tokens: "
        + " | ".join(f"<code>{i}:{e(show_token(t))}</code>" for i, t in enumerate(record["tokens"]))
        + "</p>",
        "<p class='caption'>Layer convention: blocks are counted from 0 (as in TransformerLens); logit-lens rows are "
        "<i>embeddings</i>, <i>after block i</i> and <i>final</i> (the model's own output).</p>",
        "<h2>Summary</h2><ul>" + "".join(f"<li>{e(line)}</li>" for line in record["headline"]) + "</ul>",
    ]
    notes = record["options"].get("notes", []) + record.get("warnings", [])
    if notes:
        parts.append("<div class='note'>" + "<br>".join(e(n) for n in notes) + "</div>")
    parts.append(_distribution_table(record))
    parts.append(_lens_table(record))
    parts.append(_sweep_table(record))
    if "lens_check" in record:
        parts.append("<h2>Does a better lens agree?</h2><p>" + e(record["lens_check"]["verdict"]) + "</p>")
    if "dataset_effects" in record:
        parts.append(_dataset_table(record))
    parts.append(
        "<h2>Contents</h2><ul>"
        + "".join(f"<li><a href='#{f.key}'>{e(f.section)} — {e(f.title)}</a></li>" for f in study.figures)
        + "</ul>"
    )
    section = None
    for fig in study.figures:
        if fig.section != section:
            section = fig.section
            parts.append(f"<h2>{e(section)}</h2>")
        div = fig.figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{fig.key}")
        parts.append(
            f"<div class='figure' id='{fig.key}'><h3>{e(fig.title)}</h3>"
            f"<p class='caption'>{e(fig.caption)}</p>{div}</div>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def _distribution_table(record) -> str:
    e = html.escape
    digits = [str(d) for d in range(10)]
    rows = "".join(
        f"<tr><th>{e(name)}</th>" + "".join(f"<td>{dist[d]:.3f}</td>" for d in digits) + "</tr>"
        for name, dist in record["distributions"].items()
    )
    return (
        "<h2>Digit distributions at the last position</h2><table><tr><th>condition</th>"
        + "".join(f"<th>{d}</th>" for d in digits)
        + f"</tr>{rows}</table>"
    )


def _lens_table(record) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><th>{e(row['layer'])}</th>"
        + "".join(f"<td><code>{e(show_token(t))}</code> {p:.3f}</td>" for t, p in row["top"][:5])
        + "</tr>"
        for row in record["logit_lens"]
    )
    return "<h2>Logit lens: top-5 tokens at the last position</h2><table>" + rows + "</table>"


def _sweep_table(record) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td><code>{e(r['prompt'])}</code></td><td>"
        + ", ".join(f"{d} ({p:.2f})" for d, p in r["top5"])
        + f"</td><td>{r['entropy_bits']:.2f}</td><td>{r['total_variation_from_uniform']:.2f}</td>"
        + f"<td>{r['digit_mass']:.2f}</td></tr>"
        for r in record["prompt_sweep"]
    )
    return (
        "<h2>Prompt sweep</h2><table><tr><th>prompt</th><th>top-5 digits</th><th>entropy (bits, max 3.32)</th>"
        "<th>TV from uniform</th><th>digit mass</th></tr>" + rows + "</table>"
    )


def _dataset_table(record) -> str:
    e = html.escape
    effects = record["dataset_effects"]
    metrics = list(next(iter(effects.values()), {}))
    rows = "".join(
        f"<tr><th>{e(condition)}</th>"
        + "".join(
            f"<td>{_num(c['mean'], '+.4f')} [{_num(c['ci_low'], '+.4f')}, {_num(c['ci_high'], '+.4f')}] "
            f"<small>p {_num(c['p_value'], '.2g')}, n {c['n']}</small></td>"
            for c in (cells[m] for m in metrics)
        )
        + "</tr>"
        for condition, cells in effects.items()
    )
    return (
        "<h2>Headline effects over the dataset (condition − clean: mean [95% interval])</h2><table><tr><th>"
        "condition</th>" + "".join(f"<th><code>{e(m)}</code></th>" for m in metrics) + f"</tr>{rows}</table>"
    )


def _num(value, spec: str) -> str:
    """A number, or an en dash where the statistic is undefined (no spread, too few rows)."""
    return "–" if value is None else format(value, spec)
