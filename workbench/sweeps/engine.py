"""The fast path: many edited copies of one prompt through the model's own blocks, reusing the clean run.

A sweep is many runs of one prompt, each with its own edit (a *cell*). Three facts make them cheap:

- an edit in block ``L`` leaves blocks ``0…L-1`` unchanged, so a cell starts at block ``L`` from the
  clean residual stream cached there;
- with causal attention an edit at position ``p`` leaves positions ``< p`` unchanged in every block,
  so a cell recomputes only positions ``p…n-1``, attending to the clean keys and values cached for the
  earlier positions (a KV prefix, exactly what generation with a KV cache does);
- only the readout position is unembedded.

Cells are batched (the batch dimension is different edits): rows that share a suffix share one tensor,
a row joins the batch at its start block, and batches are sized from the memory budget.

The blocks are the model's own decoder layers called through the TransformerLens bridge, so hook
points fire and every edit is the one compiled from its :class:`~workbench.interventions.Intervention`
(:func:`~workbench.interventions.compile_hooks` with the row binding and the suffix offset): the same
code as the hook path, for every family the bridge boots. What the engine adds — the per-layer
arguments the model passes its layers (rotary embeddings, the attention mask, positions), sliced to the
suffix, and the KV prefix — is checked when the engine is built: one unedited cell must reproduce the
bridge's own logits, or the engine refuses (:class:`EngineCheckError`) and sweeps fall back to one
hooked forward per cell, with a warning that says why.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float

from workbench.errors import SweepError
from workbench.interventions import Binding, Resolved, compile_hooks
from workbench.memory import memory_budget

CACHE_ARGUMENTS = ("cache", "past_key_values", "past_key_value", "layer_past")
TOLERANCE = 1e-4  # relative to the largest clean logit


class EngineCheckError(SweepError):
    """The fast engine cannot reproduce this model's own forward pass (or cannot slice its arguments)."""


@dataclass
class Cell:
    """One edited run: its resolved interventions, the block it starts at and the first recomputed position."""

    resolved: list[Resolved]
    start: int
    suffix: int

    @classmethod
    def of(cls, resolved: Sequence[Resolved], n: int, skip_prefix: bool = True) -> Cell:
        """A cell starting at the first edited block and, with ``skip_prefix``, at the first position the
        edits change (a no-op cell gets ``suffix = n``: its logits are the clean ones)."""
        start = min(b for item in resolved for b in item.blocks)
        if skip_prefix:
            firsts = [item.first_position() for item in resolved]
            firsts = [f for f in firsts if f is not None]
            suffix = min(firsts) if firsts else n
        else:
            firsts = [min(p) for item in resolved for p in item.positions if p]
            suffix = min(firsts) if firsts else n
        return cls(list(resolved), start, suffix)


class _Recorder:
    """Stands in for the model's KV cache during the clean run: keeps every layer's keys and values."""

    def __init__(self):
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, key, value, layer_idx, *args, **kwargs):
        self.kv[int(layer_idx)] = (key.detach(), value.detach())
        return key, value

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0


class _PrefixCache:
    """The clean prompt's keys/values before position ``p``, put in front of each edited row's own."""

    def __init__(self, kv: dict[int, tuple[torch.Tensor, torch.Tensor]], p: int):
        self.kv, self.p = kv, p

    def update(self, key, value, layer_idx, *args, **kwargs):
        pk, pv = self.kv[int(layer_idx)]
        rows = key.shape[0]
        pk = pk[..., : self.p, :].expand(rows, *pk.shape[1:-2], self.p, pk.shape[-1])
        pv = pv[..., : self.p, :].expand(rows, *pv.shape[1:-2], self.p, pv.shape[-1])
        return torch.cat([pk.to(key.dtype), key], -2), torch.cat([pv.to(value.dtype), value], -2)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.p


def _signature(block) -> inspect.Signature:
    """The signature of the model's own layer under the bridge's wrapper (the class's ``forward``: the
    bridge may wrap the instance's method in ``(*args, **kwargs)``), without ``self``."""
    layer = getattr(block, "original_component", None) or block
    signature = inspect.signature(inspect.unwrap(type(layer).forward))
    return signature.replace(parameters=list(signature.parameters.values())[1:])


def _var_keyword(signature: inspect.Signature) -> str | None:
    return next((p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD), None)


def _cache_parameter(signature: inspect.Signature) -> str:
    return next((name for name in CACHE_ARGUMENTS if name in signature.parameters), "past_key_values")


def _attention_cache_alias(module, args, kwargs):
    """The bridge's attention reads the KV cache as ``past_key_values``; transformers 5 passes ``cache``."""
    if "cache" in kwargs and "past_key_values" not in kwargs:
        kwargs = dict(kwargs)
        kwargs["past_key_values"] = kwargs["cache"]
        return args, kwargs
    return None


