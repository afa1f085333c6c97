"""``workbench study``: whole investigations that write a report."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from workbench.cli import app, out_folder
from workbench.cli.models import SPEC_HELP
from workbench.outputs import STUDY

study_app = typer.Typer(
    help="Whole studies that write a report (the founding random-number study, the randomness audit).",
    no_args_is_help=True,
)
app.add_typer(study_app, name="study")


def _blocks(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        from workbench.errors import LayerError

        raise LayerError(f"--patch-blocks {text!r} is not a comma list of block numbers: write e.g. 6,14.") from None


@study_app.command("random-number")
def random_number(
    model: str = typer.Option("smollm2", "--model", "-m", help=SPEC_HELP),
    out: Path = typer.Option(
        Path("report"),
        "--out",
        "-o",
        callback=out_folder(STUDY),
        help="Folder for report.html, figures/ and results.json: new, empty, or an earlier report.",
    ),
    prompt: list[str] = typer.Option([], "--prompt", "-p", help="Extra prompt for the distribution step (repeatable)."),
    prompts: Path | None = typer.Option(None, "--prompts", help="File of extra sweep prompts, one per line."),
    block: int | None = typer.Option(
        None, help="Block replaced by the identity (study: 21, scaled on shallower models)."
    ),
    patch_blocks: str | None = typer.Option(None, help="Blocks whose keys/values are patched (study: 6,14)."),
    late_from: int | None = typer.Option(None, help="Also patch every block from this one on (study: 21)."),
    mask_from: int | None = typer.Option(None, help="Mask attention to the bound from this block on (study: 13)."),
    bound: str = typer.Option("9", help="The upper bound's text in the prompt."),
    source_bound: str = typer.Option("5", help="The bound of the patching source prompt."),
    show_sink: bool = typer.Option(
        False, "--show-sink", help="Keep the first token and the diagonal in attention grids."
    ),
    device: str | None = typer.Option(None, help="cpu, cuda or mps."),
    static: bool = typer.Option(True, help="Also write PNG and SVG figures (needs Chromium)."),
    figures_html: Literal["shared", "inline", "cdn"] = typer.Option(
        "shared",
        "--figures-html",
        help=(
            "How figures/*.html load plotly.js: one shared copy beside them (light, offline), inline in each "
            "(self-contained, 4.8 MB each) or from the CDN."
        ),
    ),
    lens: Path | None = typer.Option(
        None,
        "--lens",
        help=(
            "A lens file from `workbench lens fit` for this model: the logit lens is compared with it and the report "
            "says whether 'the digits appear late' survives the better lens."
        ),
    ),
    fit_lens: bool = typer.Option(
        False,
        "--fit-lens",
        help=(
            "Fit a linear lens first (on --lens-tokens tokens sampled from the model; minutes on a CPU) and compare."
        ),
    ),
    lens_tokens: int = typer.Option(8192, "--lens-tokens", help="Tokens of sampled text for --fit-lens."),
    dataset: str | None = typer.Option(
        None,
        "--dataset",
        help=(
            "A prompt dataset (JSONL/CSV/Parquet with prompt, source, bound, source_bound), or 'bundled' (56 "
            "paraphrases × bounds): each headline effect as a mean over it with a 95% interval."
        ),
    ),
    skip_bad_rows: bool = typer.Option(False, "--skip-bad-rows", help="Run the dataset's good rows when some are bad."),
    resamples: int = typer.Option(9999, "--resamples", help="Bootstrap resamples of the dataset intervals."),
) -> None:
    """Reproduce the random-number investigation (sections 1–7 of the study) and write a report.

    OUT is checked before the model loads: it must be new, empty, or an earlier report, which is
    replaced only once the new one is complete (files you added there are never touched)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from workbench.models import load_model
    from workbench.studies.random_number import StudyOptions, read_prompts_file, run_study
    from workbench.studies.report import write_report

    if prompts is not None:
        read_prompts_file(prompts)  # fail before loading the model
    options = StudyOptions(
        extra_prompts=list(prompt),
        prompts_file=prompts,
        block=block,
        patch_blocks=_blocks(patch_blocks),
        late_from=late_from,
        mask_from=mask_from,
        bound=bound,
        source_bound=source_bound,
        hide_sink=not show_sink,
        hide_diagonal=not show_sink,
        lens=lens,
        fit_lens=fit_lens,
        lens_tokens=lens_tokens,
        dataset=dataset,
        skip_bad_rows=skip_bad_rows,
        resamples=resamples,
    )
    steps = [
        "load model",
        "digit distributions",
        "logit lens and attention",
        "identity block",
        "identity sweep",
        "patching and masking",
        "prompt sweep",
        "figures",
        "writing figures",
        "report",
    ]
    steps += ["lens"] if lens is not None or fit_lens else []
    steps += ["dataset"] if dataset is not None else []
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        transient=False,
    ) as bar:
        task = bar.add_task("loading the model", total=len(steps))

        def advance(description: str) -> None:
            bar.update(task, advance=1, description=description)

        loaded = load_model(model, device=device)
        study = run_study(loaded, options, progress=advance)
        path = write_report(study, out, static=static, progress=advance, figures_html=figures_html)
        bar.update(task, completed=len(steps), description="done")
    for line in study.record["headline"]:
        typer.echo(f"• {line}")
    for note in study.plan.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"report: {path}")


try:
    from workbench.cli.sampling import register_randomness
except ImportError:  # the sampling lab is optional for this command group
    pass
else:
    register_randomness(study_app)
