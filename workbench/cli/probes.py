"""``workbench probes list`` and ``workbench probe NAME``: run one registered probe from the shell.

Probe options are the probe's dataclass fields, given as ``-o key=value`` and parsed from the fields'
types (:mod:`workbench.cli.options`); ``workbench probe NAME --help`` lists them with types and defaults.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from workbench.cli import app, out_folder
from workbench.cli.models import SPEC_HELP
from workbench.cli.options import describe_default, parse_options, probe_options
from workbench.errors import ProbeError
from workbench.outputs import PROBE
from workbench.studies.defaults import STUDY_PROMPT

probes_app = typer.Typer(
    help="Registered probes (built-in, @register_probe, and installed plugins).", no_args_is_help=True
)
app.add_typer(probes_app, name="probes")


@probes_app.command("list")
def list_probes(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every registered probe with its one-line description and options."""
    from workbench.probes.registry import available_probes, plugin_errors

    probes = available_probes()
    rows = {
        name: {
            "summary": cls.summary(),
            "kind": "intervention" if cls.intervenes else "observer",
            "options": list(probe_options(cls)),
            "class": f"{cls.__module__}.{cls.__qualname__}",
        }
        for name, cls in sorted(probes.items())
    }
    errors = plugin_errors()
    if as_json:
        typer.echo(json.dumps({"probes": rows, "plugin_errors": errors}))
        return
    table = Table(title="Probes")
    for column in ("name", "kind", "what it does", "options"):
        table.add_column(column)
    for name, row in rows.items():
        table.add_row(name, row["kind"], row["summary"], ", ".join(row["options"]))
    Console().print(table)
    for name, error in errors.items():
        typer.secho(f"plugin {name} failed to load: {error}", err=True, fg="yellow")


def build_probe(name: str, options: list[str]):
    """The probe ``name`` with ``-o key=value`` options parsed from its own field types."""
    from workbench.probes.registry import get_probe

    cls = get_probe(name)
    kwargs = parse_options(cls, name, options)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ProbeError):
            raise
        raise ProbeError(f"Probe {name} refused its options ({exc}): see `workbench probe {name} --help`.") from None


def print_probe_help(name: str) -> None:
    """The probe's own options, with types and defaults (``workbench probe NAME --help``)."""
    from workbench.probes.registry import get_probe

    cls = get_probe(name)
    table = Table(title=f"{name}: {cls.summary()}")
    for column in ("option", "type", "default"):
        table.add_column(column)
    for spec in probe_options(cls).values():
        table.add_row(spec.name, escape(spec.text), escape(describe_default(spec.default)))
    console = Console()
    console.print(table)
    console.print(
        escape(
            f"Usage: workbench probe {name} [--model SPEC] [--prompt TEXT] -o key=value …  "
            "(lists: -o blocks=6,14 or JSON; text-or-position items: 9 is text, @9 is position 9)"
        )
    )


@app.command("probe", context_settings={"help_option_names": []})
def probe(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="Probe name (see `workbench probes list`)."),
    show_help: bool = typer.Option(False, "--help", "-h", help="Show this help; after NAME, the probe's own options."),
    model: str = typer.Option("smollm2", "--model", "-m", help=SPEC_HELP),
    prompt: list[str] = typer.Option(
        [STUDY_PROMPT], "--prompt", "-p", help="Prompt text; repeat for a batch of equal token length."
    ),
    option: list[str] = typer.Option(
        [], "--option", "-o", help="Probe option key=value (e.g. blocks=6,14; keys=9; source='…')."
    ),
    targets: str | None = typer.Option(
        None, help="Comma-separated target tokens (default: the clean run's 10 most likely)."
    ),
    readout: int = typer.Option(-1, help="Readout position (default: the last token)."),
    out: Path | None = typer.Option(
        None,
        "--out",
        callback=out_folder(PROBE),
        help="Folder for the figures (HTML, PNG when a browser exists) and result.json: "
        "new, empty, or an earlier probe output.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    device: str | None = typer.Option(None, help="cpu, cuda or mps."),
    static: bool = typer.Option(True, help="Also write PNG/SVG figures (needs Chromium)."),
) -> None:
    """Run one probe on a model and prompt; print its summary, write its figures and data.

    `workbench probe NAME --help` lists the probe's own options with their types and defaults."""
    from workbench.models import load_model
    from workbench.run import run

    if show_help:
        if name is None:
            typer.echo(ctx.get_help())
        else:
            print_probe_help(name)
        raise typer.Exit(0)
    if name is None:
        raise ProbeError("Name the probe to run: `workbench probe NAME` (see `workbench probes list`).")
    built = build_probe(name, option)
    loaded = load_model(model, device=device)
    result = run(loaded, prompt, [built], readout=readout, targets=targets.split(",") if targets else None)[built.name]
    if out is not None:
        written = write_result(result, out, static=static)
        typer.echo(f"wrote {len(written)} files to {out}", err=as_json)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
    else:
        typer.echo(result.summary())


def write_result(result, out: Path, *, static: bool = True, stem: str | None = None) -> list[Path]:
    """Every figure of a result as HTML (and PNG + SVG when a browser exists), plus the data as JSON."""
    from workbench.export import write_figures
    from workbench.outputs import output_folder

    stem = stem or result.probe
    figures = {f"{stem}.{key}": fig for key, fig in result.figures().items()}
    with output_folder(out, PROBE) as tmp:  # replaces only an earlier probe output, once complete
        written, note = write_figures(figures, tmp, static=("png", "svg") if static else ())
        result.save(tmp / f"{stem}.json")
    if note:
        typer.secho(note, err=True, fg="yellow")
    return [out / f"{stem}.json", *(out / path.name for path in written)]
