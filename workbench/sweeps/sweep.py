"""Sweeps: one intervention repeated over a grid of blocks × positions (× heads), one metric per cell.

Every cell is an :class:`~workbench.interventions.Intervention` (a copy of a template with the cell's
block, position and head), so a sweep runs any operation, built-in or plugin:

- :func:`intervention_sweep`: any template over ``block × position``, ``block × head``, ``block`` …;
- :func:`patch_sweep`: activation patching from a source prompt, at the residual stream (``resid_pre``,
  ``resid_mid``, ``resid_post``), the sublayer outputs (``attn_out``, ``mlp_out``) or per head
  (``z`` head output, ``q``, ``k``, ``v``; ``k``/``v`` index key/value heads);
- :func:`block_sweep`: block replacement of every block, per mode (or per template);
- :func:`mask_sweep`: attention to each key position masked, per block (or from that block on).

``method="fast"`` runs the batched engine from the cached clean run (:mod:`workbench.sweeps.engine`);
``method="naive"`` one hooked forward per cell; ``"auto"`` (default) the fast one, falling back to the
naive one with a warning when the engine's self-check refuses the model.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Sequence

import torch

from workbench.errors import SweepError
from workbench.interventions import (
    Intervention,
    MaskKeys,
    Operation,
    Patch,
    compile_hooks,
    queries_with_visible_key,
    resolve,
)
from workbench.interventions.sites import head_kind
from workbench.layers import resolve_blocks, resolve_heads
from workbench.metrics import resolve_metric
from workbench.models import load_model
from workbench.probes.block_replacement import MODES, replacement
from workbench.sweeps.engine import Cell, Engine, EngineCheckError
from workbench.sweeps.result import SweepResult, sweep_arrays
from workbench.tokens import align_prompts, position_indices, resolve_readout, to_tokens

METHODS = ("auto", "fast", "naive")
HEAD_SITES = ("z", "q", "k", "v")
RESID_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
PATCH_SITES = RESID_SITES + HEAD_SITES


@dataclasses.dataclass
class Evaluation:
    """Readout logits of every cell and of the unedited prompt, how they were computed, and how long it took."""

    logits: torch.Tensor
    clean: torch.Tensor
    method: str
    seconds: float
    note: str = ""

    @property
    def engine(self) -> str:
        """The path taken, as sweep results record it (``meta["engine"]``): ``fast``, or ``hooks: <why>``."""
        if self.method == "fast":
            return "fast"
        return f"hooks: {self.note or 'method=naive was asked for'}"


def evaluate_cells(
    model,
    prompt: str,
    cells: Sequence[Sequence[Intervention]],
    *,
    readout: int = -1,
    method: str = "auto",
    skip_prefix: bool = True,
) -> Evaluation:
    """The readout logits of ``prompt`` under each cell's interventions (each cell alone), on the fast
    engine or with one hooked forward per cell. This is the one loop every sweep runs."""
    if method not in METHODS:
        raise SweepError(f"Unknown sweep method {method!r}: use one of {', '.join(METHODS)}.")
    tokens = to_tokens(model, prompt)
    readout = resolve_readout(tokens.shape[-1], readout)
    began = time.perf_counter()
    captures: dict = {}  # one clean forward per patch source / mean prompt for the whole grid, not one per cell
    resolved = [[resolve(iv, model, [prompt], tokens, captures=captures) for iv in cell] for cell in cells]
    note = ""
    if method in ("auto", "fast"):
        try:
            engine = Engine(model, tokens, readout)
            n = tokens.shape[-1]
            logits = engine.run_cells([Cell.of(items, n, skip_prefix) for items in resolved])
            return Evaluation(logits, engine.clean_logits[0], "fast", time.perf_counter() - began)
        except EngineCheckError as exc:
            if method == "fast":
                raise SweepError(f"The fast engine refuses {model.facts.name}: {exc}. Pass method='naive'.") from None
            note = f"fast engine refused ({exc}); ran one hooked forward per cell"
            warnings.warn(f"workbench sweep: {note}", RuntimeWarning, stacklevel=3)
    with torch.no_grad():
        clean = model.bridge(tokens)[0, readout].float()
        rows = []
        for items in resolved:
            with model.bridge.hooks(fwd_hooks=compile_hooks(items) if items else []):
                rows.append(model.bridge(tokens)[0, readout].float())
    logits = torch.stack(rows) if rows else torch.empty(0, clean.shape[-1])
    return Evaluation(logits, clean, "naive", time.perf_counter() - began, note)


def _cell(template: Intervention, **where) -> Intervention:
    return dataclasses.replace(template, **where)


def intervention_sweep(
    model,
    prompt: str,
    template: Intervention | dict,
    *,
    over: Sequence[str] = ("block", "position"),
    blocks=None,
    positions=None,
    heads=None,
    metric=None,
    readout: int = -1,
    method: str = "auto",
    skip_prefix: bool = True,
    source_value_prompt: str | None = None,
    description: str | None = None,
    probe: str = "intervention_sweep",
) -> SweepResult:
    """``template`` applied cell by cell over ``over`` (a subset of block, position, head, in that order):
    each cell is the template with that block (position, head). Unswept axes keep the template's own
    selection (or ``blocks``/``positions``/``heads`` when given)."""
    model = load_model(model)
    template = template if isinstance(template, Intervention) else Intervention.from_dict(template)
    over = tuple(over)
    if not over or set(over) - {"block", "position", "head"} or len(set(over)) != len(over):
        raise SweepError(f"A sweep runs over block, position and/or head, not {list(over)}.")
    if "head" in over and head_kind(template.site) is None:
        raise SweepError(f"Site {template.site!r} has no heads to sweep over.")
    tokens = to_tokens(model, prompt)
    n = tokens.shape[-1]
    names = [model.tokenizer.decode([t]) for t in tokens[0].tolist()]
    block_list = resolve_blocks(model.facts, blocks if blocks is not None else template.blocks)
    pos_list = position_indices(n, positions) if positions is not None else None
    head_list = (
        resolve_heads(model.facts, heads if heads is not None else template.heads, head_kind(template.site))
        if "head" in over or heads is not None
        else None
    )
    axes = {"block": block_list, "position": pos_list if pos_list is not None else list(range(n)), "head": head_list}
    coords = {dim: axes[dim] for dim in over}
    cells = [[]]
    for dim in over:
        cells = [cell + [(dim, value)] for cell in cells for value in axes[dim]]
    fixed = {}
    if "block" not in over:
        fixed["blocks"] = block_list
    if "position" not in over and pos_list is not None:
        fixed["positions"] = pos_list
    if "head" not in over and head_list is not None and heads is not None:
        fixed["heads"] = head_list
    key = {"block": "blocks", "position": "positions", "head": "heads"}
    interventions = [[_cell(template, **fixed, **{key[d]: (v,) for d, v in cell})] for cell in cells]
    metric = resolve_metric(model, metric)
    readout = resolve_readout(n, readout)
    evaluation = evaluate_cells(model, prompt, interventions, readout=readout, method=method, skip_prefix=skip_prefix)
    values = metric(evaluation.logits, evaluation.clean)
    base = float(metric(evaluation.clean[None], evaluation.clean)[0])
    source_value = None
    if source_value_prompt is not None:
        with torch.no_grad():
            source_logits = model.bridge(to_tokens(model, source_value_prompt))[:, readout].float()
        source_value = float(metric(source_logits, evaluation.clean)[0])
    if "position" in coords:
        coords["position"] = [names[p] for p in coords["position"]]
    shape = [len(axes[d]) for d in over]
    meta = dict(
        description=description or f"{template.op.describe()} at {template.site}, cell by cell",
        sweep="intervention",
        site=template.site,
        template=template.to_dict(),
        metric=metric.name,
        base=base,
        method=evaluation.method,
        engine=evaluation.engine,
        cells=len(interventions),
        seconds=evaluation.seconds,
        readout=readout,
        positions=pos_list if pos_list is not None else list(range(n)),
        block_convention="blocks counted from 0",
    )
    if source_value is not None:
        meta["source_value"] = source_value
    if evaluation.note:
        meta["note"] = evaluation.note
    return SweepResult(
        probe=probe,
        model=model.facts.name,
        prompts=[prompt],
        tokens=[names],
        arrays=sweep_arrays(values.reshape(shape), tuple(over), coords, base, source_value),
        meta=meta,
    )


def patch_sweep(
    model,
    prompt: str,
    source: str | None = None,
    *,
    site: str = "resid_pre",
    metric=None,
    blocks=None,
    positions=None,
    heads=None,
    by_position: bool = False,
    readout: int = -1,
    method: str = "auto",
    reuse_prefix: bool = True,
    operation: Operation | None = None,
) -> SweepResult:
    """Activation patching of ``site`` from ``source`` into ``prompt``, cell by cell (or any other
    ``operation``, e.g. a plugin's, over the same grid).

    Residual sites give a ``block × position`` grid; head sites (``z``, ``q``, ``k``, ``v``) a
    ``block × head`` grid editing every position of ``positions`` at once, or ``block × position × head``
    with ``by_position``. ``reuse_prefix`` (fast path) skips the positions before the first token where
    the prompts differ: their activations are identical in both, so patching them changes nothing.
    """
    model = load_model(model)
    if site not in PATCH_SITES:
        raise SweepError(f"Unknown sweep site {site!r}: use one of {', '.join(PATCH_SITES)}.")
    if operation is None:
        if not source:
            raise SweepError("A patching sweep needs a source prompt (or an operation= to sweep instead).")
        align_prompts(model, prompt, source)
        operation = Patch(source)
    over = (
        ("block", "position", "head")
        if site in HEAD_SITES and by_position
        else ("block", "head")
        if site in HEAD_SITES
        else ("block", "position")
    )
    what = f"{site} {operation.describe()}" + (" per position" if "position" in over else ", all positions")
    result = intervention_sweep(
        model,
        prompt,
        Intervention(site, operation),
        over=over,
        blocks=blocks,
        positions=positions,
        heads=heads,
        metric=metric,
        readout=readout,
        method=method,
        skip_prefix=reuse_prefix,
        source_value_prompt=source if isinstance(operation, Patch) else None,
        description=what,
        probe="patch_sweep",
    )
    result.meta.update(sweep="patch", source=source)
    return result


def block_sweep(
    model, prompt: str, *, modes=("identity",), blocks=None, metric=None, readout: int = -1, method: str = "auto"
) -> SweepResult:
    """Each block replaced alone, per mode: a ``mode × block`` grid. A mode is a name of
    :data:`~workbench.probes.block_replacement.MODES` or an intervention template (any operation,
    plugin ones included) whose blocks the sweep fills in."""
    model = load_model(model)
    modes = [modes] if isinstance(modes, (str, Intervention)) else list(modes)
    if not modes:
        raise SweepError(f"No mode to sweep: pass modes=['identity'] (or any of {', '.join(MODES)}).")
    templates = [m if isinstance(m, Intervention) else replacement(m, None) for m in modes]
    labels = [m if isinstance(m, str) else f"{m.site} {m.op.describe()}" for m in modes]
    tokens = to_tokens(model, prompt)
    readout = resolve_readout(tokens.shape[-1], readout)
    block_list = resolve_blocks(model.facts, blocks)
    metric = resolve_metric(model, metric)
    cells = [[_cell(t, blocks=(b,))] for t in templates for b in block_list]
    evaluation = evaluate_cells(model, prompt, cells, readout=readout, method=method)
    values = metric(evaluation.logits, evaluation.clean).reshape(len(modes), len(block_list))
    base = float(metric(evaluation.clean[None], evaluation.clean)[0])
    names = [model.tokenizer.decode([t]) for t in tokens[0].tolist()]
    meta = dict(
        description="block replacement, one block at a time",
        sweep="block",
        site=None,
        metric=metric.name,
        base=base,
        method=evaluation.method,
        engine=evaluation.engine,
        cells=len(cells),
        seconds=evaluation.seconds,
        readout=readout,
        templates=[t.to_dict() for t in templates],
        block_convention="blocks counted from 0",
    )
    if evaluation.note:
        meta["note"] = evaluation.note
    return SweepResult(
        probe="block_sweep",
        model=model.facts.name,
        prompts=[prompt],
        tokens=[names],
        arrays=sweep_arrays(values, ("mode", "block"), {"mode": labels, "block": block_list}, base, None),
        meta=meta,
    )


def mask_sweep(
    model,
    prompt: str,
    *,
    keys=None,
    blocks=None,
    cumulative: bool = False,
    metric=None,
    readout: int = -1,
    method: str = "auto",
) -> SweepResult:
    """Attention to one key position set to −∞ (every head, every query that keeps a visible key),
    in one block (or, with ``cumulative``, in that block and every later one): a ``block × key`` grid."""
    model = load_model(model)
    tokens = to_tokens(model, prompt)
    n = tokens.shape[-1]
    readout = resolve_readout(n, readout)
    metric = resolve_metric(model, metric)
    block_list = resolve_blocks(model.facts, blocks)
    key_list = position_indices(n, keys)
    last = model.facts.n_layers
    cells = []
    for b in block_list:
        for k in key_list:
            queries = queries_with_visible_key(list(range(n)), [k])
            cells.append(
                [
                    Intervention(
                        "attn_scores", MaskKeys((k,)), tuple(range(b, last)) if cumulative else (b,), tuple(queries)
                    )
                ]
            )
    evaluation = evaluate_cells(model, prompt, cells, readout=readout, method=method)
    values = metric(evaluation.logits, evaluation.clean).reshape(len(block_list), len(key_list))
    base = float(metric(evaluation.clean[None], evaluation.clean)[0])
    names = [model.tokenizer.decode([t]) for t in tokens[0].tolist()]
    meta = dict(
        description="attention to one key masked " + ("from the block on" if cumulative else "in one block"),
        sweep="mask",
        site="attn_scores",
        metric=metric.name,
        base=base,
        method=evaluation.method,
        engine=evaluation.engine,
        cells=len(cells),
        seconds=evaluation.seconds,
        readout=readout,
        keys=key_list,
        cumulative=cumulative,
        block_convention="blocks counted from 0",
    )
    if evaluation.note:
        meta["note"] = evaluation.note
    return SweepResult(
        probe="mask_sweep",
        model=model.facts.name,
        prompts=[prompt],
        tokens=[names],
        arrays=sweep_arrays(
            values, ("block", "key"), {"block": block_list, "key": [names[k] for k in key_list]}, base, None
        ),
        meta=meta,
    )
