"""``workbench lens``: fit a linear or tuned lens for a model, inspect a lens file, compare it with the logit lens."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from workbench.cli import app
from workbench.cli.models import SPEC_HELP
from workbench.errors import LensError

lens_app = typer.Typer(
    help="Lenses beyond the logit lens: fit (linear / tuned), inspect, compare.", no_args_is_help=True
)
app.add_typer(lens_app, name="lens")

PROMPT = "I'm generating a random number between [0, 9]. The number is "


def _progress(as_json: bool) -> bool:
    return not as_json and sys.stderr.isatty()


@lens_app.command("fit")
def fit(
    model: str = typer.Option("smollm2", "--model", "-m", help=SPEC_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Lens file to write (safetensors + JSON header)."),
    corpus: Path | None = typer.Option(
        None, "--corpus", help="UTF-8 text file to fit on (default: text sampled from the model)."
    ),
    tokens: int = typer.Option(8192, "--tokens", "-n", help="Corpus tokens (80% fit, 10% choose the ridge, 10% test)."),
    method: str = typer.Option(
        "linear", "--method", help="linear (closed-form ridge) or tuned (KL objective from linear)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampled corpus, the split and the tuned data order."),
    resume: bool = typer.Option(False, "--resume", help="Continue a tuned fit from OUT.ckpt."),
    steps: int = typer.Option(100, "--steps", help="Tuned: optimiser steps."),
    tokens_per_step: int = typer.Option(256, "--tokens-per-step", help="Tuned: tokens per step."),
    optimizer: str = typer.Option("sgd", "--optimizer", help="Tuned: sgd (Nesterov, the paper's) or adam."),
    lr: float = typer.Option(
        1.0, "--lr", help="Tuned: learning-rate scale (the paper's unit: 1 for sgd, ×1e-3 for adam)."
    ),
    checkpoint_every: int = typer.Option(10, "--checkpoint-every", help="Tuned: steps between checkpoints."),
    device: str | None = typer.Option(None, help="cpu, cuda or mps."),
    as_json: bool = typer.Option(False, "--json", help="Print the lens header as JSON."),
) -> None:
    """Fit a lens for MODEL and write it to OUT; prints held-out KL per layer against the logit lens."""
    from workbench.lenses import TunedSettings, check_lens_path, fit_lens

    check_lens_path(out)
    if corpus is not None and not corpus.is_file():
        raise LensError(f"No corpus file at {corpus}: pass a UTF-8 text file, or leave --corpus out to sample text.")
    settings = TunedSettings(
        steps=steps, tokens_per_step=tokens_per_step, optimizer=optimizer, lr=lr, checkpoint_every=checkpoint_every
    )
    lens = fit_lens(
        model,
        corpus,
        method=method,
        tokens=tokens,
        seed=seed,
        tuned=settings,
        resume=resume,
        out=out,
        progress=_progress(as_json),
        device=device,
    )
    if as_json:
        typer.echo(json.dumps(lens.header))
        return
    _print_lens(lens)
    typer.echo(f"wrote {out} in {lens.header['fit_seconds']:.1f} s")


@lens_app.command("info")
def info(
    path: Path = typer.Argument(..., help="A lens file written by `workbench lens fit`."),
    as_json: bool = typer.Option(False, "--json", help="Print the header as JSON."),
) -> None:
    """What a lens file holds: model, fingerprint, corpus, method, settings, held-out KL per layer."""
    from workbench.lenses import Lens

    lens = Lens.load(path)
    if as_json:
        typer.echo(json.dumps(lens.header))
        return
    _print_lens(lens)


def _print_lens(lens) -> None:
    h = lens.header
    console = Console()
    facts = Table(title=lens.describe(), show_header=False)
    corpus = h.get("corpus", {})
    rows = [
        ("model", f"{h['model']['name']} ({h['model']['spec']})"),
        ("fingerprint", f"{h['fingerprint']['kind']} sha256 {h['fingerprint']['sha256'][:16]}…"),
        ("corpus", f"{corpus.get('source', '?')}; sha256 {str(corpus.get('sha256', '?'))[:16]}…"),
        ("tokens", ", ".join(f"{k} {v}" for k, v in h.get("tokens", {}).items())),
        ("method", lens.method),
    ]
    if ridge := h.get("ridge"):
        rows.append(("ridge α per layer", ", ".join(f"{a:g}" for a in ridge["alpha"])))
    if tuned := h.get("tuned"):
        rows.append(
            (
                "tuned",
                f"{tuned['steps']} steps × {tuned['tokens_per_step']} tokens, {tuned['optimizer']} lr {tuned['lr']:g}",
            )
        )
    if "fit_seconds" in h:
        rows.append(("fit time", f"{h['fit_seconds']:.1f} s"))
    if note := (h.get("tuned") or {}).get("note"):
        rows.append(("note", note))
    for key, value in rows:
        facts.add_row(key, value)
    console.print(facts)
    if "heldout_kl" in h:
        table = Table(title="held-out KL(final ‖ layer), nats (test tokens)")
        frame = lens.table()
        for column in frame.columns:
            table.add_column(column)
        for row in frame.itertuples(index=False):
            table.add_row(row[0], *(f"{v:.4f}" for v in row[1:]))
        console.print(table)


@lens_app.command("compare")
def compare(
    lens: Path = typer.Argument(..., help="A lens file written by `workbench lens fit`."),
    model: str = typer.Option("smollm2", "--model", "-m", help=SPEC_HELP),
    prompt: str = typer.Option(PROMPT, "--prompt", "-p", help="Prompt to read (the last position by default)."),
    targets: str | None = typer.Option(
        None, help="Comma-separated target tokens (default: the clean run's 10 most likely next tokens)."
    ),
    k: int = typer.Option(10, "-k", help="Top-k threshold for 'the targets are in the top-k'."),
    out: Path | None = typer.Option(
        None, "--out", help="Figure file (.html, .png, .svg by suffix); replaces only a figure the workbench wrote."
    ),
    device: str | None = typer.Option(None, help="cpu, cuda or mps."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Logit lens vs LENS on one prompt: KL to the output per layer, first layer with a target in the top-k."""
    from workbench.export import check_figure_path, write_figure
    from workbench.models import load_model
    from workbench.probes import TunedLens
    from workbench.run import run

    if out is not None:
        check_figure_path(out)  # before the model loads: never over a file the workbench did not write
    loaded = load_model(model, device=device)
    result = run(
        loaded, prompt, TunedLens(lens=lens, k=k, positions=[-1]), targets=targets.split(",") if targets else None
    )["tuned_lens"]
    comparison = result.comparison()
    if out is not None:
        write_figure(comparison.figure(), out)
    if as_json:
        typer.echo(json.dumps(comparison.to_dict()))
        return
    typer.echo(comparison.sentence())
    if out is not None:
        typer.echo(f"wrote {out}")
