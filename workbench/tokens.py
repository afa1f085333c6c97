"""Token helpers every probe needs: token strings, locating text as a position, single-token targets.

Positions are always found by text, never by a fixed index: the Llama family prepends a BOS token
and Qwen2 does not, so "the 9 of [0, 9]" sits at a different index in each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int

from workbench.errors import TokenError

DIGITS = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class TokenInfo:
    position: int
    id: int
    text: str
    special: bool


def _tokenizer(model):
    return model.tokenizer if hasattr(model, "tokenizer") else model


def to_tokens(model, prompts: str | list[str], *, truncate: bool = False) -> Int[torch.Tensor, "batch pos"]:
    """Tokenize one prompt or a batch; a batch must share one token length (no padding is guessed).

    A prompt longer than the model's context is refused, never silently cut (the readout would land
    mid-prompt); ``truncate=True`` keeps its last ``n_ctx`` tokens instead (see :func:`context_overflow`).
    """
    batch = [prompts] if isinstance(prompts, str) else list(prompts)
    if not batch:
        raise TokenError("No prompt given: pass at least one prompt.")
    for i, p in enumerate(batch):
        if not isinstance(p, str):
            raise TokenError(f"Prompt {i} is a {type(p).__name__}, not text: pass strings.")
        if not p:
            raise TokenError(f"Prompt {i} is empty: pass text with at least one token.")
    rows = [model.bridge.to_tokens(p, prepend_bos=model.facts.prepend_bos, truncate=False)[0] for p in batch]
    n_ctx = model.facts.n_ctx
    for i, row in enumerate(rows):
        if len(row) > n_ctx:
            if not truncate:
                raise TokenError(
                    f"Prompt {i} has {len(row)} tokens, more than {model.facts.name}'s context of {n_ctx}: "
                    f"shorten it, or pass truncate=True to keep its last {n_ctx} tokens."
                )
            rows[i] = row[-n_ctx:]
    lengths = [len(r) for r in rows]
    if len(set(lengths)) > 1:
        detail = ", ".join(f"prompt {i}: {n}" for i, n in enumerate(lengths))
        raise TokenError(
            f"Prompts in one batch must have the same number of tokens ({detail}): "
            "rephrase them to align, or run them separately."
        )
    return torch.stack(rows).to(model.device)


def context_overflow(model, prompts: str | list[str]) -> list[int]:
    """How many tokens each prompt has beyond the model's context (0 when it fits)."""
    batch = [prompts] if isinstance(prompts, str) else list(prompts)
    lengths = [model.bridge.to_tokens(p, prepend_bos=model.facts.prepend_bos, truncate=False).shape[-1] for p in batch]
    return [max(0, n - model.facts.n_ctx) for n in lengths]


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
    for info, piece in zip(infos, pieces, strict=True):
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
    chosen = [positions] if isinstance(positions, int) else list(positions)
    if not chosen:
        raise TokenError("The position list is empty, so nothing would be selected: name at least one position.")
    out = set()
    for p in chosen:
        if isinstance(p, bool) or not isinstance(p, int):
            raise TokenError(f"Position {p!r} is not a whole number: pass an index (negative counts from the end).")
        if not -n <= p < n:
            raise TokenError(f"Position {p} is outside the prompt's {n} tokens (0–{n - 1}, or -{n}–-1 from the end).")
        out.add(p % n)
    return sorted(out)


def resolve_positions(model, prompt: str, n: int, where: Sequence[str | int] | str | int | None) -> list[int]:
    """Token positions from text (a ``str``: every token covering it in ``prompt``) or indices (an
    ``int``; negative counts from the end); ``None`` means every position. The text "9" is the token 9,
    never position 9."""
    if where is None:
        return list(range(n))
    items = [where] if isinstance(where, (str, int)) else list(where)
    if not items:
        raise TokenError(
            "The position list is empty, so nothing would be selected: name at least one position or text."
        )
    found = {q for item in items if isinstance(item, str) for q in find_positions(model, prompt, item)}
    indices = [item for item in items if not isinstance(item, str)]
    return sorted(found | set(position_indices(n, indices) if indices else []))


def resolve_readout(n: int, readout: int) -> int:
    """The readout position as an absolute index (negative counts from the end)."""
    if isinstance(readout, bool) or not isinstance(readout, int):
        raise TokenError(f"Readout {readout!r} is not a position: pass an index such as -1 (the last token).")
    if not -n <= readout < n:
        raise TokenError(f"Readout position {readout} is outside the prompt's {n} tokens (0–{n - 1}, or -{n}–-1).")
    return readout % n


def target_ids(model, targets: str | int | Sequence[str | int]) -> tuple[list[int], list[str]]:
    """Token ids and labels of the targets a result reports on. A string is ONE target (never a list of
    its characters) and must be a single token; an int is a token id."""
    items = [targets] if isinstance(targets, (str, int)) else list(targets)
    if not items:
        raise TokenError("The target list is empty: name at least one target token, or pass None for the top tokens.")
    ids, labels = [], []
    vocab = model.facts.d_vocab
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise TokenError(f"Target {item!r} is neither text nor a token id: pass strings or ints.")
        if isinstance(item, int):
            if not 0 <= item < vocab:
                raise TokenError(f"Token id {item} is outside the vocabulary (0–{vocab - 1}).")
            ids.append(item)
            labels.append(_tokenizer(model).decode([item]))
        else:
            ids.append(single_token_id(model, item))
            labels.append(item)
    return ids, labels


def align_prompts(model, target: str, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize two prompts that must align token by token (same length), for patching across them."""
    t = to_tokens(model, target)
    s = to_tokens(model, source)
    if t.shape != s.shape:
        t_str, s_str = str_tokens(model, target), str_tokens(model, source)
        first = next(
            (i for i, (a, b) in enumerate(zip(t_str, s_str, strict=False)) if a != b), min(len(t_str), len(s_str))
        )
        raise TokenError(
            f"The prompts do not align: target has {t.shape[-1]} tokens, source {s.shape[-1]}; they first "
            f"differ at position {first} ({t_str[first] if first < len(t_str) else 'end'!r} vs "
            f"{s_str[first] if first < len(s_str) else 'end'!r}). Make them differ only in same-length tokens."
        )
    return t, s
