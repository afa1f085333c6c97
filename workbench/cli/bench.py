"""``workbench bench``: timings of sweeps and probes; ``workbench sweep``: run a sweep from the shell."""

from __future__ import annotations

import json

import typer

from workbench.cli import app
from workbench.metric_names import METRIC_FORMS
from workbench.studies.defaults import STUDY_PROMPT

bench_app = typer.Typer(
    help="Benchmarks: our sweeps vs TransformerLens' patching, and the cost of observers.", no_args_is_help=True
)
sweep_app = typer.Typer(
    help="Sweeps over every block × position (× head): patching, block replacement, masking.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")
app.add_typer(sweep_app, name="sweep")

MODEL = typer.Option("smollm2", "--model", help="Model spec (smollm2, tiny-qwen2, tiny-llama, a path or hub id).")
DEVICE = typer.Option(None, "--device", help="cpu, cuda or mps (default: the best available).")
THREADS = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice).")


def _threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _print(data: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(data))
        return
    for key, value in data.items():
        typer.echo(f"{key:>24}: {value:.4g}" if isinstance(value, float) else f"{key:>24}: {value}")


@bench_app.command("patching-sweep")
def patching_sweep(
    model: str = MODEL,
    site: str = typer.Option("resid_pre", help="resid_pre or z (per head, all positions)."),
    device: str = DEVICE,
    threads: int = THREADS,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Our sweep vs TransformerLens' get_act_patch_* on the study prompt: ours_s, baseline_s, speedup,
    max_abs_diff, cells."""
    from workbench.sweeps import bench

    _threads(threads)
    data = bench.patching_sweep(model, STUDY_PROMPT, STUDY_PROMPT.replace("9]", "5]"), site=site, device=device)
    if data["engine"] != "fast":  # the timing is not the fast engine's: say so on stderr too
        typer.echo(f"warning: the fast sweep engine did not run ({data['engine']})", err=True)
    _print(data, as_json)


@bench_app.command("probe-overhead")
def probe_overhead(
    model: str = MODEL,
    repeats: int = typer.Option(10, help="Timed repeats (the minimum is reported)."),
    device: str = DEVICE,
    threads: int = THREADS,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """A plain forward vs one with the five core observers; kept bytes vs run_with_cache."""
    from workbench.sweeps import bench

    _threads(threads)
    _print(bench.probe_overhead(model, STUDY_PROMPT, repeats=repeats, device=device), as_json)


@bench_app.command("separate")
def separate(
    model: str = MODEL,
    repeats: int = typer.Option(5, help="Timed repeats (the minimum is reported)."),
    device: str = DEVICE,
    threads: int = THREADS,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """run(..., separate=True) with three interventions vs three runs, and vs one batched forward."""
    from workbench.sweeps import bench

    _threads(threads)
    _print(
        bench.separate_runs(model, STUDY_PROMPT, STUDY_PROMPT.replace("9]", "5]"), repeats=repeats, device=device),
        as_json,
    )


def _emit(result, as_json: bool, out: str | None) -> None:
    if out:
        path = result.save(out)
        typer.echo(f"wrote {path}", err=True)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
    else:
        typer.echo(result.summary())
        for cell, value in result.top_cells(5):
            typer.echo(f"  {value:+.4f}  " + ", ".join(f"{k} {v!r}" for k, v in cell.items()))


PROMPT_OPT = typer.Option(STUDY_PROMPT, "--prompt", help="The prompt (default: the random-number study's).")
METRIC_OPT = typer.Option("kl", "--metric", help=f"What each cell measures at the readout: {METRIC_FORMS}.")
METHOD_OPT = typer.Option("auto", "--method", help="auto, fast or naive (one hooked forward per cell).")


def _check_out(value: str | None) -> str | None:
    """Checked as the options are parsed, before the model loads: a known suffix, never a foreign file."""
    from workbench.export import check_figure_path

    if value is not None:
        check_figure_path(value)
    return value


OUT_OPT = typer.Option(
    None,
    "--out",
    callback=_check_out,
    help="Write the result: .json data, or .html/.png/.svg/.pdf heatmap "
    "(never over a file the workbench did not write).",
)
JSON_OPT = typer.Option(False, "--json", help="Print the result as JSON.")


@sweep_app.command("patch")
def sweep_patch(
    model: str = MODEL,
    prompt: str = PROMPT_OPT,
    source: str = typer.Option(
        STUDY_PROMPT.replace("9]", "5]"),
        "--source",
        help="The source prompt (same token length; default: the study's [0, 5]).",
    ),
    site: str = typer.Option(
        "resid_pre", "--site", help="resid_pre, resid_mid, resid_post, attn_out, mlp_out, z, q, k, v."
    ),
    by_position: bool = typer.Option(False, "--by-position", help="Head sites: one cell per position too."),
    metric: str = METRIC_OPT,
    method: str = METHOD_OPT,
    device: str = DEVICE,
    out: str = OUT_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Activation patching from SOURCE into PROMPT over every block × position (× head)."""
    from workbench.models import load_model
    from workbench.sweeps import patch_sweep

    result = patch_sweep(
        load_model(model, device=device),
        prompt,
        source,
        site=site,
        by_position=by_position,
        metric=metric,
        method=method,
    )
    _emit(result, as_json, out)


@sweep_app.command("blocks")
def sweep_blocks(
    model: str = MODEL,
    prompt: str = PROMPT_OPT,
    mode: list[str] = typer.Option(
        ["identity"], "--mode", help="identity, zero_attn, zero_mlp, mean_attn, mean_mlp (repeatable)."
    ),
    metric: str = METRIC_OPT,
    method: str = METHOD_OPT,
    device: str = DEVICE,
    out: str = OUT_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Block replacement of every block, one at a time."""
    from workbench.models import load_model
    from workbench.sweeps import block_sweep

    _emit(block_sweep(load_model(model, device=device), prompt, modes=mode, metric=metric, method=method), as_json, out)


@sweep_app.command("mask")
def sweep_mask(
    model: str = MODEL,
    prompt: str = PROMPT_OPT,
    cumulative: bool = typer.Option(False, "--cumulative", help="Mask from the block to the last one."),
    metric: str = METRIC_OPT,
    method: str = METHOD_OPT,
    device: str = DEVICE,
    out: str = OUT_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Attention to each key position masked, per block."""
    from workbench.models import load_model
    from workbench.sweeps import mask_sweep

    _emit(
        mask_sweep(load_model(model, device=device), prompt, cumulative=cumulative, metric=metric, method=method),
        as_json,
        out,
    )


@sweep_app.command("intervention")
def sweep_intervention(
    model: str = MODEL,
    prompt: str = PROMPT_OPT,
    template: str = typer.Option(
        ...,
        "--template",
        help="The intervention as JSON, e.g. "
        '\'{"site": "resid_pre", "op": {"name": "scale", "factor": 0}}\' '
        "(any registered operation, plugins included).",
    ),
    over: str = typer.Option("block,position", "--over", help="Axes swept: block, position, head."),
    metric: str = METRIC_OPT,
    method: str = METHOD_OPT,
    device: str = DEVICE,
    out: str = OUT_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Any intervention, cell by cell over blocks × positions (× heads)."""
    from workbench.errors import SweepError
    from workbench.interventions import Intervention
    from workbench.models import load_model
    from workbench.sweeps import intervention_sweep

    try:
        data = json.loads(template)
    except json.JSONDecodeError as exc:
        raise SweepError(
            f"--template is not JSON ({exc.msg} at character {exc.pos}): write e.g. "
            '\'{"site": "attn_out", "op": "zero"}\'.'
        ) from None
    axes = tuple(part.strip() for part in over.split(",") if part.strip())
    result = intervention_sweep(
        load_model(model, device=device), prompt, Intervention.from_dict(data), over=axes, metric=metric, method=method
    )
    _emit(result, as_json, out)
