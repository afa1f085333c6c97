"""Sweeps: one intervention repeated over a grid of blocks × positions (× heads), one metric per cell.

- :func:`patch_sweep`: activation patching from a source prompt, at the residual stream (``resid_pre``,
  ``resid_mid``, ``resid_post``), the sublayer outputs (``attn_out``, ``mlp_out``) or per head
  (``z`` head output, ``q``, ``k``, ``v``; ``k``/``v`` index key/value heads);
- :func:`block_sweep`: block replacement of every block, per mode;
- :func:`mask_sweep`: attention to each key position masked, per block (or from that block on).

``method="fast"`` runs the batched engine from the cached clean run (Llama-family models);
``method="naive"`` one hooked forward per cell; ``"auto"`` (default) the fast one when supported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from workbench.errors import ProbeError
from workbench.layers import resolve_blocks
from workbench.models import load_model
from workbench.sweeps import engine as fast
from workbench.sweeps.cells import (
    HEAD_SITES, PATCH_SITES, REPLACE_MODES, MaskSpec, PatchSpec, ReplaceSpec, first_difference, visible_queries,
)
from workbench.sweeps.metrics import resolve_metric
from workbench.sweeps.naive import capture_sites, run_naive
from workbench.sweeps.result import SweepResult, sweep_arrays
from workbench.tokens import align_prompts, position_indices, str_tokens, to_tokens

METHODS = ("auto", "fast", "naive")


def _method(model, method: str) -> str:
    if method not in METHODS:
        raise ProbeError(f"Unknown sweep method {method!r}: use one of {', '.join(METHODS)}.")
    if method == "auto":
        return "fast" if fast.supports(model) else "naive"
    return method


def _heads(model, site: str, heads) -> list[int]:
    limit = model.facts.n_kv_heads if site in ("k", "v") else model.facts.n_heads
    if heads is None:
        return list(range(limit))
    chosen = [heads] if isinstance(heads, int) else list(heads)
    for h in chosen:
        if not 0 <= h < limit:
            kind = "key/value" if site in ("k", "v") else "query"
            raise ProbeError(f"Head {h} does not exist for site {site!r}: {model.facts.name} has {kind} heads 0–{limit - 1}.")
    return chosen


def patch_specs(model, site: str, blocks: list[int], positions: list[int], heads: list[int] | None,
                by_position: bool) -> tuple[list[PatchSpec], tuple[str, ...], dict]:
    """The cells of a patching sweep and the dims of its grid."""
    if site in HEAD_SITES:
        if by_position:
            specs = [PatchSpec(site, b, (p,), (h,)) for b in blocks for p in positions for h in heads]
            return specs, ("block", "position", "head"), {"block": blocks, "head": heads}
        specs = [PatchSpec(site, b, tuple(positions), (h,)) for b in blocks for h in heads]
        return specs, ("block", "head"), {"block": blocks, "head": heads}
    specs = [PatchSpec(site, b, (p,)) for b in blocks for p in positions]
    return specs, ("block", "position"), {"block": blocks}


@dataclass
class PatchGrid:
    """A patching sweep's validated inputs: aligned tokens, blocks, positions and the cells of its grid."""

    tokens: torch.Tensor
    source_tokens: torch.Tensor
    blocks: list[int]
    positions: list[int]
    specs: list[PatchSpec]
    dims: tuple[str, ...]
    coords: dict


def patch_grid(model, prompt: str, source: str, site: str, blocks, positions, heads, by_position: bool) -> PatchGrid:
    """Validate a patching sweep's options (shared by exact and attribution patching)."""
    if site not in PATCH_SITES:
        raise ProbeError(f"Unknown sweep site {site!r}: use one of {', '.join(PATCH_SITES)}.")
    tokens, source_tokens = align_prompts(model, prompt, source)
    blocks = resolve_blocks(model.facts, blocks)
    pos = position_indices(tokens.shape[-1], positions)
    head_list = _heads(model, site, heads) if site in HEAD_SITES else None
    specs, dims, coords = patch_specs(model, site, blocks, pos, head_list, by_position)
    coords["position"] = [str_tokens(model, prompt)[p] for p in pos]
    return PatchGrid(tokens, source_tokens, blocks, pos, specs, dims, coords)


