"""The randomness audit: ask a model for a "random" number N times and test the answers.

For each sampler the audit reports the empirical histogram of parsed answers, the exact distribution
the sampler draws from (so a χ² test against it should accept), a χ² goodness-of-fit test against
uniform (``scipy.stats.chisquare``), the entropy in bits against log2(range), and the failed parses.
Python's :mod:`secrets` (a CSPRNG) draws the same number of answers and goes through the same tests:
that is the baseline a "random" answer should look like.

Two ways to get answers:

- ``first-token`` (automatic when every number in the range is one token, e.g. 0–9): the answer is the
  first generated token, so N answers are one batch draw from the exact next-token distribution;
- ``generate``: N continuations generated in batches; an answer is the digits at the very start of the
  continuation (the prompt should end where the number begins, e.g. "The number is ").
  The exact distribution is computed by enumeration: P(digits of n, then a non-digit token), each
  factor from the sampler's processed distribution, using the tokenizer's own spelling of n.
"""

from __future__ import annotations

import contextlib
import math
import re
import secrets as secrets_module
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import chisquare
from tqdm.auto import tqdm

from workbench.errors import BudgetError, SamplingError
from workbench.memory import rows_per_batch
from workbench.sampling.checks import whole_number
from workbench.sampling.generate import generation_chunks
from workbench.sampling.lm import (
    as_next_token_model,
    check_context,
    encode_continuations,
    forward_bytes_per_row,
    model_device,
    prompt_tokens,
    single_token,
)
from workbench.sampling.monitors import entropy_bits
from workbench.sampling.processors import Sampler, make_sampler, parse_sampler

DEFAULT_PROMPT = "I'm generating a random number between [0, 9]. The number is "
ANSWER = re.compile(r"\d+")
DEFAULT_MAX_CONTEXTS = 100_000  # forward rows the exact law of a multi-token range may take without asking
DRAW_CHUNK = 1 << 16  # first-token draws per call: fixed, so the draws never depend on the memory budget
MAX_BARS = 100  # a wider range is drawn in bins


@dataclass
class HistogramStats:
    """One source of answers (a sampler, or ``secrets``) and its tests.

    ``exact`` is the distribution over the range the answers are drawn from, given the answer parses
    (None when unknown); ``valid_mass`` is the exact probability that an answer parses.
    """

    label: str
    counts: list[int]
    failed: int
    entropy_bits: float
    chi2_uniform: float
    p_uniform: float
    exact: list[float] | None = None
    valid_mass: float | None = None
    exact_entropy_bits: float | None = None
    chi2_exact: float | None = None
    p_exact: float | None = None
    failed_examples: list[str] = field(default_factory=list)

    @property
    def n_valid(self) -> int:
        return int(sum(self.counts))

    @property
    def frequencies(self) -> list[float]:
        n = self.n_valid
        return [c / n if n else 0.0 for c in self.counts]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"n_valid": self.n_valid, "frequencies": self.frequencies}


