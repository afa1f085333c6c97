"""The family matrix in docs/models.md is what this test run found.

Runs last (see conftest). With every cell of the matrix run in this session it renders the table from
the outcomes and compares it with the one between the markers in docs/models.md; with
``WORKBENCH_UPDATE_MATRIX=1`` it writes it there instead (never a table with a failed cell).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from workbench.tiny import TINY_FAMILIES

from .conftest import COLUMNS, OUTCOMES
from .table import FAMILIES

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"
START, END = "<!-- family-matrix:start -->", "<!-- family-matrix:end -->"
REGENERATE = "WORKBENCH_UPDATE_MATRIX=1 pytest tests/families"
SEVERITY = {"✓": 0, "◐": 1, "✗": 2, "—": 3}


def render_matrix(outcomes: dict) -> str:
    """The markdown table (one row per family, one column per invariant) and its numbered notes."""
    notes: list[str] = []

    def cell(runs) -> str:
        if any(outcome == "failed" for outcome, _, _ in runs):
            return "FAILED"
        mark, why = max(((m, w) for _, m, w in runs), key=lambda pair: (SEVERITY[pair[0]], bool(pair[1])))
        if not why:
            return mark
        if why not in notes:
            notes.append(why)
        return f"{mark} ({notes.index(why) + 1})"

    lines = ["| family | " + " | ".join(COLUMNS) + " |", "| --- |" + " --- |" * len(COLUMNS)]
    for family in FAMILIES:
        label = f"`{family.name}`" + ("" if family.listed else " †")
        lines.append(f"| {label} | " + " | ".join(cell(outcomes[(family.id, c)]) for c in COLUMNS) + " |")
    lines.append("")
    lines += [f"{i}. {text}" for i, text in enumerate(notes, 1)]
    return "\n".join(lines)


@pytest.mark.matrix_check
def test_the_family_matrix_in_the_docs_is_current():
    missing = [(f.id, c) for f in FAMILIES for c in COLUMNS if (f.id, c) not in OUTCOMES]
    if missing:
        pytest.skip(
            f"{len(missing)} matrix cells did not run in this session (first: {missing[0]}): "
            "run tests/families whole to check docs/models.md"
        )
    assert {f.name for f in FAMILIES} <= set(TINY_FAMILIES)
    table = render_matrix(OUTCOMES)
    text = DOC.read_text()
    before, rest = text.split(START)
    current, after = rest.split(END)
    if os.environ.get("WORKBENCH_UPDATE_MATRIX") == "1":
        assert "FAILED" not in table, "a matrix cell failed: fix it before writing the table"
        DOC.write_text(f"{before}{START}\n{table}\n{END}{after}")
        return
    assert current.strip() == table.strip(), (
        f"docs/models.md's family matrix differs from what this run found: regenerate it with `{REGENERATE}`"
    )
