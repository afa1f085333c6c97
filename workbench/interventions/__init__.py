"""One intervention language for probes, sweeps and generation.

An :class:`Intervention` describes an edit as data — a site of the site table, blocks, positions,
heads and an :class:`Operation` — and compiles to TransformerLens hooks (``run``, ``generate``, beam
search, the naive sweep path) or to cells of the fast sweep engine. The helpers below build the common
ones::

    from workbench import interventions as iv
    iv.identity(blocks=21)                          # block 21 passes its input through
    iv.patch("kv", source="… [0, 5] …", blocks=[6, 14], positions="9")
    iv.mask_keys("9", blocks=range(13, 24))         # attention to "9" set to −∞
    iv.add("resid_pre", vector, blocks=10, coefficient=4.0)   # steering

A plugin adds an operation in one file: subclass :class:`Operation` as a frozen dataclass with a
``name`` and ``apply``, decorate it with :func:`register_operation` (or expose it through the entry-point
group ``workbench.operations``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from workbench.interventions.compile import Binding, Edit, compile_hooks
from workbench.interventions.intervention import Intervention, Preparation, Resolved, resolve
from workbench.interventions.operations import (
    Add,
    Identity,
    MaskKeys,
    Mean,
    Operation,
    Patch,
    Scale,
    Zero,
    available_operations,
    get_operation,
    queries_with_visible_key,
    register_operation,
)
from workbench.interventions.sites import COMPOSITE, SITES, Site, expand_site, site_names

Blocks = int | Iterable[int] | None
Positions = int | str | Sequence[int | str] | None
Heads = int | Iterable[int] | None

__all__ = [
    "Intervention",
    "Operation",
    "Resolved",
    "Preparation",
    "Binding",
    "Edit",
    "Site",
    "SITES",
    "COMPOSITE",
    "Patch",
    "Zero",
    "Mean",
    "Identity",
    "MaskKeys",
    "Scale",
    "Add",
    "register_operation",
    "get_operation",
    "available_operations",
    "resolve",
    "compile_hooks",
    "expand_site",
    "site_names",
    "queries_with_visible_key",
    "patch",
    "zero",
    "mean",
    "identity",
    "mask_keys",
    "scale",
    "add",
]


def patch(
    site: str, source: str | Sequence[str], blocks: Blocks = None, positions: Positions = None, heads: Heads = None
) -> Intervention:
    """Activations at ``site`` taken from ``source`` (a prompt of the same token length, or one per prompt)."""
    return Intervention(site, Patch(source if isinstance(source, str) else tuple(source)), blocks, positions, heads)


def zero(site: str, blocks: Blocks = None, positions: Positions = None, heads: Heads = None) -> Intervention:
    return Intervention(site, Zero(), blocks, positions, heads)


def mean(
    site: str, blocks: Blocks = None, positions: Positions = None, heads: Heads = None, prompts: Sequence[str] = ()
) -> Intervention:
    """Mean-ablation over ``prompts`` (a dataset), or over the run's own prompts when empty."""
    return Intervention(site, Mean(tuple(prompts)), blocks, positions, heads)


def identity(blocks: Blocks, site: str = "block", positions: Positions = None) -> Intervention:
    """Skip ``blocks`` (``site="block"``), or only their attention (``attn_out``) or MLP (``mlp_out``)."""
    return Intervention(site, Identity(), blocks, positions)


def mask_keys(
    keys: int | str | Sequence[int | str], blocks: Blocks = None, queries: Positions = None, heads: Heads = None
) -> Intervention:
    """Attention scores from ``queries`` (every query by default) to ``keys`` set to −∞."""
    keys = (keys,) if isinstance(keys, (int, str)) else tuple(keys)
    return Intervention("attn_scores", MaskKeys(keys), blocks, queries, heads)


def scale(
    site: str, factor: float, blocks: Blocks = None, positions: Positions = None, heads: Heads = None
) -> Intervention:
    return Intervention(site, Scale(float(factor)), blocks, positions, heads)


def add(
    site: str,
    vector: Sequence[float] | torch.Tensor,
    blocks: Blocks = None,
    positions: Positions = None,
    heads: Heads = None,
    coefficient: float = 1.0,
) -> Intervention:
    """``coefficient × vector`` added at ``site`` (steering)."""
    return Intervention(site, Add(vector, float(coefficient)), blocks, positions, heads)
