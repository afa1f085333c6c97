"""Circuit benchmarks, as ratios against baselines in the same process.

    python benchmarks/circuits.py --model smollm2 --steps 5 --out benchmarks/results/circuits-smollm2-cpu.json

- ``ig_vs_passes``: EAP-IG with m steps on one prompt pair, over m forward + backward passes of the plain model
  (the issue's bound: ≤ 1.5);
- ``curve_vs_forwards``: exact evaluation of the ten-size faithfulness curve (ten circuits, plus the empty and
  full ones, as rows of batched forwards), over ten plain forwards batched the same way (the bound: ≤ 2);
- the curve of EAP and of EAP-IG at 1 %, 2 %, 5 % and 10 % of the edges, on the study's prompt pair.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

PROMPT = "I'm generating a random number between [0, 9]. The number is "
SOURCE = PROMPT.replace("9]", "5]")


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()

    from workbench.circuits.evaluate import SIZES, dataset_curve
    from workbench.circuits.graph import build_graph
    from workbench.circuits.scores import edge_scores
    from workbench.metrics import resolve_metric
    from workbench.models import load_model

    model = load_model(args.model)
    metric = resolve_metric(model, "logit_diff:9,5")
    graph = build_graph(model)
    tokens = model.to_tokens(PROMPT)

    def passes():
        for _ in range(args.steps):
            with torch.enable_grad():
                logits = model.bridge(tokens)
                metric(logits[:, -1]).sum().backward()
            model.bridge.zero_grad(set_to_none=True)

    def forwards():
        with torch.no_grad():
            model.bridge(tokens.expand(len(SIZES) + 2, -1))

    edge_scores(model, PROMPT, SOURCE, metric, method="eap")  # warm-up
    passes_s = seconds(passes)
    found = {}
    ig_s = seconds(lambda: found.setdefault("ig", edge_scores(model, PROMPT, SOURCE, metric, steps=args.steps)))
    found["eap"] = edge_scores(model, PROMPT, SOURCE, metric, method="eap")
    forwards_s = seconds(forwards)
    curves = {}
    curve_s = seconds(
        lambda: curves.setdefault("ig", dataset_curve(model, graph, found["ig"].scores, [PROMPT], [SOURCE], metric))
    )
    curves["eap"] = dataset_curve(model, graph, found["eap"].scores, [PROMPT], [SOURCE], metric)

    def pick(curve):
        return {p["fraction"]: p["faithfulness"] for p in curve["curve"] if p["fraction"] in (0.01, 0.02, 0.05, 0.1)}

    result = {
        "model": model.facts.name,
        "threads": torch.get_num_threads(),
        "edges": graph.n_edges,
        "steps": args.steps,
        "eap_ig_s": ig_s,
        "plain_forward_backward_passes_s": passes_s,
        "ig_vs_passes": ig_s / passes_s,
        "curve_s": curve_s,
        "ten_batched_forwards_s": forwards_s,
        "curve_vs_forwards": curve_s / forwards_s,
        "faithfulness_eap": pick(curves["eap"]),
        "faithfulness_eap_ig": pick(curves["ig"]),
        "cpr": {"eap": curves["eap"]["cpr"], "eap-ig-inputs": curves["ig"]["cpr"]},
        "cmd": {"eap": curves["eap"]["cmd"], "eap-ig-inputs": curves["ig"]["cmd"]},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
