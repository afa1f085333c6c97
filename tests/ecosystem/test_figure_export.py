"""Every figure exports as PNG and SVG, whatever the model's tokens and numbers.

The issue: ``workbench probe logit_lens --model tiny-qwen2 --out DIR`` ended in "Could not render a .png
image with kaleido (Error 525: plotly.js error)": a target token was ``"\\x19"``, and a control character in
any label breaks the SVG kaleido renders. The shared helpers of ``workbench/plots.py`` now give printable,
unique axis categories and finite colour values (±inf at the scale's end, named in the cell), and export
escapes what an SVG cannot hold in the copy it renders. Here: the helpers' rules on hostile data (fast, no
browser), then every figure kind of each probe, sweep, experiment and lens rendered through one kaleido
server on three tiny families and SmolLM2, each PNG a real PNG and each SVG well-formed XML.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import plotly.graph_objects as go
import pytest

from workbench import interventions as iv
from workbench import plots
from workbench.export import figure_bytes, find_browser, static_export
from workbench.models import load_model

PROMPT = "I'm generating a random number between [0, 9]. The number is "
SOURCE = "I'm generating a random number between [0, 5]. The number is "
ODD = ["\x19", "", "a", "a", "\ud800", "tab\there", "\u200b", "ok"]  # control, empty, duplicates, surrogate…
needs_browser = pytest.mark.skipif(find_browser() is None, reason="needs Chromium (make setup installs it)")


def category_axes(fig: go.Figure):
    """The category labels of every heatmap and bar trace (x, and y for heatmaps)."""
    for trace in fig.data:
        if trace.type == "heatmap":
            yield from (list(axis) for axis in (trace.x, trace.y) if axis is not None)
        elif trace.type == "bar" and trace.x is not None:
            yield list(trace.x)


def assert_exportable(fig: go.Figure, name: str = "") -> None:
    """What the helpers promise: unique printable categories, finite colour values, printable text."""
    for labels in category_axes(fig):
        assert len(set(labels)) == len(labels), (name, labels)
        assert all(isinstance(label, str) and label and label.isprintable() for label in labels), (name, labels)
    for trace in fig.data:
        if trace.type == "heatmap":
            z = np.asarray(trace.z, dtype=float)
            assert not np.isinf(z).any(), name
            if trace.text is not None:
                assert all(str(t).isprintable() for t in np.asarray(trace.text, dtype=object).ravel()), name
    assert (fig.layout.title.text or "").replace("<br>", "").isprintable(), name


# --- the helpers' rules -----------------------------------------------------------------------------------


def test_printable_escapes_what_renderers_refuse():
    assert plots.printable("\x19") == "\\x19"
    assert plots.printable("") == plots.EMPTY and plots.printable("", empty="") == ""
    assert plots.printable("\ud800") == "\\ud800"
    assert plots.printable("a b") == "a b"  # spaces kept (layer names have them)
    assert plots.show_token(" a\n") == "␣a⏎" and plots.show_token("") == plots.EMPTY


def test_category_labels_are_unique_and_printable():
    labels = plots.category_labels(ODD + ["a (2)"])
    assert labels == ["\\x19", "∅", "a", "a (3)", "\\ud800", "tab\\there", "\\u200b", "ok", "a (2)"]
    assert len(set(labels)) == len(labels)
    assert plots.category_labels([0, 1, 2]) == ["0", "1", "2"]


def test_finite_cells_draw_infinities_at_the_scale_ends_and_name_them():
    z = np.array([[1.0, np.inf, np.nan], [-np.inf, 0.0, 2.0]])
    shown, text = plots.finite_cells(z)
    assert shown[0, 1] == 2.0 and shown[1, 0] == 0.0 and np.isnan(shown[0, 2])
    assert text.tolist() == [["", "+∞", ""], ["−∞", "", ""]]
    shown, text = plots.finite_cells(z, np.array([["x", "y", "z"], ["\x01", "", "w"]]), zmin=-1, zmax=5)
    assert shown[0, 1] == 5 and shown[1, 0] == -1
    assert text.tolist() == [["x", "+∞", "z"], ["−∞", "", "w"]]
    shown, text = plots.finite_cells(np.full((1, 2), np.inf))  # nothing finite: the scale is [0, 1]
    assert shown.tolist() == [[1.0, 1.0]] and text.tolist() == [["+∞", "+∞"]]


def test_helpers_survive_zeros_infinities_and_odd_tokens():
    z = np.array([[0.0] * 8, [np.inf, -np.inf, np.nan, 1, 2, 3, 4, 5]])
    figures = {
        "heatmap": plots.heatmap(z, x=ODD, y=["a", "a"], title="t\x19", x_title="x\x00", y_title="y"),
        "zeros": plots.heatmap(
            np.zeros((2, 8)), x=ODD, y=["r", "s"], title="zeros", x_title="", y_title="", diverging=True
        ),
        "text": plots.heatmap(z, x=ODD, y=["r", "s"], text=np.full(z.shape, "\x19"), title="", x_title="", y_title=""),
        "bars": plots.bars(
            {"p\x19": [np.inf, 0, 1, -np.inf, 0, 0, 0, 0]}, labels=ODD, title="b", x_title="", y_title=""
        ),
        "grid": plots.head_grid(
            np.stack([np.where(np.eye(8) > 0, np.inf, 0.1)] * 2),
            heads=[0, 1],
            groups=[0, 0],
            query_labels=ODD,
            key_labels=ODD,
            title="g",
        ),
    }
    for name, fig in figures.items():
        assert_exportable(fig, name)
    heat = figures["heatmap"].data[0]
    assert list(heat.y) == ["a", "a (2)"] and np.asarray(heat.text)[1, 0] == "+∞"
    assert figures["zeros"].data[0].zmax == 1.0  # a diverging scale of all zeros still has a width
    bars = figures["bars"].data[0]
    assert list(bars.y)[:4] == [1.0, 0.0, 1.0, -1.0] and list(bars.text)[:4] == ["+∞", "", "", "−∞"]
    assert figures["grid"].layout.coloraxis.cmax == 0.1


def test_static_safe_escapes_only_what_an_svg_cannot_hold():
    fig = go.Figure(go.Bar(x=["\x19", "é", "\u200b"], y=[1, 2, 3], text=np.array(["\x01", "b", "c"], dtype=object)))
    fig.update_layout(title="a\x19b")
    safe = plots.static_safe(fig.to_dict())
    assert safe["layout"]["title"]["text"] == "a\\x19b"
    assert list(safe["data"][0]["x"]) == ["\\x19", "é", "\u200b"]  # a zero-width space is valid XML: kept
    assert list(safe["data"][0]["text"]) == ["\\x01", "b", "c"]
    assert fig.layout.title.text == "a\x19b"  # the figure itself is untouched


# --- every figure of each family, rendered through one kaleido server ----------------------------------------


def all_figures(model, everything: bool = True) -> dict[str, go.Figure]:
    """Every figure kind of the built-in probes, a comparison and the lens comparison, on the study prompt
    (the logit lens with its default targets: the readout's top tokens, the issue's odd tokens among them);
    with ``everything`` also the sweeps, the attribution comparison and an experiment (their labels are
    blocks, heads, positions and condition names, the same on every model)."""
    from workbench.experiments import Experiment, Grid, run_experiment
    from workbench.experiments.report import figures as experiment_figures
    from workbench.lenses import Lens
    from workbench.probes import (
        ActivationPatch,
        AttentionCapture,
        AttentionMask,
        BlockReplacement,
        LogitLens,
        TunedLens,
    )
    from workbench.run import run
    from workbench.sweeps import intervention_sweep, patch_sweep
    from workbench.sweeps.attribution import compare_attribution

    n = model.facts.n_layers
    out = run(
        model,
        PROMPT,
        [
            LogitLens(k=5),
            AttentionCapture(),
            TunedLens(lens=Lens.identity(model), k=5),
            BlockReplacement(blocks=[n - 1]),
        ],
    )
    edits = run(
        model,
        PROMPT,
        [AttentionMask(keys="9", blocks=[n - 1]), ActivationPatch(source=SOURCE, site="kv", blocks=[0])],
        separate=True,
    )
    figures: dict[str, go.Figure] = {}
    for name, result in [*out.results.items(), *edits.results.items()]:
        kinds = result.figures()
        if name == "attention":  # every kind, not every block: block_0 and the last stand for the rest
            kinds = {k: f for k, f in kinds.items() if k in ("sink", "readout", "block_0", f"block_{n - 1}")}
            kinds["group_means"] = result.figure("heads", block=0, group_means=True, hide_sink=True, renormalise=True)
        figures |= {f"{name}/{kind}": fig for kind, fig in kinds.items()}
    figures["compare/logit_lens"] = out["logit_lens"].compare(out["logit_lens"].baseline).figure()
    if not everything:
        return figures
    figures |= {
        f"sweep/{k}": f
        for k, f in intervention_sweep(model, PROMPT, iv.zero("z", heads=[0]), over=("block", "position"))
        .figures()
        .items()
    }
    figures |= {
        f"patch_sweep/{k}": f
        for k, f in patch_sweep(model, PROMPT, SOURCE, site="resid_pre", blocks=[0, n - 1]).figures().items()
    }
    figures["attribution"] = compare_attribution(model, PROMPT, SOURCE, site="resid_pre", blocks=[0]).figure()
    rows = [{"prompt": PROMPT, "source": SOURCE}, {"prompt": SOURCE, "source": PROMPT}]
    experiment = Experiment(
        dataset=rows,
        conditions={"identity": iv.identity(n - 1), "patch": iv.patch("kv", "{source}", blocks=[0])},
        grids=[
            Grid("zero", iv.zero("z", positions=[-1]), over=("block", "head"), blocks=(0,), heads=(0, 1)),
            Grid("blocks", iv.identity(0), over=("block",)),
        ],
        model=model.facts.name,
        metrics=["kl"],
        resamples=1000,
    )
    summary = run_experiment(experiment, model=model).summary
    figures |= {f"experiment/{k}": f for k, f in experiment_figures(summary).items()}
    return figures


def render_all(figures: dict[str, go.Figure]) -> None:
    with static_export():
        for name, fig in figures.items():
            png = figure_bytes(fig, ".png", scale=1)
            assert png.startswith(b"\x89PNG\r\n\x1a\n"), name
            svg = figure_bytes(fig, ".svg")
            assert ET.fromstring(svg).tag.endswith("svg"), name


PROBE_FIGURES = ("logit_lens", "tuned_lens", "attention", "block_replacement", "patch", "mask", "compare")


@needs_browser
@pytest.mark.browser
def test_every_figure_renders_on_tiny_families():
    """Three families, one browser: Qwen2 (the issue's, no BOS, tied embeddings), Llama (a BOS) and Gemma 2
    (soft-capped logits, alternating attention)."""
    figures = {}
    for family in ("tiny-qwen2", "tiny-llama", "tiny-gemma2"):
        for name, fig in all_figures(load_model(family), everything=family == "tiny-qwen2").items():
            if name.startswith(PROBE_FIGURES):
                assert_exportable(fig, f"{family}: {name}")  # the probes' figures go through the helpers
            figures[f"{family}: {name}"] = fig
    render_all(figures)


@needs_browser
@pytest.mark.browser
@pytest.mark.real
def test_every_figure_renders_on_smollm2(smollm2):
    figures = all_figures(smollm2, everything=False)
    for name, fig in figures.items():
        if name.startswith(PROBE_FIGURES):
            assert_exportable(fig, name)
    render_all(figures)


def test_the_issue_command_writes_every_image(tmp_path):
    """``workbench probe logit_lens --model tiny-qwen2 --out DIR``: the targets and ranks figures too."""
    from typer.testing import CliRunner

    from workbench.cli import _register, app

    if find_browser() is None:
        pytest.skip("needs Chromium (make setup installs it)")
    _register()
    out = tmp_path / "lens"
    done = CliRunner().invoke(app, ["probe", "logit_lens", "--model", "tiny-qwen2", "--out", str(out)])
    assert done.exit_code == 0, done.output
    for kind in ("top_tokens", "kl", "targets", "ranks"):
        assert (out / f"logit_lens.{kind}.png").read_bytes().startswith(b"\x89PNG")
        ET.parse(out / f"logit_lens.{kind}.svg")


def test_a_one_axis_sweep_has_a_figure(tiny_qwen2):
    from workbench.sweeps import intervention_sweep

    fig = intervention_sweep(tiny_qwen2, PROMPT, iv.identity(blocks=0), over=("block",)).figure()
    assert_exportable(fig)
