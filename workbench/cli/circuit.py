"""``workbench circuit find|evaluate``: edge attribution patching (EAP, EAP-IG) and exact faithfulness curves."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from workbench.cli import app, out_folder
from workbench.metric_names import METRIC_FORMS
from workbench.studies.defaults import SOURCE_PROMPT, STUDY_PROMPT

CIRCUIT = "circuit"
circuit_app = typer.Typer(help="Circuits: EAP / EAP-IG edge scores and exact faithfulness.", no_args_is_help=True)
app.add_typer(circuit_app, name="circuit")


def _sizes(text: str) -> list[float]:
    from workbench.errors import CircuitError

    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CircuitError(f"--sizes {text!r}: write fractions of the edges, e.g. 0.01,0.02,0.05.") from None


@circuit_app.command("find")
def find(
    model: str = typer.Option("smollm2", "--model", help="Model spec (smollm2, tiny-qwen2, a path or hub id)."),
    prompt: str = typer.Option(STUDY_PROMPT, "--prompt", help="The clean prompt (default: the study's)."),
    source: str = typer.Option(SOURCE_PROMPT, "--source", help="The corrupted prompt (same token length)."),
    metric: str = typer.Option("logit_diff:9,5", "--metric", help=f"What the circuit carries: {METRIC_FORMS}."),
    method: str = typer.Option("eap-ig-inputs", "--method", help="eap or eap-ig-inputs."),
    steps: int = typer.Option(5, "--steps", help="Integrated-gradient steps (eap-ig-inputs)."),
    convention: str = typer.Option("noising", "--convention", help="noising (EAP-IG library) or denoising (TL)."),
    dataset: Path | None = typer.Option(None, "--dataset", help="Average over the prompt/source pairs of a file."),
    out: Path = typer.Option(..., "--out", callback=out_folder(CIRCUIT), help="Folder for circuit.json and figures."),
    top: int = typer.Option(100, "--top", min=1, help="Edges drawn in the figure."),
    as_json: bool = typer.Option(False, "--json", help='Print {"edges": [{"source", "target", "score"}, ...]}.'),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda or mps."),
) -> None:
    """Score every edge of the model's graph and write the circuit file (edges largest |score| first)."""
    from workbench.circuits.circuit import Circuit
    from workbench.circuits.scores import edge_scores
    from workbench.models import load_model

    prompts, sources = [prompt], [source]
    if dataset is not None:
        from workbench.datasets import load_dataset
        from workbench.errors import CircuitError

        data = load_dataset(dataset)
        if any(item.source is None for item in data):
            raise CircuitError(f"{dataset}: every row needs a source prompt (a `source` column) to corrupt from.")
        prompts, sources = [item.prompt for item in data], [str(item.source) for item in data]
    loaded = load_model(model, device=device)
    found = edge_scores(
        loaded, prompts, sources, metric, method=method, steps=steps, convention=convention, progress=True
    )
    circuit = Circuit.from_scores(found, loaded, prompts, sources)
    circuit.extra.update(model_spec=model, metric_spec=metric)
    _write(circuit, out, top)
    if as_json:
        typer.echo(json.dumps({"edges": circuit.edges}))
    else:
        typer.echo(f"{len(circuit.edges)} edges scored by {method}; wrote {out}/circuit.json")
        for edge in circuit.top(10):
            typer.echo(f"  {edge['score']:+.4f}  {edge['source']} → {edge['target']}")


@circuit_app.command("evaluate")
def evaluate(
    folder: Path = typer.Argument(..., help="A folder written by `workbench circuit find`."),
    sizes: str = typer.Option(
        "0.001,0.002,0.005,0.01,0.02,0.05,0.1,0.2,0.5,1", "--sizes", help="Circuit sizes, fractions of the edges."
    ),
    as_json: bool = typer.Option(False, "--json", help='Print {"curve": [{"fraction", "edges", "faithfulness"}]}.'),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda or mps."),
) -> None:
    """Exact faithfulness of the top circuits at each size (fraction 0 is the empty circuit), with CPR and CMD."""
    from workbench.circuits.circuit import Circuit
    from workbench.circuits.evaluate import dataset_curve
    from workbench.circuits.graph import build_graph
    from workbench.metrics import resolve_metric
    from workbench.models import load_model

    fractions = _sizes(sizes)
    circuit = Circuit.load(folder)
    loaded = load_model(circuit.extra.get("model_spec", circuit.model), device=device)
    graph = build_graph(loaded)
    scores = _scores_of(circuit, graph)
    metric = resolve_metric(loaded, _metric_spec(circuit))
    curve = dataset_curve(loaded, graph, scores, circuit.prompts, circuit.sources, metric, fractions)
    circuit.curve = curve
    _write(circuit, folder, 100)
    if as_json:
        typer.echo(json.dumps(curve))
    else:
        for point in curve["curve"]:
            typer.echo(
                f"  {point['fraction']:>7.3%}  {point['edges']:>7d} edges  faithfulness {point['faithfulness']:+.3f}"
            )
        typer.echo(f"CPR {curve['cpr']:.3f}, CMD {curve['cmd']:.3f}")


def _metric_spec(circuit) -> str:
    return str(circuit.extra.get("metric_spec", circuit.metric))


def _scores_of(circuit, graph):
    import torch

    scores = torch.zeros(graph.valid.shape, dtype=torch.float64)
    for edge in circuit.edges:
        scores[graph.writer_index(edge["source"]), graph.reader_index(edge["target"])] = edge["score"]
    return scores


def _write(circuit, out: Path, top: int) -> None:
    from workbench.export import write_figures
    from workbench.outputs import output_folder

    figures = {"circuit.graph": circuit.figure(top)}
    if circuit.curve is not None:
        figures["circuit.faithfulness"] = circuit.curve_figure()
    with output_folder(out, CIRCUIT) as tmp:
        (tmp / "circuit.json").write_text(circuit.to_json(), encoding="utf-8")
        write_figures(figures, tmp, static=())
