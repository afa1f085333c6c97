"""``workbench probes list`` and ``workbench probe NAME``: run one registered probe from the shell.

Probe options are the probe's dataclass fields, given as ``-o key=value``: a comma list gives a list
(``-o blocks=6,14``); in ``keys``/``positions`` an item is token text unless written ``@N`` (position N).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from workbench.cli import app, out_folder
from workbench.cli.models import SPEC_HELP
from workbench.errors import ProbeError
from workbench.outputs import PROBE

probes_app = typer.Typer(help="Registered probes (built-in, @register_probe, and installed plugins).", no_args_is_help=True)
app.add_typer(probes_app, name="probes")

STUDY_PROMPT = "I'm generating a random number between [0, 9]. The number is "
TEXT_FIELDS = {"keys", "positions"}


@probes_app.command("list")
def list_probes(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every registered probe with its one-line description and options."""
    from workbench.probes.registry import available_probes, plugin_errors

    probes = available_probes()
    rows = {name: {"summary": cls.summary(), "kind": "intervention" if cls.intervenes else "observer",
                   "options": [f.name for f in dataclasses.fields(cls) if f.init] if dataclasses.is_dataclass(cls) else [],
                   "class": f"{cls.__module__}.{cls.__qualname__}"} for name, cls in sorted(probes.items())}
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


def parse_option(text: str) -> tuple[str, object]:
    """``key=value`` → (key, value): ints, floats, booleans, comma lists; ``@N`` is a position."""
    if "=" not in text:
        raise ProbeError(f"Probe option {text!r} is not key=value: write e.g. -o blocks=6,14.")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")

    def atom(item: str):
        item = item.strip()
        if item.startswith("@") and item[1:].lstrip("-").isdigit():
            return int(item[1:])
        if key in TEXT_FIELDS:
            return item
        if item.lower() in ("true", "false"):
            return item.lower() == "true"
        for kind in (int, float):
            try:
                return kind(item)
            except ValueError:
                pass
        return item

    if key == "source":
        return key, raw
    if raw.startswith(("[", "{")):
        return key, json.loads(raw)
    items = [atom(part) for part in raw.split(",") if part.strip()]
    return key, items if "," in raw or not items else items[0]


def build_probe(name: str, options: list[str]):
    from workbench.probes.registry import get_probe

    cls = get_probe(name)
    kwargs = dict(parse_option(o) for o in options)
    allowed = {f.name for f in dataclasses.fields(cls) if f.init} if dataclasses.is_dataclass(cls) else set()
    unknown = set(kwargs) - allowed
    if unknown:
        raise ProbeError(f"Probe {name} has no option {', '.join(sorted(unknown))}: its options are {', '.join(sorted(allowed)) or 'none'}.")
    if name == "patch" and "source" not in kwargs:
        raise ProbeError("The patch probe needs a source prompt: add -o 'source=… [0, 5] …'.")
    return cls(**kwargs)


@app.command("probe")
def probe(
    name: str = typer.Argument(..., help="Probe name (see `workbench probes list`)."),
    model: str = typer.Option("smollm2", "--model", "-m", help=SPEC_HELP),
    prompt: list[str] = typer.Option([STUDY_PROMPT], "--prompt", "-p", help="Prompt text; repeat for a batch of equal token length."),
    option: list[str] = typer.Option([], "--option", "-o", help="Probe option key=value (e.g. blocks=6,14; keys=9; source='…')."),
    targets: str = typer.Option(None, help="Comma-separated target tokens (default: the digits 0–9)."),
    readout: int = typer.Option(-1, help="Readout position (default: the last token)."),
    out: Path = typer.Option(None, "--out", callback=out_folder(PROBE),
                             help="Folder for the figures (HTML, PNG when a browser exists) and result.json: new, empty, or an earlier probe output."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    device: str = typer.Option(None, help="cpu, cuda or mps."),
    static: bool = typer.Option(True, help="Also write PNG/SVG figures (needs Chromium)."),
) -> None:
    """Run one probe on a model and prompt; print its summary, write its figures and data."""
    from workbench.models import load_model
    from workbench.run import run

    built = build_probe(name, option)
    loaded = load_model(model, device=device)
    result = run(loaded, prompt, [built], readout=readout,
                 targets=targets.split(",") if targets else None)[built.name]
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
