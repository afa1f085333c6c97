"""The next-token model protocol: what samplers, generation, monitors and the audit need from a model.

A language model, for this package, is anything that turns a batch of token ids into the logits of
the next token, and text into ids and back. A workbench :class:`~workbench.models.Model` (a
TransformerLens bridge) satisfies it through :class:`BridgeModel`; the :class:`~workbench.sampling.bigram.BigramModel`
satisfies it directly, so every tool here runs on both.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int

from workbench.errors import SamplingError
from workbench.memory import rows_per_batch


@runtime_checkable
class NextTokenModel(Protocol):
    """Logits of the next token for a batch of equal-length token rows, plus text ↔ ids."""

    name: str
    d_vocab: int
    eos_token_id: int | None

    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt, with the model's own BOS convention."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def next_token_logits(self, tokens: Int[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "batch vocab"]: ...


class BridgeModel:
    """A workbench ``Model`` seen as a :class:`NextTokenModel`; ``hooked`` applies TransformerLens hooks."""

    def __init__(self, model: Any):
        self.model = model
        self.name = model.facts.name
        self.d_vocab = int(model.facts.d_vocab)
        self.n_ctx = int(model.facts.n_ctx)
        self.eos_token_id = model.tokenizer.eos_token_id

    @property
    def bridge(self):
        return self.model.bridge

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def device(self) -> torch.device:
        return self.model.device

    def encode(self, text: str) -> list[int]:
        """The model's BOS convention, never truncated: a prompt too long for the context is refused later."""
        ids = self.model.bridge.to_tokens(text, prepend_bos=self.model.facts.prepend_bos, truncate=False)
        return ids[0].tolist()

    def decode(self, ids: Sequence[int]) -> str:
        return self.model.tokenizer.decode(list(ids))

    def token_text(self, token_id: int) -> str:
        return self.model.tokenizer.decode([int(token_id)])

    @torch.no_grad()
    def logits(self, tokens: Int[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "batch pos vocab"]:
        return self.model.bridge(tokens.to(self.device))

    def next_token_logits(self, tokens: Int[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "batch vocab"]:
        return self.logits(tokens)[:, -1, :].float()

    def bytes_per_row(self, length: int) -> int:
        """Peak bytes of one row of a forward over ``length`` tokens: the bridge's logits at every position
        (float32, and a copy), the residual stream and MLP activations of a block, and one attention pattern."""
        f = self.model.facts
        return int(length * (self.d_vocab * 8 + f.d_model * 4 * 16) + f.n_heads * length * length * 8)

    def hooked(self, fwd_hooks: list | None) -> AbstractContextManager:
        """TransformerLens hooks for the duration of a ``with`` block; always removed afterwards."""
        if not fwd_hooks:
            return nullcontext()
        return self.model.bridge.hooks(fwd_hooks=list(fwd_hooks))

    def __repr__(self) -> str:
        return f"BridgeModel({self.model!r})"


def as_next_token_model(model: Any) -> NextTokenModel:
    """Accept a workbench ``Model`` or anything already satisfying :class:`NextTokenModel`."""
    if isinstance(model, BridgeModel):
        return model
    if hasattr(model, "bridge") and hasattr(model, "facts"):
        return BridgeModel(model)
    if isinstance(model, NextTokenModel):
        return model
    raise SamplingError(
        f"{type(model).__name__} is not a next-token model: pass a workbench Model (load_model(...)), a "
        "BigramModel, or an object with name, d_vocab, eos_token_id, encode, decode and next_token_logits."
    )


def forward_bytes_per_row(lm: NextTokenModel, length: int) -> int:
    """Peak bytes one row of ``next_token_logits`` takes (the model's own estimate, else its logits)."""
    if hasattr(lm, "bytes_per_row"):
        return int(lm.bytes_per_row(length))
    return int(lm.d_vocab * 8 + length * 8)


def next_token_logits_batched(
    lm: NextTokenModel, tokens: Int[torch.Tensor, "batch pos"], progress: Any = None
) -> Float[torch.Tensor, "batch vocab"]:
    """``next_token_logits`` run a memory-budget-sized batch of rows at a time (rows never interact)."""
    size = rows_per_batch(forward_bytes_per_row(lm, tokens.shape[1]), model_device(lm))
    if tokens.shape[0] <= size:
        return lm.next_token_logits(tokens).float()
    return torch.cat([lm.next_token_logits(tokens[i : i + size]).float() for i in range(0, tokens.shape[0], size)])


def context_length(lm: NextTokenModel) -> int | None:
    """The longest sequence the model reads (``n_ctx``), or None when it has no limit (a bigram)."""
    n_ctx = getattr(lm, "n_ctx", None)
    return None if n_ctx is None else int(n_ctx)


def check_context(lm: NextTokenModel, prompt_length: int, new_tokens: int = 0) -> None:
    """Refuse a prompt that, with ``new_tokens`` more, would not fit the model's context: never cut it silently."""
    n_ctx = context_length(lm)
    if n_ctx is None or prompt_length + new_tokens <= n_ctx:
        return
    if new_tokens:
        raise SamplingError(
            f"The prompt is {prompt_length} tokens and {new_tokens} new tokens "
            f"would make {prompt_length + new_tokens}, "
            f"more than {lm.name}'s context of {n_ctx} tokens: shorten the prompt or ask for at most "
            f"{max(n_ctx - prompt_length, 0)} new tokens."
        )
    raise SamplingError(
        f"The prompt is {prompt_length} tokens, more than {lm.name}'s context of {n_ctx} tokens: "
        f"shorten it to at most {n_ctx}."
    )


def model_device(lm: NextTokenModel) -> torch.device:
    return torch.device(getattr(lm, "device", "cpu"))


def token_text(lm: NextTokenModel, token_id: int) -> str:
    return lm.decode([int(token_id)])


def single_token(lm: NextTokenModel, text: str) -> int | None:
    """The id of ``text`` as exactly one token (no BOS), or None when it splits."""
    ids = encode_continuation(lm, text)
    return ids[0] if len(ids) == 1 else None


def encode_continuations(lm: NextTokenModel, texts: Sequence[str]) -> list[list[int]]:
    """:func:`encode_continuation` of many texts (one batched tokenizer call for a workbench Model)."""
    if isinstance(lm, BridgeModel) and texts:
        return [list(ids) for ids in lm.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    return [encode_continuation(lm, t) for t in texts]


def encode_continuation(lm: NextTokenModel, text: str) -> list[int]:
    """Ids of ``text`` as it would follow a prompt: no BOS or other special token added."""
    tokenizer = getattr(lm, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "encode") and isinstance(lm, BridgeModel):
        return list(tokenizer.encode(text, add_special_tokens=False))
    if hasattr(lm, "encode_continuation"):
        return list(lm.encode_continuation(text))
    return list(lm.encode(text))


def prompt_tokens(
    lm: NextTokenModel, prompt: str | Sequence[str] | torch.Tensor, n: int = 1
) -> Int[torch.Tensor, "batch pos"]:
    """A batch of prompt rows (each prompt repeated ``n`` times); all rows must share one length."""
    if isinstance(prompt, torch.Tensor):
        rows = prompt.unsqueeze(0) if prompt.dim() == 1 else prompt
    else:
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not texts:
            raise SamplingError("No prompt given: pass at least one prompt.")
        encoded = [lm.encode(t) for t in texts]
        lengths = {len(e) for e in encoded}
        if len(lengths) > 1:
            raise SamplingError(
                f"Prompts of a batch must have the same token length (got {sorted(lengths)}): run them separately."
            )
        if 0 in lengths:
            raise SamplingError("A prompt encodes to no tokens: pass non-empty text.")
        rows = torch.tensor(encoded, dtype=torch.long)
    if n < 1:
        raise SamplingError(f"n is {n}: pass at least one sample per prompt.")
    return rows.long().repeat_interleave(n, dim=0).to(model_device(lm))
