"""Token helpers every probe needs: token strings, locating text as a position, single-token targets.

Positions are always found by text, never by a fixed index: the Llama family prepends a BOS token
and Qwen2 does not, so "the 9 of [0, 9]" sits at a different index in each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Int

from workbench.errors import ProbeError, TokenError

DIGITS = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class TokenInfo:
    position: int
    id: int
    text: str
    special: bool


def _tokenizer(model):
    return model.tokenizer if hasattr(model, "tokenizer") else model


def to_tokens(model, prompts: str | list[str]) -> Int[torch.Tensor, "batch pos"]:
    """Tokenize one prompt or a batch; a batch must share one token length (no padding is guessed)."""
    batch = [prompts] if isinstance(prompts, str) else list(prompts)
    if not batch:
        raise TokenError("No prompt given: pass at least one prompt.")
    rows = [model.bridge.to_tokens(p, prepend_bos=model.facts.prepend_bos)[0] for p in batch]
    lengths = [len(r) for r in rows]
    if len(set(lengths)) > 1:
        detail = ", ".join(f"prompt {i}: {n}" for i, n in enumerate(lengths))
        raise TokenError(
            f"Prompts in one batch must have the same number of tokens ({detail}): "
            "rephrase them to align, or run them separately."
        )
    return torch.stack(rows).to(model.device)


def token_infos(model, prompt: str) -> list[TokenInfo]:
    """Every token of ``prompt`` with its position, id, text and whether it is a special token."""
    tokenizer = _tokenizer(model)
    ids = to_tokens(model, prompt)[0].tolist()
    special = set(tokenizer.all_special_ids)
    return [TokenInfo(i, t, tokenizer.decode([t]), t in special) for i, t in enumerate(ids)]


def str_tokens(model, prompt: str) -> list[str]:
    return [info.text for info in token_infos(model, prompt)]


def find_positions(model, prompt: str, text: str, occurrence: int = 0) -> list[int]:
    """Positions of the tokens that cover the ``occurrence``-th match of ``text`` in ``prompt``.

    Matching runs on the decoded token pieces (special tokens count as empty), so it works for any
    tokenizer. A negative ``occurrence`` counts from the end.
    """
    infos = token_infos(model, prompt)
    pieces = ["" if info.special else info.text for info in infos]
    decoded = "".join(pieces)
    starts, matches, at = [], [], decoded.find(text)
    while text and at != -1:
        matches.append(at)
        at = decoded.find(text, at + 1)
    if not matches:
        shown = " | ".join(repr(p) for p in pieces if p)
        raise TokenError(f"{text!r} is not in the prompt, whose tokens are: {shown}. Pass text that occurs in it.")
    try:
        begin = matches[occurrence]
    except IndexError:
        raise TokenError(f"{text!r} occurs {len(matches)} time(s); occurrence {occurrence} does not exist.") from None
    end, offset = begin + len(text), 0
    for info, piece in zip(infos, pieces):
        if piece and offset < end and offset + len(piece) > begin:
            starts.append(info.position)
        offset += len(piece)
    return starts


def find_position(model, prompt: str, text: str, occurrence: int = 0) -> int:
    """The one token position of ``text`` (e.g. the "9" of "[0, 9]"); an error if it spans several tokens."""
    positions = find_positions(model, prompt, text, occurrence)
    if len(positions) != 1:
        pieces = [token_infos(model, prompt)[p].text for p in positions]
        raise TokenError(
            f"{text!r} spans {len(positions)} tokens {pieces} at positions {positions}: "
            "pass text that is exactly one token, or a position index."
        )
    return positions[0]


def single_token_id(model, text: str) -> int:
    """The id of ``text`` as one token (without BOS), or a clear error naming the pieces it splits into."""
    tokenizer = _tokenizer(model)
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        raise TokenError(
            f"Target {text!r} is {len(ids)} tokens {pieces}, not one: a single next-token probability "
            "needs a single-token target; pick a shorter target."
        )
    return ids[0]


def digit_token_ids(model) -> list[int]:
    """The ids of the ten bare digits "0"…"9" (the candidates after "The number is ")."""
    return [single_token_id(model, d) for d in DIGITS]


def position_indices(n: int, positions: int | list[int] | None) -> list[int]:
    """Sorted distinct positions of an ``n``-token prompt (all when ``None``; negative count from the end)."""
    if positions is None:
        return list(range(n))
    chosen = [positions] if isinstance(positions, int) else [int(p) for p in positions]
    for p in chosen:
        if not -n <= p < n:
            raise ProbeError(f"Position {p} is outside the prompt's {n} tokens (0–{n - 1}).")
    return sorted({p % n for p in chosen})


def align_prompts(model, target: str, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize two prompts that must align token by token (same length), for patching across them."""
    t = to_tokens(model, target)
    s = to_tokens(model, source)
    if t.shape != s.shape:
        t_str, s_str = str_tokens(model, target), str_tokens(model, source)
        first = next((i for i, (a, b) in enumerate(zip(t_str, s_str)) if a != b), min(len(t_str), len(s_str)))
        raise TokenError(
            f"The prompts do not align: target has {t.shape[-1]} tokens, source {s.shape[-1]}; they first "
            f"differ at position {first} ({t_str[first] if first < len(t_str) else 'end'!r} vs "
            f"{s_str[first] if first < len(s_str) else 'end'!r}). Make them differ only in same-length tokens."
        )
    return t, s
