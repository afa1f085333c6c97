"""Prompts per second of `run_experiment` vs a loop of `run()` calls over the same dataset and conditions.

Both sides run in this process on the same model, items and conditions and compute the same metrics:

- **experiment**: `workbench.experiments.run_experiment` (in memory: no folder, no statistics cost counted
  separately — the summary's bootstrap is part of it), shards of equal-length prompts, clean rows + one
  row block per condition in one forward;
- **baseline**: for each item, `workbench.run.run(model, prompt, [Intervene(condition) ...], separate=True)`
  (the clean run and every condition as rows of one forward for that prompt), with each condition's
  ``{field}`` templates written out by hand, and the same metrics computed from its logits.

Prints (and with ``--json`` writes) seconds, prompts per second, the ratio, and the largest difference
between the two sides' metric values.

    python benchmarks/experiments_throughput.py --model smollm2 --items 56
    python benchmarks/experiments_throughput.py --model tiny-qwen2 --items 12      # a quick check
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def conditions_for(model):
    from workbench.studies.dataset_effects import headline_conditions

    return headline_conditions(model)


def filled(condition, fields):
    """A condition's interventions with the row's own text written in (what a user of run() writes)."""
    import dataclasses

    from workbench.interventions import MaskKeys, Patch
    from workbench.interventions.intervention import fill

    out = []
    for item in condition:
        op = item.op
        if isinstance(op, Patch):
            op = Patch(fill(op.source, fields, "Source"))
        elif isinstance(op, MaskKeys):
            op = MaskKeys(tuple(fill(k, fields, "Key") if isinstance(k, str) else k for k in op.keys))
        positions = (
            None
            if item.positions is None
            else tuple(fill(p, fields, "Position") if isinstance(p, str) else p for p in item.positions)
        )
        out.append(dataclasses.replace(item, op=op, positions=positions))
    return out


def baseline(model, dataset, conditions, metrics):
    from workbench.interventions.intervention import fill
    from workbench.metrics import resolve_metric
    from workbench.probes import Intervene
    from workbench.run import run

    values = {}
    for item in dataset:
        probes = [Intervene(*filled(c, item.fields), label=name) for name, c in conditions.items()]
        out = run(model, item.prompt, probes, separate=True)
        clean = out.logits["clean"][0, -1].float()
        for name, probe_name in zip(conditions, out.conditions, strict=True):
            logits = out.conditions[probe_name].logits["intervened"][:, -1].float()
            for spec in metrics:
                metric = resolve_metric(model, fill(spec, item.fields, "Metric"))
                values[item.id, name, spec] = float(metric(logits, clean)[0])
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--items", type=int, default=56, help="rows of the bundled dataset to use")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two sides this many times (best of)")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args()

    from workbench.datasets import load_dataset
    from workbench.experiments import Experiment, run_experiment, summarize_table
    from workbench.models import load_model
    from workbench.studies.dataset_effects import BUNDLED

    model = load_model(args.model)
    dataset = load_dataset(BUNDLED)
    dataset.items = dataset.items[: args.items]
    conditions = conditions_for(model)
    metrics = ["digits_above:{source_bound}", "prob:{bound}", "kl"]
    experiment = Experiment(dataset=dataset, conditions=conditions, metrics=metrics, model=args.model, resamples=999)
    ours_runs, theirs_runs = [], []
    with torch.no_grad():
        run_experiment(experiment, model=model)  # warm-up (first forward, allocator)
        for _ in range(args.repeats):  # alternating, so a change of machine load hits both sides
            began = time.perf_counter()
            result = run_experiment(experiment, model=model)
            ours_runs.append(time.perf_counter() - began)
            began = time.perf_counter()
            reference = baseline(model, dataset, conditions, metrics)
            theirs_runs.append(time.perf_counter() - began)
        began = time.perf_counter()
        summarize_table(result.results, result.manifest)
        statistics = time.perf_counter() - began
    ours, theirs = min(ours_runs), min(theirs_runs)
    frame = result.frame()
    diff = max(
        abs(row.value - reference[row.item, row.condition, row.metric])
        for row in frame[frame["condition"] != "clean"].itertuples()
    )
    n = len(dataset)
    numbers = {
        "model": model.facts.name,
        "items": n,
        "conditions": len(conditions),
        "metrics": len(metrics),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "experiment_runs_s": [round(t, 3) for t in ours_runs],
        "run_loop_runs_s": [round(t, 3) for t in theirs_runs],
        "experiment_s": round(ours, 3),
        "experiment_prompts_per_s": round(n / ours, 2),
        "run_loop_s": round(theirs, 3),
        "run_loop_prompts_per_s": round(n / theirs, 2),
        "speedup": round(theirs / ours, 2),
        "max_abs_diff": diff,
        "statistics_s": round(statistics, 3),
        "speedup_without_statistics": round(theirs / (ours - statistics), 2),
        "note": "experiment_s includes its statistics (bootstrap and permutation tests, 999 resamples), "
        "which the run() loop does not compute",
    }
    print(json.dumps(numbers, indent=1))
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=1) + "\n")


if __name__ == "__main__":
    main()