@dataclass
class RandomnessAudit:
    """Everything the audit measured; ``figure()`` draws it, ``to_dict()`` serialises it."""

    model: str
    prompt: str
    values: list[int]
    samples: int
    method: str
    model_exact: list[float]
    model_valid_mass: float
    samplers: list[HistogramStats]
    secrets: HistogramStats

    @property
    def uniform_entropy_bits(self) -> float:
        return math.log2(len(self.values))

    @property
    def model_exact_entropy_bits(self) -> float:
        return entropy_bits(self.model_exact)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt": self.prompt,
            "values": self.values,
            "samples": self.samples,
            "method": self.method,
            "uniform_entropy_bits": self.uniform_entropy_bits,
            "model_exact": self.model_exact,
            "model_exact_entropy_bits": self.model_exact_entropy_bits,
            "model_valid_mass": self.model_valid_mass,
            "samplers": [s.to_dict() for s in self.samplers],
            "secrets": self.secrets.to_dict(),
        }

    def rows(self) -> list[dict[str, Any]]:
        """One summary row per source (samplers, then secrets), for a table."""
        out = []
        for s in [*self.samplers, self.secrets]:
            out.append(
                {
                    "source": s.label,
                    "valid": s.n_valid,
                    "failed": s.failed,
                    "entropy_bits": s.entropy_bits,
                    "exact_entropy_bits": s.exact_entropy_bits,
                    "log2_range": self.uniform_entropy_bits,
                    "chi2_uniform": s.chi2_uniform,
                    "p_uniform": s.p_uniform,
                    "chi2_exact": s.chi2_exact,
                    "p_exact": s.p_exact,
                }
            )
        return out

    def __str__(self) -> str:
        lines = [
            f"randomness audit of {self.model} ({self.method}, {self.samples} samples, "
            f"values {self.values[0]}–{self.values[-1]})",
            f"model exact (T=1): entropy {self.model_exact_entropy_bits:.3f} bits "
            f"vs log2(range) {self.uniform_entropy_bits:.3f}; "
            f"P(answer parses) {self.model_valid_mass:.3f}",
        ]
        for r in self.rows():
            exact = "" if r["p_exact"] is None else f"  χ² vs exact {r['chi2_exact']:.1f} (p={r['p_exact']:.3g})"
            lines.append(
                f"{r['source']:>28}: valid {r['valid']}, failed {r['failed']}, entropy {r['entropy_bits']:.3f} bits, "
                f"χ² vs uniform {r['chi2_uniform']:.1f} (p={r['p_uniform']:.3g}){exact}"
            )
        return "\n".join(lines)

    def figure(self):
        return audit_figure(self)


def chi_square(counts: Sequence[int], probs: Sequence[float]) -> tuple[float, float]:
    """Pearson's χ² goodness of fit of ``counts`` to ``probs`` (scipy), with impossible cells handled.

    Cells with expected probability 0 are dropped when empty; an observation in one makes the fit
    impossible (χ² = inf, p = 0). With one possible cell left the fit is exact (χ² = 0, p = 1).
    """
    observed = np.asarray(counts, dtype=float)
    expected_p = np.asarray(probs, dtype=float)
    n = observed.sum()
    if n == 0 or expected_p.sum() <= 0:
        return float("nan"), float("nan")
    expected_p = expected_p / expected_p.sum()
    impossible = expected_p <= 1e-12
    if (observed[impossible] > 0).any():
        return float("inf"), 0.0
    keep = ~impossible
    if keep.sum() <= 1:
        return 0.0, 1.0
    expected = expected_p[keep] / expected_p[keep].sum() * n
    result = chisquare(observed[keep], expected)
    return float(result.statistic), float(result.pvalue)


def histogram_stats(
    label: str,
    counts: Sequence[int],
    failed: int = 0,
    exact: Sequence[float] | None = None,
    valid_mass: float | None = None,
    failed_examples: Sequence[str] = (),
) -> HistogramStats:
    """The audit's tests on one histogram: entropy, χ² against uniform and (when known) the exact law."""
    counts = [int(c) for c in counts]
    chi2_u, p_u = chi_square(counts, [1.0] * len(counts))
    chi2_e = p_e = exact_h = None
    if exact is not None:
        chi2_e, p_e = chi_square(counts, exact)
        exact_h = entropy_bits(exact)
    return HistogramStats(
        label=label,
        counts=counts,
        failed=int(failed),
        entropy_bits=entropy_bits(counts) if sum(counts) else float("nan"),
        chi2_uniform=chi2_u,
        p_uniform=p_u,
        exact=None if exact is None else [float(x) for x in exact],
        valid_mass=valid_mass,
        exact_entropy_bits=exact_h,
        chi2_exact=chi2_e,
        p_exact=p_e,
        failed_examples=list(failed_examples)[:5],
    )


def secrets_histogram(values: Sequence[int], samples: int) -> HistogramStats:
    """N draws from :func:`secrets.randbelow`: what uniform randomness looks like at this sample size."""
    counts = [0] * len(values)
    for _ in range(samples):
        counts[secrets_module.randbelow(len(values))] += 1
    return histogram_stats("secrets.randbelow", counts, 0, exact=[1.0 / len(values)] * len(values), valid_mass=1.0)


