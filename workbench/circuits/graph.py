"""The computation graph of a circuit: writers into the residual stream, readers of it, and the edges between.

Writers: ``input`` (the embeddings), every query head ``a{l}.h{h}`` (its own write, ``attn.hook_result``), every
MLP ``m{l}``. Readers: every head's query input ``a{l}.h{h}<q>``; its key and value inputs — which under
grouped-query attention belong to the key/value head, so the reader is ``a{l}.kv{g}<k>`` / ``<v>`` and the edge
into it is one edge per key/value head (without it, ``a{l}.h{h}<k>``); every MLP's input ``m{l}``; the
``logits``. An edge joins a writer to every reader after it in the residual stream: a head feeds the next
blocks' readers and, in a sequential block, its own block's MLP; an MLP feeds the next blocks. Names follow the
EAP-IG library. The hooks are TransformerLens' split q/k/v inputs and MLP input, so each reader's input is its
own copy of the residual stream and can be read (gradients) and rewritten (exact evaluation) alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from workbench.errors import CircuitError


@dataclass(frozen=True)
class Reader:
    name: str
    kind: str  # q, k, v, mlp or logits
    block: int  # the logits read after the last block: n_layers
    head: int | None = None  # query head for q; key/value head for k/v


@dataclass
class Graph:
    """Writers, readers and which edges exist (``valid[writer, reader]``), for one model."""

    writers: list[str]
    readers: list[Reader]
    valid: torch.Tensor  # [writers, readers] bool
    writer_block: list[int]  # -1 for input
    n_layers: int
    n_heads: int
    n_kv_heads: int

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    def edge_names(self) -> list[tuple[str, str]]:
        """Every edge as (writer, reader) names, in the order of ``valid.nonzero()``."""
        return [(self.writers[u], self.readers[v].name) for u, v in self.valid.nonzero().tolist()]

    def reader_index(self, name: str) -> int:
        for i, r in enumerate(self.readers):
            if r.name == name:
                return i
        raise CircuitError(f"No reader {name!r} in this graph: readers are named like a2.h1<q>, m3, logits.")

    def writer_index(self, name: str) -> int:
        try:
            return self.writers.index(name)
        except ValueError:
            raise CircuitError(f"No writer {name!r} in this graph: writers are input, a{{l}}.h{{h}}, m{{l}}.") from None


def build_graph(model) -> Graph:
    """The graph of ``model`` (see the module docstring); refused in one line where the residual stream is not
    a sum of per-head writes (post-attention norms) or an MLP's input cannot be read alone."""
    facts = model.facts
    _check_supported(model)
    n, h, g = facts.n_layers, facts.n_heads, facts.n_kv_heads
    grouped = g != h
    writers = ["input"]
    writer_block = [-1]
    for layer in range(n):
        writers += [f"a{layer}.h{i}" for i in range(h)]
        writer_block += [layer] * h
        writers.append(f"m{layer}")
        writer_block.append(layer)
    readers: list[Reader] = []
    for layer in range(n):
        readers += [Reader(f"a{layer}.h{i}<q>", "q", layer, i) for i in range(h)]
        for part in ("k", "v"):
            unit = "kv" if grouped else "h"
            readers += [Reader(f"a{layer}.{unit}{i}<{part}>", part, layer, i) for i in range(g)]
        readers.append(Reader(f"m{layer}", "mlp", layer))
    readers.append(Reader("logits", "logits", n))
    valid = torch.zeros(len(writers), len(readers), dtype=torch.bool)
    for u, (name, block) in enumerate(zip(writers, writer_block, strict=True)):
        for v, r in enumerate(readers):
            valid[u, v] = _feeds(name, block, r, facts.parallel_blocks)
    return Graph(writers, readers, valid, writer_block, n, h, g)


def _feeds(writer: str, block: int, reader: Reader, parallel: bool) -> bool:
    if reader.kind == "logits" or writer == "input":
        return True
    if reader.kind == "mlp" and writer.startswith("a") and not parallel:
        return reader.block >= block  # a sequential block's MLP reads its own attention's output
    return reader.block > block


def _check_supported(model) -> None:
    """One short forward with the split hooks on: each head's write must add up to its block's attention output,
    and the MLP's own input must be read (TransformerLens gives some parallel-block families none)."""
    from workbench.interventions.sites import SITES

    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        return lambda act, hook=None: seen.__setitem__(name, act.detach())

    hooks = [(SITES[site].hook_name(0), keep(site)) for site in ("attn_result", "attn_out", "mlp_in")]
    tokens = model.to_tokens("The number is 7")
    with torch.no_grad(), split_inputs(model), model.bridge.hooks(fwd_hooks=hooks):
        model.bridge(tokens)
    family = f"{model.facts.name} ({model.facts.architecture})"
    heads, written = seen.get("attn_result"), seen.get("attn_out")
    if heads is None or written is None or not torch.allclose(heads.sum(-2), written, rtol=1e-4, atol=1e-5):
        raise CircuitError(
            f"{family} normalises or scales each block's attention output before adding it to the residual stream, "
            "so a head's write is not its own edge: circuits need a pre-norm family (Llama, Qwen, Mistral, GPT-2, "
            "Pythia, ...)."
        )
    if "mlp_in" not in seen:
        raise CircuitError(
            f"TransformerLens gives {family} no separate MLP input, so edges into its MLPs cannot be read alone: "
            "circuits need a family that has one (its MLP reads the block's input alongside attention)."
        )


@contextlib.contextmanager
def split_inputs(model) -> Iterator[None]:
    """TransformerLens' per-head outputs and per-reader input copies, on for the block and restored after."""
    bridge = model.bridge
    cfg = bridge.cfg
    before = (
        getattr(cfg, "use_attn_result", False),
        getattr(cfg, "use_split_qkv_input", False),
        getattr(cfg, "use_hook_mlp_in", False),
    )
    try:
        bridge.set_use_attn_result(True)
        bridge.set_use_split_qkv_input(True)
        bridge.set_use_hook_mlp_in(True)
    except NotImplementedError as exc:  # TransformerLens runs this family's attention whole
        bridge.set_use_attn_result(before[0])
        raise CircuitError(
            f"TransformerLens cannot split {model.facts.name}'s attention into heads ({str(exc).split(':')[0]}): "
            "circuits need a family the matrix in docs/models.md marks for attention edits."
        ) from None
    try:
        yield
    finally:
        bridge.set_use_attn_result(before[0])
        bridge.set_use_split_qkv_input(before[1])
        bridge.set_use_hook_mlp_in(before[2])


# What each writer and reader is on the bridge, as sites of the site table (the logits read the last block's output).
WRITER_SITES = {"input": "resid_pre", "head": "attn_result", "mlp": "mlp_out"}
READER_SITES = {"q": "q_input", "k": "k_input", "v": "v_input", "mlp": "mlp_in", "logits": "resid_post"}