def patch_sweep(
    model, prompt: str, source: str, *, site: str = "resid_pre", metric=None, blocks=None, positions=None,
    heads=None, by_position: bool = False, readout: int = -1, method: str = "auto", reuse_prefix: bool = True,
) -> SweepResult:
    """Activation patching of ``site`` from ``source`` into ``prompt``, cell by cell.

    Residual sites give a ``block × position`` grid; head sites (``z``, ``q``, ``k``, ``v``) a
    ``block × head`` grid patching every position of ``positions`` at once, or ``block × position × head``
    with ``by_position``. ``reuse_prefix`` (fast path) skips the positions before the first token where
    the prompts differ: their activations are identical in both, so patching them changes nothing.
    """
    model = load_model(model)
    grid = patch_grid(model, prompt, source, site, blocks, positions, heads, by_position)
    tokens, source_tokens, blocks, pos = grid.tokens, grid.source_tokens, grid.blocks, grid.positions
    specs, dims, coords = grid.specs, grid.dims, grid.coords
    n = tokens.shape[-1]
    metric = resolve_metric(model, metric)
    readout %= n
    method = _method(model, method)
    began = time.perf_counter()
    if method == "fast":
        eng = fast.Engine(model, tokens)
        eng.run_clean((site,), readout)
        with torch.no_grad():
            source_acts, source_logits = eng.capture(source_tokens, {site}, readout)
        skip = first_difference(tokens, source_tokens) if reuse_prefix else 0
        cells = [_patch_cell(s, source_acts[s.site][s.block], skip, n) for s in specs]
        logits = eng.run_cells(cells, readout)
        clean = eng.clean_logits[0]
    else:
        source_acts = capture_sites(model, source_tokens, {site}, blocks)
        with torch.no_grad():
            clean = model.bridge(tokens)[0, readout].float()
            source_logits = model.bridge(source_tokens)[:, readout].float()
        logits = run_naive(model, prompt, tokens, specs, readout, source_acts)
    seconds = time.perf_counter() - began
    values = metric(logits, clean)
    base = float(metric(clean[None], clean)[0])
    source_value = float(metric(source_logits, clean)[0])
    shape = [len(coords[d]) for d in dims]
    what = f"{site} patched from the source" + (" per position" if by_position or site not in HEAD_SITES else ", all positions")
    return SweepResult(
        probe="patch_sweep", model=model.facts.name, prompts=[prompt, source], tokens=[str_tokens(model, prompt)],
        arrays=sweep_arrays(values.reshape(shape), dims, coords, base, source_value),
        meta=dict(description=what, sweep="patch", site=site, source=source, metric=metric.name, base=base,
                  source_value=source_value, method=method, cells=len(specs), seconds=seconds, readout=readout,
                  positions=pos, block_convention="blocks counted from 0"),
    )


def _patch_cell(spec: PatchSpec, source: torch.Tensor, skip: int, n: int) -> fast.Cell:
    """An engine cell for a patch: positions before ``skip`` hold the same values in both prompts."""
    positions = [p for p in spec.positions if p >= skip]
    if not positions:
        return fast.Cell(start=spec.block, suffix=n)  # patches nothing: the clean run
    p0 = positions[0]
    rel = torch.tensor([p - p0 for p in positions], device=source.device)
    values = source[positions]

    if spec.heads is None:
        def edit(act):
            act[rel] = values.to(act.dtype)
            return act
    else:
        heads = torch.tensor(spec.heads, device=source.device)

        def edit(act):
            act[rel[:, None], heads[None]] = values[:, heads].to(act.dtype)
            return act

    return fast.Cell(start=spec.block, suffix=p0, edits={(spec.block, spec.site): edit})