def _resolve_samplers(samplers, seed: int | None) -> list[Sampler]:
    if samplers is None:
        samplers = [make_sampler(1.0, seed=seed, name="t=1")]
    if isinstance(samplers, (Sampler, str)):
        samplers = [samplers]
    out = []
    for i, s in enumerate(samplers):
        if isinstance(s, str):
            s = parse_sampler(s, seed=None if seed is None else seed + i)
        elif not isinstance(s, Sampler):
            raise SamplingError(f"{s!r} is not a sampler: pass Sampler objects or specs such as 't=0.7,top_p=0.9'.")
        out.append(s)
    if not out:
        raise SamplingError("No sampler given: pass at least one (e.g. 't=1').")
    return out


def _starts_with_digit(lm) -> torch.Tensor:
    """Which token ids decode to text starting with a digit (they would extend a number)."""
    cached = getattr(lm, "_digit_start_mask", None)
    if cached is not None:
        return cached
    tokenizer = getattr(lm, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "batch_decode"):
        texts = tokenizer.batch_decode([[i] for i in range(lm.d_vocab)])
    else:
        texts = [lm.decode([i]) for i in range(lm.d_vocab)]
    mask = torch.tensor([t[:1].isdigit() for t in texts], dtype=torch.bool)
    with contextlib.suppress(AttributeError):  # a model object that refuses new attributes: no cache
        lm._digit_start_mask = mask
    return mask


def _require_contexts(contexts: int, values: Sequence[int], max_contexts: int, at_least: bool = False) -> None:
    if contexts > max_contexts:
        raise BudgetError(
            f"The exact law over [{values[0]}, {values[-1]}] needs {'at least ' if at_least else ''}"
            f"{contexts:,} forward rows "
            f"(one per number prefix), more than max_contexts = {max_contexts:,}: narrow the range, or raise "
            f"max_contexts (--max-contexts) to run them in batches under the memory budget."
        )


@torch.no_grad()
def exact_number_distributions(
    model: Any,
    prompt: str,
    values: Sequence[int],
    samplers: Sequence[Sampler],
    *,
    max_contexts: int = DEFAULT_MAX_CONTEXTS,
    progress: bool = False,
) -> list[tuple[list[float], float]]:
    """For each sampler: P(the continuation starts with exactly the digits of n) for each n, given a valid
    answer, and the total probability of a valid answer.

    The spellings of the numbers form a tree of prefixes; each prefix is one forward row, shared by every
    sampler. Rows run level by level in batches under the memory budget, keeping only the prefix
    probabilities of two levels, so memory does not grow with the range; more than ``max_contexts``
    rows are refused up front (:class:`~workbench.errors.BudgetError`).
    """
    lm = as_next_token_model(model)
    values = list(values)
    samplers = list(samplers)
    if not values or not samplers:
        raise SamplingError("The exact law needs at least one value and one sampler.")
    _require_contexts(len(values) + 1, values, max_contexts, at_least=True)
    base = prompt_tokens(lm, prompt)[0]
    spellings = [tuple(s) for s in encode_continuations(lm, [str(v) for v in values])]
    levels: list[list[tuple[int, ...]]] = [[] for _ in range(max(len(s) for s in spellings) + 1)]
    for prefix in sorted({s[:i] for s in spellings for i in range(len(s) + 1)}):
        levels[len(prefix)].append(prefix)
    _require_contexts(sum(len(level) for level in levels), values, max_contexts)
    check_context(lm, len(base) + len(levels) - 1)
    terminal = {s: i for i, s in enumerate(spellings)}
    digit_start = _starts_with_digit(lm).to(base.device)
    joint = np.zeros((len(samplers), len(values)))
    mass = np.ones((1, len(samplers)))  # P(prefix) under each sampler, for the prefixes of the current level
    bar = tqdm(
        total=sum(len(level) for level in levels), desc="exact law", unit="context", disable=not progress, leave=False
    )
    for depth, nodes in enumerate(levels):
        following = levels[depth + 1] if depth + 1 < len(levels) else []
        position = {prefix: i for i, prefix in enumerate(following)}
        extensions: dict[tuple[int, ...], list[int]] = {}
        for prefix in following:
            extensions.setdefault(prefix[:-1], []).append(prefix[-1])
        next_mass = np.zeros((len(following), len(samplers)))
        row_bytes = forward_bytes_per_row(lm, len(base) + depth) + lm.d_vocab * (4 * 2 + 40)
        size = rows_per_batch(row_bytes, model_device(lm))
        for start in range(0, len(nodes), size):
            batch = nodes[start : start + size]
            prefix_ids = torch.tensor(batch, dtype=torch.long, device=base.device).reshape(len(batch), depth)
            rows = torch.cat([base.expand(len(batch), -1), prefix_ids], dim=1)
            logits = lm.next_token_logits(rows).float()
            children = [
                (i, token, position[prefix + (token,)])
                for i, prefix in enumerate(batch)
                for token in extensions.get(prefix, [])
            ]
            ends = [(i, terminal[prefix]) for i, prefix in enumerate(batch) if prefix in terminal]
            for k, sampler in enumerate(samplers):
                probs = sampler.probs(logits, input_ids=rows).double()
                parent = mass[start : start + len(batch), k]
                if children:
                    rows_i, tokens, targets = (list(x) for x in zip(*children, strict=True))
                    next_mass[targets, k] = parent[rows_i] * probs[rows_i, tokens].cpu().numpy()
                if ends:
                    rows_i, value_i = (list(x) for x in zip(*ends, strict=True))
                    non_digit = (1.0 - probs[rows_i][:, digit_start].sum(dim=-1)).cpu().numpy()
                    joint[k, value_i] = np.maximum(parent[rows_i] * non_digit, 0.0)
            bar.update(len(batch))
        mass = next_mass
    bar.close()
    out = []
    for row in joint:
        total = float(row.sum())
        out.append(([float(x) / total for x in row] if total > 0 else [0.0] * len(values), total))
    return out


