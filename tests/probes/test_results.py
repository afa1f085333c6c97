"""Results: named arrays, long tables, JSON, figures saved as HTML/PNG/SVG, comparisons and Jupyter display."""

from __future__ import annotations

import json
import math
import struct
from html import escape

import numpy as np
import pytest
import torch

from workbench.errors import ExportError, ProbeError
from workbench.export import static_export, write_figure
from workbench.probes import ActivationPatch, AttentionCapture, AttentionMask, BlockReplacement, LogitLens
from workbench.results import Comparison, Named
from workbench.run import run

from .helpers import DIGITS, PROMPT, SOURCE

PROBES = ["logit_lens", "attention", "block_replacement", "attention_mask", "patch"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study(tiny_qwen2):
    """Every built-in probe in one run on the study prompt (observers then carry a clean baseline)."""
    return run(
        tiny_qwen2,
        PROMPT,
        [
            LogitLens(k=3),
            AttentionCapture(blocks=[0, 2]),
            BlockReplacement(blocks=3),
            AttentionMask(keys="9", blocks=[2, 3]),
            ActivationPatch(source=SOURCE, blocks=[1, 2]),
        ],
        targets=DIGITS,
    )


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


# Named -----------------------------------------------------------------------------------------------------------


def test_named_selects_by_label_or_position():
    array = Named(
        torch.arange(24.0).reshape(2, 3, 4),
        ("prompt", "layer", "key"),
        {"layer": ["embeddings", "after block 0", "final"]},
    )
    assert array.coords["prompt"] == [0, 1] and array.coords["key"] == [0, 1, 2, 3]
    assert array.sel(layer="final").dims == ("prompt", "key")
    assert torch.equal(array.sel(layer="final", prompt=1).values, torch.tensor([20.0, 21, 22, 23]))
    assert torch.equal(array.sel(layer=-1).values, array.sel(layer="final").values)
    assert array.sel(key=3, layer=1, prompt=0).values.item() == 7.0
    with pytest.raises(ProbeError, match="not on the 'layer' axis"):
        array.sel(layer="after block 7")
    with pytest.raises(ProbeError, match="not a dimension"):
        array.sel(head=0)


def test_named_checks_dims_and_labels():
    with pytest.raises(ValueError, match="dims"):
        Named(torch.zeros(2, 3), ("layer",))
    with pytest.raises(ValueError, match="labels"):
        Named(torch.zeros(2, 3), ("layer", "key"), {"key": ["a", "b"]})
    half = Named(torch.zeros(2, dtype=torch.float16), ("x",))
    assert half.values.dtype == torch.float32
    strings = Named(np.array([["a", "b"]], dtype=object), ("row", "rank"))
    assert not strings.is_numeric and Named(torch.zeros(1), ("x",)).is_numeric


def test_named_to_dataframe_is_long_format():
    array = Named(
        torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
        ("layer", "key"),
        {"layer": ["a", "b"], "key": ["x", "y", "x"]},
    )
    frame = array.to_dataframe("p")
    assert list(frame.columns) == ["layer", "key", "p"]
    assert frame.to_dict("records") == [
        {"layer": "a", "key": "x", "p": 1.0},
        {"layer": "a", "key": "y", "p": 2.0},
        {"layer": "a", "key": "x", "p": 3.0},
        {"layer": "b", "key": "x", "p": 4.0},
        {"layer": "b", "key": "y", "p": 5.0},
        {"layer": "b", "key": "x", "p": 6.0},
    ]


# Every probe's result ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("probe", PROBES)
def test_to_dataframe_has_a_row_per_entry(study, probe):
    result = study[probe]
    for name, array in result.arrays.items():
        frame = result.to_dataframe(name)
        assert list(frame.columns) == [*array.dims, name]
        assert len(frame) == math.prod(array.shape)
        flat = array.numpy().ravel()
        if array.is_numeric:
            np.testing.assert_array_equal(frame[name].to_numpy(dtype=float), flat.astype(float))
        else:
            assert list(frame[name]) == list(flat)
        for dim in array.dims:
            assert set(frame[dim]) == set(array.coords[dim])
    first_numeric = next(n for n, a in result.arrays.items() if a.is_numeric)
    assert list(result.to_dataframe().columns)[-1] == first_numeric


@pytest.mark.parametrize("probe", PROBES)
def test_json_round_trips_with_every_array(study, probe, tmp_path):
    result = study[probe]
    path = result.save(tmp_path / f"{probe}.json")
    data = json.loads(path.read_text())
    assert data["probe"] == result.probe and data["model"] == "tiny-qwen2" and data["prompts"] == [PROMPT]
    assert data["tokens"] == result.tokens
    assert set(data["arrays"]) == set(result.arrays)
    for name, array in result.arrays.items():
        saved = data["arrays"][name]
        assert saved["dims"] == list(array.dims)
        assert saved["coords"] == {d: list(c) for d, c in array.coords.items()}
        values = np.array(saved["values"], dtype=float if array.is_numeric else object)
        if array.is_numeric:
            np.testing.assert_allclose(values, array.numpy().astype(float), rtol=1e-7, equal_nan=True)
        else:
            assert (values == array.numpy()).all()
    if probe in ("logit_lens", "attention"):
        assert set(data["baseline"]["arrays"]) == set(result.baseline.arrays)
    else:
        assert data["meta"]["description"] == result.meta["description"]


def test_json_writes_nan_as_null(study, tmp_path):
    # The group mean of a group with no captured head is NaN; JSON has no NaN, so it becomes null.
    result = run(study.context.model, PROMPT, AttentionCapture(blocks=[0], heads=[0]))["attention"]
    data = json.loads(result.save(tmp_path / "a.json").read_text())
    group_mean = data["arrays"]["group_mean"]["values"]
    assert group_mean[0][0][1][0][0] is None and group_mean[0][0][0][0][0] is not None


@pytest.mark.parametrize("probe", PROBES)
def test_every_figure_saves_as_html(study, probe, tmp_path):
    result = study[probe]
    figures = result.figures()
    assert figures
    for key, fig in figures.items():
        path = write_figure(fig, tmp_path / f"{probe}_{key}.html")
        text = path.read_text()
        assert path.stat().st_size > 1_000_000  # plotly.js is embedded: the file opens offline
        assert "<html>" in text and 'class="plotly-graph-div"' in text
        assert json.dumps(fig.layout.title.text)[1:-1][:20] in text
    main = result.save(tmp_path / f"{probe}.html")
    assert main.stat().st_size > 1_000_000


def test_figure_options_render(study, tmp_path):
    attention, lens = study["attention"], study["logit_lens"]
    figures = [
        attention.figure("heads", block=2, hide_sink=True, renormalise=True, hide_diagonal=True),
        attention.figure("heads", block=0, group_means=True),
        attention.figure("readout", hide_sink=True),
        *(lens.figure(kind) for kind in ("top_tokens", "targets", "ranks", "kl")),
        study["patch"].figure("top"),
    ]
    grouped = figures[1]
    assert [a.text for a in grouped.layout.annotations] == ["kv group 0 (mean)", "kv group 1 (mean)"]
    assert len(figures[0].data) == 4  # one heatmap per query head
    shown = np.array(figures[0].data[1].z, dtype=float)
    assert np.isnan(shown[:, 0]).all()
    for i, fig in enumerate(figures):
        assert write_figure(fig, tmp_path / f"{i}.html").stat().st_size > 1_000_000
    with pytest.raises(ProbeError, match="Unknown logit-lens figure"):
        lens.figure("nope")


def test_unknown_figure_format_raises(study, tmp_path):
    with pytest.raises(ExportError, match="Unknown figure format"):
        study["patch"].save(tmp_path / "figure.bmp")


def test_static_export_without_a_browser_says_so_and_writes_nothing(study, tmp_path, monkeypatch):
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no chromium on this PATH
    target = tmp_path / "figure.png"
    with pytest.raises(ExportError, match="needs Chrome or Chromium.*apt-get install chromium.*html"):
        study["patch"].save(target)
    assert not target.exists()
    assert study["patch"].save(tmp_path / "figure.html").stat().st_size > 1_000_000  # HTML needs no browser


@pytest.mark.browser
def test_every_probe_saves_png_and_svg(study, tmp_path):
    with static_export():
        for probe in PROBES:
            path = study[probe].save(tmp_path / f"{probe}.png")
            width, height = png_size(path)
            assert width >= 400 and height >= 400 and path.stat().st_size > 10_000, probe
        delta = study["logit_lens"].compare(study["logit_lens"].baseline)
        assert png_size(delta.save(tmp_path / "delta.png"))[0] >= 400
        svg = study["attention"].save(tmp_path / "attention.svg")
    text = svg.read_text()
    assert text.lstrip().startswith("<svg") and "</svg>" in text and svg.stat().st_size > 10_000


# Comparisons and display -------------------------------------------------------------------------------------------


def test_compare_is_self_minus_other(tiny_qwen2):
    a = run(tiny_qwen2, PROMPT, [LogitLens(k=3), AttentionCapture(blocks=[1])])
    b = run(tiny_qwen2, SOURCE, [LogitLens(k=3), AttentionCapture(blocks=[1])])
    for name in ("logit_lens", "attention"):
        delta = a[name].compare(b[name])
        assert isinstance(delta, Comparison) and delta.probe == f"{a[name].probe} (delta)"
        numeric = {n for n, arr in a[name].arrays.items() if arr.is_numeric}
        assert set(delta.arrays) == numeric  # token strings are not subtracted
        for key in numeric:
            expected = a[name][key].values.double() - b[name][key].values.double()
            torch.testing.assert_close(delta[key].values.double(), expected, atol=1e-7, rtol=0)
            assert delta[key].dims == a[name][key].dims and delta[key].coords == a[name][key].coords
        assert delta["pattern" if name == "attention" else "top_probs"].values.abs().max() > 0
        assert delta.meta == {"minuend": a[name].meta, "subtrahend": b[name].meta}
        assert 'class="plotly-graph-div"' in delta.figure().to_html(full_html=False, include_plotlyjs=False)
    with pytest.raises(ProbeError, match="Cannot compare"):
        a["logit_lens"].compare(a["attention"])


def test_compare_intervened_with_baseline(study):
    lens = study["logit_lens"]
    delta = lens.compare(lens.baseline)
    expected = lens["kl_to_final"].values - lens.baseline["kl_to_final"].values
    torch.testing.assert_close(delta["kl_to_final"].values, expected, atol=1e-6, rtol=0)


def test_jupyter_display_is_plotlys_mimetype_and_a_standalone_html(study):
    for probe in PROBES:
        bundle = study[probe]._repr_mimebundle_()
        figure = json.loads(study[probe].figure().to_json())
        assert bundle["application/vnd.plotly.v1+json"]["data"] == figure["data"]
        html = bundle["text/html"]
        assert html.startswith("<div>") and 'class="plotly-graph-div"' in html and type(study[probe]).__name__ in html
        assert escape(study[probe].summary()) in html and bundle["text/plain"] == repr(study[probe])
        # every output carries plotly.js: a saved notebook renders whichever outputs were cleared
        assert len(html) > 1_000_000


def test_summaries_name_what_was_done(study):
    assert study["logit_lens"].summary().startswith("logit lens on tiny-qwen2; final top-3 at the readout:")
    assert "block 3 → identity" in study["block_replacement"].summary()
    assert "masked in blocks 2–3" in study["attention_mask"].summary()
    assert "kv patched" in study["patch"].summary()
    assert repr(study["attention"]).startswith("AttentionResult(attention of 2 blocks × 4 heads on tiny-qwen2")


def test_sites_figure_draws_the_edited_grid(study):
    patch, mask = study["patch"], study["attention_mask"]
    for result, name in ((patch, "patched"), (mask, "masked")):
        fig = result.figure("sites")
        np.testing.assert_array_equal(np.array(fig.data[0].z, dtype=float), result[name].numpy())
        assert set(result.figures()) == {"distribution", "top", "sites"}
    assert patch.sites() is patch["patched"] and mask.sites() is mask["masked"]
    assert study["block_replacement"].sites() is None
    with pytest.raises(ProbeError, match="whole blocks"):
        study["block_replacement"].figure("sites")
