"""Path patching: how much of a sender's effect reaches the answer through one receiver only.

A *sender* (the embeddings ``input``, a head ``a{i}.h{h}``, an MLP ``m{i}``) is patched from a source prompt
while everything else stays at its clean value, and only one *receiver* sees the change: the logits, an MLP's
input (``m{j}``) or a head's query, key or value input (``a{j}.h{h}<q>``; keys and values belong to the
key/value head, ``a{j}.kv{g}<k>`` under grouped-query attention). The residual stream is a sum of writes, so
with every other writer frozen the receiver's input is the clean residual plus the sender's change ``Δ``:

1. ``Δ`` = the sender's write with the source's activation minus its clean write (a head's ``z`` through the
   output projection and any post-attention norm, with the block's other heads at clean; an MLP's output; the
   embeddings);
2. the receiver's new activation is computed from ``clean + Δ`` at its block (its q/k/v, or its MLP's output);
3. the model runs clean with only that activation replaced, downstream free, and the metric is read.

For the logits step 2 and 3 are the readout of the final residual plus ``Δ``. Rows are batched: one row per
(sender, receiver block) computes step 2 for every receiver of that block at once, one row per pair step 3.
Names follow the EAP-IG library, as the circuit files do.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from workbench import plots
from workbench.attribution.linear import post_norm
from workbench.errors import AttributionError
from workbench.interventions.sites import SITES
from workbench.memory import rows_per_batch
from workbench.metrics import Metric, resolve_metric
from workbench.models import load_model
from workbench.reads import Read, capture
from workbench.results import Named, Result
from workbench.tokens import align_prompts, resolve_readout

_SENDER = re.compile(r"^(input|a(\d+)\.h(\d+)|m(\d+))$")
_RECEIVER = re.compile(r"^(logits|m(\d+)|a(\d+)\.(h|kv)(\d+)<([qkv])>)$")


@dataclass(frozen=True)
class Node:
    """A sender or receiver: ``kind`` is input, head, mlp or logits; ``part`` q/k/v for a head's input."""

    name: str
    kind: str
    block: int | None = None
    head: int | None = None  # a query head, or the key/value head for k/v receivers
    part: str | None = None


def sender(model, name: str) -> Node:
    match = _SENDER.match(name.strip())
    if not match:
        raise AttributionError(f"Unknown sender {name!r}: write input, a{{block}}.h{{head}} or m{{block}}.")
    if match.group(1) == "input":
        return Node("input", "input")
    if match.group(2) is not None:
        block, head = int(match.group(2)), int(match.group(3))
        _check(model, block, head, model.facts.n_heads, "query head", name)
        return Node(name, "head", block, head)
    block = int(match.group(4))
    _check(model, block, None, 0, "", name)
    return Node(name, "mlp", block)


def receiver(model, name: str) -> Node:
    match = _RECEIVER.match(name.strip())
    if not match:
        raise AttributionError(
            f"Unknown receiver {name!r}: write logits, m{{block}} (an MLP's input), a{{block}}.h{{head}}<q> or, "
            "for keys and values, a{block}.kv{group}<k> / <v> (a{block}.h{head}<k> without grouped-query attention)."
        )
    if match.group(1) == "logits":
        return Node("logits", "logits")
    if match.group(2) is not None:
        block = int(match.group(2))
        _check(model, block, None, 0, "", name)
        return Node(name, "mlp", block)
    block, unit, head, part = int(match.group(3)), match.group(4), int(match.group(5)), match.group(6)
    grouped = model.facts.n_kv_heads != model.facts.n_heads
    if part == "q" and unit == "kv":
        raise AttributionError(f"{name}: queries belong to query heads; write a{block}.h{head}<q>.")
    if part in "kv" and unit == "h" and grouped:
        group = model.facts.head_to_group[head] if head < model.facts.n_heads else head
        raise AttributionError(
            f"{name}: under grouped-query attention keys and values belong to the key/value head; "
            f"write a{block}.kv{group}<{part}>."
        )
    count = model.facts.n_heads if part == "q" or not grouped else model.facts.n_kv_heads
    _check(model, block, head, count, "query head" if part == "q" or not grouped else "key/value head", name)
    return Node(name, "head", block, head, part)


def _check(model, block: int, head: int | None, count: int, what: str, name: str) -> None:
    n = model.facts.n_layers
    if not 0 <= block < n:
        raise AttributionError(f"{name}: block {block} does not exist ({model.facts.name} has blocks 0 to {n - 1}).")
    if head is not None and not 0 <= head < count:
        raise AttributionError(f"{name}: {what} {head} does not exist (block {block} has {count}).")


