"""Autoregressive generation: next-token logits → sampler → append → repeat.

Works on any :class:`~workbench.sampling.lm.NextTokenModel`; on a workbench ``Model`` it also takes
``interventions`` (:class:`~workbench.interventions.Intervention` descriptions, e.g.
``identity(blocks=21)`` or a steering vector) and raw TransformerLens ``fwd_hooks``, applied to every
forward of the loop and removed afterwards. An intervention with no positions named covers the
generated tokens too. No KV cache: each step reruns the whole prefix, which keeps edits simple and
exact at the sizes the workbench targets.

Rows run in chunks sized from the memory budget (:mod:`workbench.memory`), and sample *i* draws from its
own generator seeded from (seed, *i*) (:func:`~workbench.sampling.processors.sample_seed`): the chunking
and ``batch_size`` change the speed, never the samples.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from workbench.errors import SamplingError
from workbench.interventions.compile import Binding, compile_hooks
from workbench.memory import format_bytes, require_within_budget, rows_per_batch
from workbench.sampling.checks import whole_number
from workbench.sampling.lm import (
    as_next_token_model,
    check_context,
    forward_bytes_per_row,
    model_device,
    next_token_logits_batched,
    prompt_tokens,
)
from workbench.sampling.processors import Sampler, greedy


@dataclass
class Generation:
    """Generated continuations of a batch; rows that stopped early are padded with ``pad_id``.

    ``first_row`` is the index of row 0 among all the samples (non-zero for the chunks of
    :func:`generation_chunks`).
    """

    prompt_tokens: Int[torch.Tensor, "batch pos"]
    tokens: Int[torch.Tensor, "batch new"]
    lengths: list[int]
    texts: list[str]
    stopped: list[bool]
    logprobs: Float[torch.Tensor, "batch new"]
    sampler: str
    pad_id: int = 0
    hooks: list[str] = field(default_factory=list)
    first_row: int = 0
    interventions: list[dict] = field(default_factory=list)

    def row_tokens(self, row: int) -> list[int]:
        return self.tokens[row, : self.lengths[row]].tolist()

    def to_dict(self) -> dict[str, Any]:
        return {
            "sampler": self.sampler,
            "hooks": self.hooks,
            "interventions": self.interventions,
            "prompt_tokens": self.prompt_tokens.tolist(),
            "tokens": [self.row_tokens(i) for i in range(len(self.lengths))],
            "texts": self.texts,
            "stopped": self.stopped,
            "logprobs": [self.logprobs[i, :n].tolist() for i, n in enumerate(self.lengths)],
        }


def stop_token_sets(lm, stop, stop_at_eos: bool) -> tuple[set[int], list[str]]:
    """Stop token ids (checked against the vocabulary; EOS added unless ``stop_at_eos=False``) and stop strings."""
    ids: set[int] = set()
    strings: list[str] = []
    for item in [stop] if isinstance(stop, (str, numbers.Integral)) else list(stop or []):
        if isinstance(item, bool) or not isinstance(item, (str, numbers.Integral)):
            raise SamplingError(f"Stop item {item!r} is neither text nor a token id: pass strings or ints.")
        if isinstance(item, numbers.Integral):
            token_id = int(item)
            if not 0 <= token_id < lm.d_vocab:
                raise SamplingError(
                    f"Stop token id {item} is not in {lm.name}'s vocabulary of {lm.d_vocab}: "
                    f"pass ids from 0 to {lm.d_vocab - 1}."
                )
            ids.add(token_id)
        elif item:
            strings.append(item)
    if stop_at_eos and lm.eos_token_id is not None:
        ids.add(int(lm.eos_token_id))
    return ids, strings


def _sample_bytes(lm, length: int, max_new_tokens: int) -> int:
    """Peak bytes one sample row takes during a step: its forward, four vocabulary-sized rows
    (logits, processed logits, probabilities, log-probabilities) and its outputs."""
    return forward_bytes_per_row(lm, length) + lm.d_vocab * 4 * 4 + max_new_tokens * 12 + length * 8


@torch.no_grad()
def generation_chunks(
    model: Any,
    prompt: str | Sequence[str] | torch.Tensor,
    sampler: Sampler | None = None,
    max_new_tokens: int = 20,
    stop: str | int | Sequence[str | int] | None = None,
    *,
    n: int = 1,
    stop_at_eos: bool = True,
    fwd_hooks: list | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    interventions: Sequence | None = None,
) -> Iterator[Generation]:
    """:func:`generate`, yielded one chunk of consecutive samples at a time (memory: one chunk).

    The hooks stay attached until the last chunk is yielded (or the iterator is closed). With
    ``interventions`` a chunk never mixes prompts (each prompt's edits are resolved against it).
    """
    lm = as_next_token_model(model)
    sampler = sampler or greedy()
    if not isinstance(sampler, Sampler):
        raise SamplingError(
            f"{sampler!r} is not a Sampler: pass make_sampler(...), greedy() or parse_sampler('t=0.7')."
        )
    max_new_tokens = whole_number("max_new_tokens", max_new_tokens, 0)
    n = whole_number("n", n, 1)
    if batch_size is not None:
        batch_size = whole_number("batch_size", batch_size, 1)
    if fwd_hooks and not hasattr(lm, "hooked"):
        raise SamplingError(f"{lm.name} has no hook points: fwd_hooks need a workbench Model (TransformerLens bridge).")
    prompts = prompt_tokens(lm, prompt)
    check_context(lm, prompts.shape[1], max_new_tokens)
    resolved = resolve_interventions(lm, prompt, prompts, interventions)
    stop_ids, stop_strings = stop_token_sets(lm, stop, stop_at_eos)
    pad_id = int(lm.eos_token_id) if lm.eos_token_id is not None else 0
    total = prompts.shape[0] * n
    length = prompts.shape[1] + max_new_tokens
    size = rows_per_batch(_sample_bytes(lm, length, max_new_tokens), model_device(lm), cap=batch_size or total)
    hook_names = [name for name, _ in (fwd_hooks or [])]
    edit_specs = [item.intervention.to_dict() for item in resolved]
    hook_context = lm.hooked(fwd_hooks) if hasattr(lm, "hooked") else nullcontext()
    bar = tqdm(total=total * max_new_tokens, desc="generate", unit="token", disable=not progress, leave=False)
    try:
        with hook_context:
            for begin, end in _chunks(total, size, n if resolved else total):
                rows = torch.arange(begin, end, device=prompts.device)
                edits = (
                    lm.hooked(compile_hooks(resolved, Binding.every_row(len(resolved), begin // n)))
                    if resolved and hasattr(lm, "hooked")  # resolve_interventions refused an lm without hooked
                    else nullcontext()
                )
                with edits:
                    chunk = _generate_rows(
                        lm,
                        prompts[rows // n],
                        rows.tolist(),
                        sampler,
                        max_new_tokens,
                        stop_ids,
                        stop_strings,
                        pad_id,
                        bar,
                    )
                chunk.hooks, chunk.interventions = hook_names, edit_specs
                yield chunk
    finally:
        bar.close()


def _chunks(total: int, size: int, aligned: int) -> Iterator[tuple[int, int]]:
    """Row ranges of at most ``size`` rows that never cross a multiple of ``aligned``."""
    for group in range(0, total, aligned):
        for begin in range(group, min(group + aligned, total), size):
            yield begin, min(begin + size, group + aligned, total)


def resolve_interventions(lm, prompt, prompts: torch.Tensor, interventions) -> list:
    """``interventions`` checked against the prompts (text, or token ids that decode back to themselves)."""
    if not interventions:
        return []
    from workbench.interventions import Intervention, resolve

    if not hasattr(lm, "model") or not hasattr(lm, "hooked"):
        raise SamplingError(
            f"{lm.name} has no hook points: interventions need a workbench Model (TransformerLens bridge)."
        )
    items = list(interventions)
    for item in items:
        if not isinstance(item, Intervention):
            raise SamplingError(
                f"{item!r} is not an Intervention: build them with workbench.interventions (e.g. identity(blocks=3))."
            )
    if isinstance(prompt, str):
        texts = [prompt]
    elif isinstance(prompt, torch.Tensor):
        texts = [lm.model.tokenizer.decode(row, skip_special_tokens=True) for row in prompts.tolist()]
        if not torch.equal(lm.model.to_tokens(texts).to(prompts.device), prompts):
            raise SamplingError(
                "These token ids do not decode to text that encodes back to them: pass the prompt as "
                "text to use interventions."
            )
    else:
        texts = list(prompt)
    return [resolve(item, lm.model, texts, prompts) for item in items]


def _generate_rows(lm, prompts, indices, sampler, max_new_tokens, stop_ids, stop_strings, pad_id, bar) -> Generation:
    batch = prompts.shape[0]
    device = prompts.device
    new = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((batch, max_new_tokens), dtype=torch.float32, device=device)
    lengths = [0] * batch
    stopped = [False] * batch
    generators = sampler.sample_generators(indices, device)
    for step in range(max_new_tokens):
        alive = [r for r in range(batch) if not stopped[r]]
        if not alive:
            bar.update(batch * (max_new_tokens - step))
            break
        index = torch.tensor(alive, device=device)
        context = torch.cat([prompts[index], new[index, :step]], dim=1)
        logits = _dedup_next_token_logits(lm, context)
        chosen = sampler.sample_rows(
            logits, input_ids=context, generators=None if generators is None else [generators[r] for r in alive]
        )
        new[index, step] = chosen
        logprobs[index, step] = logits.log_softmax(dim=-1).gather(1, chosen[:, None])[:, 0].to(logprobs.dtype)
        for j, r in enumerate(alive):
            lengths[r] = step + 1
            if int(chosen[j]) in stop_ids:
                stopped[r] = True
            elif stop_strings:
                text = lm.decode(new[r, : step + 1].tolist())
                stopped[r] = any(s in text for s in stop_strings)
        bar.update(batch)
    return Generation(
        prompt_tokens=prompts,
        tokens=new,
        lengths=lengths,
        texts=[lm.decode(new[r, : lengths[r]].tolist()) for r in range(batch)],
        stopped=stopped,
        logprobs=logprobs,
        sampler=sampler.describe(),
        pad_id=pad_id,
        first_row=int(indices[0]) if indices else 0,
    )


@torch.no_grad()
def generate(
    model: Any,
    prompt: str | Sequence[str] | torch.Tensor,
    sampler: Sampler | None = None,
    max_new_tokens: int = 20,
    stop: str | int | Sequence[str | int] | None = None,
    *,
    n: int = 1,
    stop_at_eos: bool = True,
    fwd_hooks: list | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    interventions: Sequence | None = None,
) -> Generation:
    """Continue ``prompt`` (text, a batch of equal-length texts, or token ids) with ``sampler``.

    ``n`` repeats every prompt; ``stop`` holds strings and/or token ids that end a row (the stop
    token is kept); the EOS token stops too unless ``stop_at_eos=False``. ``interventions`` (e.g.
    ``[identity(blocks=21)]``) edit every forward of the loop; ``fwd_hooks`` is a list of raw
    ``(hook_name, fn)`` TransformerLens pairs applied to every forward. Rows run in chunks of at most
    ``batch_size`` (default: as many as the memory budget holds); sample *i* draws from its own
    generator seeded from (the sampler's seed, *i*), so the result does not depend on the chunking.
    A prompt that with ``max_new_tokens`` exceeds the model's context is refused, never cut.
    """
    lm = as_next_token_model(model)
    n_rows = _prompt_count(prompt) * whole_number("n", n, 1)
    max_new = whole_number("max_new_tokens", max_new_tokens, 0)
    _require_output_fits(lm, n_rows, max_new)
    chunks = list(
        generation_chunks(
            lm,
            prompt,
            sampler,
            max_new_tokens,
            stop,
            n=n,
            stop_at_eos=stop_at_eos,
            fwd_hooks=fwd_hooks,
            batch_size=batch_size,
            progress=progress,
            interventions=interventions,
        )
    )
    first = chunks[0]
    if len(chunks) == 1:
        return first
    return Generation(
        prompt_tokens=torch.cat([c.prompt_tokens for c in chunks]),
        tokens=torch.cat([c.tokens for c in chunks]),
        lengths=[x for c in chunks for x in c.lengths],
        texts=[x for c in chunks for x in c.texts],
        stopped=[x for c in chunks for x in c.stopped],
        logprobs=torch.cat([c.logprobs for c in chunks]),
        sampler=first.sampler,
        pad_id=first.pad_id,
        hooks=first.hooks,
        interventions=first.interventions,
    )


def _prompt_count(prompt) -> int:
    if isinstance(prompt, str):
        return 1
    if isinstance(prompt, torch.Tensor):
        return 1 if prompt.dim() == 1 else int(prompt.shape[0])
    return len(prompt)


def _require_output_fits(lm, rows: int, max_new_tokens: int) -> None:
    """Everything :func:`generate` returns stays in memory: tokens, log-probabilities and texts."""
    per_row = max_new_tokens * (8 + 4 + 16) + 256
    require_within_budget(
        rows * per_row,
        f"Keeping {rows} generated rows of {max_new_tokens} tokens",
        f"ask for fewer rows or tokens, or use generation_chunks(...) "
        f"to process {format_bytes(per_row)} rows chunk by chunk",
        model_device(lm),
    )


def _dedup_next_token_logits(lm, context: Int[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "batch vocab"]:
    """One forward per distinct row: N samples of one prompt share their prefixes (an audit's first
    step is one row, not N), and rows never interact without padding, so this is exact."""
    unique, inverse = torch.unique(context, dim=0, return_inverse=True)
    if unique.shape[0] == context.shape[0]:
        return next_token_logits_batched(lm, context)
    return next_token_logits_batched(lm, unique)[inverse]
