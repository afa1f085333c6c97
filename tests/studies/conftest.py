import pytest

from workbench.studies.random_number import StudyOptions, run_study
from workbench.studies.report import write_report


@pytest.fixture(scope="session")
def smollm2_study(smollm2, tmp_path_factory):
    """The whole study on the real model, written once (HTML figures only; PNG/SVG are tested on a tiny model)."""
    study = run_study(smollm2, StudyOptions())
    out = tmp_path_factory.mktemp("study") / "report"
    write_report(study, out, static=False)
    return study, out