@torch.no_grad()
def exact_number_distribution(
    model: Any,
    prompt: str,
    values: Sequence[int],
    sampler: Sampler | None = None,
    *,
    max_contexts: int = DEFAULT_MAX_CONTEXTS,
) -> tuple[list[float], float]:
    """P(the continuation starts with exactly the digits of n) for each n, under ``sampler`` (T=1 default).

    Returns the distribution given a valid answer, and the total probability of a valid answer.
    """
    return exact_number_distributions(model, prompt, values, [sampler or make_sampler(1.0)], max_contexts=max_contexts)[
        0
    ]


def parse_answer(text: str, values: Sequence[int]) -> int | None:
    """The number at the very start of ``text`` if it is in ``values``, else None (a failed parse)."""
    match = ANSWER.match(text)
    if match is None:
        return None
    number = int(match.group())
    allowed = values if isinstance(values, (range, set, frozenset, dict)) else set(values)
    return number if number in allowed else None


@torch.no_grad()
def randomness_audit(
    model: Any,
    samples: int = 1000,
    samplers: Sequence[Sampler | str] | Sampler | str | None = None,
    prompt: str = DEFAULT_PROMPT,
    low: int = 0,
    high: int = 9,
    method: str = "auto",
    seed: int | None = 0,
    batch_size: int = 256,
    progress: bool = False,
    max_contexts: int = DEFAULT_MAX_CONTEXTS,
) -> RandomnessAudit:
    """Ask ``model`` for a number in [low, high] ``samples`` times under each sampler and test the answers.

    ``method`` is ``auto`` (first-token when every number is one token, else generate),
    ``first-token`` or ``generate``. String samplers are parsed with :func:`parse_sampler` and seeded
    ``seed + i`` unless they name their own seed. Answer *j* of a sampler is drawn from its own random
    stream (seed, *j*), so ``batch_size`` (rows per forward) never changes the answers. Memory stays
    bounded whatever ``samples`` and the range are; an exact law needing more than ``max_contexts``
    forward rows is refused up front.
    """
    lm = as_next_token_model(model)
    samples = whole_number("samples", samples, 1)
    batch_size = whole_number("batch_size", batch_size, 1)
    max_contexts = whole_number("max_contexts", max_contexts, 1)
    for name, bound in (("low", low), ("high", high)):
        if isinstance(bound, bool) or not isinstance(bound, (int, np.integer)):
            raise SamplingError(f"{name} is {bound!r}: pass whole numbers 0 ≤ low ≤ high.")
    if low < 0 or high < low:
        raise SamplingError(f"The range [{low}, {high}] is not valid: pass 0 ≤ low ≤ high.")
    if method not in ("auto", "first-token", "generate"):
        raise SamplingError(f"Unknown method {method!r}: use auto, first-token or generate.")
    chosen = _resolve_samplers(samplers, seed)
    base = prompt_tokens(lm, prompt)
    n_values = int(high) - int(low) + 1
    one_token, value_tokens = False, []
    if n_values <= lm.d_vocab and method != "generate":  # more numbers than tokens cannot all be one token
        value_tokens = [single_token(lm, str(v)) for v in range(int(low), int(high) + 1)]
        one_token = all(t is not None for t in value_tokens)
    if method == "first-token" and not one_token:
        split = [low + i for i, t in enumerate(value_tokens) if t is None][:5]
        if split:
            raise SamplingError(f"Numbers such as {split} are several tokens for {lm.name}: use method='generate'.")
        raise SamplingError(
            f"The {n_values:,} numbers cannot all be single tokens of {lm.name}'s {lm.d_vocab:,}-token vocabulary: "
            "use method='generate'."
        )
    method = ("first-token" if one_token else "generate") if method == "auto" else method
    if method == "generate":
        _require_contexts(n_values + 1, [low, high], max_contexts, at_least=True)
    values = list(range(int(low), int(high) + 1))
    if method == "first-token":
        check_context(lm, base.shape[1], 1)
        logits = lm.next_token_logits(base).float()
        model_probs = logits.softmax(dim=-1)[0]
        ids = torch.tensor(value_tokens, device=logits.device)
        model_valid = float(model_probs[ids].sum())
        model_exact = (model_probs[ids] / model_valid).tolist() if model_valid > 0 else [0.0] * len(values)
        results = [_first_token_stats(lm, s, logits, base, ids, values, samples, progress) for s in chosen]
    else:
        longest = max(len(s) for s in encode_continuations(lm, [str(v) for v in values]))
        check_context(lm, base.shape[1], longest + 1)  # the answers are generated: digits, then one more token
        laws = exact_number_distributions(
            lm, prompt, values, [make_sampler(1.0), *chosen], max_contexts=max_contexts, progress=progress
        )
        model_exact, model_valid = laws[0]
        results = [
            _generated_stats(lm, s, law, prompt, values, longest, samples, batch_size, progress)
            for s, law in zip(chosen, laws[1:], strict=True)
        ]
    return RandomnessAudit(
        model=lm.name,
        prompt=prompt,
        values=values,
        samples=int(samples),
        method=method,
        model_exact=[float(x) for x in model_exact],
        model_valid_mass=model_valid,
        samplers=results,
        secrets=secrets_histogram(values, samples),
    )


