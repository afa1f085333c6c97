"""``workbench attribute``: direct logit attribution from the shell — which heads and MLPs write the answer."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from workbench.cli import app, out_folder
from workbench.cli.bench import OUT_OPT, sweep_app
from workbench.metrics import METRIC_FORMS
from workbench.outputs import PROBE
from workbench.studies.defaults import SOURCE_PROMPT, STUDY_PROMPT

UNIT_HELP = "component (embeddings, attention and MLP per block), head, layer or neuron."


@app.command("attribute")
def attribute(
    model: str = typer.Option("smollm2", "--model", help="Model spec (smollm2, tiny-qwen2, a path or hub id)."),
    prompt: str = typer.Option(STUDY_PROMPT, "--prompt", "-p", help="The prompt (default: the study's)."),
    target: str | None = typer.Option(None, "--target", help="The token whose logit is attributed, e.g. 1."),
    vs: str | None = typer.Option(None, "--vs", help="Attribute logit(target) − logit(vs), e.g. 5."),
    metric: str | None = typer.Option(
        None, "--metric", help="Instead of --target: logit:T, logit_diff:T,U, prob:6,7,8,9 or digits_above:5."
    ),
    unit: str = typer.Option("head", "--unit", help=UNIT_HELP),
    position: int = typer.Option(-1, "--position", help="Readout position (default: the last token)."),
    top: int = typer.Option(10, "--top", min=1, help="How many components the summary lists."),
    out: Path | None = typer.Option(
        None,
        "--out",
        callback=out_folder(PROBE),
        help="Folder for the figures and dla.json: new, empty, or an earlier probe output.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object whose component values sum to total."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda or mps."),
) -> None:
    """Split a logit (difference) at the readout into what each component wrote, final norm frozen."""
    from workbench.attribution import check_unit, direct_logit_attribution, metric_spec
    from workbench.attribution.result import attribution_result
    from workbench.cli.probes import write_result
    from workbench.models import load_model

    spec = metric_spec(target, vs, metric)
    check_unit(unit)
    loaded = load_model(model, device=device)
    result = attribution_result(
        direct_logit_attribution(loaded, prompt, spec, unit=unit, position=position), loaded, [prompt]
    )
    if out is not None:
        written = write_result(result, out, stem="dla")
        typer.echo(f"wrote {len(written)} files to {out}", err=True)
    if as_json:
        typer.echo(json.dumps(result.to_json()))
        return
    typer.echo(result.summary())
    for label, value in result.top(top):
        typer.echo(f"  {value:+.4f}  {label}")


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