def all_senders(model) -> list[str]:
    facts = model.facts
    heads = [f"a{b}.h{h}" for b in range(facts.n_layers) for h in range(facts.n_heads)]
    return ["input", *heads, *(f"m{b}" for b in range(facts.n_layers))]


def reaches(model, s: Node, r: Node) -> bool:
    """Whether the receiver reads what the sender wrote (it comes later in the residual stream)."""
    if r.kind == "logits" or s.kind == "input":
        return True
    assert s.block is not None and r.block is not None
    if r.kind == "mlp" and s.kind == "head" and not model.facts.parallel_blocks:
        return r.block >= s.block  # a sequential block's MLP reads its own attention's output
    return r.block > s.block


@dataclass(repr=False)
class PathPatchingResult(Result):
    """``effect[sender, receiver]``: the metric's change when only that path carries the source's value
    (NaN where the receiver does not read the sender)."""

    kind = "path_patching"

    def summary(self) -> str:
        effect = self["effect"].numpy()
        finite = np.where(np.isfinite(effect), np.abs(effect), -1)
        i, j = np.unravel_index(int(np.argmax(finite)), effect.shape)
        s, r = self["effect"].coords["sender"][i], self["effect"].coords["receiver"][j]
        return f"path patching of {self.meta['metric']} on {self.model}: largest {s} → {r} {effect[i, j]:+.4f}"

    def figure(self, **_: Any):
        effect = self["effect"]
        return plots.heatmap(
            effect.numpy().T,
            x=list(effect.coords["sender"]),
            y=list(effect.coords["receiver"]),
            colorbar=f"Δ {self.meta['metric']}",
            diverging=True,
            title=f"Path patching from the source prompt: {self.meta['metric']} ({self.model})",
            x_title="sender",
            y_title="receiver",
        )


@torch.no_grad()
def path_patching(
    model,
    prompt: str,
    source: str,
    *,
    senders: Sequence[str] | None = None,
    receivers: Sequence[str] = ("logits",),
    metric: str | Metric = "logit_diff:1,5",
    readout: int = -1,
    batch_size: int | None = None,
) -> PathPatchingResult:
    """The effect of each sender → receiver path (see the module docstring); ``senders`` default to every head,
    MLP and the embeddings. ``batch_size`` bounds the rows of one forward (default: from the memory budget)."""
    model = load_model(model)
    send = [sender(model, name) for name in (senders if senders is not None else all_senders(model))]
    recv = [receiver(model, name) for name in receivers]
    if not send or not recv:
        raise AttributionError("Path patching needs at least one sender and one receiver.")
    metric_fn = resolve_metric(model, metric)
    clean_tokens, source_tokens = align_prompts(model, prompt, source)
    readout = resolve_readout(clean_tokens.shape[-1], readout)
    n_pos = clean_tokens.shape[-1]
    batch = batch_size or _rows_per_batch(model, n_pos)
    clean, clean_logits = _cache(model, clean_tokens)
    corrupt, _ = _cache(model, source_tokens)
    deltas = torch.stack([_delta(model, s, clean, corrupt) for s in send])  # [sender, pos, d_model]
    base = metric_fn(clean_logits[:, readout], clean_logits[:, readout])
    effect = torch.full((len(send), len(recv)), float("nan"), dtype=torch.float64)
    for j, r in enumerate(recv):
        rows = [i for i, s in enumerate(send) if reaches(model, s, r)]
        if not rows:
            continue
        if r.kind == "logits":
            final = clean[("resid_post", model.facts.n_layers - 1)][0, readout]
            logits = model.unembed(final + deltas[rows, readout])
        else:
            logits = _through_receiver(model, clean_tokens, deltas[rows], r, readout, batch)
        effect[rows, j] = (metric_fn(logits, clean_logits[:, readout]) - base).double().cpu()
    names = [s.name for s in send]
    return PathPatchingResult(
        probe="path_patching",
        model=model.facts.name,
        prompts=[prompt, source],
        arrays={
            "effect": Named(
                effect.numpy(),
                ("sender", "receiver"),
                {"sender": names, "receiver": [r.name for r in recv]},
            )
        },
        meta={"metric": metric_fn.name, "readout": readout, "clean_metric": float(base[0]), "source": source},
    )