def _first_token_stats(lm, sampler: Sampler, logits, base, ids, values, samples, progress) -> HistogramStats:
    """``samples`` draws of the first token, ``DRAW_CHUNK`` at a time from one seeded generator: only the
    counts are kept, so memory does not grow with ``samples``."""
    probs = sampler.probs(logits, input_ids=base)[0].double()
    valid_mass = float(probs[ids].sum())
    exact = (probs[ids] / valid_mass).tolist() if valid_mass > 0 else None
    generator = sampler.new_generator(logits.device)
    counts = torch.zeros(lm.d_vocab, dtype=torch.long, device=logits.device)
    with tqdm(total=samples, desc=sampler.describe(), unit="draw", disable=not progress, leave=False) as bar:
        for start in range(0, samples, DRAW_CHUNK):
            k = min(DRAW_CHUNK, samples - start)
            draws = sampler.sample(logits, input_ids=base, num_samples=k, generator=generator)[0]
            counts += torch.bincount(draws, minlength=lm.d_vocab)
            bar.update(k)
    valid = counts[ids]
    counts[ids] = 0
    failed_ids = [int(t) for t in counts.argsort(descending=True, stable=True)[:5] if counts[t] > 0]
    examples = [lm.decode([t]) for t in failed_ids]
    return histogram_stats(sampler.describe(), valid.tolist(), int(counts.sum()), exact, valid_mass, examples)


