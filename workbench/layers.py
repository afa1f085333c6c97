"""The layer-naming convention, written down once.

Blocks are counted from 0, as in TransformerLens: ``blocks.21`` is "block 21", the 22nd block.
Residual-stream rows (the logit lens) are labelled by what produced them:

- ``embeddings``: the token embeddings, before block 0;
- ``after block i``: the residual stream leaving block ``i`` (TransformerLens ``blocks.i.hook_resid_post``);
- ``final``: the model's own output logits (final norm + unembedding of ``after block n-1``).

The source study counts differently: its logit-lens "layer 21" is the residual after its 21st block
(``after block 20`` here) while its attention dump counts from 0. Every table and figure in the
workbench uses the labels above.
"""

from __future__ import annotations

from collections.abc import Iterable

from workbench.errors import LayerError


def block_label(block: int) -> str:
    return f"block {block}"


def resid_labels(n_layers: int) -> list[str]:
    """Row labels of a residual-stream stack: embeddings, after block 0 … after block n-1, final."""
    return ["embeddings", *(f"after block {i}" for i in range(n_layers)), "final"]


def format_blocks(blocks: Iterable[int]) -> str:
    """Compact block list for titles: [6, 14, 21, 22, 23] → "6, 14, 21–23"."""
    blocks = sorted(set(blocks))
    parts, start = [], None
    for i, b in enumerate(blocks):
        start = b if start is None else start
        if i + 1 == len(blocks) or blocks[i + 1] != b + 1:
            parts.append(str(b) if b == start else f"{start}–{b}")
            start = None
    return ", ".join(parts)


def describe_blocks(resolved: list[int], given: int | Iterable[int] | None, default: str) -> str:
    """``block 21`` / ``blocks 6, 14`` for titles, from resolved blocks, or the raw option before a run."""
    blocks = resolved or ([given] if isinstance(given, int) else list(given or []))
    if not blocks:
        return default
    return f"block{'s' if len(blocks) > 1 else ''} {format_blocks(blocks)}"


def resolve_blocks(facts, blocks: int | Iterable[int] | None, default: Iterable[int] | None = None) -> list[int]:
    """Validate block indices (negative ones count from the end) against the model; ``None`` means
    ``default`` (every block when no default). An empty list is refused: it would edit nothing."""
    n = facts.n_layers
    if blocks is None:
        return list(range(n)) if default is None else list(default)
    chosen = [blocks] if isinstance(blocks, int) else list(blocks)
    if not chosen:
        raise LayerError(f"The block list is empty, so nothing would be edited: name at least one block of 0–{n - 1}.")
    out = []
    for b in chosen:
        index = _as_index(b, "Block")
        index = index + n if index < 0 else index
        if not 0 <= index < n:
            raise LayerError(
                f"Block {b} does not exist: {facts.name} has blocks 0–{n - 1} (counted from 0). Pick one in range."
            )
        if index not in out:
            out.append(index)
    return out


HEAD_KINDS = ("query", "kv")


def resolve_heads(facts, heads: int | Iterable[int] | None, kind: str = "query") -> list[int]:
    """Validate head indices against the model: ``kind="query"`` for query heads (patterns, q, z,
    scores), ``"kv"`` for key/value heads (k, v: grouped-query attention has fewer). Negative ones count
    from the end; ``None`` means every head of that kind; an empty list is refused."""
    if kind not in HEAD_KINDS:
        raise LayerError(f"Unknown head kind {kind!r}: use 'query' or 'kv'.")
    n = facts.n_heads if kind == "query" else facts.n_kv_heads
    what = "query heads" if kind == "query" else "key/value heads"
    if heads is None:
        return list(range(n))
    chosen = [heads] if isinstance(heads, int) else list(heads)
    if not chosen:
        raise LayerError(
            f"The head list is empty, so nothing would be selected: name at least one of {what} 0–{n - 1}."
        )
    out = []
    for h in chosen:
        index = _as_index(h, "Head")
        if not -n <= index < n:
            raise LayerError(f"Head {h} does not exist: {facts.name} has {what} 0–{n - 1}.")
        if index % n not in out:
            out.append(index % n)
    return out


def _as_index(value, what: str) -> int:
    """An int (a bool or a float with a fraction is not an index)."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        except (TypeError, ValueError):
            raise LayerError(f"{what} {value!r} is not a whole number: pass an index such as 0 or -1.") from None
    return value
