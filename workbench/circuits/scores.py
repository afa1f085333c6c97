"""Edge scores: edge attribution patching (EAP) and EAP with integrated gradients (EAP-IG, Hanna et al. 2024).

The score of an edge u → v is ``Σ_pos Δa_u · ∂m/∂(input of v)``: the writer's activation difference between
the two prompts dotted with the gradient of the metric at the reader's own copy of its input. Two conventions:

- ``noising`` (the EAP-IG library's): gradients on the clean run, ``Δa = a_corrupt − a_clean`` — the first-order
  effect of corrupting the edge;
- ``denoising`` (TransformerLens'): gradients on the corrupted run, ``Δa = a_clean − a_corrupt`` — the effect of
  moving the writer toward clean.

``eap`` takes the gradient at that one run; ``eap-ig-inputs`` averages it over ``steps`` points on the straight
line from that run's input embeddings to the other prompt's (``t = k / steps``, k = 0 … steps − 1, so one step is
EAP). Scores are averaged over prompt pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from workbench.circuits.graph import READER_SITES, WRITER_SITES, Graph, build_graph, split_inputs
from workbench.errors import CircuitError
from workbench.interventions.sites import SITES
from workbench.metrics import Metric, resolve_metric
from workbench.models import load_model
from workbench.reads import Read, capture
from workbench.tokens import align_prompts

METHODS = ("eap", "eap-ig-inputs")
CONVENTIONS = ("noising", "denoising")


@dataclass
class EdgeScores:
    """``scores[writer, reader]`` (0 where there is no edge), with how they were computed."""

    graph: Graph
    scores: torch.Tensor  # [writers, readers] float64
    method: str
    steps: int
    convention: str
    metric: str
    pairs: int


def writer_activations(model, graph: Graph, tokens: torch.Tensor) -> torch.Tensor:
    """Every writer's activation ``[writers, pos, d_model]`` for one prompt (batch of 1), in the graph's order."""
    blocks = tuple(range(graph.n_layers))
    reads = [Read(WRITER_SITES["input"], (0,)), Read(WRITER_SITES["head"], blocks), Read(WRITER_SITES["mlp"], blocks)]
    with torch.no_grad(), split_inputs(model):
        cache, _ = capture(model, tokens, reads)
    parts = [cache[(WRITER_SITES["input"], 0)][0, None]]
    for block in blocks:
        parts.append(cache[(WRITER_SITES["head"], block)][0].movedim(-2, 0))  # [pos, head, d] -> [head, pos, d]
        parts.append(cache[(WRITER_SITES["mlp"], block)][0, None])
    return torch.cat(parts).double()


def reader_gradients(
    model,
    graph: Graph,
    tokens: torch.Tensor,
    metric: Metric,
    reference: torch.Tensor | None,
    embeddings: torch.Tensor | None = None,
) -> torch.Tensor:
    """``∂metric/∂(input of each reader)`` ``[readers, pos, d_model]`` for one prompt; ``embeddings`` (the residual
    stream entering block 0) replaces the prompt's own, for integrated gradients."""
    inputs: dict[tuple[str, int], torch.Tensor] = {}

    def keep(key):
        def hook(act, hook=None):
            # A copy that only the reader sees: the MLP's input hook hands on the residual stream itself, whose
            # gradient would include the skip connection around the MLP.
            act = act.clone()
            act.retain_grad()
            inputs[key] = act
            return act

        return hook

    def start(act, hook=None):
        # The stream entering block 0 as a leaf that needs gradients, so every reader's copy is on the graph even
        # when the weights are frozen; for integrated gradients, the interpolated embeddings.
        return (act if embeddings is None else embeddings.to(act)).detach().clone().requires_grad_(True)

    hooks = [(SITES["resid_pre"].hook_name(0), start)]
    for kind, site in READER_SITES.items():
        blocks = [graph.n_layers - 1] if kind == "logits" else range(graph.n_layers)
        hooks += [(SITES[site].hook_name(block), keep((kind, block))) for block in blocks]
    with torch.enable_grad(), split_inputs(model), model.bridge.hooks(fwd_hooks=hooks):
        logits = model.bridge(tokens.to(model.device))
        value = metric(logits[:, -1], reference).sum()
        value.backward()
    model.bridge.zero_grad(set_to_none=True)
    rows = []
    for r in graph.readers:
        key = ("logits", graph.n_layers - 1) if r.kind == "logits" else (r.kind, r.block)
        grad = inputs[key].grad
        if grad is None:
            raise CircuitError(f"The metric does not depend on {r.name}: no gradient reached it.")
        grad = grad[0].double()
        rows.append(grad[:, r.head] if r.head is not None else grad)
    return torch.stack(rows)


def edge_scores(
    model,
    prompts: str | Sequence[str],
    sources: str | Sequence[str],
    metric: str | Metric,
    *,
    method: str = "eap-ig-inputs",
    steps: int = 5,
    convention: str = "noising",
    progress: bool = False,
) -> EdgeScores:
    """EAP or EAP-IG scores of every edge, averaged over the (prompt, source) pairs (see the module docstring)."""
    model = load_model(model)
    if method not in METHODS:
        raise CircuitError(f"Unknown method {method!r}: use one of {', '.join(METHODS)}.")
    if convention not in CONVENTIONS:
        raise CircuitError(f"Unknown convention {convention!r}: use noising or denoising.")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1000:
        raise CircuitError(f"steps={steps!r}: pass a whole number from 1 to 1000 (5 is the paper's default).")
    prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
    source_list = [sources] if isinstance(sources, str) else list(sources)
    if len(source_list) != len(prompt_list) or not prompt_list:
        raise CircuitError(f"{len(prompt_list)} prompts and {len(source_list)} sources: pass one source per prompt.")
    graph = build_graph(model)
    metric_fn = resolve_metric(model, metric)
    pairs = [align_prompts(model, p, s) for p, s in zip(prompt_list, source_list, strict=True)]
    total = torch.zeros(len(graph.writers), len(graph.readers), dtype=torch.float64)
    steps = 1 if method == "eap" else steps
    for clean, corrupt in tqdm(pairs, desc="edge scores", unit="pair", disable=not progress):
        total += _pair_scores(model, graph, clean, corrupt, metric_fn, steps, convention)
    scores = torch.where(graph.valid, total / len(pairs), torch.zeros_like(total))
    return EdgeScores(graph, scores, method, steps, convention, metric_fn.name, len(pairs))


def _pair_scores(model, graph, clean, corrupt, metric_fn, steps: int, convention: str) -> torch.Tensor:
    base, other = (clean, corrupt) if convention == "noising" else (corrupt, clean)
    reference = None
    if metric_fn.needs_clean:  # what a KL compares with: the clean run
        with torch.no_grad():
            reference = model.bridge(clean.to(model.device))[:, -1].detach()
    at_base, at_other = writer_activations(model, graph, base), writer_activations(model, graph, other)
    delta = at_other - at_base  # [W, pos, d]
    if steps == 1:
        grads = reader_gradients(model, graph, base, metric_fn, reference)
    else:
        start, end = at_base[:1].float(), at_other[:1].float()  # the writer "input": the stream entering block 0
        grads = torch.zeros(len(graph.readers), *delta.shape[1:], dtype=torch.float64)
        for k in range(steps):
            grads += reader_gradients(model, graph, base, metric_fn, reference, start + (k / steps) * (end - start))
        grads /= steps
    return torch.einsum("wpd,rpd->wr", delta, grads)
