"""Reads: what an observer looks at, as data — the twin of :class:`~workbench.interventions.Intervention`.

A :class:`Read` names a site of the site table (:mod:`workbench.interventions.sites`), the blocks and the
token positions to keep, and whether the gradient of a later scalar at that activation is wanted. The hook
names come from the site table alone; :func:`capture` compiles reads into hooks, runs one forward and hands
back a cache keyed by ``(site, block)``, so code that reads activations never spells a hook name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from workbench.errors import InterventionError, LayerError
from workbench.interventions.sites import SITES

Key = tuple[str, int]


@dataclass(frozen=True)
class Read:
    """Keep ``site`` of each block in ``blocks`` at ``positions`` (all when ``None``); ``grad=True`` also
    keeps the activation attached to the graph, so a scalar computed from the output can be differentiated
    with respect to it (attribution patching, integrated gradients)."""

    site: str
    blocks: tuple[int, ...]
    positions: tuple[int, ...] | None = None
    grad: bool = False

    def __post_init__(self) -> None:
        if self.site not in SITES:
            raise InterventionError(f"Unknown site {self.site!r} to read: use one of {', '.join(SITES)}.")
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        if self.positions is not None:
            object.__setattr__(self, "positions", tuple(int(p) for p in self.positions))

    def keys(self) -> list[Key]:
        return [(self.site, block) for block in self.blocks]


def check_blocks(model, blocks: Iterable[int]) -> tuple[int, ...]:
    """Blocks as a tuple, each one the model has (negative counts from the end)."""
    n = model.facts.n_layers
    out = []
    for block in blocks:
        if not -n <= int(block) < n:
            raise LayerError(f"Block {block} does not exist: {model.facts.name} has blocks 0 to {n - 1}.")
        out.append(int(block) % n)
    return tuple(out)


def read_hooks(
    reads: Sequence[Read],
    cache: dict[Key, torch.Tensor],
    store: Callable[[Key, torch.Tensor], None] | None = None,
) -> list[tuple[str, Callable]]:
    """TransformerLens hooks that fill ``cache`` with what ``reads`` ask for (the batch axis first), or hand
    each activation to ``store(key, tensor)`` (a probe's save slot)."""
    hooks = []
    for read in reads:
        site = SITES[read.site]
        axis = site.layout.index("pos") if "pos" in site.layout else None
        for block in read.blocks:

            def hook(act: torch.Tensor, hook=None, key=(read.site, block), read=read, axis=axis) -> None:
                kept = act
                if read.positions is not None and axis is not None:
                    index = torch.tensor(read.positions, device=act.device)
                    kept = act.index_select(axis, index)
                kept = kept if read.grad else kept.detach()
                if store is None:
                    cache[key] = kept
                else:
                    store(key, kept)

            hooks.append((site.hook_name(block), hook))
    return hooks


def capture(
    model, tokens: torch.Tensor, reads: Sequence[Read], *, grad: bool = False
) -> tuple[dict[Key, torch.Tensor], torch.Tensor]:
    """One forward of ``tokens`` with ``reads`` compiled to hooks: ``(cache, logits)``. With ``grad`` (or any
    read asking for it) the forward keeps its graph; every hook is removed afterwards, also on error."""
    cache: dict[Key, torch.Tensor] = {}
    hooks = read_hooks(reads, cache)
    with torch.set_grad_enabled(grad or any(r.grad for r in reads)), model.bridge.hooks(fwd_hooks=hooks):
        logits = model.bridge(tokens.to(model.device))
    return cache, logits
