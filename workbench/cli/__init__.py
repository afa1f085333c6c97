"""The ``workbench`` command line: one Typer app, one module per command group.

Every error ends the command with one line on stderr and a nonzero exit code, never a traceback:
a ``WorkbenchError`` with its own message and exit code, a usage error (a wrong option or value) with
click's message (exit 2), Ctrl-C or SIGTERM with what happened to the output (exit 130 or 143), and
anything unexpected with ``internal error: …`` (exit 1). ``workbench --debug …`` or
``WORKBENCH_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Protocol, cast

import typer

from workbench.errors import WorkbenchError

app = typer.Typer(
    name="workbench",
    help="Mechanistic-interpretability workbench for small language models (TransformerLens hooks).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_debug = False


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error.")) -> None:
    global _debug
    _debug = _debug or debug


def out_folder(kind: str):
    """A Typer callback that checks an ``--out`` folder for a ``kind`` output as the options are parsed,
    so a bad path fails before any model loads (see :mod:`workbench.outputs`)."""
    from workbench.outputs import check_folder

    def check(value: Path | None) -> Path | None:
        if value is not None:
            check_folder(value, kind)
        return value

    return check


def _register() -> None:
    # Each command group lives in its own module and adds itself to ``app``.
    import importlib

    from workbench.cli import models  # noqa: F401

    for module in ("probes", "study", "report", "sampling", "bench", "experiment", "lens", "attribute", "circuit"):
        try:
            importlib.import_module(f"workbench.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"workbench.cli.{module}":
                raise


def _quiet_libraries() -> None:
    """The CLI shows its own progress; transformers' per-tensor bars and warnings are noise there. Said through
    the environment, which transformers reads when it is imported: the CLI does not import it to parse options."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def one_line(text: object) -> str:
    """A message on one line: line breaks become spaces."""
    return " ".join(part.strip() for part in str(text).strip().splitlines() if part.strip())


def _fail(message: str, code: int) -> None:
    if _debug:
        traceback.print_exc()
    typer.secho(message, err=True, fg="red")
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every way it can end is one line and an exit code (see the module docstring)."""
    global _debug
    from workbench.outputs import Interrupted, interrupt_on_signals

    _debug = os.environ.get("WORKBENCH_DEBUG", "").strip() not in ("", "0", "false", "no")
    interrupt_on_signals()
    try:
        _quiet_libraries()
        _register()
        code = app(args=argv, standalone_mode=False)
    except WorkbenchError as exc:
        _fail(f"error: {one_line(exc)}", exc.exit_code)
    except Interrupted as exc:
        _fail(
            f"interrupted by {exc}: stopped before the end; no half-written output was left and earlier "
            "outputs are as they were.",
            exc.exit_code,
        )
    except Exception as exc:
        kind = _click_error(exc)
        # A click exception is recognised by its class name (Typer vendors its own click), so the type is told here.
        click_exc = cast(_ClickException, exc)
        if kind == "NoArgsIsHelpError":
            click_exc.show()
            sys.exit(click_exc.exit_code)
        if kind == "Abort":
            _fail("error: aborted.", 1)
        if kind is not None:  # a usage error: unknown option, a value of the wrong type ...
            where = getattr(getattr(exc, "ctx", None), "command_path", None) or "workbench"
            _fail(f"error: {one_line(click_exc.format_message())} (see `{where} --help`)", click_exc.exit_code)
        # The last guard: a bug, said in one line.
        _fail(f"internal error: {type(exc).__name__}: {one_line(exc)}, rerun with `--debug` for the traceback.", 1)
    sys.exit(code if isinstance(code, int) else 0)


class _ClickException(Protocol):
    """What the CLI uses of click's ClickException (Typer's vendored copy or click's own)."""

    exit_code: int

    def show(self) -> None: ...

    def format_message(self) -> str: ...


def _click_error(exc: Exception) -> str | None:
    """The click exception class an error is (Typer vendors its own copy of click), or None."""
    names = [cls.__name__ for cls in type(exc).__mro__]
    if "Abort" in names:
        return "Abort"
    if "ClickException" in names:
        return names[0] if names[0] == "NoArgsIsHelpError" else "ClickException"
    return None
