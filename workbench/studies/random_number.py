"""The founding study: is an LLM's "random number between [0, 9]" random? (sections 1–7 of the study)

:func:`run_study` reproduces every experiment with the core probes and returns a :class:`StudyResult`
(numbers, probe results, captioned figures) in two stages: :func:`measure` (every number, as a record)
and :func:`study_figures` (drawn from the record alone, so ``workbench report`` can redraw a saved
study); :mod:`workbench.studies.report` writes it out. Options default to the study's values (block
21, patch at blocks 6 and 14, mask from block 13); on a model with fewer blocks they scale to the
same relative depth and say so, while a block given explicitly must exist.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workbench import plots
from workbench.errors import TokenError, WorkbenchError
from workbench.layers import resid_labels, resolve_blocks
from workbench.metrics import kl_divergence
from workbench.models import Model
from workbench.probes import ActivationPatch, AttentionCapture, AttentionMask, BlockReplacement, LogitLens
from workbench.run import run
from workbench.studies.defaults import GENERATE_PROMPT, STUDY_PROMPT
from workbench.studies.digit_lens import digit_lens_figures, measure_digit_lens
from workbench.studies.figure import Figure
from workbench.studies.writers import measure_writers, writers_figures, writers_headline, writers_over_dataset
from workbench.tokens import DIGITS, digit_token_ids, find_position, to_tokens

# Odd prompts in the spirit of the study's section 7: absurd bounds and ranges.
SWEEP_PROMPTS = (
    "I'm generating a random number between [0, -inf]. The number is ",
    "I'm generating a random number between [null, null]. The number is ",
    "I'm generating a random number between [0, 9i]. The number is ",
    "I'm generating a random number between [3+4i, 7-2i]. The number is ",
    "I'm generating a random number beyond ω. The number is ",
    "I'm generating a random number in the Vitali set. The number is ",
    "I'm generating a random number in the Vitali set, without the axiom of choice. The number is ",
    "I'm generating a random number between [9, 0]. The number is ",
    "I'm generating a random number between [0, 0]. The number is ",
    "I'm generating a random number between [NaN, NaN]. The number is ",
    "I'm generating a random number between [-inf, inf]. The number is ",
    "I'm generating a random prime number. The number is ",
    "I'm generating a random number that is not a number. The number is ",
    "I'm generating a random number between [0, 1]. The number is ",
    "I'm generating a random number between [0, 5]. The number is ",
    "I'm not generating a random number. The number is ",
)


STUDY_N_LAYERS = 24  # Qwen2.5-0.5B-Instruct, the model of the source study


def scale_block(study_block: int, n_layers: int) -> int:
    """A study block on a model at least as deep as the study's; on a shallower one, the same relative depth.

    Every default scales together on a shallower model (never some kept and some scaled), so the
    study's order survives: blocks 6, 14, 21 stay in that order on an 8-block model (2, 4, 6).
    """
    if n_layers >= STUDY_N_LAYERS:
        return study_block
    return min(n_layers - 1, round(study_block * (n_layers - 1) / (STUDY_N_LAYERS - 1)))


@dataclass
class StudyOptions:
    """Every knob of the study; ``None`` means the study's value, scaled to the model's depth."""

    prompt: str = STUDY_PROMPT
    extra_prompts: Sequence[str] = field(default_factory=list)
    bound: str = "9"
    source_bound: str = "5"
    block: int | None = None
    patch_blocks: list[int] | None = None
    late_from: int | None = None
    mask_from: int | None = None
    sweep_prompts: Sequence[str] = field(default_factory=lambda: list(SWEEP_PROMPTS))
    prompts_file: Path | None = None
    hide_sink: bool = True
    hide_diagonal: bool = True
    top_k: int = 10
    lens: Any = None  # a lens file (``workbench lens fit``) or a Lens: the logit lens is checked against it
    fit_lens: bool = False  # or fit a linear lens on text sampled from the model (``lens_tokens`` tokens)
    lens_tokens: int = 8192
    dataset: str | Path | None = None  # a prompt dataset, or "bundled": the headline effects over many prompts
    skip_bad_rows: bool = False
    resamples: int = 9999  # bootstrap resamples of the dataset effects' intervals


@dataclass
class Plan:
    """Options resolved against a model: concrete blocks and positions, plus notes on any scaling."""

    block: int
    patch_blocks: list[int]
    late_blocks: list[int]
    mask_blocks: list[int]
    bound_position: int
    source_prompt: str
    sweep_prompts: list[str]
    notes: list[str]


@dataclass
class StudyResult:
    """Numbers for ``results.json``, the probe results behind them, and captioned figures."""

    record: dict[str, Any]
    figures: list[Figure]
    results: dict[str, Any]
    plan: Plan


def read_prompts_file(path: Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with # are skipped; trailing spaces kept."""
    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(f"Prompt file {path} does not exist: pass a text file with one prompt per line.")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise WorkbenchError(f"Prompt file {path} is not UTF-8 text (byte {exc.start}): save it as UTF-8.") from None
    except OSError as exc:
        raise WorkbenchError(f"Prompt file {path} cannot be read ({exc.strerror}): check its permissions.") from None
    prompts = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise WorkbenchError(f"Prompt file {path} holds no prompt: write one prompt per line.")
    return prompts


