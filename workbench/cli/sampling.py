"""``workbench sample``: samplers, generation, beam search, anomalous tokens, the temperature explorer
and the randomness audit (also ``workbench study randomness`` via :func:`register_randomness`).

``--model`` takes any model spec, or ``bigram:PATH`` for a word-level bigram model counted from a
text file (the one-token-context contrast).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from workbench.cli import app, out_folder
from workbench.errors import SamplingError
from workbench.outputs import ANOMALOUS, AUDIT, EXPLORER
from workbench.sampling.checks import finite_number, whole_number

sample_app = typer.Typer(
    help="Sampling lab: samplers (temperature of any sign, top-k/p, min-p, top-nσ), generation, beam search, "
    "anomalous tokens, temperature explorer, randomness audit.",
    no_args_is_help=True,
)
app.add_typer(sample_app, name="sample")

MODEL_HELP = (
    "Model spec (smollm2, tiny-qwen2, tiny-llama, a .gguf, a HF folder, a hub id) "
    "or bigram:PATH for a bigram model of a text file."
)
SAMPLER_HELP = (
    "Sampler spec, repeatable: 'greedy' or key=value pairs, e.g. 't=0.7,top_p=0.9', 't=-0.001', 'top_n_sigma=1'."
)
INTERVENTION_HELP = (
    'An intervention as JSON, repeatable, e.g. \'{"site": "block", "op": "identity", '
    '"blocks": [21]}\' (any registered operation, plugins included).'
)


from workbench.studies.defaults import STUDY_PROMPT as PROMPT_DEFAULT  # noqa: E402  (the audit's question)


def load_next_token_model(spec: str):
    """A workbench Model for a model spec; a word-level BigramModel for ``bigram:PATH``."""
    from workbench.sampling import BigramModel

    if spec.startswith("bigram:"):
        path = Path(spec.removeprefix("bigram:")).expanduser()
        if not path.is_file():
            raise SamplingError(f"No corpus file at {path}: pass bigram:PATH with PATH a text file.")
        return BigramModel.from_text(path.read_text(encoding="utf-8", errors="replace"), name=f"bigram({path.name})")
    from workbench.models import load_model

    return load_model(spec)


def _samplers(specs: list[str] | None, seed: int | None, default: str = "t=1"):
    from workbench.sampling import parse_sampler

    specs = specs or [default]
    return [parse_sampler(s, seed=None if seed is None else seed + i) for i, s in enumerate(specs)]


def _seed(seed: int, samplers: int = 1) -> int:
    """``--seed``: the i-th sampler gets seed + i, so the last one must stay below 2**63 too."""
    from workbench.sampling.processors import SEED_LIMIT

    return whole_number("--seed", seed, 0, SEED_LIMIT - max(samplers, 1))


def _progress(as_json: bool) -> bool:
    return not as_json and sys.stderr.isatty()


def _dumps(data) -> str:
    return json.dumps(_finite(data), default=str)


def _finite(data):
    """JSON has no inf/NaN: write them as strings so every consumer can parse the file."""
    if isinstance(data, float) and not math.isfinite(data):
        return str(data)
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def write_figure(fig, out: Path, stem: str, png: bool = True) -> list[Path]:
    """HTML always; PNG through kaleido and the system Chromium when one is there (skipped with a message)."""
    from workbench.errors import ExportError
    from workbench.export import write_figures

    try:
        written, note = write_figures({stem: fig}, out, static=("png",) if png else ())
    except ExportError as exc:  # a browser that cannot start: keep the HTML and the data
        typer.secho(f"note: skipped {stem}.png ({exc})", err=True)
        return [out / f"{stem}.html"]
    if note:
        typer.secho(f"note: {note}", err=True)
    return written


KINDS = {"randomness": AUDIT, "anomalous": ANOMALOUS, "temperature": EXPLORER}


def _write_results(data: dict, fig, out: Path, stem: str, png: bool) -> list[Path]:
    """``results.json`` and the figure, into a folder that replaces ``out`` only once complete."""
    from workbench.outputs import output_folder

    with output_folder(out, KINDS[stem]) as tmp:
        (tmp / "results.json").write_text(_dumps(data) + "\n")
        written = write_figure(fig, tmp, stem, png)
    return [out / "results.json", *(out / path.name for path in written)]


def randomness(
    model: str = typer.Option("smollm2", "--model", "-m", help=MODEL_HELP),
    samples: int = typer.Option(1000, "--samples", "-n", help="Answers to draw per sampler (and from secrets)."),
    sampler: list[str] | None = typer.Option(None, "--sampler", "-s", help=SAMPLER_HELP + " Default: t=1."),
    prompt: str = typer.Option(
        PROMPT_DEFAULT, "--prompt", "-p", help="Raw prompt; it should end where the number begins."
    ),
    low: int = typer.Option(0, "--low", help="Smallest valid answer."),
    high: int = typer.Option(9, "--high", help="Largest valid answer."),
    method: str = typer.Option(
        "auto", "--method", help="auto, first-token (one batch draw) or generate (multi-token answers)."
    ),
    seed: int = typer.Option(
        0,
        "--seed",
        help="Seed of the first sampler (the i-th gets seed + i); "
        "answer j of a sampler draws from its own stream (seed, j).",
    ),
    batch_size: int = typer.Option(
        256,
        "--batch-size",
        help="Rows per forward when generating answers (speed only: the answers do not depend on it).",
    ),
    max_contexts: int = typer.Option(
        100_000,
        "--max-contexts",
        help="Most forward rows the exact law of a multi-token range may take (one per number prefix); "
        "larger ranges are refused up front.",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        callback=out_folder(AUDIT),
        help="Folder for results.json, randomness.html and randomness.png (new, empty, or an earlier audit).",
    ),
    no_png: bool = typer.Option(False, "--no-png", help="Skip the PNG (no browser needed)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as one JSON object."),
) -> None:
    """Is the model's random number random? Histogram vs exact law vs uniform, χ², entropy, and secrets."""
    from workbench.sampling import randomness_audit

    samples = whole_number("--samples", samples, 1)
    batch_size = whole_number("--batch-size", batch_size, 1)
    max_contexts = whole_number("--max-contexts", max_contexts, 1)
    whole_number("--low", low, 0)
    if high < low:
        raise SamplingError(f"The range --low {low} --high {high} is empty: pass --high ≥ --low.")
    if method not in ("auto", "first-token", "generate"):
        raise SamplingError(f"--method is {method!r}: use auto, first-token or generate.")
    samplers = _samplers(sampler, _seed(seed, len(sampler or [1])))
    lm = load_next_token_model(model)
    audit = randomness_audit(
        lm,
        samples=samples,
        samplers=samplers,
        prompt=prompt,
        low=low,
        high=high,
        method=method,
        seed=seed,
        batch_size=batch_size,
        progress=_progress(as_json),
        max_contexts=max_contexts,
    )
    if out is not None:
        written = _write_results(audit.to_dict(), audit.figure(), out, "randomness", not no_png)
        if not as_json:
            typer.echo("wrote " + ", ".join(str(p) for p in written))
    if as_json:
        typer.echo(_dumps(audit.to_dict()))
        return
    console = Console()
    console.print(
        f"[bold]{audit.model}[/bold] — {audit.method}, {audit.samples} answers per source, values {low}–{high}; "
        f"model exact entropy {audit.model_exact_entropy_bits:.3f} bits "
        f"vs log2(range) {audit.uniform_entropy_bits:.3f}; "
        f"P(valid answer) {audit.model_valid_mass:.3f}"
    )
    table = Table()
    for column in (
        "source",
        "valid",
        "failed",
        "entropy bits",
        "exact bits",
        "χ² vs uniform",
        "p",
        "χ² vs exact",
        "p (exact)",
    ):
        table.add_column(column)
    fmt = lambda x, spec: "—" if x is None else format(x, spec)  # noqa: E731
    for row in audit.rows():
        table.add_row(
            row["source"],
            str(row["valid"]),
            str(row["failed"]),
            fmt(row["entropy_bits"], ".3f"),
            fmt(row["exact_entropy_bits"], ".3f"),
            fmt(row["chi2_uniform"], ".1f"),
            fmt(row["p_uniform"], ".3g"),
            fmt(row["chi2_exact"], ".1f"),
            fmt(row["p_exact"], ".3g"),
        )
    console.print(table)


