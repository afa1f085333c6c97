"""``workbench report DIR``: redraw a study's figures and report.html from its results.json, without the model."""

from __future__ import annotations

from pathlib import Path

import typer

from workbench.cli import app
from workbench.outputs import STUDY


@app.command("report")
def report(
    folder: Path = typer.Argument(
        ..., help="A folder written by `workbench study random-number` (or its results.json)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Write the redrawn report here instead of replacing FOLDER."
    ),
    static: bool = typer.Option(True, help="Also write PNG and SVG figures (needs Chromium)."),
) -> None:
    """Rebuild every figure and report.html of a study from its results.json (no model is loaded).

    The report is replaced as a whole once the new one is complete; files you added to the folder make
    it refuse, naming one, and nothing is changed."""
    from workbench.outputs import check_folder
    from workbench.studies.report import load_study, write_report

    target = out if out is not None else (folder.parent if folder.suffix == ".json" else folder)
    check_folder(target, STUDY)
    study = load_study(folder)
    path = write_report(study, target, static=static)
    typer.echo(f"report: {path} ({len(study.figures)} figures redrawn from {folder})")
