"""EAP against EAP-IG over the study's bundled dataset: faithfulness at 1 %, 2 % and 5 % of the edges with 95%
bootstrap intervals over the prompt pairs (each pair: a prompt and its source with a bound 4 lower).

    python benchmarks/circuits_dataset.py --model smollm2 --out benchmarks/results/circuits-dataset-smollm2-cpu.json

Scores are averaged over all pairs (one circuit per method and size), then each circuit is evaluated exactly on
every pair; the metric is each pair's own logit(bound) − logit(source bound).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--pairs", type=int, default=56)
    parser.add_argument("--out")
    args = parser.parse_args()

    import torch

    from workbench.circuits.evaluate import dataset_curve
    from workbench.circuits.graph import build_graph
    from workbench.circuits.scores import edge_scores
    from workbench.datasets import load_dataset
    from workbench.metrics import Metric
    from workbench.models import load_model
    from workbench.studies.dataset_effects import BUNDLED
    from workbench.tokens import single_token_id

    model = load_model(args.model)
    items = list(load_dataset(BUNDLED))[: args.pairs]
    prompts, sources = [it.prompt for it in items], [str(it.source) for it in items]
    # Each pair's own answer: logit(bound) − logit(source bound); the rows are evaluated one pair at a time.
    ids = [
        (single_token_id(model, it.fields["bound"]), single_token_id(model, it.fields["source_bound"])) for it in items
    ]
    current = {"pair": 0}

    def diff(logits: torch.Tensor) -> torch.Tensor:
        up, down = ids[current["pair"]]
        return logits[:, up] - logits[:, down]

    metric = Metric("logit(bound) − logit(source bound)", diff)
    graph = build_graph(model)
    out: dict = {"model": model.facts.name, "pairs": len(items), "edges": graph.n_edges, "methods": {}}
    for method in ("eap", "eap-ig-inputs"):
        start = time.perf_counter()
        total = torch.zeros(graph.valid.shape, dtype=torch.float64)
        for i, (p, s) in enumerate(zip(prompts, sources, strict=True)):
            current["pair"] = i
            total += edge_scores(model, p, s, metric, method=method).scores
        scores_s = time.perf_counter() - start
        rows = []
        for i, (p, s) in enumerate(zip(prompts, sources, strict=True)):
            current["pair"] = i
            rows.append(dataset_curve(model, graph, total / len(items), [p], [s], metric, (0.01, 0.02, 0.05)))
        out["methods"][method] = {"scores_s": scores_s, "per_pair": [r["curve"] for r in rows]}
    # Faithfulness over pairs: the mean of each pair's faithfulness, with a percentile bootstrap over pairs.
    import numpy as np

    rng = np.random.default_rng(0)
    for data in out["methods"].values():
        curves = data.pop("per_pair")
        fractions = [p["fraction"] for p in curves[0]]
        summary = {}
        for j, fraction in enumerate(fractions[1:], start=1):
            per_pair = np.array([c[j]["faithfulness"] for c in curves])
            draws = [per_pair[rng.integers(0, len(per_pair), len(per_pair))].mean() for _ in range(2000)]
            low, high = np.percentile(draws, [2.5, 97.5])
            summary[str(fraction)] = {"mean": float(per_pair.mean()), "ci_low": float(low), "ci_high": float(high)}
        data["faithfulness"] = summary
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
