"""Ray with N local workers vs the local executor, on the same experiment, in one process.

Times the whole `run_experiment` call for both (the Ray side includes starting Ray and every actor
loading the model) and, separately, the Ray side's start-up, so the steady-state ratio can be read too.
On a 2-core machine two workers share the cores the local executor's torch threads use: expect no gain
(Ray pays off with one actor per GPU, or per node of a cluster).

    python benchmarks/experiments_ray.py --model smollm2 --items 56 --workers 2
    python benchmarks/experiments_ray.py --model tiny-qwen2 --items 12           # a quick check
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--items", type=int, default=56)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-items", type=int, default=4, help="items per shard (so the work spreads)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from workbench.datasets import load_dataset
    from workbench.experiments import Experiment, RayExecutor, run_experiment
    from workbench.models import load_model
    from workbench.studies.dataset_effects import BUNDLED, headline_conditions

    model = load_model(args.model, device="cpu")
    dataset = load_dataset(BUNDLED)
    dataset.items = dataset.items[: args.items]
    experiment = Experiment(
        dataset=dataset,
        conditions=headline_conditions(model),
        model=args.model,
        resamples=999,
        metrics=["digits_above:{source_bound}", "kl"],
        shard_items=args.shard_items,
    )
    experiment = experiment.with_model(device="cpu")
    run_experiment(experiment, model=model)  # warm-up
    began = time.perf_counter()
    local = run_experiment(experiment, model=model)
    local_s = time.perf_counter() - began

    executor = RayExecutor(workers=args.workers, cpus_per_worker=max(1, torch.get_num_threads() // args.workers))
    began = time.perf_counter()
    executor.start(experiment, dataset)
    startup_s = time.perf_counter() - began
    began = time.perf_counter()
    remote = run_experiment(experiment, executor=executor)
    ray_s = time.perf_counter() - began
    a, b = local.frame(), remote.frame()
    numbers = {
        "model": model.facts.name,
        "items": len(dataset),
        "shards": local.computed,
        "workers": args.workers,
        "local_threads": torch.get_num_threads(),
        "local_s": round(local_s, 3),
        "ray_startup_s": round(startup_s, 3),
        "ray_run_s": round(ray_s, 3),
        "ray_total_s": round(startup_s + ray_s, 3),
        "ratio_total": round((startup_s + ray_s) / local_s, 2),
        "ratio_after_startup": round(ray_s / local_s, 2),
        "max_abs_diff": float((a["value"] - b["value"]).abs().max()),
        "note": "ratio > 1: Ray is slower. ray_run_s still includes the driver's checks, plan and statistics.",
    }
    print(json.dumps(numbers, indent=1))
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=1) + "\n")


if __name__ == "__main__":
    main()