def _slice_kwargs(kwargs: dict, p: int, n: int, family: str) -> dict:
    """The arguments the model passes a layer, for positions ``p…`` only (the queries of a suffix run)."""
    out = {}
    for name, value in kwargs.items():
        if name in CACHE_ARGUMENTS:
            continue
        if name == "hidden_states":
            continue
        if value is None or not isinstance(value, (torch.Tensor, tuple)):
            out[name] = value
        elif name == "position_embeddings":
            out[name] = tuple(t[..., p:, :] for t in value)
        elif name == "attention_mask":
            out[name] = value[..., p:, :] if value.dim() >= 3 else value
        elif name == "position_ids":
            out[name] = value[..., p:]
        elif name == "cache_position":
            out[name] = value[p:]
        elif name == "alibi":
            out[name] = value  # [heads, 1, key]: over the keys, all kept; repeated per row when the layer runs
        elif isinstance(value, torch.Tensor) and n not in value.shape:
            out[name] = value
        else:
            raise EngineCheckError(
                f"the fast engine cannot slice the argument {name!r} that {family} passes its layers"
            )
    return out


class Engine:
    """The clean run of one prompt (per-layer arguments, residuals, KV prefix) and a batched cell runner."""

    def __init__(self, model, tokens: torch.Tensor, readout: int = -1, check: bool = True):
        devices = getattr(model.facts, "devices", ())
        if len(devices) > 1:  # its cached residuals and KV prefix live on one device
            raise EngineCheckError(
                f"{model.facts.name} is split over {', '.join(devices)} and the fast engine keeps "
                "every tensor on one device"
            )
        self.model = model
        self.bridge = model.bridge
        self.device = model.device
        self.tokens = tokens.to(self.device)
        self.n = int(tokens.shape[-1])
        self.readout = readout % self.n
        self.n_layers = model.facts.n_layers
        self.family = model.facts.architecture
        hf_config = getattr(self.bridge.original_model, "config", None)
        self.softcap = getattr(hf_config, "final_logit_softcapping", None)
        self._run_clean()
        if check:
            self.check()

    # ----- the clean run --------------------------------------------------------------------------------
    @torch.no_grad()
    def _run_clean(self) -> None:
        """One bridge forward recording what each block is called with, its input, the KV cache and the
        final residual stream."""
        blocks = list(self.bridge.blocks)
        if len(blocks) != self.n_layers:
            raise EngineCheckError(f"{self.family} has {len(blocks)} blocks in its bridge but {self.n_layers} layers")
        recorder = _Recorder()
        calls: dict[int, tuple] = {}

        def record(index):
            signature = _signature(blocks[index])

            def pre_hook(module, args, kwargs):
                # Some families pass the cache or the mask positionally (GPT-2): name every argument.
                try:
                    bound = signature.bind_partial(*args, **kwargs)
                except TypeError as exc:
                    raise EngineCheckError(
                        f"{self.family}'s layers take arguments the engine cannot name ({exc})"
                    ) from None
                named = dict(bound.arguments)
                named.update(named.pop(_var_keyword(signature), None) or {})
                hidden = named.pop(next(iter(signature.parameters)))
                calls[index] = (hidden.detach(), {k: v for k, v in named.items() if k not in CACHE_ARGUMENTS})
                cache_name = next((k for k in CACHE_ARGUMENTS if k in named), None) or _cache_parameter(signature)
                named[cache_name] = recorder
                return (hidden,), named

            return pre_hook

        final: dict[str, torch.Tensor] = {}

        def keep_final(resid, hook):
            final["resid"] = resid.detach()

        handles = []
        try:
            for i, block in enumerate(blocks):
                handles.append(block.register_forward_pre_hook(record(i), with_kwargs=True))
                if getattr(block, "attn", None) is not None:
                    handles.append(block.attn.register_forward_pre_hook(_attention_cache_alias, with_kwargs=True))
            with self.bridge.hooks(fwd_hooks=[("ln_final.hook_in", keep_final)]):
                self.clean_full_logits = self.bridge(self.tokens).detach()
        finally:
            for handle in handles:
                handle.remove()
        if len(calls) != self.n_layers or len(recorder.kv) != self.n_layers or "resid" not in final:
            raise EngineCheckError(
                f"{self.family}'s blocks did not all report their inputs and keys/values "
                f"({len(calls)} of {self.n_layers} blocks, {len(recorder.kv)} caches)"
            )
        self.resid_pre = [calls[i][0][0] for i in range(self.n_layers)]  # [pos, d_model]
        self.cache_names = [_cache_parameter(_signature(block)) for block in blocks]
        self.layer_kwargs = [calls[i][1] for i in range(self.n_layers)]
        self.prefix = recorder.kv
        self.resid_final = final["resid"][0]
        self.clean_logits = self.clean_full_logits[:, self.readout].float()  # [1, vocab]

    @torch.no_grad()
    def check(self) -> None:
        """An unedited cell from the middle must give the bridge's own readout logits."""
        scale = max(1.0, float(self.clean_logits.abs().max()))
        for start, suffix in {
            (0, 0),
            (self.n_layers // 2, min(self.n // 2, self.readout)),
            (self.n_layers - 1, self.readout),
        }:
            got = self._run_batch([Cell([], start, suffix)])[0]
            diff = float((got - self.clean_logits[0]).abs().max())
            if not diff <= TOLERANCE * scale:
                raise EngineCheckError(
                    f"an unedited run of {self.family} from block {start}, position {suffix} "
                    f"differs from the bridge's logits by {diff:.2e} (tolerance {TOLERANCE * scale:.1e})"
                )

    # ----- cells ----------------------------------------------------------------------------------------
    def max_tokens(self) -> int:
        """Row-positions one batch may hold, from the memory budget and the per-position activation size."""
        facts = self.model.facts
        itemsize = self.resid_final.element_size()
        per_token = itemsize * (12 * facts.d_model + 4 * facts.n_heads * self.n + 8 * facts.d_model)
        cap = 1 << 30 if self.device.type == "cuda" else 16384
        return max(self.n, min(cap, memory_budget(self.device) // per_token))

    @torch.no_grad()
    def run_cells(self, cells: Sequence[Cell]) -> Float[torch.Tensor, "cell vocab"]:
        """Readout logits of every cell, batched under the memory budget."""
        out = [None] * len(cells)
        todo = []
        for i, cell in enumerate(cells):
            if cell.suffix > self.readout:
                out[i] = self.clean_logits[0]  # an edit after the readout cannot reach it
            else:
                todo.append(i)
        groups: dict[int, list[int]] = defaultdict(list)
        for i in sorted(todo, key=lambda i: (cells[i].suffix, cells[i].start)):
            groups[cells[i].suffix].append(i)
        budget = self.max_tokens()
        for suffix, members in groups.items():
            per_row = self.n - suffix
            size = max(1, budget // per_row)
            for begin in range(0, len(members), size):
                batch = members[begin : begin + size]
                logits = self._run_batch([cells[i] for i in batch])
                for j, i in enumerate(batch):
                    out[i] = logits[j]
        return torch.stack(out) if out else torch.empty(0, self.clean_logits.shape[-1])

    @torch.no_grad()
    def _run_batch(self, cells: list[Cell]) -> torch.Tensor:
        """Cells sharing one suffix, sorted by start block: rows join the batch at their start block."""
        p = cells[0].suffix
        cache = _PrefixCache(self.prefix, p)
        order = sorted(range(len(cells)), key=lambda i: cells[i].start)
        row_of = {i: r for r, i in enumerate(order)}
        items, rows = [], []
        for i, cell in enumerate(cells):
            for item in cell.resolved:
                items.append(item)
                rows.append([(row_of[i], 0)])
        hooks = compile_hooks(items, Binding(rows), offset=p) if items else []
        first = cells[order[0]].start
        h = None
        handles = []
        try:
            for block in list(self.bridge.blocks)[first:]:
                if getattr(block, "attn", None) is not None:
                    handles.append(block.attn.register_forward_pre_hook(_attention_cache_alias, with_kwargs=True))
            with self.bridge.hooks(fwd_hooks=hooks):
                for layer in range(first, self.n_layers):
                    joining = [i for i in order if cells[i].start == layer]
                    if joining:
                        new = self.resid_pre[layer][p:].expand(len(joining), -1, -1)
                        h = new.clone() if h is None else torch.cat([h, new], 0)
                    kwargs = _slice_kwargs(self.layer_kwargs[layer], p, self.n, self.family)
                    kwargs[self.cache_names[layer]] = cache
                    if isinstance(kwargs.get("alibi"), torch.Tensor):  # BLOOM folds the batch into the heads axis
                        kwargs["alibi"] = kwargs["alibi"].repeat(h.shape[0], 1, 1)
                    out = self.bridge.blocks[layer](h, **kwargs)
                    h = out[0] if isinstance(out, tuple) else out
        finally:
            for handle in handles:
                handle.remove()
        if h is None:  # every cell starts after the last block: nothing to recompute
            h = self.resid_final[p:].expand(len(cells), -1, -1)
        logits = self.unembed(h[:, self.readout - p])
        return logits[[row_of[i] for i in range(len(cells))]]

    def unembed(self, h: Float[torch.Tensor, "batch d_model"]) -> Float[torch.Tensor, "batch vocab"]:
        """The model's final norm and unembedding on the readout position only (plus Gemma's soft-capping)."""
        logits = self.bridge.unembed(self.bridge.ln_final(h[:, None]))[:, 0].float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits
