"""Autoregressive generation: next-token logits → sampler → append → repeat.

Works on any :class:`~workbench.sampling.lm.NextTokenModel`; on a workbench ``Model`` it also takes
TransformerLens ``fwd_hooks`` (e.g. make block 21 the identity) that stay attached for every forward of
the loop and are removed afterwards. No KV cache: each step reruns the whole prefix, which keeps hooks
simple and exact at the sizes the workbench targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from workbench.errors import SamplingError
from workbench.sampling.lm import as_next_token_model, prompt_tokens
from workbench.sampling.processors import Sampler, greedy


@dataclass
class Generation:
    """Generated continuations of a batch; rows that stopped early are padded with ``pad_id``."""

    prompt_tokens: Int[torch.Tensor, "batch pos"]
    tokens: Int[torch.Tensor, "batch new"]
    lengths: list[int]
    texts: list[str]
    stopped: list[bool]
    logprobs: Float[torch.Tensor, "batch new"]
    sampler: str
    pad_id: int = 0
    hooks: list[str] = field(default_factory=list)

    def row_tokens(self, row: int) -> list[int]:
        return self.tokens[row, : self.lengths[row]].tolist()

    def to_dict(self) -> dict[str, Any]:
        return {
            "sampler": self.sampler,
            "hooks": self.hooks,
            "prompt_tokens": self.prompt_tokens.tolist(),
            "tokens": [self.row_tokens(i) for i in range(len(self.lengths))],
            "texts": self.texts,
            "stopped": self.stopped,
            "logprobs": [self.logprobs[i, : n].tolist() for i, n in enumerate(self.lengths)],
        }


def _stop_sets(lm, stop, stop_at_eos: bool) -> tuple[set[int], list[str]]:
    ids: set[int] = set()
    strings: list[str] = []
    for item in [stop] if isinstance(stop, (str, int)) else list(stop or []):
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise SamplingError(f"Stop item {item!r} is neither text nor a token id: pass strings or ints.")
        if isinstance(item, int):
            ids.add(int(item))
        elif item:
            strings.append(item)
    if stop_at_eos and lm.eos_token_id is not None:
        ids.add(int(lm.eos_token_id))
    return ids, strings


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
) -> Generation:
    """Continue ``prompt`` (text, a batch of equal-length texts, or token ids) with ``sampler``.

    ``n`` repeats every prompt; ``stop`` holds strings and/or token ids that end a row (the stop
    token is kept); the EOS token stops too unless ``stop_at_eos=False``. ``fwd_hooks`` is a list of
    ``(hook_name, fn)`` TransformerLens pairs applied to every forward. Rows are run ``batch_size`` at a
    time (all at once by default) and share one seeded generator, so the result is reproducible.
    """
    lm = as_next_token_model(model)
    sampler = sampler or greedy()
    if max_new_tokens < 0:
        raise SamplingError(f"max_new_tokens is {max_new_tokens}: pass 0 or more.")
    if fwd_hooks and not hasattr(lm, "hooked"):
        raise SamplingError(f"{lm.name} has no hook points: fwd_hooks need a workbench Model (TransformerLens bridge).")
    prompts = prompt_tokens(lm, prompt, n)
    stop_ids, stop_strings = _stop_sets(lm, stop, stop_at_eos)
    pad_id = int(lm.eos_token_id) if lm.eos_token_id is not None else 0
    batch = prompts.shape[0]
    size = batch if batch_size is None else max(1, int(batch_size))
    new = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=prompts.device)
    logprobs = torch.zeros((batch, max_new_tokens), dtype=torch.float32, device=prompts.device)
    lengths = [0] * batch
    stopped = [False] * batch
    generator = sampler.new_generator(prompts.device)
    hook_context = lm.hooked(fwd_hooks) if hasattr(lm, "hooked") else nullcontext()
    chunks = [range(s, min(s + size, batch)) for s in range(0, batch, size)]
    bar = tqdm(total=len(chunks) * max_new_tokens, desc="generate", disable=not progress, leave=False)
    with hook_context:
        for chunk in chunks:
            rows = list(chunk)
            for step in range(max_new_tokens):
                alive = [r for r in rows if not stopped[r]]
                if not alive:
                    bar.update(max_new_tokens - step)
                    break
                index = torch.tensor(alive, device=prompts.device)
                context = torch.cat([prompts[index], new[index, :step]], dim=1)
                logits = _dedup_next_token_logits(lm, context)
                chosen = sampler.sample(logits, input_ids=context, generator=generator)
                chosen_logprob = logits.log_softmax(dim=-1).gather(1, chosen[:, None])[:, 0]
                new[index, step] = chosen
                logprobs[index, step] = chosen_logprob.to(logprobs.dtype)
                for j, r in enumerate(alive):
                    lengths[r] = step + 1
                    token = int(chosen[j])
                    if token in stop_ids:
                        stopped[r] = True
                    elif stop_strings:
                        text = lm.decode(new[r, : step + 1].tolist())
                        stopped[r] = any(s in text for s in stop_strings)
                bar.update(1)
    bar.close()
    texts = [lm.decode(new[r, : lengths[r]].tolist()) for r in range(batch)]
    return Generation(
        prompt_tokens=prompts,
        tokens=new,
        lengths=lengths,
        texts=texts,
        stopped=stopped,
        logprobs=logprobs,
        sampler=sampler.describe(),
        pad_id=pad_id,
        hooks=[name for name, _ in (fwd_hooks or [])],
    )


def _dedup_next_token_logits(lm, context: Int[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "batch vocab"]:
    """One forward per distinct row: N samples of one prompt share their prefixes (an audit's first
    step is one row, not N), and rows never interact without padding, so this is exact."""
    unique, inverse = torch.unique(context, dim=0, return_inverse=True)
    if unique.shape[0] == context.shape[0]:
        return lm.next_token_logits(context).float()
    return lm.next_token_logits(unique).float()[inverse]


def identity_block_hooks(block: int) -> list[tuple[str, Any]]:
    """Hooks that make ``block`` the identity: its output residual is replaced by its input."""
    stored: dict[str, torch.Tensor] = {}

    def keep_input(resid, hook):
        stored["resid"] = resid
        return resid

    def return_input(resid, hook):
        return stored["resid"]

    return [(f"blocks.{block}.hook_resid_pre", keep_input), (f"blocks.{block}.hook_resid_post", return_input)]