def plan_study(model: Model, options: StudyOptions) -> Plan:
    """Resolve and validate every option before any forward pass, so a bad option writes nothing."""
    facts, n = model.facts, model.facts.n_layers
    notes = []

    def default(value, study_block, what):
        if value is not None:
            return resolve_blocks(facts, value)[0]
        scaled = scale_block(study_block, n)
        if scaled != study_block:
            notes.append(f"{what}: study block {study_block} scaled to block {scaled} ({facts.name} has {n} blocks)")
        return scaled

    block = default(options.block, 21, "identity block")
    late_from = default(options.late_from, 21, "late patch from")
    mask_from = default(options.mask_from, 13, "mask from")
    if options.patch_blocks is None:
        patch_blocks = sorted({default(None, b, f"patch block {b}") for b in (6, 14)})
    else:
        patch_blocks = resolve_blocks(facts, options.patch_blocks)
    try:
        bound_position = find_position(model, options.prompt, options.bound)
    except TokenError as exc:
        raise TokenError(f"The bound {options.bound!r} cannot be located in the prompt: {exc}") from None
    start = options.prompt.find(options.bound)
    source_prompt = options.prompt[:start] + options.source_bound + options.prompt[start + len(options.bound) :]
    digit_token_ids(model)  # a model whose digits are not single tokens cannot answer the question
    check_extras(model, options)
    sweep = list(options.sweep_prompts)
    if options.prompts_file is not None:
        sweep += read_prompts_file(options.prompts_file)
    return Plan(
        block=block,
        patch_blocks=patch_blocks,
        late_blocks=list(range(late_from, n)),
        mask_blocks=list(range(mask_from, n)),
        bound_position=bound_position,
        source_prompt=source_prompt,
        sweep_prompts=sweep,
        notes=notes,
    )


def check_extras(model: Model, options: StudyOptions) -> None:
    """The lens and dataset options, checked before any forward: a lens for another model, a missing or
    unreadable dataset, or one with bad rows (unless they are to be skipped) is refused here."""
    if options.lens is not None and options.fit_lens:
        raise WorkbenchError("Pass either a lens file (--lens) or --fit-lens, not both.")
    if options.lens is not None:
        from workbench.lenses import Lens

        if isinstance(options.lens, Lens):
            options.lens.check_model(model)
        else:
            Lens.load(options.lens, model)
    if options.fit_lens and options.lens_tokens < 256:
        raise WorkbenchError(
            f"--lens-tokens {options.lens_tokens}: a lens needs at least 256 tokens to fit "
            "(the default, 8192, takes a few minutes on a CPU)."
        )
    if options.dataset is not None:
        from workbench.studies.dataset_effects import load_study_dataset

        load_study_dataset(options.dataset)