def block_sweep(model, prompt: str, *, modes=("identity",), blocks=None, metric=None, readout: int = -1,
                method: str = "auto") -> SweepResult:
    """Block replacement of each block alone, per mode: a ``mode × block`` grid."""
    model = load_model(model)
    modes = [modes] if isinstance(modes, str) else list(modes)
    for mode in modes:
        if mode not in REPLACE_MODES:
            raise ProbeError(f"Unknown block replacement mode {mode!r}: use one of {', '.join(REPLACE_MODES)}.")
    tokens = to_tokens(model, prompt)
    n = tokens.shape[-1]
    readout %= n
    metric = resolve_metric(model, metric)
    blocks = resolve_blocks(model.facts, blocks)
    specs = [ReplaceSpec(mode, b) for mode in modes for b in blocks]
    method = _method(model, method)
    logits, clean, seconds = _run_cells(model, prompt, tokens, specs, readout, method,
                                        ("attn_out", "mlp_out"), _replace_cell)
    values = metric(logits, clean).reshape(len(modes), len(blocks))
    base = float(metric(clean[None], clean)[0])
    return SweepResult(
        probe="block_sweep", model=model.facts.name, prompts=[prompt], tokens=[str_tokens(model, prompt)],
        arrays=sweep_arrays(values, ("mode", "block"), {"mode": modes, "block": blocks}, base, None),
        meta=dict(description="block replacement, one block at a time", sweep="block", site=None, metric=metric.name,
                  base=base, method=method, cells=len(specs), seconds=seconds, readout=readout,
                  block_convention="blocks counted from 0"),
    )


def _run_cells(model, prompt, tokens, specs, readout, method, clean_sites, make_cell):
    """Evaluate every spec on the engine (``fast``) or with one hooked forward each (``naive``).

    Returns the readout logits of every cell, the clean readout logits, and the seconds taken.
    """
    began = time.perf_counter()
    if method == "fast":
        eng = fast.Engine(model, tokens)
        eng.run_clean(clean_sites, readout)
        logits = eng.run_cells([make_cell(eng, s) for s in specs], readout)
        clean = eng.clean_logits[0]
    else:
        with torch.no_grad():
            clean = model.bridge(tokens)[0, readout].float()
        logits = run_naive(model, prompt, tokens, specs, readout)
    return logits, clean, time.perf_counter() - began


def _replace_cell(eng: fast.Engine, spec: ReplaceSpec) -> fast.Cell:
    if spec.mode == "identity":
        return fast.Cell(start=spec.block + 1, init=eng.clean["resid_pre"][spec.block])
    kind, sublayer = spec.mode.split("_")
    site = f"{sublayer}_out"
    mean = eng.clean[site][spec.block].mean(0)

    def edit(act):
        return torch.zeros_like(act) if kind == "zero" else mean.expand_as(act).clone()

    return fast.Cell(start=spec.block, edits={(spec.block, site): edit})


def mask_sweep(model, prompt: str, *, keys=None, blocks=None, cumulative: bool = False, metric=None,
               readout: int = -1, method: str = "auto") -> SweepResult:
    """Attention to one key position set to −∞ (every head, every query that keeps a visible key),
    in one block (or, with ``cumulative``, in that block and every later one): a ``block × key`` grid."""
    model = load_model(model)
    tokens = to_tokens(model, prompt)
    n = tokens.shape[-1]
    readout %= n
    metric = resolve_metric(model, metric)
    blocks = resolve_blocks(model.facts, blocks)
    key_list = position_indices(n, keys)
    last = model.facts.n_layers
    specs = [MaskSpec(tuple(range(b, last)) if cumulative else (b,), (k,), visible_queries(n, (k,)))
             for b in blocks for k in key_list]
    method = _method(model, method)
    logits, clean, seconds = _run_cells(model, prompt, tokens, specs, readout, method, (), _mask_cell)
    values = metric(logits, clean).reshape(len(blocks), len(key_list))
    base = float(metric(clean[None], clean)[0])
    names = str_tokens(model, prompt)
    return SweepResult(
        probe="mask_sweep", model=model.facts.name, prompts=[prompt], tokens=[names],
        arrays=sweep_arrays(values, ("block", "key"), {"block": blocks, "key": [names[k] for k in key_list]}, base, None),
        meta=dict(description="attention to one key masked " + ("from the block on" if cumulative else "in one block"),
                  sweep="mask", site="attn_scores", metric=metric.name, base=base, method=method, cells=len(specs),
                  seconds=seconds, readout=readout, keys=key_list, cumulative=cumulative,
                  block_convention="blocks counted from 0"),
    )


def _mask_cell(eng: fast.Engine, spec: MaskSpec) -> fast.Cell:
    mask = spec.matrix(eng.n, eng.device) & ~eng.causal
    rows = mask.any(-1).nonzero().flatten()
    suffix = int(rows[0]) if len(rows) else eng.n
    return fast.Cell(start=spec.blocks[0], suffix=suffix, key_mask=mask, mask_blocks=range(spec.blocks[0], spec.blocks[-1] + 1))
