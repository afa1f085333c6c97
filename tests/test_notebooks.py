"""Every notebook in notebooks/ runs top to bottom on the embedded default model, and draws its figures.

The docs build renders the same executed copies (docs/hooks/notebooks.py): whichever of the two runs first
executes a notebook, the other reuses the copy while the notebook and the workbench source are unchanged.
"""

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).parent.parent
_spec = importlib.util.spec_from_file_location("notebook_pages", ROOT / "docs" / "hooks" / "notebooks.py")
notebook_pages = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(notebook_pages)

NOTEBOOKS = notebook_pages.notebooks()
PLOTLY_MIME = "application/vnd.plotly.v1+json"


@pytest.mark.real
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path):
    executed = nbformat.read(notebook_pages.executed(path), as_version=4)
    committed = nbformat.read(path, as_version=4)
    assert [c.source for c in executed.cells] == [c.source for c in committed.cells]
    assert not any(c.get("outputs") for c in committed.cells if c.cell_type == "code"), (
        "commit notebooks without outputs"
    )
    code = [cell for cell in executed.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code), "a cell did not run"
    outputs = [o for cell in code for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    figures = [o for o in outputs if PLOTLY_MIME in o.get("data", {})]
    assert figures, f"{path.name} shows no figure"
    # each figure also carries HTML, so a static page (the docs, nbconvert) can draw it
    assert all('class="plotly-graph-div"' in o["data"].get("text/html", "") for o in figures)
