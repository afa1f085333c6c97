"""The ``workbench`` command line: one Typer app, one module per command group.

Every ``WorkbenchError`` ends the command with its one-line message and its exit code, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from workbench.errors import WorkbenchError

app = typer.Typer(
    name="workbench",
    help="Mechanistic-interpretability workbench for small language models (TransformerLens hooks).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    # Each command group lives in its own module and adds itself to ``app``.
    from workbench.cli import models  # noqa: F401
    import importlib

    for module in ("probes", "study", "sampling", "bench"):
        try:
            importlib.import_module(f"workbench.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"workbench.cli.{module}":
                raise


def main(argv: list[str] | None = None) -> None:
    _register()
    try:
        app(args=argv, standalone_mode=True)
    except WorkbenchError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        sys.exit(exc.exit_code)
