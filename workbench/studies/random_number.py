"""The founding study: is an LLM's "random number between [0, 9]" random? (MISSION.md, sections 1–7)

:func:`run_study` reproduces every experiment with the core probes and returns a
:class:`StudyResult` (numbers, probe results, captioned figures); :mod:`workbench.studies.report`
writes it out. Options default to the study's values (block 21, patch at blocks 6 and 14, mask from
block 13); on a model with fewer blocks they scale to the same relative depth and say so, while a
block given explicitly must exist.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workbench import plots
from workbench.errors import TokenError, WorkbenchError
from workbench.layers import resid_labels, resolve_blocks, scale_block
from workbench.models import Model
from workbench.probes import ActivationPatch, AttentionCapture, AttentionMask, BlockReplacement, LogitLens
from workbench.run import run
from workbench.tokens import DIGITS, digit_token_ids, find_position, to_tokens

GENERATE_PROMPT = "Generate a random number between [0, 9]: "
STUDY_PROMPT = "I'm generating a random number between [0, 9]. The number is "

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


@dataclass
class StudyOptions:
    """Every knob of the study; ``None`` means the study's value, scaled to the model's depth."""

    prompt: str = STUDY_PROMPT
    extra_prompts: list[str] = field(default_factory=list)
    bound: str = "9"
    source_bound: str = "5"
    block: int | None = None
    patch_blocks: list[int] | None = None
    late_from: int | None = None
    mask_from: int | None = None
    sweep_prompts: list[str] = field(default_factory=lambda: list(SWEEP_PROMPTS))
    prompts_file: Path | None = None
    hide_sink: bool = True
    hide_diagonal: bool = True
    top_k: int = 10


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
class Figure:
    key: str
    title: str
    caption: str
    figure: Any
    section: str


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
    source_prompt = options.prompt[:start] + options.source_bound + options.prompt[start + len(options.bound):]
    digit_token_ids(model)  # a model whose digits are not single tokens cannot answer the question
    sweep = list(options.sweep_prompts)
    if options.prompts_file is not None:
        sweep += read_prompts_file(options.prompts_file)
    return Plan(
        block=block, patch_blocks=patch_blocks, late_blocks=list(range(late_from, n)),
        mask_blocks=list(range(mask_from, n)), bound_position=bound_position, source_prompt=source_prompt,
        sweep_prompts=sweep, notes=notes,
    )


def digit_distribution(probs: torch.Tensor, digit_ids: list[int]) -> dict[str, float]:
    return {d: float(probs[i]) for d, i in zip(DIGITS, digit_ids)}


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


def run_study(model: Model, options: StudyOptions | None = None, progress: Callable[[str], None] | None = None) -> StudyResult:
    """Run sections 1–7 of the study on ``model``; ``progress(step)`` is called before each step."""
    options = options or StudyOptions()
    plan = plan_study(model, options)
    step = progress or (lambda _: None)
    facts, n = model.facts, model.facts.n_layers
    digit_ids = digit_token_ids(model)
    prompt, bound, src = options.prompt, options.bound, options.source_bound
    figures: list[Figure] = []
    results: dict[str, Any] = {}

    def add(key, section, title, caption, fig):
        figures.append(Figure(key, title, caption, fig, section))

    # 1. Output distribution of the source prompts (and any extra ones).
    step("digit distributions")
    dists = {}
    for text in dict.fromkeys([GENERATE_PROMPT, prompt, *options.extra_prompts]):
        probs = model.logits(to_tokens(model, text))[0, -1].float().softmax(-1)
        dists[text] = digit_distribution(probs, digit_ids)
    add("distributions", "1. Output distribution", "Digit probabilities per prompt",
        "Probability of each digit token as the next token, at the last position of each prompt. A uniform "
        "generator would give 0.1 to each digit.",
        plots.bars({_short(t): list(d.values()) for t, d in dists.items()}, labels=list(DIGITS),
                   title=f"Next-token probability of each digit ({facts.name})", x_title="digit", y_title="probability"))

    # 2 + 4. Logit lens and attention capture: one pass, observers only.
    step("logit lens and attention")
    observed = run(model, prompt, [LogitLens(k=options.top_k), AttentionCapture()])
    lens, attention = observed["logit_lens"], observed["attention"]
    results.update(logit_lens=lens, attention=attention)
    clean = digit_distribution(observed.probs()[0], digit_ids)
    add("lens_top_tokens", "2. Logit lens", "Top-1 token per layer and position", (
        "Each residual stream (rows: embeddings, after block i counted from 0, final output) read through the "
        "final norm and the unembedding; the cell shows the most likely token and its probability."),
        lens.figure("top_tokens"))
    add("lens_digits", "2. Logit lens", "Digit probability per layer",
        "Probability of each digit at the last position, per residual stream: digits appear only in late blocks.",
        lens.figure("targets"))
    add("lens_ranks", "2. Logit lens", "Rank of each digit per layer",
        "Rank of each digit among all tokens (0 = most likely) at the last position, per residual stream.",
        lens.figure("ranks"))

    # 3. Identity block, and a sweep replacing each block in turn.
    step(f"block {plan.block} as the identity")
    clean_logits = observed.logits["clean"]
    identity = run(model, prompt, BlockReplacement(blocks=[plan.block]), clean_logits=clean_logits)["block_replacement"]
    results["identity"] = identity
    add("identity", "3. Identity block", f"Block {plan.block} replaced by the identity",
        f"Digit probabilities at the last position with block {plan.block}'s output set equal to its input.",
        identity.figure("distribution"))
    step("identity sweep over every block")
    sweep_rows = []
    clean_digits = torch.tensor(list(clean.values()))
    for b in range(n):
        replaced = run(model, prompt, BlockReplacement(blocks=[b]), clean_logits=clean_logits)
        moved = torch.tensor(list(digit_distribution(replaced.probs()[0], digit_ids).values()))
        sweep_rows.append({"block": b, "kl_digits": _kl(clean_digits, moved),
                           "kl_full": float(replaced["block_replacement"]["kl"].numpy()[0])})
    ranked = sorted(sweep_rows, key=lambda r: -r["kl_digits"])
    add("identity_sweep", "3. Identity block", "Which block moves the digit distribution most",
        "KL divergence (bits) between the clean digit distribution and the one with each block replaced by the "
        "identity (digits renormalised over the ten).",
        plots.bars({"KL(clean ‖ replaced), digits": [r["kl_digits"] for r in sweep_rows]},
                   labels=[f"block {r['block']}" for r in sweep_rows],
                   title=f"Identity replacement of each block ({facts.name})", x_title="block replaced",
                   y_title="KL (bits)"))

    # 4. Attention per head: figures per block, sink share, attention to the bound.
    step("attention figures")
    display = dict(hide_sink=options.hide_sink, hide_diagonal=options.hide_diagonal, renormalise=options.hide_sink)
    for b in range(n):
        add(f"attention_block_{b}", "4. Attention per head", f"Block {b}: attention per query head",
            f"Query × key attention of each head of block {b}, titled with the key/value group it reads"
            + (" (first token and diagonal hidden, rows renormalised)" if options.hide_sink else "") + ".",
            attention.figure("heads", block=b, **display))
    add("attention_sink", "4. Attention per head", "Attention sink per block and head",
        "Share of attention on the first token, averaged over query positions 1…n−1.", attention.figure("sink"))
    to_bound = attention.attention_to(plan.bound_position)
    add("attention_to_bound", "4. Attention per head", f"Attention from the last position to {bound!r}",
        f"Attention weight from the last position to the bound {bound!r} (position {plan.bound_position}) per block and head.",
        plots.heatmap(to_bound.numpy(), x=[f"head {h} · g{facts.head_to_group[h]}" for h in to_bound.coords["head"]],
                      y=[f"block {b}" for b in to_bound.coords["block"]], zmin=0, colorbar="attention",
                      title=f"Attention from the last position to {bound!r} ({facts.name})",
                      x_title="query head · kv group", y_title="block"))

    # 5 + 6. Patching [0, bound] ← [0, source_bound], masking, and both.
    step("patching and masking")
    patch = ActivationPatch(source=plan.source_prompt, site="kv", blocks=plan.patch_blocks, positions=[plan.bound_position])
    patch_late = ActivationPatch(source=plan.source_prompt, site="kv", positions=[plan.bound_position],
                                 blocks=sorted(set(plan.patch_blocks) | set(plan.late_blocks)))
    mask = AttentionMask(keys=[plan.bound_position], blocks=plan.mask_blocks)
    patched = run(model, prompt, patch, clean_logits=clean_logits)["patch"]
    patched_late = run(model, prompt, patch_late, clean_logits=clean_logits)["patch"]
    masked = run(model, prompt, mask, clean_logits=clean_logits)["attention_mask"]
    both = run(model, prompt, [ActivationPatch(source=plan.source_prompt, site="kv", blocks=plan.patch_blocks,
                                               positions=[plan.bound_position]),
                               AttentionMask(keys=[plan.bound_position], blocks=plan.mask_blocks)],
               clean_logits=clean_logits)
    results.update(patch=patched, patch_late=patched_late, mask=masked, patch_and_mask=both["patch"])
    names = {
        "clean": clean,
        f"identity_block_{plan.block}": identity.distribution(),
        f"mask_{_slug(bound)}_from_{plan.mask_blocks[0]}": masked.distribution(),
        f"patch_{'_'.join(map(str, plan.patch_blocks))}": patched.distribution(),
        f"patch_{'_'.join(map(str, plan.patch_blocks))}_and_{plan.late_blocks[0]}_on": patched_late.distribution(),
        "patch_and_mask": both["patch"].distribution(),
    }
    add("interventions", "5–6. Patching and masking", "Digit distribution under each intervention",
        f"Digit probabilities at the last position: clean; keys/values at {bound!r} patched from the prompt with "
        f"{src!r} in blocks {plan.patch_blocks} (then also blocks {plan.late_blocks[0]}–{n - 1}); attention to "
        f"{bound!r} masked from block {plan.mask_blocks[0]}; patch and mask together.",
        plots.bars({k: list(v.values()) for k, v in names.items()}, labels=list(DIGITS),
                   title=f"Interventions on the digit distribution ({facts.name})", x_title="digit", y_title="probability"))
    above_src = {k: above(v, src) for k, v in names.items()}
    add("above_source", "5–6. Patching and masking", f"Probability of digits above {src}",
        f"Total probability of the digits greater than {src} under each intervention.",
        plots.bars({f"p(digit > {src})": list(above_src.values())}, labels=list(above_src),
                   title=f"Probability of digits above {src} ({facts.name})", x_title="intervention", y_title="probability"))

    # 7. Prompt sweep.
    step("prompt sweep")
    sweep = []
    for text in plan.sweep_prompts:
        probs = model.logits(to_tokens(model, text))[0, -1].float().softmax(-1)
        dist = digit_distribution(probs, digit_ids)
        sweep.append({"prompt": text, **digit_stats(dist), "distribution": dist})
    add("prompt_sweep", "7. Prompt sweep", "Digit distribution across odd prompts",
        "Each row: one prompt; cells: probability of each digit (renormalised over the ten digits).",
        plots.heatmap([[r["distribution"][d] / max(r["digit_mass"], 1e-30) for d in DIGITS] for r in sweep], x=list(DIGITS),
                      y=[_short(r["prompt"], 60) for r in sweep], zmin=0, colorbar="p(digit | digit)",
                      title=f"Prompt sweep: digit distributions ({facts.name})", x_title="digit", y_title="prompt",
                      width=1100))

    lens_table = []
    for label in resid_labels(n):
        lens_table.append({"layer": label, "top": [[t, p] for t, p in lens.top_k(label)]})
    record = {
        "model": facts.to_dict(),
        "prompt": prompt,
        "tokens": lens.tokens[0],
        "layer_convention": "blocks counted from 0; lens rows: embeddings, after block i, final",
        "options": {"block": plan.block, "patch_blocks": plan.patch_blocks, "late_blocks": plan.late_blocks,
                    "mask_blocks": plan.mask_blocks, "bound": bound, "bound_position": plan.bound_position,
                    "source_bound": src, "source_prompt": plan.source_prompt, "notes": plan.notes},
        "prompt_distributions": {t: d for t, d in dists.items()},
        "distributions": names,
        "above_source_bound": above_src,
        "logit_lens": lens_table,
        "identity_sweep": ranked,
        "attention": {
            "sink_share": {f"block {b}": row for b, row in zip(attention["sink_share"].coords["block"],
                                                               attention["sink_share"].sel(prompt=0).numpy().tolist())},
            "to_bound": {f"block {b}": row for b, row in zip(to_bound.coords["block"], to_bound.numpy().tolist())},
        },
        "prompt_sweep": sweep,
    }
    record["headline"] = headline(record)
    return StudyResult(record=record, figures=figures, results=results, plan=plan)


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
        f"patched incl. late blocks {above[patch_keys[1]]:.3f}; masked {above[[k for k in d if k.startswith('mask_')][0]]:.3f}; "
        f"patch and mask {above['patch_and_mask']:.3f}."
    )
    top_block = record["identity_sweep"][0]
    lines.append(f"The block whose removal moves the digit distribution most: block {top_block['block']} "
                 f"(KL {top_block['kl_digits']:.3f} bits).")
    sweep = record["prompt_sweep"]
    firsts = [r["top5"][0][0] for r in sweep]
    lines.append(f"Prompt sweep: {len(sweep)} prompts; top digit per prompt: " + ", ".join(firsts) + ".")
    return lines


def _kl(p: torch.Tensor, q: torch.Tensor) -> float:
    p, q = p / p.sum(), q / q.sum()
    return float((p * (p.clamp_min(1e-30).log2() - q.clamp_min(1e-30).log2())).sum())


def _short(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)
