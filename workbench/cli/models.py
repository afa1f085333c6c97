"""``workbench models``: what a model spec resolves to, and which models are known or cached."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from workbench.cli import app

models_app = typer.Typer(
    help="Inspect models: facts of a spec, known short names, cached GGUF conversions.", no_args_is_help=True
)
app.add_typer(models_app, name="models")

SPEC_HELP = (
    "Model spec: smollm2, tiny-<family> (see `workbench models list`), a .gguf file, a Hugging Face folder or a hub id."
)


@models_app.command("info")
def info(
    spec: str = typer.Argument("smollm2", help=SPEC_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    device: str | None = typer.Option(None, help="cpu, cuda or mps (default: the best available)."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    no_cache: bool = typer.Option(
        False, "--no-cache", help="Re-convert a GGUF instead of using the de-quantized cache."
    ),
) -> None:
    """Load SPEC and print the facts a probe needs (blocks, heads, key/value groups, vocabulary)."""
    from workbench.models import load_model

    model = load_model(spec, device=device, dtype=dtype, cache=not no_cache)
    facts = model.facts.to_dict()
    if as_json:
        typer.echo(json.dumps(facts))
        return
    table = Table(title=f"{model.facts.name}", show_header=False)
    for key, value in facts.items():
        table.add_row(key, str(value))
    Console().print(table)


@models_app.command("list")
def list_models(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Known short names and the GGUF models already de-quantized in the cache."""
    from workbench.models import SHORT_NAMES, cache_root, cached_models

    cached = cached_models()
    if as_json:
        typer.echo(json.dumps({"short_names": SHORT_NAMES, "cache": str(cache_root()), "cached": cached}))
        return
    table = Table(title="Short names")
    table.add_column("spec")
    table.add_column("model")
    for name, text in SHORT_NAMES.items():
        table.add_row(name, text)
    Console().print(table)
    table = Table(title=f"Cached GGUF conversions in {cache_root()}")
    table.add_column("folder")
    table.add_column("converted from")
    for row in cached:
        table.add_row(row["path"], row["source"])
    Console().print(table)
