"""A found circuit as a file and as figures: the graph's scored edges, how they were scored, and (once evaluated)
the faithfulness curve — JSON that reloads and redraws without the model."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go

from workbench import plots
from workbench.circuits.scores import EdgeScores
from workbench.errors import CircuitError

FORMAT = "workbench-circuit/1"


@dataclass
class Circuit:
    """Scored edges (largest |score| first) and their provenance; ``curve`` once evaluated."""

    model: str
    method: str
    steps: int
    convention: str
    metric: str
    prompts: list[str]
    sources: list[str]
    edges: list[dict[str, Any]]  # {"source", "target", "score"}
    n_layers: int
    n_heads: int
    n_kv_heads: int
    curve: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_scores(cls, found: EdgeScores, model, prompts: list[str], sources: list[str]) -> Circuit:
        g = found.graph
        pairs = g.valid.nonzero().tolist()
        values = found.scores[g.valid].tolist()
        order = np.argsort(-np.abs(np.asarray(values)), kind="stable")
        edges = [
            {"source": g.writers[pairs[i][0]], "target": g.readers[pairs[i][1]].name, "score": float(values[i])}
            for i in order
        ]
        return cls(
            model=model.facts.name,
            method=found.method,
            steps=found.steps,
            convention=found.convention,
            metric=found.metric,
            prompts=prompts,
            sources=sources,
            edges=edges,
            n_layers=g.n_layers,
            n_heads=g.n_heads,
            n_kv_heads=g.n_kv_heads,
        )

    def body(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": self.model,
            "method": self.method,
            "steps": self.steps,
            "convention": self.convention,
            "metric": self.metric,
            "prompts": self.prompts,
            "sources": self.sources,
            "graph": {"n_layers": self.n_layers, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads},
            "edges": self.edges,
            "curve": self.curve,
            **self.extra,
        }

    def to_json(self) -> str:
        body = self.body()
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=False).encode()).hexdigest()
        return json.dumps({**body, "manifest_hash": digest}, allow_nan=False, indent=1)

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        path = Path(path)
        file = path / "circuit.json" if path.is_dir() else path
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CircuitError(
                f"{file} is not a readable circuit file ({exc}): find one with `workbench circuit find`."
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CircuitError(f"{file} is not a workbench circuit file (format {FORMAT}).")
        digest = data.pop("manifest_hash", None)
        if hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest() != digest:
            raise CircuitError(
                f"{file} was changed since it was written (its manifest hash does not match): find it again."
            )
        graph = data.pop("graph")
        known = {
            k: data.pop(k)
            for k in ("model", "method", "steps", "convention", "metric", "prompts", "sources", "edges", "curve")
        }
        data.pop("format")
        return cls(**known, **graph, extra=data)

    def top(self, n: int) -> list[dict[str, Any]]:
        return self.edges[: max(0, int(n))]

    def figure(self, n: int = 100):
        """The top ``n`` edges as a graph: blocks from top to bottom, heads and the MLP of each block as nodes,
        edge width by |score|, colour by sign."""
        return circuit_figure(self, n)

    def curve_figure(self):
        if self.curve is None:
            raise CircuitError("This circuit has not been evaluated: run `workbench circuit evaluate DIR`.")
        return curve_figure(self.curve, f"{self.method} circuit of {self.metric} ({self.model})")


def _node_of(name: str, n_heads: int, n_kv: int) -> str:
    """The drawn node a writer or reader belongs to: a reader's head (a key/value head: its first query head)."""
    base = name.split("<")[0]
    if ".kv" in base:
        block, group = base[1:].split(".kv")
        return f"a{block}.h{int(group) * (n_heads // n_kv)}"
    return base


def _position(node: str, n_layers: int, n_heads: int) -> tuple[float, float]:
    if node == "input":
        return (n_heads / 2, -1.0)
    if node == "logits":
        return (n_heads / 2, float(n_layers))
    if node.startswith("m"):
        return (n_heads + 0.5, int(node[1:]) + 0.5)
    block, head = node[1:].split(".h")
    return (float(head), float(block))


def circuit_figure(circuit: Circuit, n: int = 100):
    edges = circuit.top(n)
    if not edges:
        raise CircuitError("The circuit has no edges to draw.")
    largest = max(abs(e["score"]) for e in edges) or 1.0
    fig = go.Figure()
    nodes: dict[str, tuple[float, float]] = {}
    for e in edges:
        a = _node_of(e["source"], circuit.n_heads, circuit.n_kv_heads)
        b = _node_of(e["target"], circuit.n_heads, circuit.n_kv_heads)
        (x0, y0), (x1, y1) = (
            _position(a, circuit.n_layers, circuit.n_heads),
            _position(b, circuit.n_layers, circuit.n_heads),
        )
        nodes[a], nodes[b] = (x0, y0), (x1, y1)
        fig.add_trace(
            go.Scatter(
                x=[x0, x1],
                y=[y0, y1],
                mode="lines",
                line=dict(width=0.5 + 6 * abs(e["score"]) / largest, color="#b2182b" if e["score"] > 0 else "#2166ac"),
                opacity=0.7,
                hovertext=f"{e['source']} → {e['target']}: {e['score']:+.4g}",
                hoverinfo="text",
                showlegend=False,
            )
        )
    names = sorted(nodes)
    fig.add_trace(
        go.Scatter(
            x=[nodes[k][0] for k in names],
            y=[nodes[k][1] for k in names],
            mode="markers+text",
            text=names,
            textposition="top center",
            marker=dict(size=11, color="#333333"),
            showlegend=False,
            hoverinfo="text",
        )
    )
    fig.update_yaxes(autorange="reversed", title="block (input at the top, logits at the bottom)")
    fig.update_xaxes(title="query head (MLPs on the right)")
    title = (
        f"Circuit: top {len(edges)} edges by |{circuit.method} score| of {circuit.metric} ({circuit.model}); "
        "red raises, blue lowers"
    )
    return plots.style(
        fig, title, height=max(520, 42 * circuit.n_layers + 200), width=max(760, 70 * circuit.n_heads + 300)
    )


def curve_figure(curve: dict[str, Any], title: str):
    points = curve["curve"]
    x = [max(p["fraction"], 1e-4) for p in points]
    y = [p["faithfulness"] for p in points]
    traces = [go.Scatter(x=x, y=y, mode="lines+markers", name="faithfulness")]
    if all("ci_low" in p for p in points):
        traces.append(
            go.Scatter(
                x=x + x[::-1],
                y=[p["ci_high"] for p in points] + [p["ci_low"] for p in points][::-1],
                fill="toself",
                opacity=0.2,
                line=dict(width=0),
                name="95% interval",
            )
        )
    fig = go.Figure(traces)
    fig.update_xaxes(type="log", title="circuit size (fraction of edges; 0 drawn at 1e-4)")
    fig.update_yaxes(title="faithfulness (0 = corrupted, 1 = clean)")
    return plots.style(fig, f"{title}: CPR {curve['cpr']:.3f}, CMD {curve['cmd']:.3f}", height=480, width=760)
