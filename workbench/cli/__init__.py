"""The ``workbench`` command line: one Typer app, one module per command group.

Every ``WorkbenchError`` ends the command with its one-line message and its exit code, never a traceback.
"""

from __future__ import annotations

import os
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

    for module in ("probes", "study", "sampling", "bench", "lens"):
        try:
            importlib.import_module(f"workbench.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"workbench.cli.{module}":
                raise


def _quiet_libraries() -> None:
    """The CLI shows its own progress; transformers' per-tensor bars and warnings are noise there."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> None:
    _quiet_libraries()
    _register()
    try:
        app(args=argv, standalone_mode=True)
    except WorkbenchError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        sys.exit(exc.exit_code)
