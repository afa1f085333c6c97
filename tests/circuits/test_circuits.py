"""Circuits: EAP edge scores equal TransformerLens' own edge attribution (where it runs), circuits are evaluated
exactly (the full circuit is the clean run, the empty one the corrupted run, one missing edge equals path
patching of that edge computed another way), batched equals one at a time, and bad requests are one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from workbench.attribution.path import path_patching
from workbench.circuits.evaluate import circuit_metrics, dataset_curve, faithfulness_curve
from workbench.circuits.graph import build_graph
from workbench.circuits.scores import edge_scores
from workbench.errors import CircuitError
from workbench.metrics import resolve_metric
from workbench.models import load_model

PROMPT = "I'm generating a random number between [0, 9]. The number is "
SOURCE = PROMPT.replace("9]", "5]")
METRIC = "logit_diff:9,5"


def tl_edge_scores(model):
    """TransformerLens 4.3's edge EAP (denoising), summed over positions, keyed by the workbench's edge names."""
    from transformer_lens.tools.analysis.attribution_patching import EdgeAttributionConfig, attribution_patch

    metric = resolve_metric(model, METRIC)
    result = attribution_patch(
        model.bridge,
        model.to_tokens(PROMPT),
        model.to_tokens(SOURCE),
        lambda logits: metric(logits[:, -1])[0],
        EdgeAttributionConfig(granularity="edge"),
    )

    def writer(n):
        return "input" if n.kind == "embed" else f"a{n.layer}.h{n.head}" if n.kind == "attn_head_out" else f"m{n.layer}"

    def reader(n):
        if n.kind in ("q_input", "k_input", "v_input"):
            return f"a{n.layer}.h{n.head}<{n.kind[0]}>"
        return f"m{n.layer}" if n.kind == "mlp_in" else "logits"

    totals: dict[tuple[str, str], float] = {}
    for (u, v), score in result.edge_scores.items():
        totals[(writer(u), reader(v))] = totals.get((writer(u), reader(v)), 0.0) + score
    return totals


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-gpt_neox"])
def test_eap_equals_transformerlens_edge_attribution(name):
    model = load_model(name)
    ours = edge_scores(model, PROMPT, SOURCE, METRIC, method="eap", convention="denoising")
    theirs = tl_edge_scores(model)
    graph = ours.graph
    assert len(theirs) == graph.n_edges
    largest = max(abs(v) for v in theirs.values())
    for (u, v), score in theirs.items():
        # both are float32 forward/backward passes of the same model: agreement to ~1e-7 of the largest score
        assert float(ours.scores[graph.writer_index(u), graph.reader_index(v)]) == pytest.approx(
            score, abs=1e-4 * largest
        ), (u, v)


def test_one_step_of_integrated_gradients_is_eap(tiny_llama):
    eap = edge_scores(tiny_llama, PROMPT, SOURCE, METRIC, method="eap")
    one = edge_scores(tiny_llama, PROMPT, SOURCE, METRIC, method="eap-ig-inputs", steps=1)
    five = edge_scores(tiny_llama, PROMPT, SOURCE, METRIC, method="eap-ig-inputs", steps=5)
    torch.testing.assert_close(one.scores, eap.scores, rtol=0, atol=1e-12)
    assert not torch.allclose(five.scores, eap.scores)
    assert float(eap.scores[~eap.graph.valid].abs().max()) == 0


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-qwen2"])
def test_the_full_circuit_is_clean_and_the_empty_one_corrupted(name):
    model = load_model(name)
    graph = build_graph(model)
    metric = resolve_metric(model, METRIC)
    values = circuit_metrics(
        model, graph, torch.stack([torch.zeros_like(graph.valid), graph.valid]), PROMPT, SOURCE, metric
    )
    clean = float(metric(model.logits(model.to_tokens(PROMPT))[:, -1])[0])
    corrupted = float(metric(model.logits(model.to_tokens(SOURCE))[:, -1])[0])
    # the same float32 forward with corrections that cancel to rounding: |logits| < 30 on these models
    assert float(values[1]) == pytest.approx(clean, abs=1e-4) and float(values[0]) == pytest.approx(corrupted, abs=1e-4)
    scores = edge_scores(model, PROMPT, SOURCE, METRIC, method="eap")
    curve = faithfulness_curve(model, graph, scores.scores, PROMPT, SOURCE, metric)
    assert curve.fractions[0] == 0 and curve.faithfulness[0] == pytest.approx(0, abs=1e-4)
    assert curve.faithfulness[-1] == pytest.approx(1, abs=1e-4) and curve.edges[-1] == graph.n_edges


def test_one_edge_out_equals_path_patching_of_that_edge(tiny_llama):
    """A circuit of every edge but u → v carries the corrupted u into v alone, downstream free: path patching
    of sender u into receiver v, computed by a different mechanism (added residual, recomputed receiver)."""
    graph = build_graph(tiny_llama)
    metric = resolve_metric(tiny_llama, METRIC)
    edges = [("a0.h3", "a2.kv1<k>"), ("a0.h3", "a2.kv2<v>"), ("a1.h4", "a2.h0<q>"), ("m0", "m2"), ("a2.h5", "logits")]
    circuits = []
    for u, v in edges:
        circuit = graph.valid.clone()
        circuit[graph.writer_index(u), graph.reader_index(v)] = False
        circuits.append(circuit)
    values = circuit_metrics(tiny_llama, graph, torch.stack([graph.valid, *circuits]), PROMPT, SOURCE, metric)
    paths = path_patching(
        tiny_llama,
        PROMPT,
        SOURCE,
        senders=sorted({u for u, _ in edges}),
        receivers=[v for _, v in edges],
        metric=METRIC,
    )
    senders = paths["effect"].coords["sender"]
    for j, (u, v) in enumerate(edges):
        expected = float(paths["effect"].numpy()[senders.index(u), j])
        assert float(values[j + 1] - values[0]) == pytest.approx(expected, abs=1e-5), (u, v)


def test_batched_circuits_equal_one_at_a_time(tiny_llama):
    graph = build_graph(tiny_llama)
    metric = resolve_metric(tiny_llama, METRIC)
    scores = edge_scores(tiny_llama, PROMPT, SOURCE, METRIC, method="eap").scores
    from workbench.circuits.evaluate import top_edges

    circuits = torch.stack([top_edges(scores, graph.valid, n) for n in (0, 3, 17, 90, graph.n_edges)])
    batched = circuit_metrics(tiny_llama, graph, circuits, PROMPT, SOURCE, metric)
    alone = circuit_metrics(tiny_llama, graph, circuits, PROMPT, SOURCE, metric, batch=1)
    np.testing.assert_allclose(batched.numpy(), alone.numpy(), atol=1e-5)
    assert [int(c.sum()) for c in circuits] == [0, 3, 17, 90, graph.n_edges]


def test_a_dataset_curve_has_intervals(tiny_qwen2):
    graph = build_graph(tiny_qwen2)
    prompts = [PROMPT, PROMPT.replace("[0, 9]", "[0, 8]"), PROMPT.replace("[0, 9]", "[0, 7]")]
    sources = [p.replace("[0, ", "[1, ") for p in prompts]
    scores = edge_scores(tiny_qwen2, prompts, sources, METRIC, method="eap").scores
    curve = dataset_curve(tiny_qwen2, graph, scores, prompts, sources, resolve_metric(tiny_qwen2, METRIC), (0.1, 1.0))
    assert curve["pairs"] == 3 and curve["curve"][-1]["faithfulness"] == pytest.approx(1, abs=1e-4)
    assert all(p["ci_low"] <= p["faithfulness"] + 1e-9 <= p["ci_high"] + 2e-9 for p in curve["curve"])


def test_the_graph_under_grouped_query_attention(tiny_llama):
    graph = build_graph(tiny_llama)
    names = [r.name for r in graph.readers]
    assert "a1.kv2<k>" in names and "a1.h2<k>" not in names and "a1.h5<q>" in names
    facts = tiny_llama.facts
    per_block = facts.n_heads + 2 * facts.n_kv_heads + 1
    assert len(graph.readers) == facts.n_layers * per_block + 1
    assert len(graph.writers) == 1 + facts.n_layers * (facts.n_heads + 1)


@pytest.mark.parametrize(
    "name, words",
    [("tiny-gemma2", "normalises or scales each block's attention"), ("tiny-falcon", "no separate MLP input")],
)
def test_families_without_per_head_edges_are_refused(name, words):
    with pytest.raises(CircuitError, match=words):
        build_graph(load_model(name))


def test_cli_find_and_evaluate(tmp_path):
    from reliability.conftest import workbench

    out = tmp_path / "circuit"
    done = workbench("circuit", "find", "--model", "tiny-llama", "--method", "eap", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    edges = json.loads(done.stdout)["edges"]
    assert {"source", "target", "score"} == set(edges[0]) and abs(edges[0]["score"]) >= abs(edges[-1]["score"])
    done = workbench("circuit", "evaluate", str(out), "--sizes", "0.01,0.1,1", "--json")
    assert done.returncode == 0, done.stderr
    curve = json.loads(done.stdout)["curve"]
    assert [p["fraction"] for p in curve] == [0.0, 0.01, 0.1, 1.0] and curve[-1]["faithfulness"] == pytest.approx(
        1, abs=1e-4
    )
    assert (out / "circuit.faithfulness.html").is_file()
    text = (out / "circuit.json").read_text()
    (out / "circuit.json").write_text(text.replace(str(edges[0]["score"]), "1.0", 1))
    done = workbench("circuit", "evaluate", str(out), "--json")
    assert done.returncode == CircuitError.exit_code and "changed since it was written" in done.stderr