def digit_distribution(probs: torch.Tensor, digit_ids: list[int]) -> dict[str, float]:
    return {d: float(probs[i]) for d, i in zip(DIGITS, digit_ids, strict=True)}


def digit_stats(dist: dict[str, float]) -> dict[str, Any]:
    """Entropy and distance from uniform of the digits' distribution (renormalised over the ten)."""
    mass = sum(dist.values())
    p = torch.tensor([dist[d] / mass for d in DIGITS]) if mass > 0 else torch.full((10,), 0.1)
    entropy = float(-(p * p.clamp_min(1e-30).log2()).sum())
    top = sorted(dist.items(), key=lambda kv: -kv[1])[:5]
    return {
        "top5": [[d, v] for d, v in top],
        "digit_mass": mass,
        "entropy_bits": entropy,
        "max_entropy_bits": math.log2(10),
        "kl_from_uniform_bits": math.log2(10) - entropy,
        "total_variation_from_uniform": float(0.5 * (p - 0.1).abs().sum()),
    }


def above(dist: dict[str, float], threshold: str) -> float:
    return sum(p for d, p in dist.items() if int(d) > int(threshold))


def run_study(
    model: Model, options: StudyOptions | None = None, progress: Callable[[str], None] | None = None
) -> StudyResult:
    """Run sections 1–7 of the study on ``model``; ``progress(step)`` is called before each step.

    Two stages: :func:`measure` computes every number and probe result (the record); the figures
    are drawn from that record alone (:func:`study_figures`), which is how ``workbench report``
    redraws a study from its ``results.json`` without the model.
    """
    options = options or StudyOptions()
    plan = plan_study(model, options)
    step = progress or (lambda _: None)
    record, results = measure(model, options, plan, step)
    step("figures")
    return StudyResult(record=record, figures=study_figures(record, results), results=results, plan=plan)


# --- measuring: each step returns data ----------------------------------------------------------------


