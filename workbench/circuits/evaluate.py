"""Exact evaluation of circuits: the clean run with every edge outside the circuit carrying the corrupted value.

Each reader's input is recomputed as what the run gives it minus, for every writer whose edge into it is not in
the circuit, ``a_writer(this run) − a_writer(corrupted run)``: in-circuit edges carry this run's (clean-side)
writers, the others the corrupted prompt's. The residual stream is the sum of the writers (biases are the same
on both prompts), so the full circuit is the clean run and the empty circuit the corrupted one, exactly. Many
circuits ride the rows of one batched forward. Faithfulness is ``(m(C) − m(∅)) / (m(full) − m(∅))``; over a
curve of sizes, MIB's CPR is the area under faithfulness and CMD the area under ``|1 − faithfulness|``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from workbench.circuits.graph import READER_SITES, WRITER_SITES, Graph, split_inputs
from workbench.circuits.scores import writer_activations
from workbench.errors import CircuitError
from workbench.interventions.sites import SITES
from workbench.memory import rows_per_batch
from workbench.metrics import Metric
from workbench.tokens import align_prompts

SIZES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # fractions of the edges: MIB's 0.1 % … 100 %


def top_edges(scores: torch.Tensor, valid: torch.Tensor, n: int) -> torch.Tensor:
    """The circuit of the ``n`` edges of largest |score| (ties by position), as a ``[writers, readers]`` mask."""
    flat = torch.where(valid, scores.abs(), torch.full_like(scores, -1.0)).flatten()
    n = max(0, min(int(n), int(valid.sum())))
    circuit = torch.zeros_like(flat, dtype=torch.bool)
    if n:
        circuit[torch.topk(flat, n, sorted=False).indices] = True
    return circuit.reshape(scores.shape) & valid


def circuit_metrics(
    model, graph: Graph, circuits: torch.Tensor, prompt: str, source: str, metric: Metric, batch: int | None = None
) -> torch.Tensor:
    """The metric at the last position for each circuit ``circuits[c, writer, reader]`` (True: in the circuit)."""
    clean, corrupt = align_prompts(model, prompt, source)
    corrupted = writer_activations(model, graph, corrupt).float()  # [W, pos, d]
    reference = None
    if metric.needs_clean:  # a KL to the clean run's own distribution
        with torch.no_grad():
            reference = model.bridge(clean.to(model.device))[:, -1]
    rows = batch or _rows(model, graph, clean.shape[-1])
    out = []
    for start in range(0, circuits.shape[0], rows):
        chunk = circuits[start : start + rows]
        logits = _patched_run(model, graph, clean, corrupted, chunk)
        out.append(metric(logits, None if reference is None else reference.expand_as(logits)).double().cpu())
    return torch.cat(out)


def _rows(model, graph: Graph, n_pos: int) -> int:
    facts = model.facts
    # a row's slice of the change buffer, its activations through a block (a few copies) and its readout
    per_row = 4 * n_pos * (len(graph.writers) + 16) * facts.d_model + 4 * facts.d_vocab
    return rows_per_batch(per_row, model.device, cap=64)


@torch.no_grad()
def _patched_run(model, graph: Graph, clean, corrupted, circuits) -> torch.Tensor:
    """One batched forward, a row per circuit: the readout logits ``[circuits, vocab]``.

    Each writer's change from the corrupted run is written into one buffer ``[rows, writers, pos, d]`` as the
    writer fires; writers come in graph order, so a reader's upstream writers are a prefix of that buffer and its
    correction is one contraction with its out-of-circuit mask."""
    rows = circuits.shape[0]
    n_pos = clean.shape[-1]
    change = torch.zeros(rows, len(graph.writers), n_pos, corrupted.shape[-1], dtype=corrupted.dtype)
    out_of = (~circuits & graph.valid).to(corrupted.dtype)  # [rows, W, R]: edges that carry the corrupted value
    hooks = []
    for kind, site in WRITER_SITES.items():
        for block in [0] if kind == "input" else range(graph.n_layers):
            hooks.append((SITES[site].hook_name(block), _recorder(graph, change, corrupted, kind, block)))
    for kind, site in READER_SITES.items():
        for block in [graph.n_layers - 1] if kind == "logits" else range(graph.n_layers):
            readers = [
                i for i, r in enumerate(graph.readers) if r.kind == kind and (kind == "logits" or r.block == block)
            ]
            upstream = int(graph.valid[:, readers].any(-1).nonzero().max()) + 1  # a prefix, in graph order
            hooks.append((SITES[site].hook_name(block), _corrector(change, out_of, readers, upstream, kind)))
    with split_inputs(model), model.bridge.hooks(fwd_hooks=hooks):
        logits = model.bridge(clean.to(model.device).expand(rows, -1))
    return logits[:, -1].float()


def _writer_slots(graph: Graph, kind: str, block: int) -> slice:
    """Where a writer site's activations go in the graph's writer order."""
    if kind == "input":
        return slice(0, 1)
    first = 1 + block * (graph.n_heads + 1)
    return (
        slice(first, first + graph.n_heads)
        if kind == "head"
        else slice(first + graph.n_heads, first + graph.n_heads + 1)
    )


def _recorder(graph: Graph, change: torch.Tensor, corrupted: torch.Tensor, kind: str, block: int):
    slots = _writer_slots(graph, kind, block)

    def hook(act, hook=None):
        current = act.movedim(-2, 1) if kind == "head" else act[:, None]  # [rows, writers here, pos, d]
        change[:, slots] = current.to(change) - corrupted[slots]

    return hook


def _corrector(change: torch.Tensor, out_of: torch.Tensor, readers: list[int], upstream: int, kind: str):
    """The hook that subtracts, from each of ``readers``' inputs, the out-of-circuit writers' change."""

    def hook(act, hook=None):
        mask = out_of[:, :upstream, readers].transpose(1, 2)  # [rows, V, U]
        rows, _, n_pos, d = change.shape
        # one batched matrix product over a contiguous prefix of the buffer (no copy of the writers' changes)
        correction = torch.bmm(mask, change[:, :upstream].reshape(rows, upstream, n_pos * d))
        correction = correction.view(rows, len(readers), n_pos, d).transpose(1, 2).to(act)  # [rows, pos, V, d]
        if kind in ("q", "k", "v"):
            return act - correction  # [rows, pos, heads, d]
        return act - correction[:, :, 0]

    return hook


@dataclass
class Curve:
    """Faithfulness per circuit size (fraction 0 is the empty circuit), with MIB's CPR and CMD areas."""

    fractions: list[float]
    edges: list[int]
    faithfulness: list[float]
    metric_values: list[float]
    clean: float
    corrupted: float

    @property
    def cpr(self) -> float:
        return float(np.trapezoid(self.faithfulness, self.fractions))

    @property
    def cmd(self) -> float:
        return float(np.trapezoid(np.abs(1 - np.asarray(self.faithfulness)), self.fractions))

    def to_dict(self) -> dict:
        points = [
            {"fraction": f, "edges": n, "faithfulness": x, "metric": m}
            for f, n, x, m in zip(self.fractions, self.edges, self.faithfulness, self.metric_values, strict=True)
        ]
        return {"curve": points, "cpr": self.cpr, "cmd": self.cmd, "clean": self.clean, "corrupted": self.corrupted}


