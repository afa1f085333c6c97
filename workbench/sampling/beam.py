"""Beam search as transformers does it: ``width`` live beams, finished hypotheses set aside.

At every step each live beam is extended by every token; the top ``K = max(2, 1 + #stop tokens) · width``
candidates by total log-probability are kept. Among them, the best ``width`` that do *not* end on a stop
token become the next live beams, and those among the first ``width`` that do end on one are offered to a
pool of the ``width`` best finished hypotheses, ranked by the length-penalised score

    score = log P(continuation | prompt) / length ** length_penalty,

``length`` counting the generated tokens *including* the stop token (transformers' convention since the
beam search refactor: ``cur_len + 1 - prompt_len``). At the last step (``max_new_tokens``) the first
``width`` candidates are all finished. A finished hypothesis never takes a live beam's slot, so a
continuation that needs more steps is not crowded out by short ones that stopped.

``early_stopping`` follows transformers: ``True`` stops as soon as the pool holds ``width`` hypotheses;
``False`` (transformers' default) stops once the best live beam, scored at the current length, cannot beat
the worst pooled one; ``"never"`` does the same but, when ``length_penalty > 0``, scores the live beam at
``max_new_tokens`` (the canonical, exhaustive rule). The tests check equality with
``transformers.generate(num_beams=...)``: sequences and ``sequences_scores``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from workbench.errors import SamplingError
from workbench.interventions.compile import Binding, compile_hooks
from workbench.memory import require_within_budget, rows_per_batch
from workbench.sampling.checks import finite_number, whole_number
from workbench.sampling.generate import resolve_interventions, stop_token_sets
from workbench.sampling.lm import as_next_token_model, check_context, forward_bytes_per_row, model_device, prompt_tokens

EarlyStopping = bool | Literal["never"]
DISCARD = -1.0e9  # transformers' penalty for a candidate that may not become a live beam


@dataclass
class Beam:
    """One continuation: generated token ids (a final stop token included), text, total log-probability,
    length-penalised score, and whether it ended on a stop token (else it reached ``max_new_tokens``)."""

    tokens: list[int]
    text: str
    logprob: float
    score: float
    finished: bool


@dataclass
class BeamSearchResult:
    prompt_tokens: list[int]
    width: int
    length_penalty: float
    early_stopping: EarlyStopping = False
    max_new_tokens: int = 0
    steps: int = 0
    beams: list[Beam] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lines = [
            f"beam search, width {self.width}, length penalty {self.length_penalty:g}, early stopping "
            f"{self.early_stopping!r}, {self.steps} of at most {self.max_new_tokens} steps"
        ]
        for i, b in enumerate(self.beams):
            lines.append(f"{i}: score {b.score:.4f}  log P {b.logprob:.4f}  {'■' if b.finished else '…'} {b.text!r}")
        return "\n".join(lines)


def _check_early_stopping(value: Any) -> EarlyStopping:
    if value is True or value is False or value == "never":
        return value
    raise SamplingError(f"early_stopping is {value!r}: pass True, False (transformers' default) or 'never'.")


@torch.no_grad()
def beam_search(
    model: Any,
    prompt: str | torch.Tensor,
    width: int = 4,
    max_new_tokens: int = 10,
    length_penalty: float = 1.0,
    stop: Sequence[int] | None = None,
    *,
    early_stopping: EarlyStopping = False,
    num_return_sequences: int | None = None,
    stop_at_eos: bool = True,
    fwd_hooks: list | None = None,
    progress: bool = False,
    interventions: Sequence | None = None,
) -> BeamSearchResult:
    """The ``num_return_sequences`` (default ``width``) best continuations of one prompt, best score first.

    ``stop`` holds token ids that end a hypothesis (with the EOS token unless ``stop_at_eos=False``).
    ``interventions`` (:class:`~workbench.interventions.Intervention` descriptions) and raw ``fwd_hooks``
    (TransformerLens ``(hook_name, fn)`` pairs) edit every forward of the search and are removed
    afterwards, even on error. Live beams are run a memory-budget-sized batch at a time.
    """
    lm = as_next_token_model(model)
    width = whole_number("Beam width", width, 1)
    max_new_tokens = whole_number("max_new_tokens", max_new_tokens, 1)
    length_penalty = finite_number(
        "length_penalty", length_penalty, "pass a finite number (1.0 is transformers' default)"
    )
    early_stopping = _check_early_stopping(early_stopping)
    returned = (
        width if num_return_sequences is None else whole_number("num_return_sequences", num_return_sequences, 1, width)
    )
    if fwd_hooks and not hasattr(lm, "hooked"):
        raise SamplingError(f"{lm.name} has no hook points: fwd_hooks need a workbench Model (TransformerLens bridge).")
    prompt_row = prompt_tokens(lm, prompt)
    if prompt_row.shape[0] != 1:
        raise SamplingError("Beam search takes one prompt: pass a single string or one row of token ids.")
    check_context(lm, prompt_row.shape[1], max_new_tokens)
    resolved = resolve_interventions(lm, prompt, prompt_row, interventions)
    stop_ids = _stop_ids(lm, stop, stop_at_eos)
    vocab = int(lm.d_vocab)
    keep = max(2, 1 + len(stop_ids)) * width
    length = prompt_row.shape[1] + max_new_tokens
    require_within_budget(  # the live beams and the candidates, which cannot be split; forwards are batched
        keep * (max_new_tokens * 8 + 32),
        f"Beam search of width {width} over {max_new_tokens} tokens",
        "lower the width or max_new_tokens",
        model_device(lm),
    )
    chunk = rows_per_batch(forward_bytes_per_row(lm, length) + vocab * 4 * 3, model_device(lm))
    stop_tensor = torch.tensor(sorted(stop_ids), dtype=torch.long, device=prompt_row.device)

    running = torch.empty((1, 0), dtype=torch.long, device=prompt_row.device)
    running_scores = torch.zeros(1, dtype=torch.float32, device=prompt_row.device)
    pool: list[tuple[torch.Tensor, float, list[int], bool]] = []  # (score, log P, tokens, ended on a stop token)
    steps = 0
    context = lm.hooked(fwd_hooks) if hasattr(lm, "hooked") else nullcontext()
    edits = (  # resolve_interventions refused an lm without hooked
        lm.hooked(compile_hooks(resolved, Binding.every_row(len(resolved))))
        if resolved and hasattr(lm, "hooked")
        else nullcontext()
    )
    with (
        context,
        edits,
        tqdm(total=max_new_tokens, desc="beam search", unit="step", disable=not progress, leave=False) as bar,
    ):
        for step in range(max_new_tokens):
            steps = step + 1
            values, beam_index, token = _top_candidates(lm, prompt_row, running, running_scores, keep, chunk)
            last = step + 1 == max_new_tokens
            hits = torch.isin(token, stop_tensor) | last
            # live beams: the best `width` candidates that did not stop (transformers' -1e9 trick)
            order = (values + hits.float() * DISCARD).topk(min(width, values.numel())).indices
            order = order[~hits[order]]
            # the pool: candidates among the first `width` that stopped
            generated = step + 1
            for rank in range(min(width, values.numel())):
                if bool(hits[rank]):
                    tokens = running[beam_index[rank]].tolist() + [int(token[rank])]
                    score = values[rank] / (generated**length_penalty)
                    pool.append((score, float(values[rank]), tokens, int(token[rank]) in stop_ids))
            pool.sort(key=lambda entry: float(entry[0]), reverse=True)
            del pool[width:]
            running = torch.cat([running[beam_index[order]], token[order, None]], dim=1)
            running_scores = values[order]
            bar.update(1)
            if last or running.shape[0] == 0:
                break
            full = len(pool) >= width
            if full and early_stopping is True:
                break
            if full and not _can_improve(
                running_scores[0], pool[-1][0], early_stopping, length_penalty, generated, max_new_tokens
            ):
                break
    beams = [
        Beam(tokens=tokens, text=lm.decode(tokens), logprob=logprob, score=float(score), finished=finished)
        for score, logprob, tokens, finished in pool[:returned]
    ]
    return BeamSearchResult(
        prompt_tokens=prompt_row[0].tolist(),
        width=width,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        max_new_tokens=max_new_tokens,
        steps=steps,
        beams=beams,
    )


def _stop_ids(lm, stop, stop_at_eos: bool) -> set[int]:
    ids, strings = stop_token_sets(lm, stop, stop_at_eos)
    if strings:
        raise SamplingError(
            f"Beam search stops on token ids, not text ({strings[0]!r}): pass ids, e.g. tokenizer.encode(text)."
        )
    return ids


def _top_candidates(
    lm,
    prompt_row: Int[torch.Tensor, "1 pos"],
    running: Int[torch.Tensor, "beams step"],
    running_scores: Float[torch.Tensor, " beams"],
    keep: int,
    chunk: int,
) -> tuple[Float[torch.Tensor, " keep"], Int[torch.Tensor, " keep"], Int[torch.Tensor, " keep"]]:
    """The ``keep`` best (beam, token) extensions by total log-probability, best first.

    Beams run ``chunk`` at a time and each chunk's best ``keep`` are merged into the running best
    ``keep``, which selects the same candidates as one top-k over every beam × token.
    """
    vocab = int(lm.d_vocab)
    values: torch.Tensor | None = None
    flat: torch.Tensor | None = None
    for start in range(0, running.shape[0], chunk):
        part = running[start : start + chunk]
        rows = torch.cat([prompt_row.expand(part.shape[0], -1), part], dim=1)
        logp = lm.next_token_logits(rows).float().log_softmax(dim=-1)
        totals = (logp + running_scores[start : start + chunk, None]).reshape(-1)
        top = totals.topk(min(keep, totals.numel()))
        if values is None or flat is None:  # the first chunk (both are set together)
            values, flat = top.values, top.indices + start * vocab
            continue
        merged = torch.cat([values, top.values]).topk(min(keep, values.numel() + top.values.numel()))
        values, flat = merged.values, torch.cat([flat, top.indices + start * vocab])[merged.indices]
    assert values is not None and flat is not None, "beam_search stops before the running beams run out"
    return values, flat // vocab, flat % vocab


def _can_improve(
    best_running, worst_pooled, early_stopping, length_penalty: float, generated: int, max_new_tokens: int
) -> bool:
    """transformers' rule: could the best live beam still beat the worst pooled hypothesis?"""
    length = max_new_tokens if early_stopping == "never" and length_penalty > 0 else generated
    return bool(best_running / (length**length_penalty) > worst_pooled)


@torch.no_grad()
def sequence_logprob(
    model: Any,
    prompt: str | torch.Tensor,
    continuation: Sequence[int],
    fwd_hooks: list | None = None,
    interventions: Sequence | None = None,
) -> float:
    """log P(continuation | prompt), recomputed step by step with fresh forwards (a check on any decoder)."""
    lm = as_next_token_model(model)
    row = prompt_tokens(lm, prompt)
    check_context(lm, row.shape[1], max(len(continuation) - 1, 0))
    resolved = resolve_interventions(lm, prompt, row, interventions)
    total = 0.0
    context = lm.hooked(fwd_hooks) if hasattr(lm, "hooked") else nullcontext()
    edits = (  # resolve_interventions refused an lm without hooked
        lm.hooked(compile_hooks(resolved, Binding.every_row(len(resolved))))
        if resolved and hasattr(lm, "hooked")
        else nullcontext()
    )
    with context, edits:
        for token in continuation:
            total += float(lm.next_token_logits(row).float().log_softmax(dim=-1)[0, int(token)])
            row = torch.cat([row, torch.tensor([[int(token)]], device=row.device)], dim=1)
    return total
