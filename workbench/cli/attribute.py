"""``workbench attribute``: direct logit attribution from the shell — which heads and MLPs write the answer."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from workbench.cli import app, out_folder
from workbench.cli.bench import OUT_OPT, sweep_app
from workbench.metric_names import METRIC_FORMS
from workbench.outputs import PROBE
from workbench.studies.defaults import SOURCE_PROMPT, STUDY_PROMPT

UNIT_HELP = "component (embeddings, attention and MLP per block), head, layer or neuron."


def _check_dataset(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        from workbench.errors import DatasetError

        raise DatasetError(f"Dataset {value} does not exist: pass a JSONL, CSV or Parquet file of prompts.")
    return value


@app.command("attribute")
def attribute(
    model: str = typer.Option("smollm2", "--model", help="Model spec (smollm2, tiny-qwen2, a path or hub id)."),
    prompt: str = typer.Option(STUDY_PROMPT, "--prompt", "-p", help="The prompt (default: the study's)."),
    target: str | None = typer.Option(
        None, "--target", help="The token whose logit is attributed, e.g. 1 (with --dataset a template, e.g. {bound})."
    ),
    vs: str | None = typer.Option(None, "--vs", help="Attribute logit(target) − logit(vs), e.g. 5."),
    metric: str | None = typer.Option(
        None, "--metric", help="Instead of --target: logit:T, logit_diff:T,U, prob:6,7,8,9 or digits_above:5."
    ),
    unit: str = typer.Option("head", "--unit", help=UNIT_HELP),
    position: int = typer.Option(-1, "--position", help="Readout position (default: the last token)."),
    dataset: Path | None = typer.Option(
        None, "--dataset", callback=_check_dataset, help="Attribute every prompt of a JSONL/CSV/Parquet file."
    ),
    resamples: int = typer.Option(9999, "--resamples", min=99, help="Bootstrap resamples with --dataset."),
    total: str | None = typer.Option(
        None, "--total", help="Also each component's total effect by zero, mean or resample ablation (head/component)."
    ),
    source: str = typer.Option(SOURCE_PROMPT, "--source", help="The source prompt of --total resample."),
    top: int = typer.Option(10, "--top", min=1, help="How many components the summary lists."),
    out: Path | None = typer.Option(
        None,
        "--out",
        callback=out_folder(PROBE),
        help="Folder for the figures and the data (JSON): new, empty, or an earlier probe output.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object whose component values sum to total."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda or mps."),
) -> None:
    """Split a logit (difference) at the readout into what each component wrote, final norm frozen."""
    from workbench.attribution import check_unit, metric_spec
    from workbench.models import load_model

    spec = metric_spec(target, vs, metric)
    check_unit(unit)
    if total is not None:
        from workbench.attribution.total import ablation

        ablation(total, source)
    if dataset is not None and total is not None:
        from workbench.errors import AttributionError

        raise AttributionError("--total runs on one prompt: drop --dataset, or --total.")
    loaded = load_model(model, device=device)
    if dataset is not None:
        _attribute_dataset(loaded, dataset, spec, unit, position, resamples, out, as_json, top)
    else:
        _attribute_prompt(loaded, prompt, spec, unit, position, total, source, out, as_json, top)


def _attribute_prompt(model, prompt, spec, unit, position, total, source, out, as_json, top) -> None:
    from workbench.attribution import direct_logit_attribution
    from workbench.attribution.result import attribution_result
    from workbench.cli.probes import write_result

    result = attribution_result(
        direct_logit_attribution(model, prompt, spec, unit=unit, position=position), model, [prompt]
    )
    data = result.to_json()
    both = None
    if total is not None:
        from workbench.attribution.total import direct_vs_total

        both = direct_vs_total(model, prompt, spec, unit=unit, ablation_kind=total, source=source)
        for row, value in zip(data["components"], both["total"].numpy(), strict=True):
            row["total_effect"] = None if value != value else float(value)
        data["ablation"] = total
    if out is not None:
        written = write_result(result, out, stem="dla")
        typer.echo(f"wrote {len(written)} files to {out}", err=True)
    if as_json:
        typer.echo(json.dumps(data))
        return
    typer.echo(result.summary())
    for label, value in result.top(top):
        typer.echo(f"  {value:+.4f}  {label}")
    if both is not None:
        typer.echo(both.summary())


def _attribute_dataset(model, dataset, spec, unit, position, resamples, out, as_json, top) -> None:
    from workbench.attribution.dataset import attribute_dataset
    from workbench.cli.probes import write_result

    result = attribute_dataset(model, str(dataset), spec, unit=unit, position=position, resamples=resamples)
    if out is not None:
        written = write_result(result, out, stem="dla-dataset")
        typer.echo(f"wrote {len(written)} files to {out}", err=True)
    if as_json:
        typer.echo(json.dumps(result.to_json()))
        return
    typer.echo(result.summary())
    for row in result.ranked(top):
        interval = f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]"
        typer.echo(f"  {row['mean']:+.4f} {interval}  p_bh {row['p_bh']:.3g}  {row['component']}")


@sweep_app.command("path")
def sweep_path(
    model: str = typer.Option("smollm2", "--model", help="Model spec (smollm2, tiny-qwen2, a path or hub id)."),
    prompt: str = typer.Option(STUDY_PROMPT, "--prompt", help="The clean prompt (default: the study's)."),
    source: str = typer.Option(SOURCE_PROMPT, "--source", help="The source prompt (same token length)."),
    senders: str = typer.Option(
        "all", "--senders", help="all, heads, mlps, or names: input, a{block}.h{head}, m{block} (comma-separated)."
    ),
    receivers: str = typer.Option(
        "logits",
        "--receivers",
        help="Comma-separated: logits, m{block} (an MLP's input), a{block}.h{head}<q>, a{block}.kv{group}<k>|<v>.",
    ),
    metric: str = typer.Option("kl", "--metric", help=f"What each path changes at the readout: {METRIC_FORMS}."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda or mps."),
    out: str | None = OUT_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Path patching: each sender patched from SOURCE, seen by one receiver only, everything else clean."""
    from workbench.attribution.path import all_senders, path_patching
    from workbench.models import load_model

    loaded = load_model(model, device=device)
    every = all_senders(loaded)
    chosen = {
        "all": every,
        "heads": [s for s in every if s.startswith("a")],
        "mlps": [s for s in every if s.startswith("m")],
    }.get(senders.strip()) or [s.strip() for s in senders.split(",") if s.strip()]
    wanted = [r.strip() for r in receivers.split(",") if r.strip()]
    result = path_patching(loaded, prompt, source, senders=chosen, receivers=wanted, metric=metric)
    if out:
        typer.echo(f"wrote {result.save(out)}", err=True)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
    else:
        typer.echo(result.summary())
