"""Memory stays bounded whatever size the user asks for: measured in child processes that report their
own peak resident memory (``VmHWM`` of their own address space: ``ru_maxrss`` survives ``exec`` on Linux and
would report the forking pytest process's peak), so no other test can blur the number.

The audit over [0, 1 000 000] once grew to 23.6 GB (every number prefix in one batch). Its exact law needs
one forward row per number prefix (≥ 1 000 002 here), so it is refused up front, before any forward, with
the count and the limit (``max_contexts``); under the limit the rows run in batches sized from the memory
budget, and the peak grows by about the budget, not with the range.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20

CHILD = """
import json, sys
from workbench.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code or 0
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"code": code, "maxrss": int(hwm.split()[1]) * 1024}), file=sys.stderr)
"""

GROWTH = """
import json, sys
from workbench.models import load_model
from workbench.sampling import randomness_audit

def peak():
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    return int(hwm.split()[1]) * 1024

model = load_model("tiny-qwen2")
randomness_audit(model, samples=5, high=12)  # the same code paths, warmed up on a small range
before = peak()
audit = randomness_audit(model, samples=5, high=3000, max_contexts=5000)
print(json.dumps({"before": before, "after": peak(), "values": len(audit.values)}))
"""


def child(code: str, *argv: str, budget: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    if budget is not None:
        env["WORKBENCH_MEMORY_BUDGET"] = budget
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=900)


def test_the_million_number_audit_is_refused_up_front_in_one_line():
    result = child(CHILD, "sample", "audit", "--model", "tiny-qwen2", "--samples", "5", "--high", "1000000")
    *message, report = result.stderr.strip().splitlines()
    report = json.loads(report)
    assert report["code"] == 11  # BudgetError
    assert len(message) == 1 and "Traceback" not in result.stderr
    assert (
        "1,000,002 forward rows" in message[0]
        and "max_contexts = 100,000" in message[0]
        and "--max-contexts" in message[0]
    )
    # refused before any enumeration: the peak is what loading torch, transformers and the model takes
    assert report["maxrss"] < 1536 * MiB, report["maxrss"] / MiB


def test_a_wide_range_runs_in_batches_within_the_budget():
    """[0, 3000] needs 3 002 forward rows of up to 22 tokens (each digit is a token). Run as one batch per
    prefix length, as the old code did (and as the default 2 GiB budget still allows), the peak grows by about
    300 MiB; under a 16 MiB budget it grows by less than 64 MiB."""
    result = child(GROWTH, budget="16M")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["values"] == 3001
    assert report["after"] - report["before"] < 64 * MiB, (report["after"] - report["before"]) / MiB
