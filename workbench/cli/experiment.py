"""``workbench experiment``: run an experiment spec over a dataset of prompts, and summarize its results."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from workbench.cli import app

experiment_app = typer.Typer(
    help="Experiments over datasets of prompts: per-item effects with confidence intervals, "
    "resumable runs, Ray workers (see docs/experiments.md).",
    no_args_is_help=True,
)
app.add_typer(experiment_app, name="experiment")


def _json_option(text: str | None, what: str):
    if text is None:
        return None
    from workbench.errors import ExperimentError

    if what == "--device-map" and not text.lstrip().startswith("{"):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ExperimentError(
            f"{what} {text!r} is not JSON: write e.g. "
            + (
                '\'{"model.layers.0": "cuda:0", …}\' or auto'
                if what == "--device-map"
                else '\'{"0": "20GiB", "cpu": "60GiB"}\''
            )
            + "."
        ) from None
    if not isinstance(value, dict):
        raise ExperimentError(f"{what} {text!r} must be a JSON object.")
    return {int(k) if str(k).isdigit() else k: v for k, v in value.items()} if what == "--max-memory" else value


@experiment_app.command("run")
def run(
    spec: Path = typer.Argument(..., help="The experiment's TOML file (schema: docs/experiments.md)."),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Folder for results.parquet, manifest.json, summary.json, "
        "report.html and the shards (new, empty, or an earlier run of "
        "this experiment to resume).",
    ),
    executor: str = typer.Option("local", help="local (this process) or ray (actors that each load the model)."),
    workers: int | None = typer.Option(None, help="Ray actors to start (default: one per GPU of the cluster, else 1)."),
    address: str | None = typer.Option(
        None, help="Join a running Ray cluster (auto, or ray://host:10001) instead of starting a local one."
    ),
    skip_bad_rows: bool = typer.Option(
        False, "--skip-bad-rows", help="Run the good rows when some are bad (they are listed in bad_rows.json)."
    ),
    force: bool = typer.Option(
        False, "--force", help="Start over: delete what the workbench wrote in --out (never other files)."
    ),
    model: str | None = typer.Option(None, "--model", "-m", help="Override the spec's model."),
    device: str | None = typer.Option(None, help="Override the spec's device: cpu, cuda or mps."),
    dtype: str | None = typer.Option(None, help="Override the spec's dtype: float32, bfloat16 or float16."),
    device_map: str | None = typer.Option(
        None,
        help="Split the model over devices: auto, balanced, sequential, or a JSON object from module names to devices.",
    ),
    n_devices: int | None = typer.Option(None, help="Split the model evenly over this many GPUs."),
    max_memory: str | None = typer.Option(
        None, help='JSON object of memory per device for a split, e.g. \'{"0": "20GiB", "1": "20GiB"}\'.'
    ),
    png: bool = typer.Option(False, "--png", help="Also export the forest plot as forest.png (needs Chromium)."),
) -> None:
    """Run SPEC over its dataset and write the results to --out; run it again to finish a killed run."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from workbench.experiments import Experiment, run_experiment, summarize
    from workbench.experiments.storage import check_out_dir

    experiment = Experiment.from_toml(spec).with_model(
        spec=model,
        device=device,
        dtype=dtype,
        device_map=_json_option(device_map, "--device-map"),
        n_devices=n_devices,
        max_memory=_json_option(max_memory, "--max-memory"),
    )
    check_out_dir(out)  # before the model loads
    if png:
        from workbench.export import _require_browser

        _require_browser()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ) as bar:
        task = bar.add_task("starting", total=None)

        def progress(done: int, total: int, text: str) -> None:
            bar.update(task, completed=done, total=total or None, description=text)

        result = run_experiment(
            experiment,
            out,
            executor=executor,
            workers=workers,
            address=address,
            skip_bad_rows=skip_bad_rows,
            force=force,
            progress=progress,
        )
        bar.update(task, description="done")
    if png:
        summarize(out, png=True)
    if result.skipped:
        typer.echo(
            f"skipped {len(result.skipped)} bad row{'s' if len(result.skipped) != 1 else ''} "
            f"(listed in {out / 'bad_rows.json'})"
        )
    typer.echo(
        f"{result.computed} shards computed, {result.reused} reused; manifest sha256 {result.manifest['sha256'][:16]}…"
    )
    _print_effects(result.summary)
    typer.echo(f"results: {out / 'results.parquet'}; report: {out / 'report.html'}")


@experiment_app.command("summarize")
def summarize_command(
    folder: Path = typer.Argument(..., help="An experiment's --out folder (or its results.parquet)."),
    png: bool = typer.Option(False, "--png", help="Also export the forest plot as forest.png (needs Chromium)."),
) -> None:
    """Rebuild summary.json and report.html from results.parquet alone (no model is loaded)."""
    from workbench.experiments import summarize

    summary = summarize(folder, png=png)
    _print_effects(summary)
    typer.echo(f"summary: {(folder if folder.is_dir() else folder.parent) / 'summary.json'}")


def _print_effects(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"effects vs {summary['clean']} ({summary['n_items']} items, "
        f"{summary['method']['confidence']:.0%} intervals)"
    )
    for column in ("condition", "metric", "mean effect", "interval", "p (BH)"):
        table.add_column(column)
    for name, metrics in summary["conditions"].items():
        for metric, row in metrics.items():
            table.add_row(
                name,
                metric,
                _fmt(row["mean"]),
                f"[{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]",
                _fmt(row["p_adjusted"]) + (" ✓" if row["significant"] else ""),
            )
    for grid, entry in summary["grids"].items():
        for metric, cells in entry["metrics"].items():
            hits = sum(c["significant"] for c in cells)
            table.add_row(grid, metric, f"{hits} of {len(cells)} cells significant", "", "")
    Console().print(table)


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.4g}"
