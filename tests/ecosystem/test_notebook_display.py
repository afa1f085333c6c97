"""Jupyter display survives a saved notebook: clear the first figure's output, convert with nbconvert, and the
second figure still renders in a real (offline) browser; JupyterLab and VS Code get Plotly's own mimetype."""

from __future__ import annotations

import ast
import json

import nbformat
import pytest
from nbclient import NotebookClient
from nbconvert import HTMLExporter

from workbench import LogitLens, results, run
from workbench.errors import ExportError
from workbench.export import find_browser

from .browser import dom, figure_divs

PLOTLY_MIME = "application/vnd.plotly.v1+json"
CELLS = [
    "from workbench import AttentionCapture, LogitLens, load_model, run\n"
    "model = load_model('tiny-qwen2')\n"
    'out = run(model, "I\'m generating a random number between [0, 9]. The number is ", '
    "[LogitLens(k=3), AttentionCapture(blocks=[1])])",
    "out['logit_lens']",
    "out['attention']",
    "out['logit_lens'].figure().to_json()",  # the figures the two results display, for comparison
    "out['attention'].figure().to_json()",
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The notebook executed in a kernel, saved to disk and read back, as a user's saved notebook would be."""
    folder = tmp_path_factory.mktemp("notebook")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in CELLS])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    ).execute()
    nbformat.write(notebook, folder / "saved.ipynb")
    return folder, nbformat.read(folder / "saved.ipynb", as_version=4)


def display(cell) -> dict:
    (output,) = [o for o in cell.outputs if o.output_type in ("execute_result", "display_data")]
    return output.data


def test_each_result_carries_plotlys_mimetype_for_jupyterlab_and_vscode(saved):
    _, notebook = saved
    for shown, drawn in ((1, 3), (2, 4)):
        data = display(notebook.cells[shown])
        figure = json.loads(ast.literal_eval(display(notebook.cells[drawn])["text/plain"]))
        assert data[PLOTLY_MIME]["data"] == figure["data"]
        assert data[PLOTLY_MIME]["layout"]["title"] == figure["layout"]["title"]
        assert 'class="plotly-graph-div"' in data["text/html"] and data["text/plain"].startswith(
            ("LogitLensResult(", "AttentionResult(")
        )


@pytest.mark.browser
@pytest.mark.skipif(find_browser() is None, reason="needs Chromium (make setup installs it)")
def test_clearing_the_first_figure_leaves_the_second_rendering(saved, tmp_path):
    folder, notebook = saved
    first, second = (display(notebook.cells[i])["text/html"] for i in (1, 2))
    notebook.cells[1].outputs = []
    page = tmp_path / "saved.html"
    page.write_text(HTMLExporter().from_notebook_node(notebook)[0])
    drawn = figure_divs(dom(page, tmp_path / "profile"))
    div = lambda html: html.split('<div id="', 1)[1].split('"', 1)[0]  # noqa: E731
    assert div(first) not in drawn
    assert drawn == {div(second): True}, "the second figure did not render once the first output was cleared"


def test_cdn_fallback_is_light_and_a_wrong_setting_is_named(tiny_qwen2, monkeypatch):
    lens = run(tiny_qwen2, "The number is ", LogitLens(k=2))["logit_lens"]
    monkeypatch.setattr(results, "NOTEBOOK_PLOTLYJS", "cdn")
    bundle = lens._repr_mimebundle_()
    assert 'src="https://cdn.plot.ly/' in bundle["text/html"] and len(bundle["text/html"]) < 200_000
    assert bundle[PLOTLY_MIME]["data"] == json.loads(lens.figure().to_json())["data"]
    monkeypatch.setattr(results, "NOTEBOOK_PLOTLYJS", "shared")
    with pytest.raises(ExportError, match="set it to 'inline' or 'cdn'"):
        lens._repr_mimebundle_()