_READ_SITES = ("resid_pre", "resid_post", "attn_out", "mlp_out", "z", "attn_proj_out")


def _cache(model, tokens: torch.Tensor) -> tuple[dict, torch.Tensor]:
    blocks = tuple(range(model.facts.n_layers))
    with torch.no_grad():
        cache, logits = capture(model, tokens, [Read(site, blocks) for site in _READ_SITES])
    return cache, logits.detach()


def _attn_write(model, block: int, z: torch.Tensor) -> torch.Tensor:
    """What block ``block``'s attention writes for ``z`` ``[rows, pos, heads, d_head]``: the output projection
    and, on Gemma 2/3 and OLMo 2, the post-attention norm."""
    attn = model.bridge.blocks[block].attn
    o = getattr(attn.o, "_original_component", attn.o)
    out = o(z.flatten(-2))
    post = post_norm(model.bridge, block, "attn")
    return post(out) if post is not None else out


@torch.no_grad()
def _delta(model, s: Node, clean: dict, corrupt: dict) -> torch.Tensor:
    """The sender's write with the source's activation minus its clean write, ``[pos, d_model]``."""
    if s.kind == "input":
        return (corrupt[("resid_pre", 0)] - clean[("resid_pre", 0)])[0]
    if s.kind == "mlp":
        return (corrupt[("mlp_out", s.block)] - clean[("mlp_out", s.block)])[0]
    assert s.block is not None and s.head is not None
    z = clean[("z", s.block)].clone()
    z[:, :, s.head] = corrupt[("z", s.block)][:, :, s.head]
    return (_attn_write(model, s.block, z) - _attn_write(model, s.block, clean[("z", s.block)]))[0]


def _rows_per_batch(model, n_pos: int) -> int:
    facts = model.facts
    per_row = 4 * n_pos * (facts.d_model * 8 + facts.d_vocab)  # a row's activations and logits, float32
    return rows_per_batch(per_row, model.device, cap=256)


def _through_receiver(model, tokens, deltas, r: Node, readout: int, batch: int) -> torch.Tensor:
    """Steps 2 and 3 for one receiver, ``deltas`` ``[rows, pos, d]``: the readout logits ``[rows, vocab]``."""
    out = []
    for start in range(0, deltas.shape[0], batch):
        chunk = deltas[start : start + batch]
        new = _receiver_activation(model, tokens, chunk, r)
        out.append(_run_with(model, tokens, r, new)[:, readout])
    return torch.cat(out)


def _receiver_site(model, r: Node) -> tuple[str, str]:
    """(where Δ enters, what the receiver is): a head's input is its block's residual stream; an MLP's input is
    the stream after its block's attention (entered through attn_out), or the block's input when blocks are
    parallel."""
    if r.kind == "mlp":
        return ("resid_pre" if model.facts.parallel_blocks else "attn_out", "mlp_out")
    return "resid_pre", str(r.part)


@torch.no_grad()
def _receiver_activation(model, tokens, deltas, r: Node) -> torch.Tensor:
    """Step 2: the receiver's activation with ``clean + Δ`` at its input, one row per Δ."""
    assert r.block is not None
    entry, site = _receiver_site(model, r)
    rows = tokens.expand(deltas.shape[0], -1).to(model.device)
    add = [(SITES[entry].hook_name(r.block), lambda act, hook=None: act + deltas.to(act))]
    cache: dict = {}

    def keep(act, hook=None):
        cache["x"] = act.detach().clone()
        raise _Stop  # nothing after the receiver's block is needed

    try:
        with model.bridge.hooks(fwd_hooks=[*add, (SITES[site].hook_name(r.block), keep)]):
            model.bridge(rows)
    except _Stop:
        pass
    return cache["x"]


class _Stop(Exception):
    """Ends a forward once the receiver's activation is kept (the hooks context removes every hook)."""


@torch.no_grad()
def _run_with(model, tokens, r: Node, new: torch.Tensor) -> torch.Tensor:
    """Step 3: the clean run with only the receiver's activation replaced (one head's, for q/k/v)."""
    assert r.block is not None
    _, site = _receiver_site(model, r)
    rows = tokens.expand(new.shape[0], -1).to(model.device)

    def replace(act, hook=None):
        act = act.clone()
        if r.kind == "mlp":
            return new.to(act)
        act[:, :, r.head] = new[:, :, r.head].to(act)
        return act

    with model.bridge.hooks(fwd_hooks=[(SITES[site].hook_name(r.block), replace)]):
        return model.bridge(rows).detach()