def register_randomness(study_app: typer.Typer) -> None:
    """Add ``randomness`` (the audit) to another Typer group, e.g. ``workbench study``."""
    study_app.command("randomness")(randomness)


sample_app.command("audit")(randomness)


@sample_app.command("next")
def next_token(
    model: str = typer.Option("smollm2", "--model", "-m", help=MODEL_HELP),
    prompt: str = typer.Option(PROMPT_DEFAULT, "--prompt", "-p", help="Raw prompt."),
    sampler: list[str] | None = typer.Option(None, "--sampler", "-s", help=SAMPLER_HELP + " Default: t=1."),
    top: int = typer.Option(10, "--top", help="Tokens to list per sampler (at least 1)."),
    draws: int = typer.Option(0, "--draws", help="Also draw this many tokens per sampler (seeded)."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The next-token distribution after each sampler's processors, with its monitors."""
    import torch

    from workbench.memory import require_within_budget
    from workbench.sampling import as_next_token_model, distribution_stats
    from workbench.sampling.lm import check_context, prompt_tokens

    top = whole_number("--top", top, 1)
    draws = whole_number("--draws", draws, 0)
    samplers = _samplers(sampler, _seed(seed, len(sampler or [1])))
    require_within_budget(
        draws * len(samplers) * 96,
        f"Listing {draws:,} draws for each of {len(samplers)} samplers",
        "pass a smaller --draws (each draw is printed), or use `workbench sample audit` for counts",
    )
    lm = as_next_token_model(load_next_token_model(model))
    tokens = prompt_tokens(lm, prompt)
    check_context(lm, tokens.shape[1])
    logits = lm.next_token_logits(tokens)
    report = []
    for s in samplers:
        probs = s.probs(logits, input_ids=tokens)[0]
        values, ids = probs.topk(min(top, probs.numel()))
        entry = {
            "sampler": s.describe(),
            "top": [
                {"id": int(i), "text": lm.decode([int(i)]), "prob": float(v)}
                for v, i in zip(values, ids, strict=True)
                if v > 0
            ],
            "monitors": distribution_stats(torch.log(probs.clamp(min=0)), k=min(top, probs.numel())).to_dict(),
        }
        if draws:
            entry["draws"] = [lm.decode([int(t)]) for t in s.sample(logits, input_ids=tokens, num_samples=draws)[0]]
        report.append(entry)
    if as_json:
        typer.echo(_dumps({"model": lm.name, "prompt": prompt, "samplers": report}))
        return
    console = Console()
    for entry in report:
        m = entry["monitors"]
        table = Table(
            title=f"{entry['sampler']}: entropy {m['entropy_bits']:.3f} bits, perplexity {m['perplexity']:.2f}, "
            f"top-{m['top_k']} mass {m['top_k_mass']:.3f}, kept {m['size'] - m['n_zero']}"
        )
        table.add_column("id")
        table.add_column("token")
        table.add_column("P")
        for row in entry["top"]:
            table.add_row(str(row["id"]), repr(row["text"]), f"{row['prob']:.4f}")
        console.print(table)
        if "draws" in entry:
            console.print("draws: " + " ".join(repr(d) for d in entry["draws"]))


@sample_app.command("generate")
def generate_command(
    model: str = typer.Option("smollm2", "--model", "-m", help=MODEL_HELP),
    prompt: str = typer.Option("Once upon a time", "--prompt", "-p", help="Raw prompt."),
    sampler: str = typer.Option("greedy", "--sampler", "-s", help=SAMPLER_HELP),
    max_new_tokens: int = typer.Option(20, "--max-new-tokens", help="Tokens to generate (at least 1)."),
    n: int = typer.Option(1, "--n", help="Continuations of the prompt."),
    stop: list[str] | None = typer.Option(None, "--stop", help="Stop string, repeatable (EOS always stops)."),
    identity_block: int | None = typer.Option(
        None, "--identity-block", help="Make this block the identity during generation (e.g. 21)."
    ),
    intervention: list[str] | None = typer.Option(None, "--intervention", "-i", help=INTERVENTION_HELP),
    seed: int = typer.Option(0, "--seed", help="Continuation i draws from its own stream (seed, i)."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Rows per forward (default: what the memory budget holds); speed only."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Generate with a sampler, optionally with interventions (e.g. a block made the identity, a steering vector)."""
    from workbench.sampling import as_next_token_model, generate, parse_sampler

    max_new_tokens = whole_number("--max-new-tokens", max_new_tokens, 1)
    n = whole_number("--n", n, 1)
    if batch_size is not None:
        batch_size = whole_number("--batch-size", batch_size, 1)
    chosen = parse_sampler(sampler, seed=_seed(seed))
    edits = _interventions(intervention, identity_block)
    lm = as_next_token_model(load_next_token_model(model))
    result = generate(
        lm,
        prompt,
        chosen,
        max_new_tokens,
        stop=stop or None,
        n=n,
        batch_size=batch_size,
        progress=_progress(as_json),
        interventions=edits,
    )
    if as_json:
        typer.echo(_dumps({"model": lm.name, "prompt": prompt} | result.to_dict()))
        return
    for i, text in enumerate(result.texts):
        typer.echo(f"[{i}] {prompt}{text}")


def _interventions(texts: list[str] | None, identity_block: int | None = None) -> list:
    """``--intervention`` JSON descriptions (and ``--identity-block``) as Interventions, checked before loading."""
    from workbench.interventions import Intervention, identity

    out = []
    for text in texts or []:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SamplingError(
                f"--intervention is not JSON ({exc.msg} at character {exc.pos}): write e.g. "
                '\'{"site": "block", "op": "identity", "blocks": [21]}\'.'
            ) from None
        out.append(Intervention.from_dict(data))
    if identity_block is not None:
        out.append(identity(blocks=identity_block))
    return out


def _early_stopping(text: str):
    value = {"true": True, "false": False, "never": "never"}.get(text.strip().lower())
    if value is None:
        raise SamplingError(f"--early-stopping is {text!r}: pass true, false (transformers' default) or never.")
    return value


@sample_app.command("beam")
def beam_command(
    model: str = typer.Option("smollm2", "--model", "-m", help=MODEL_HELP),
    prompt: str = typer.Option("Once upon a time", "--prompt", "-p", help="Raw prompt."),
    width: int = typer.Option(4, "--width", "-k", help="Live beams kept per step (1 = greedy until the first stop)."),
    max_new_tokens: int = typer.Option(10, "--max-new-tokens", help="Most tokens per beam (at least 1)."),
    length_penalty: float = typer.Option(
        1.0,
        "--length-penalty",
        help="score = log P / length ** penalty (length: generated tokens, stop token included).",
    ),
    early_stopping: str = typer.Option(
        "false",
        "--early-stopping",
        help="transformers' rule: true (stop once WIDTH beams finished), "
        "false (stop when no live beam can win), never (exhaustive).",
    ),
    num_return_sequences: int | None = typer.Option(
        None, "--num-return-sequences", help="How many beams to show (default: WIDTH)."
    ),
    intervention: list[str] | None = typer.Option(None, "--intervention", "-i", help=INTERVENTION_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Beam search as transformers does it: the best finished continuations with their log-probabilities."""
    from workbench.sampling import beam_search

    width = whole_number("--width", width, 1)
    max_new_tokens = whole_number("--max-new-tokens", max_new_tokens, 1)
    length_penalty = finite_number(
        "--length-penalty", length_penalty, "pass a finite number (1.0 is transformers' default)"
    )
    stopping = _early_stopping(early_stopping)
    if num_return_sequences is not None:
        num_return_sequences = whole_number("--num-return-sequences", num_return_sequences, 1, width)
    edits = _interventions(intervention)
    result = beam_search(
        load_next_token_model(model),
        prompt,
        width,
        max_new_tokens,
        length_penalty,
        early_stopping=stopping,
        num_return_sequences=num_return_sequences,
        progress=_progress(as_json),
        interventions=edits,
    )
    typer.echo(_dumps(result.to_dict()) if as_json else str(result))


@sample_app.command("anomalous")
def anomalous_command(
    model: str = typer.Option("smollm2", "--model", "-m", help=MODEL_HELP),
    prompt: list[str] | None = typer.Option(
        None, "--prompt", "-p", help="Prompt, repeatable (default: three generic prompts)."
    ),
    temperature: float = typer.Option(
        -0.001, "--temperature", "-t", help="A negative temperature (T → 0⁻ picks the least likely token)."
    ),
    max_new_tokens: int = typer.Option(8, "--max-new-tokens", help="Tokens per continuation (at least 1)."),
    samples: int = typer.Option(1, "--samples", help="Continuations per prompt."),
    top: int = typer.Option(
        100, "--top", help="How many tokens closest to the embedding centroid to compare with (at least 1)."
    ),
    seed: int = typer.Option(0, "--seed"),
    out: Path | None = typer.Option(
        None,
        "--out",
        callback=out_folder(ANOMALOUS),
        help="Folder for results.json and anomalous.html/.png (new, empty, or an earlier one).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Sample at negative temperature and locate the tokens that come out in the embedding space."""
    from workbench.sampling import find_anomalous_tokens
    from workbench.sampling.anomalous import DEFAULT_PROMPTS

    temperature = finite_number("--temperature", temperature, "pass a finite negative temperature such as -0.001")
    if temperature >= 0:
        raise SamplingError(
            f"--temperature is {temperature:g}: the finder samples at a negative temperature (e.g. -0.001)."
        )
    max_new_tokens = whole_number("--max-new-tokens", max_new_tokens, 1)
    samples = whole_number("--samples", samples, 1)
    top = whole_number("--top", top, 1)
    seed = _seed(seed)
    result = find_anomalous_tokens(
        load_next_token_model(model), prompt or DEFAULT_PROMPTS, temperature, max_new_tokens, samples, top, seed
    )
    if out is not None:
        written = _write_results(result.to_dict(), result.figure(), out, "anomalous", True)
        if not as_json:
            typer.echo("wrote " + ", ".join(str(p) for p in written))
    typer.echo(_dumps(result.to_dict()) if as_json else str(result))


@sample_app.command("explore")
def explore_command(
    model: str = typer.Option("smollm2", "--model", "-m", help=MODEL_HELP),
    prompt: str = typer.Option(PROMPT_DEFAULT, "--prompt", "-p", help="Raw prompt."),
    low: float = typer.Option(-2.0, "--from", help="Lowest temperature (finite)."),
    high: float = typer.Option(2.0, "--to", help="Highest temperature (finite, ≥ --from)."),
    steps: int = typer.Option(41, "--steps", help="Temperatures in the sweep (odd keeps T = 0)."),
    full_vocab: bool = typer.Option(
        False, "--full-vocab", help="Digit probabilities in the full vocabulary, not renormalised."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        callback=out_folder(EXPLORER),
        help="Folder for results.json and temperature.html/.png (new, empty, or an earlier one).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The digit distribution over T from −2 to 2 and the set each filter keeps."""
    from workbench.memory import require_within_budget
    from workbench.sampling import temperature_sweep
    from workbench.sampling.explorer import temperature_grid

    low = finite_number("--from", low, "pass a finite temperature")
    high = finite_number("--to", high, "pass a finite temperature")
    steps = whole_number("--steps", steps, 1)
    if low > high:
        raise SamplingError(f"--from {low:g} is above --to {high:g}: pass the lower temperature to --from.")
    require_within_budget(steps * 64, f"A grid of {steps:,} temperatures", "pass a smaller --steps")
    temps = temperature_grid(low, high, steps)
    sweep = temperature_sweep(
        load_next_token_model(model), prompt, temps, restricted=not full_vocab, progress=_progress(as_json)
    )
    if out is not None:
        written = _write_results(sweep.to_dict(), sweep.figure(), out, "temperature", True)
        if not as_json:
            typer.echo("wrote " + ", ".join(str(p) for p in written))
    if as_json:
        typer.echo(_dumps(sweep.to_dict()))
        return
    table = Table(title=f"{sweep.model}: P(digit | T)")
    table.add_column("T")
    for text in sweep.token_texts:
        table.add_column(text)
    for name in sweep.kept:
        table.add_column(name)
    for i, t in enumerate(sweep.temperatures):
        table.add_row(f"{t:g}", *(f"{p:.2f}" for p in sweep.probs[i]), *(str(sweep.kept[n][i]) for n in sweep.kept))
    Console().print(table)
