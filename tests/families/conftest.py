"""The family matrix: one session-scoped tiny model (and its plain transformers twin) per family row, and
the record of every cell's outcome, from which ``test_matrix.py`` renders the table in docs/models.md.

A test joins the matrix with ``@pytest.mark.column("…")`` and the ``family`` fixture. Its cell is ✓ when
it passes; ◐ or ✗ with the reason when it passes by asserting a stated limit or a known failure
(``note(request, text, mark)``); — with the reason when it is skipped; FAILED when it fails.
"""

from __future__ import annotations

import pytest

from workbench.models import load_model
from workbench.tiny import build_tiny_model

from .table import FAMILIES

PROMPT = "I'm generating a random number between [0, 9]. The number is "
SOURCE = "I'm generating a random number between [0, 5]. The number is "
COLUMNS = (
    "facts",
    "logit lens",
    "identity block",
    "self-patch",
    "masking",
    "attention",
    "k/v patch",
    "naive sweeps",
    "fast sweeps",
    "study",
    "GGUF",
)
# (family id, column) → every test of that cell: (outcome, mark, note); outcome "passed" | "skipped" | "failed".
OUTCOMES: dict[tuple[str, str], list[tuple[str, str, str]]] = {}


def pytest_configure(config):
    config.addinivalue_line("markers", "column(name): the family-matrix column a test fills (tests/families)")
    config.addinivalue_line("markers", "matrix_check: reads the whole matrix's outcomes, so runs last")


def note(request, text: str, mark: str = "✗") -> None:
    """Say what a passing test established about its cell: ✗ a known failure, ◐ a stated limit, ✓ a remark."""
    request.node.user_properties.append(("matrix_note", (mark, text)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    marker = item.get_closest_marker("column")
    family = getattr(item, "callspec", None) and item.callspec.params.get("family")
    if marker is None or family is None:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        notes = [value for key, value in item.user_properties if key == "matrix_note"]
        mark, why = notes[-1] if notes else ("✓", "")
        if report.skipped:
            mark = "—"
            why = str(report.longrepr[-1]).removeprefix("Skipped: ") if isinstance(report.longrepr, tuple) else ""
        OUTCOMES.setdefault((family.id, marker.args[0]), []).append((report.outcome, mark, why))


def pytest_collection_modifyitems(config, items):
    """The matrix check reads every other cell's outcome, so it runs last."""
    last = [item for item in items if item.get_closest_marker("matrix_check")]
    items[:] = [item for item in items if item not in last] + last


@pytest.fixture(scope="session", params=FAMILIES, ids=lambda family: family.id)
def family(request):
    return request.param


@pytest.fixture(scope="session")
def model(family):
    return load_model(family.name, device="cpu")


@pytest.fixture(scope="session")
def hf(family):
    """A second copy of the same weights as a plain transformers model, eager attention as the bridge uses."""
    hf_model, _ = build_tiny_model(family.name)
    hf_model.set_attn_implementation("eager")
    # Falcon ignores set_attn_implementation, and its SDPA path with output_attentions=True is not causal.
    hf_model.config._attn_implementation = "eager"
    return hf_model.eval()


@pytest.fixture(scope="session")
def tokenizer(family):
    return build_tiny_model(family.name)[1]