def measure(
    model: Model, options: StudyOptions, plan: Plan, step: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every number of the study (the record written to ``results.json``) and the probe results behind them."""
    digit_ids = digit_token_ids(model)
    prompt = options.prompt

    step("digit distributions")
    dists = prompt_distributions(model, [GENERATE_PROMPT, prompt, *options.extra_prompts], digit_ids)

    step("logit lens and attention")
    observed = run(model, prompt, [LogitLens(k=options.top_k), AttentionCapture()], targets=list(DIGITS))
    lens, attention = observed["logit_lens"], observed["attention"]
    clean = digit_distribution(observed.probs()[0], digit_ids)
    clean_logits = observed.logits["clean"]

    step(f"block {plan.block} as the identity")
    identity = run(
        model, prompt, BlockReplacement(blocks=[plan.block]), clean_logits=clean_logits, targets=list(DIGITS)
    )["block_replacement"]
    step("identity sweep over every block")
    sweep_rows = identity_sweep(model, prompt, clean, clean_logits, digit_ids)

    step("patching and masking")
    edits = interventions(model, prompt, plan, clean_logits)

    step("prompt sweep")
    sweep = prompt_sweep(model, plan.sweep_prompts, digit_ids)

    results = {"logit_lens": lens, "attention": attention, "identity": identity, **edits}
    fitted = None
    if options.lens is not None or options.fit_lens:
        step("fitting a linear lens" if options.fit_lens else "the fitted lens")
        fitted = results["tuned_lens"] = fitted_lens_view(model, options)
    step("when the digit is decided")
    digit_lens = measure_digit_lens(model, prompt, plan.bound_position, lens, fitted)
    step("who writes the digits")
    extra: dict[str, Any] = {
        "digit_lens": digit_lens,
        "writers": measure_writers(
            model,
            prompt,
            plan.source_prompt,
            attention.attention_to(plan.bound_position).numpy(),
            plan.late_blocks,
            options.source_bound,
        ),
    }
    if fitted is not None:
        extra["lens_check"] = lens_check(fitted, model.facts.n_layers)
    if options.dataset is not None:
        step("effects over the dataset")
        from workbench.studies.dataset_effects import run_dataset_effects

        over = run_dataset_effects(
            model,
            options.dataset,
            block=plan.block,
            patch_blocks=plan.patch_blocks,
            mask_blocks=plan.mask_blocks,
            resamples=options.resamples,
            skip_bad_rows=options.skip_bad_rows,
        )
        extra["dataset_effects"] = over.effects()
        extra["dataset_summary"] = over.summary  # the forest plot, stamped with the run's manifest hash
        step("who writes the digits, over the dataset")
        from workbench.studies.dataset_effects import load_study_dataset

        data = load_study_dataset(options.dataset)
        data = data.without(over.skipped, report=False) if over.skipped else data
        extra["writers"]["dataset"] = writers_over_dataset(model, data, options.resamples)
    record = make_record(model, options, plan, dists, clean, results, sweep_rows, sweep, extra)
    return record, results


def fitted_lens_view(model: Model, options: StudyOptions):
    """The study prompt's last position read through a fitted lens beside the logit lens (``TunedLensResult``)."""
    from workbench.lenses import fit_lens
    from workbench.probes import TunedLens

    lens = options.lens
    if lens is None:
        lens = fit_lens(model, None, method="linear", tokens=options.lens_tokens, seed=0, progress=True)
    return run(model, options.prompt, TunedLens(lens=lens, k=options.top_k, positions=[-1]), targets=list(DIGITS))[
        "tuned_lens"
    ]


def lens_check(result, n_layers: int) -> dict[str, Any]:
    """Does "the digits appear late" survive a better lens? Per lens, the residual stream from which on a
    digit stays in the top-k; the claim survives when the fitted lens, too, finds none before the middle
    of the network (block ``n_layers // 2``). ``survives`` is None when the logit lens makes no such claim."""
    comparison = result.comparison()
    stays = comparison.in_top_k_from()
    fitted = result.lens_name
    layers = comparison.layers
    middle = layers.index(f"after block {n_layers // 2}")
    logit, other = stays["logit lens"], stays[fitted]
    said = (
        f"A digit stays in the top-{comparison.k} from {logit or 'no layer before the output'} under the logit "
        f"lens and from {other or 'no layer before the output'} under the {fitted}"
    )
    if logit is None:
        survives = None
        verdict = f"{said}: the logit lens makes no 'late' claim here to check."
    else:
        survives = other is None or layers.index(other) >= middle
        verdict = (
            f'{said}: "the digits appear late" {"survives" if survives else "does not survive"} the better '
            f"lens (criterion: not before block {n_layers // 2}, the middle of the network)."
        )
    verdict += (
        f" Mean KL to the output over the layers: logit lens {comparison.kl['logit lens'].mean():.2f} nats, "
        f"{fitted} {comparison.kl[fitted].mean():.2f} nats."
    )
    return {**comparison.to_dict(), "lens_file": result.meta.get("lens"), "survives": survives, "verdict": verdict}


def prompt_distributions(model: Model, prompts: list[str], digit_ids: list[int]) -> dict[str, dict[str, float]]:
    """Section 1: the digits' next-token probabilities at the last position of each (distinct) prompt."""
    dists = {}
    for text in dict.fromkeys(prompts):
        probs = model.logits(to_tokens(model, text))[0, -1].float().softmax(-1)
        dists[text] = digit_distribution(probs, digit_ids)
    return dists


def identity_sweep(
    model: Model, prompt: str, clean: dict[str, float], clean_logits: torch.Tensor, digit_ids: list[int]
) -> list[dict[str, Any]]:
    """Section 3: each block in turn replaced by the identity; KL of the digits (bits) and of the full output."""
    rows = []
    clean_digits = torch.tensor(list(clean.values()))
    for b in range(model.facts.n_layers):
        replaced = run(model, prompt, BlockReplacement(blocks=[b]), clean_logits=clean_logits, targets=list(DIGITS))
        moved = torch.tensor(list(digit_distribution(replaced.probs()[0], digit_ids).values()))
        # The digits renormalised over the ten: log-probabilities are logits the one KL renormalises.
        kl_digits = kl_divergence(clean_digits.clamp_min(1e-30).log(), moved.clamp_min(1e-30).log(), bits=True)
        rows.append(
            {
                "block": b,
                "kl_digits": float(kl_digits),
                "kl_full": float(replaced["block_replacement"]["kl"].numpy()[0]),
            }
        )
    return rows


def interventions(model: Model, prompt: str, plan: Plan, clean_logits: torch.Tensor) -> dict[str, Any]:
    """Sections 5–6: keys/values at the bound patched from the source prompt (at the plan's blocks,
    then also the late ones), attention to the bound masked, and patch and mask together."""
    at: list[int | str] = [plan.bound_position]  # the probes take positions as ints or names

    def patch(blocks):
        return ActivationPatch(source=plan.source_prompt, site="kv", blocks=blocks, positions=at)

    def mask():
        return AttentionMask(keys=at, blocks=plan.mask_blocks)

    def edited(probes, name):
        return run(model, prompt, probes, clean_logits=clean_logits, targets=list(DIGITS))[name]

    late = sorted(set(plan.patch_blocks) | set(plan.late_blocks))
    return {
        "patch": edited(patch(plan.patch_blocks), "patch"),
        "patch_late": edited(patch(late), "patch"),
        "mask": edited(mask(), "attention_mask"),
        "patch_and_mask": edited([patch(plan.patch_blocks), mask()], "patch"),
    }


def prompt_sweep(model: Model, prompts: list[str], digit_ids: list[int]) -> list[dict[str, Any]]:
    """Section 7: the digit distribution and its statistics for each sweep prompt."""
    rows = []
    for text in prompts:
        probs = model.logits(to_tokens(model, text))[0, -1].float().softmax(-1)
        dist = digit_distribution(probs, digit_ids)
        rows.append({"prompt": text, **digit_stats(dist), "distribution": dist})
    return rows


def make_record(
    model: Model,
    options: StudyOptions,
    plan: Plan,
    dists: dict,
    clean: dict[str, float],
    results: dict[str, Any],
    sweep_rows: list[dict],
    sweep: list[dict],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The numbers a reader (and ``results.json``) gets; the figures need nothing else but the probe results."""
    facts, n = model.facts, model.facts.n_layers
    lens, attention = results["logit_lens"], results["attention"]
    bound, src = options.bound, options.source_bound
    patch_name = f"patch_{'_'.join(map(str, plan.patch_blocks))}"
    names = {
        "clean": clean,
        f"identity_block_{plan.block}": results["identity"].distribution(),
        f"mask_{_slug(bound)}_from_{plan.mask_blocks[0]}": results["mask"].distribution(),
        patch_name: results["patch"].distribution(),
        f"{patch_name}_and_{plan.late_blocks[0]}_on": results["patch_late"].distribution(),
        "patch_and_mask": results["patch_and_mask"].distribution(),
    }
    to_bound = attention.attention_to(plan.bound_position)
    record = {
        "model": facts.to_dict(),
        "prompt": options.prompt,
        "tokens": lens.tokens[0],
        "layer_convention": "blocks counted from 0; lens rows: embeddings, after block i, final",
        "options": {
            "block": plan.block,
            "patch_blocks": plan.patch_blocks,
            "late_blocks": plan.late_blocks,
            "mask_blocks": plan.mask_blocks,
            "bound": bound,
            "bound_position": plan.bound_position,
            "source_bound": src,
            "source_prompt": plan.source_prompt,
            "notes": plan.notes,
            "hide_sink": options.hide_sink,
            "hide_diagonal": options.hide_diagonal,
        },
        "prompt_distributions": dict(dists),
        "distributions": names,
        "above_source_bound": {k: above(v, src) for k, v in names.items()},
        "logit_lens": [{"layer": label, "top": [[t, p] for t, p in lens.top_k(label)]} for label in resid_labels(n)],
        "identity_sweep": sorted(sweep_rows, key=lambda r: -r["kl_digits"]),
        "attention": {
            "sink_share": {
                f"block {b}": row
                for b, row in zip(
                    attention["sink_share"].coords["block"],
                    attention["sink_share"].sel(prompt=0).numpy().tolist(),
                    strict=True,
                )
            },
            "to_bound": {
                f"block {b}": row for b, row in zip(to_bound.coords["block"], to_bound.numpy().tolist(), strict=True)
            },
        },
        "prompt_sweep": sweep,
        **(extra or {}),
    }
    record["headline"] = headline(record)
    return record


def plan_from_record(record: dict[str, Any]) -> Plan:
    """The plan a recorded study ran with (for a study loaded from ``results.json``)."""
    o = record["options"]
    return Plan(
        block=o["block"],
        patch_blocks=o["patch_blocks"],
        late_blocks=o["late_blocks"],
        mask_blocks=o["mask_blocks"],
        bound_position=o["bound_position"],
        source_prompt=o["source_prompt"],
        sweep_prompts=[r["prompt"] for r in record["prompt_sweep"]],
        notes=o["notes"],
    )


# --- figures: drawn from the record and the probe results alone -----------------------------------------


def study_figures(record: dict[str, Any], results: dict[str, Any]) -> list[Figure]:
    """Every captioned figure of the report, in order, from the record alone (no model needed)."""
    return [
        *_distribution_figures(record),
        *_lens_figures(results["logit_lens"]),
        *_identity_figures(record, results["identity"]),
        *_attention_figures(record, results["attention"]),
        *_intervention_figures(record),
        *_sweep_figures(record),
        *_lens_check_figures(record),
        *digit_lens_figures(record),
        *_dataset_figures(record),
        *writers_figures(record),
    ]


def _distribution_figures(record):
    name = record["model"]["name"]
    dists = record["prompt_distributions"]
    yield Figure(
        "distributions",
        "Digit probabilities per prompt",
        "Probability of each digit token as the next token, at the last position of each prompt. A uniform "
        "generator would give 0.1 to each digit.",
        plots.bars(
            {_short(t): list(d.values()) for t, d in dists.items()},
            labels=list(DIGITS),
            title=f"Next-token probability of each digit ({name})",
            x_title="digit",
            y_title="probability",
        ),
        "1. Output distribution",
    )


def _lens_figures(lens):
    section = "2. Logit lens"
    yield Figure(
        "lens_top_tokens",
        "Top-1 token per layer and position",
        (
            "Each residual stream (rows: embeddings, after block i counted from 0, final output) read through the "
            "final norm and the unembedding; the cell shows the most likely token and its probability."
        ),
        lens.figure("top_tokens"),
        section,
    )
    yield Figure(
        "lens_digits",
        "Digit probability per layer",
        "Probability of each digit at the last position, per residual stream: digits appear only in late blocks.",
        lens.figure("targets"),
        section,
    )
    yield Figure(
        "lens_ranks",
        "Rank of each digit per layer",
        "Rank of each digit among all tokens (0 = most likely) at the last position, per residual stream.",
        lens.figure("ranks"),
        section,
    )


def _identity_figures(record, identity):
    section, name, block = "3. Identity block", record["model"]["name"], record["options"]["block"]
    yield Figure(
        "identity",
        f"Block {block} replaced by the identity",
        f"Digit probabilities at the last position with block {block}'s output set equal to its input.",
        identity.figure("distribution"),
        section,
    )
    rows = sorted(record["identity_sweep"], key=lambda r: r["block"])
    yield Figure(
        "identity_sweep",
        "Which block moves the digit distribution most",
        "KL divergence (bits) between the clean digit distribution and the one with each block replaced by the "
        "identity (digits renormalised over the ten).",
        plots.bars(
            {"KL(clean ‖ replaced), digits": [r["kl_digits"] for r in rows]},
            labels=[f"block {r['block']}" for r in rows],
            title=f"Identity replacement of each block ({name})",
            x_title="block replaced",
            y_title="KL (bits)",
        ),
        section,
    )


def _attention_figures(record, attention):
    section, facts, o = "4. Attention per head", record["model"], record["options"]
    hide_sink, bound, position = o["hide_sink"], o["bound"], o["bound_position"]
    display = dict(hide_sink=hide_sink, hide_diagonal=o["hide_diagonal"], renormalise=hide_sink)
    for b in range(facts["n_layers"]):
        yield Figure(
            f"attention_block_{b}",
            f"Block {b}: attention per query head",
            f"Query × key attention of each head of block {b}, titled with the key/value group it reads"
            + (" (first token and diagonal hidden, rows renormalised)" if hide_sink else "")
            + ".",
            attention.figure("heads", block=b, **display),
            section,
        )
    yield Figure(
        "attention_sink",
        "Attention sink per block and head",
        "Share of attention on the first token, averaged over query positions 1…n−1.",
        attention.figure("sink"),
        section,
    )
    to_bound = attention.attention_to(position)
    yield Figure(
        "attention_to_bound",
        f"Attention from the last position to {bound!r}",
        f"Attention weight from the last position to the bound {bound!r} (position {position}) per block and head.",
        plots.heatmap(
            to_bound.numpy(),
            x=[f"head {h} · g{facts['head_to_group'][h]}" for h in to_bound.coords["head"]],
            y=[f"block {b}" for b in to_bound.coords["block"]],
            zmin=0,
            colorbar="attention",
            title=f"Attention from the last position to {bound!r} ({facts['name']})",
            x_title="query head · kv group",
            y_title="block",
        ),
        section,
    )


def _intervention_figures(record):
    section, name, o = "5–6. Patching and masking", record["model"]["name"], record["options"]
    bound, src, n = o["bound"], o["source_bound"], record["model"]["n_layers"]
    names, above_src = record["distributions"], record["above_source_bound"]
    yield Figure(
        "interventions",
        "Digit distribution under each intervention",
        f"Digit probabilities at the last position: clean; keys/values at {bound!r} patched from the prompt with "
        f"{src!r} in blocks {o['patch_blocks']} (then also blocks {o['late_blocks'][0]}–{n - 1}); attention to "
        f"{bound!r} masked from block {o['mask_blocks'][0]}; patch and mask together.",
        plots.bars(
            {k: list(v.values()) for k, v in names.items()},
            labels=list(DIGITS),
            title=f"Interventions on the digit distribution ({name})",
            x_title="digit",
            y_title="probability",
        ),
        section,
    )
    yield Figure(
        "above_source",
        f"Probability of digits above {src}",
        f"Total probability of the digits greater than {src} under each intervention.",
        plots.bars(
            {f"p(digit > {src})": list(above_src.values())},
            labels=list(above_src),
            title=f"Probability of digits above {src} ({name})",
            x_title="intervention",
            y_title="probability",
        ),
        section,
    )


def _sweep_figures(record):
    sweep = record["prompt_sweep"]
    yield Figure(
        "prompt_sweep",
        "Digit distribution across odd prompts",
        "Each row: one prompt; cells: probability of each digit (renormalised over the ten digits).",
        plots.heatmap(
            [[r["distribution"][d] / max(r["digit_mass"], 1e-30) for d in DIGITS] for r in sweep],
            x=list(DIGITS),
            y=[_short(r["prompt"], 60) for r in sweep],
            zmin=0,
            colorbar="p(digit | digit)",
            title=f"Prompt sweep: digit distributions ({record['model']['name']})",
            x_title="digit",
            y_title="prompt",
            width=1100,
        ),
        "7. Prompt sweep",
    )


def _lens_check_figures(record):
    if "lens_check" not in record:
        return
    from workbench.probes.tuned_lens import LensComparison

    check = record["lens_check"]
    yield Figure(
        "lens_check",
        "Logit lens vs a fitted lens",
        "KL divergence to the output distribution per residual stream (top) and the rank of the best digit "
        f"(bottom; below the dashed line it is in the top-{check['k']}), at the last position, for the logit "
        f"lens and a fitted lens ({check.get('lens_file') or check['lens']}). {check['verdict']}",
        LensComparison.from_dict(check).figure(),
        "2b. Does a better lens agree?",
    )


def _dataset_figures(record):
    if "dataset_effects" not in record:
        return
    from workbench.experiments.report import forest_plot

    summary = record["dataset_summary"]
    yield Figure(
        "dataset_effects",
        "Headline effects over the dataset",
        f"Each headline intervention's effect (intervened − clean, per prompt) as a mean over "
        f"{summary['n_items']} prompts with its {summary['method']['confidence']:.0%} bootstrap interval; "
        "filled markers stay significant (paired test against the clean run) after Benjamini–Hochberg.",
        forest_plot(summary),
        "8. Over a dataset of prompts",
    )


def _dataset_size(effects: dict[str, Any]) -> int:
    return max((cell["n"] for metrics in effects.values() for cell in metrics.values()), default=0)


def headline(record: dict[str, Any]) -> list[str]:
    """The few sentences a reader wants first, computed from the record."""
    d = record["distributions"]
    clean = d["clean"]
    top = max(clean, key=clean.get)
    low = min(clean, key=clean.get)
    stats = digit_stats(clean)
    opts = record["options"]
    identity_key = f"identity_block_{opts['block']}"
    lines = [
        f"Clean prompt: the most likely digit is {top} (p = {clean[top]:.3f}), the least likely {low} "
        f"(p = {clean[low]:.4f}); entropy {stats['entropy_bits']:.2f} bits of a possible {math.log2(10):.2f}.",
        f"Block {opts['block']} as the identity: top digit {max(d[identity_key], key=d[identity_key].get)} "
        f"(p = {max(d[identity_key].values()):.3f}).",
    ]
    src = opts["source_bound"]
    above = record["above_source_bound"]
    patch_keys = [k for k in d if k.startswith("patch_") and k != "patch_and_mask"]
    lines.append(
        f"p(digit > {src}): clean {above['clean']:.3f}; patched {above[patch_keys[0]]:.3f}; "
        f"patched incl. late blocks {above[patch_keys[1]]:.3f}; "
        f"masked {above[[k for k in d if k.startswith('mask_')][0]]:.3f}; "
        f"patch and mask {above['patch_and_mask']:.3f}."
    )
    top_block = record["identity_sweep"][0]
    lines.append(
        f"The block whose removal moves the digit distribution most: block {top_block['block']} "
        f"(KL {top_block['kl_digits']:.3f} bits)."
    )
    sweep = record["prompt_sweep"]
    firsts = [r["top5"][0][0] for r in sweep]
    lines.append(f"Prompt sweep: {len(sweep)} prompts; top digit per prompt: " + ", ".join(firsts) + ".")
    if "lens_check" in record:
        lines.append(record["lens_check"]["verdict"])
    if "digit_lens" in record:
        lines.append(record["digit_lens"]["verdict"])
    if "dataset_effects" in record:
        effects = record["dataset_effects"]
        parts = []
        for condition, metrics in effects.items():
            cell = metrics.get("digits_above:{source_bound}") or next(iter(metrics.values()))
            low, high = (f"{v:+.3f}" if v is not None else "–" for v in (cell["ci_low"], cell["ci_high"]))
            parts.append(f"{condition} {cell['mean']:+.3f} [{low}, {high}]")
        lines.append(
            f"Over {_dataset_size(effects)} prompts, the change in p(digit above the source's bound), mean "
            "[95% interval]: " + "; ".join(parts) + "."
        )
    return lines + writers_headline(record)


def _short(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)