def faithfulness_curve(
    model,
    graph: Graph,
    scores: torch.Tensor,
    prompt: str,
    source: str,
    metric: Metric,
    sizes: Sequence[float] = SIZES,
) -> Curve:
    """Exact faithfulness of the top-scoring circuits at each size (fractions of the edges), batched."""
    fractions = [0.0, *sorted({float(s) for s in sizes})]
    if any(not 0 <= f <= 1 for f in fractions):
        raise CircuitError(f"Circuit sizes are fractions of the edges, from 0 to 1: got {list(sizes)}.")
    counts = [int(round(f * graph.n_edges)) for f in fractions]
    full = graph.valid.clone()
    circuits = torch.stack([top_edges(scores, graph.valid, n) for n in counts] + [full])
    values = circuit_metrics(model, graph, circuits, prompt, source, metric)
    empty, clean = float(values[0]), float(values[-1])
    span = clean - empty
    if span == 0 or not np.isfinite(span):
        raise CircuitError(
            "The clean and corrupted prompts give the same metric: there is nothing for a circuit to recover; "
            "pick a source prompt that changes the answer."
        )
    faith = [(float(v) - empty) / span for v in values[:-1]]
    return Curve(fractions, counts, faith, [float(v) for v in values[:-1]], clean, empty)


def dataset_curve(
    model,
    graph: Graph,
    scores: torch.Tensor,
    prompts: Sequence[str],
    sources: Sequence[str],
    metric: Metric,
    sizes: Sequence[float] = SIZES,
    resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """The faithfulness curve over (prompt, source) pairs: at each size the ratio of the mean metric recovered,
    ``(mean m(C) − mean m(∅)) / (mean m(full) − mean m(∅))``, with a 95% percentile bootstrap interval over pairs
    (one pair: no interval). The same circuits (the top edges of ``scores``) on every pair."""
    fractions = [0.0, *sorted({float(s) for s in sizes})]
    if any(not 0 <= f <= 1 for f in fractions):
        raise CircuitError(f"Circuit sizes are fractions of the edges, from 0 to 1: got {list(sizes)}.")
    counts = [int(round(f * graph.n_edges)) for f in fractions]
    circuits = torch.stack([top_edges(scores, graph.valid, n) for n in counts] + [graph.valid.clone()])
    values = np.stack(
        [circuit_metrics(model, graph, circuits, p, s, metric).numpy() for p, s in zip(prompts, sources, strict=True)]
    )  # [pairs, sizes + 1]: the last column is the full circuit, the first the empty one

    def ratio(rows: np.ndarray) -> np.ndarray:
        mean = rows.mean(0)
        span = mean[-1] - mean[0]
        return (mean[:-1] - mean[0]) / span if span != 0 else np.full(len(mean) - 1, np.nan)

    point = ratio(values)
    if not np.isfinite(point).all():
        raise CircuitError(
            "The clean and corrupted prompts give the same mean metric: there is nothing for a circuit to recover; "
            "pick source prompts that change the answer."
        )
    curve = [
        {"fraction": f, "edges": n, "faithfulness": float(x)} for f, n, x in zip(fractions, counts, point, strict=True)
    ]
    if len(values) > 1:
        rng = np.random.default_rng(seed)
        draws = np.stack([ratio(values[rng.integers(0, len(values), len(values))]) for _ in range(resamples)])
        low, high = np.nanpercentile(draws, [2.5, 97.5], axis=0)
        for row, lo, hi in zip(curve, low, high, strict=True):
            row["ci_low"], row["ci_high"] = float(lo), float(hi)
    faith = [row["faithfulness"] for row in curve]
    return {
        "curve": curve,
        "cpr": float(np.trapezoid(faith, fractions)),
        "cmd": float(np.trapezoid(np.abs(1 - np.asarray(faith)), fractions)),
        "pairs": len(values),
        "clean": float(values[:, -1].mean()),
        "corrupted": float(values[:, 0].mean()),
    }