def _generated_stats(
    lm, sampler: Sampler, law, prompt, values, longest, samples, batch_size, progress
) -> HistogramStats:
    """Generate ``samples`` answers chunk by chunk and keep only the counts and five failed examples."""
    exact, valid_mass = law
    valid = range(values[0], values[-1] + 1)
    non_digit = (~_starts_with_digit(lm)).nonzero()[:, 0].tolist()
    counts = [0] * len(values)
    index = {v: i for i, v in enumerate(values)}
    failed = 0
    examples: dict[str, None] = {}  # the first failed answers, in order, each once
    for chunk in generation_chunks(
        lm,
        prompt,
        sampler,
        max_new_tokens=longest + 1,
        stop=non_digit,
        n=samples,
        stop_at_eos=True,
        batch_size=batch_size,
        progress=progress,
    ):
        for text in chunk.texts:
            answer = parse_answer(text, valid)
            if answer is None:
                failed += 1
                if len(examples) < 5:
                    examples.setdefault(text, None)
            else:
                counts[index[answer]] += 1
    return histogram_stats(
        sampler.describe(), counts, failed, exact if valid_mass > 0 else None, valid_mass, list(examples)
    )


def audit_figure(audit: RandomnessAudit):
    """Histograms side by side: the model's exact distribution, each sampler's answers (exact law as
    markers), ``secrets``, each with the uniform level as a dashed line. A range of more than
    ``MAX_BARS`` numbers is drawn in equal bins of consecutive numbers (each bar: the bin's total)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels: list[tuple[str, list[float], list[float] | None]] = [("model exact (T=1)", audit.model_exact, None)]
    panels += [(s.label, s.frequencies, s.exact) for s in audit.samplers]
    panels.append(("secrets.randbelow", audit.secrets.frequencies, None))
    titles = [label if len(label) < 32 else label[:29] + "…" for label, _, _ in panels]
    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True, subplot_titles=titles, horizontal_spacing=0.02)
    values = audit.values
    width = -(-len(values) // MAX_BARS)
    bins = [(i, min(i + width, len(values))) for i in range(0, len(values), width)]
    x = [str(values[a]) if b - a == 1 else f"{values[a]}–{values[b - 1]}" for a, b in bins]
    uniform = [(b - a) / len(values) for a, b in bins]

    def binned(heights):
        return heights if width == 1 else [float(sum(heights[a:b])) for a, b in bins]

    for col, (label, heights, exact) in enumerate(panels, start=1):
        fig.add_trace(
            go.Bar(
                x=x, y=binned(heights), name=label, showlegend=False, marker_color="#4C78A8" if col > 1 else "#F58518"
            ),
            row=1,
            col=col,
        )
        if exact is not None:
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=binned(exact),
                    mode="markers",
                    marker=dict(symbol="line-ew-open", size=14, color="black"),
                    name="exact law of the sampler",
                    showlegend=col == 2,
                ),
                row=1,
                col=col,
            )
        if width == 1:
            fig.add_hline(y=uniform[0], line_dash="dash", line_color="gray", row=1, col=col)
        else:
            fig.add_trace(
                go.Scatter(
                    x=x, y=uniform, mode="lines", line=dict(dash="dash", color="gray"), showlegend=False, name="uniform"
                ),
                row=1,
                col=col,
            )
    fig.update_yaxes(
        title_text="probability / frequency" + ("" if width == 1 else f" per bin of {width}"), row=1, col=1
    )
    binning = "" if width == 1 else f"; bins of {width} numbers"
    fig.update_layout(
        title=f"Is {audit.model}'s random number random? {audit.samples} answers per source; dashed: uniform{binning}",
        bargap=0.15,
        height=380,
        width=max(700, 260 * len(panels)),
        template="plotly_white",
    )
    return fig
