"""Beam search: keep the ``width`` most likely continuations at every step instead of one.

Scores follow transformers' convention: ``score = log P(continuation | prompt) / length ** length_penalty``
with ``length`` the number of generated tokens (α = 0 ranks by raw log-probability; α > 0 favours
longer beams). Search stops once ``width`` beams have ended on a stop token (early stopping), or after
``max_new_tokens``; width 1 is then exactly greedy decoding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from workbench.errors import SamplingError
from workbench.sampling.lm import as_next_token_model, prompt_tokens


@dataclass
class Beam:
    """One continuation: its generated token ids, text, total log-probability and length-penalised score."""

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
    beams: list[Beam] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"beam search, width {self.width}, length penalty {self.length_penalty:g}"]
        for i, b in enumerate(self.beams):
            lines.append(f"{i}: score {b.score:.4f}  log P {b.logprob:.4f}  {'■' if b.finished else '…'} {b.text!r}")
        return "\n".join(lines)


def _score(logprob: float, length: int, length_penalty: float) -> float:
    return logprob / (max(length, 1) ** length_penalty)


@torch.no_grad()
def beam_search(
    model: Any,
    prompt: str | torch.Tensor,
    width: int = 4,
    max_new_tokens: int = 10,
    length_penalty: float = 1.0,
    stop: Sequence[int] | None = None,
    *,
    stop_at_eos: bool = True,
    fwd_hooks: list | None = None,
) -> BeamSearchResult:
    """The ``width`` best continuations of one prompt, best score first, with their log-probabilities."""
    lm = as_next_token_model(model)
    if isinstance(width, bool) or int(width) != width or width < 1:
        raise SamplingError(f"Beam width is {width!r}: pass a whole number ≥ 1 (1 is greedy decoding).")
    if not math.isfinite(float(length_penalty)):
        raise SamplingError(f"length_penalty is {length_penalty}: pass a finite number (1.0 is transformers' default).")
    if max_new_tokens < 1:
        raise SamplingError(f"max_new_tokens is {max_new_tokens}: pass at least 1.")
    prompt_row = prompt_tokens(lm, prompt)
    if prompt_row.shape[0] != 1:
        raise SamplingError("Beam search takes one prompt: pass a single string or one row of token ids.")
    stop_ids = {int(s) for s in (stop or [])}
    if stop_at_eos and lm.eos_token_id is not None:
        stop_ids.add(int(lm.eos_token_id))
    alive: list[tuple[list[int], float]] = [([], 0.0)]
    finished: list[Beam] = []
    context = lm.hooked(fwd_hooks) if hasattr(lm, "hooked") else nullcontext()
    with context:
        for step in range(max_new_tokens):
            batch = torch.cat(
                [prompt_row.expand(len(alive), -1), torch.tensor([seq for seq, _ in alive], dtype=torch.long, device=prompt_row.device).reshape(len(alive), step)],
                dim=1,
            )
            logp = lm.next_token_logits(batch).float().log_softmax(dim=-1)
            totals = torch.tensor([lp for _, lp in alive], device=logp.device)[:, None] + logp
            values, flat = totals.flatten().topk(min(2 * width, totals.numel()))
            vocab = logp.shape[-1]
            next_alive: list[tuple[list[int], float]] = []
            for rank, (value, index) in enumerate(zip(values.tolist(), flat.tolist())):
                seq = alive[index // vocab][0] + [index % vocab]
                if seq[-1] in stop_ids:
                    if rank < width:
                        finished.append(_beam(lm, seq, value, length_penalty, True))
                else:
                    next_alive.append((seq, value))
                if len(next_alive) == width:
                    break
            alive = next_alive
            if len(finished) >= width or not alive:
                break
    pool = sorted(finished, key=lambda b: b.score, reverse=True)[:width]
    if len(pool) < width:
        rest = sorted((_beam(lm, seq, lp, length_penalty, False) for seq, lp in alive), key=lambda b: b.score, reverse=True)
        pool = sorted(pool + rest[: width - len(pool)], key=lambda b: b.score, reverse=True)
    return BeamSearchResult(prompt_tokens=prompt_row[0].tolist(), width=int(width), length_penalty=float(length_penalty), beams=pool)


def _beam(lm, seq: list[int], logprob: float, length_penalty: float, finished: bool) -> Beam:
    return Beam(tokens=seq, text=lm.decode(seq), logprob=logprob, score=_score(logprob, len(seq), length_penalty), finished=finished)


@torch.no_grad()
def sequence_logprob(model: Any, prompt: str | torch.Tensor, continuation: Sequence[int], fwd_hooks: list | None = None) -> float:
    """log P(continuation | prompt), recomputed step by step with fresh forwards (a check on any decoder)."""
    lm = as_next_token_model(model)
    row = prompt_tokens(lm, prompt)
    total = 0.0
    context = lm.hooked(fwd_hooks) if hasattr(lm, "hooked") else nullcontext()
    with context:
        for token in continuation:
            total += float(lm.next_token_logits(row).float().log_softmax(dim=-1)[0, int(token)])
            row = torch.cat([row, torch.tensor([[int(token)]], device=row.device)], dim=1)
    return total
