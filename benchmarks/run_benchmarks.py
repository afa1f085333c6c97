"""Run every benchmark in one process and print one JSON object per line (same inputs for both sides).

    python benchmarks/run_benchmarks.py --model smollm2 [--device cuda] [--threads 2]

Each line is what ``workbench bench patching-sweep --json`` / ``probe-overhead --json`` / ``separate --json``
prints, plus the machine load when it ran (``loadavg``): numbers on a shared machine are noisy, ratios less so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import torch

from workbench.studies.random_number import STUDY_PROMPT
from workbench.sweeps import bench

SOURCE = STUDY_PROMPT.replace("9]", "5]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    for name, fn in (
        (
            "resid_pre sweep",
            lambda: bench.patching_sweep(args.model, STUDY_PROMPT, SOURCE, site="resid_pre", device=args.device),
        ),
        (
            "head (z) sweep",
            lambda: bench.patching_sweep(args.model, STUDY_PROMPT, SOURCE, site="z", device=args.device),
        ),
        ("probe overhead", lambda: bench.probe_overhead(args.model, STUDY_PROMPT, device=args.device)),
        ("separate runs", lambda: bench.separate_runs(args.model, STUDY_PROMPT, SOURCE, device=args.device)),
    ):
        before = os.getloadavg()[0]
        row = fn()
        print(json.dumps({"benchmark": name, **row, **machine, "loadavg": [before, os.getloadavg()[0]]}), flush=True)


if __name__ == "__main__":
    main()
