"""Light figure files: a study's figures/*.html share one plotly.js beside them, and every one still opens offline."""

from __future__ import annotations

import pytest
from plotly.offline import get_plotlyjs, get_plotlyjs_version

from workbench.errors import ExportError
from workbench.export import find_browser, write_figures
from workbench.studies.random_number import StudyOptions, run_study
from workbench.studies.report import write_report

from .browser import doms, figure_divs

SCRIPT = f"plotly-{get_plotlyjs_version()}.min.js"
needs_browser = pytest.mark.skipif(find_browser() is None, reason="needs Chromium (make setup installs it)")


@pytest.fixture(scope="module")
def study(tiny_qwen2):
    return run_study(tiny_qwen2, StudyOptions(sweep_prompts=StudyOptions().sweep_prompts[:2]))


@pytest.fixture(scope="module")
def reports(study, tmp_path_factory):
    """The same study written with each way of loading plotly.js (HTML figures only)."""
    root = tmp_path_factory.mktemp("reports")
    return {
        mode: write_report(study, root / mode, static=False, figures_html=mode).parent
        for mode in ("inline", "shared", "cdn")
    }


def folder_size(folder) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def test_shared_figures_weigh_less_than_a_fifth_of_inline_ones(study, reports):
    inline, shared = reports["inline"] / "figures", reports["shared"] / "figures"
    names = sorted(f"{fig.key}.html" for fig in study.figures)
    assert sorted(p.name for p in inline.iterdir()) == names
    assert sorted(p.name for p in shared.iterdir()) == sorted([*names, SCRIPT])
    assert (shared / SCRIPT).read_text() == get_plotlyjs()
    assert folder_size(shared) < folder_size(inline) / 5
    for name in names:  # the same figure, only the script tag differs
        page = (shared / name).read_text()
        assert f'<script charset="utf-8" src="{SCRIPT}"></script>' in page and get_plotlyjs()[:500] not in page
        assert get_plotlyjs()[:500] in (inline / name).read_text()
    # report.html stays self-contained whatever the figures do
    for folder in reports.values():
        assert get_plotlyjs()[:500] in (folder / "report.html").read_text()


@needs_browser
@pytest.mark.browser
def test_every_shared_figure_opens_offline(study, reports, tmp_path):
    pages = sorted((reports["shared"] / "figures").glob("*.html"))
    rendered = doms(pages, tmp_path)
    for page, dom in rendered.items():
        drawn = figure_divs(dom)
        assert len(drawn) == 1 and all(drawn.values()), f"{page.name} did not render offline"


@needs_browser
@pytest.mark.browser
def test_cdn_figures_are_light_and_need_the_network(reports, tmp_path):
    """The offline browser really is offline: a figure that loads plotly.js from the CDN stays blank."""
    folder = reports["cdn"] / "figures"
    assert folder_size(folder) < folder_size(reports["shared"] / "figures") - len(get_plotlyjs()) + 10_000
    page = sorted(folder.glob("*.html"))[0]
    assert "https://cdn.plot.ly/" in page.read_text()
    assert list(figure_divs(doms([page], tmp_path)[page]).values()) == [False]


def test_one_figure_is_self_contained_and_many_share_by_default(study, tmp_path):
    figures = {fig.key: fig.figure for fig in study.figures[:2]}
    one, _ = write_figures(dict(list(figures.items())[:1]), tmp_path / "one", static=())
    assert [p.name for p in one] == [f"{study.figures[0].key}.html"]
    many, _ = write_figures(figures, tmp_path / "many", static=())
    assert [p.name for p in many] == [SCRIPT, *(f"{key}.html" for key in figures)]
    again, _ = write_figures(figures, tmp_path / "many", static=())  # the script it wrote is reused
    assert again == many and (tmp_path / "many" / SCRIPT).read_text() == get_plotlyjs()


def test_a_foreign_script_of_that_name_is_never_overwritten(study, tmp_path):
    foreign = tmp_path / SCRIPT
    foreign.write_text("// someone else's file")
    figures = {fig.key: fig.figure for fig in study.figures[:2]}
    with pytest.raises(ExportError, match="is not the plotly.js the workbench writes"):
        write_figures(figures, tmp_path, static=())
    assert foreign.read_text() == "// someone else's file"
    assert not list(tmp_path.glob("*.html"))
    with pytest.raises(ExportError, match="not one of inline, shared, cdn"):
        write_figures(figures, tmp_path / "other", plotlyjs="external", static=())


def test_the_study_cli_chooses_how_figures_load_plotlyjs(tmp_path):
    from typer.testing import CliRunner

    from workbench.cli import _register, app

    _register()
    out, runner = tmp_path / "report", CliRunner(env={"COLUMNS": "200"})
    command = ["study", "random-number", "--model", "tiny-qwen2", "--no-static", "--out", str(out)]
    bad = runner.invoke(app, [*command, "--figures-html", "external"], terminal_width=200)
    assert bad.exit_code == 2 and "'external' is not one of 'shared', 'inline', 'cdn'" in bad.output
    assert not out.exists()
    done = runner.invoke(app, [*command, "--figures-html", "cdn"], terminal_width=200)
    assert done.exit_code == 0, done.output
    pages = sorted((out / "figures").iterdir())
    assert pages and all(p.suffix == ".html" and "https://cdn.plot.ly/" in p.read_text() for p in pages)
    assert "--figures-html" in runner.invoke(app, ["study", "random-number", "--help"], terminal_width=200).output
