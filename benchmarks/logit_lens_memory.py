"""Peak memory and time of the logit lens on a long prompt: every position of a 1,000-token prompt on SmolLM2.

    python benchmarks/logit_lens_memory.py [--model smollm2] [--tokens 1000] [--eager-tokens 250]
        [--threads 2] [--out benchmarks/results/logit-lens-memory-smollm2-cpu.json]

Each measurement runs in its own child process and reports that process' peak resident memory (``VmHWM``
from ``/proc/self/status``: the child's own high-water mark, not ``ru_maxrss``, which a parent would share
with every child it waited for), its wall and CPU time and the load average around it (the machine may be
shared). The children:

- ``load``: imports and the model loaded, nothing run (the floor every other child starts from);
- ``forward``: one plain forward pass over the prompt (``model.logits``: the output logits every run keeps);
- ``lens``: ``run(model, prompt, LogitLens())`` with the default budget (every position, chunked);
- ``lens_small_budget``: the same with ``WORKBENCH_MEMORY_BUDGET=48M`` (smaller chunks: less memory, slower);
- ``chunked_short`` and ``eager_short``: the lens on a shorter prompt (``--eager-tokens``), chunked, and the
  eager computation it replaced (every layer's logits at every position in one ``[layers, positions, vocab]``
  tensor, log-softmaxed at once), for the ratio; the eager one is not run at the full length (8.9 GB and
  over ten minutes there, as the issue measured).

The JSON is printed and written to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

FILLER = "The quick brown fox jumps over the lazy dog while counting sheep, digits and the days of the week. "


def status(key: str) -> int:
    """A ``/proc/self/status`` field in bytes (``VmHWM``: the peak resident set; ``VmRSS``: the current one)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def prompt_of(model, n_tokens: int) -> str:
    """A prompt of exactly ``n_tokens`` tokens (with the model's BOS, if it prepends one)."""
    ids = model.tokenizer.encode(FILLER * (n_tokens // 10 + 10), add_special_tokens=False)
    for cut in range(n_tokens, 0, -1):
        prompt = model.tokenizer.decode(ids[:cut])
        if len(model.to_tokens(prompt)[0]) <= n_tokens:
            return prompt
    raise RuntimeError("no prompt")


def eager_lens(model, prompt: str, k: int = 10) -> None:
    """The computation the chunked lens replaced: one [layers, positions, vocab] tensor, log-softmaxed at once."""
    import torch

    from workbench.metrics import kl_divergence
    from workbench.probes import LogitLens

    n = model.facts.n_layers
    names = ["blocks.0.hook_resid_pre", *(f"blocks.{i}.hook_resid_post" for i in range(n))]
    with torch.no_grad():
        logits, cache = model.bridge.run_with_cache(model.to_tokens(prompt), names_filter=lambda x: x in names)
        stack = [LogitLens.unembed(model, cache[name]) for name in names] + [logits.float()]
        final = stack[-1].log_softmax(-1)
        targets = logits[0, -1].topk(10).indices
        for layer in stack:
            logp = layer.log_softmax(-1)
            logp.exp().topk(k, dim=-1)
            kl_divergence(final, logp)
            logp[..., targets].exp()
            target = layer[..., targets]
            torch.stack([(layer > target[..., j : j + 1]).sum(-1) for j in range(len(targets))], -1)


def child(mode: str, model_spec: str, n_tokens: int, threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from workbench import load_model, run
    from workbench.probes import LogitLens

    model = load_model(model_spec)
    prompt = prompt_of(model, n_tokens)
    positions = len(model.to_tokens(prompt)[0])
    loaded = status("VmHWM")
    load_before = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    shape = None
    if mode == "forward":
        model.logits(model.to_tokens(prompt))
    elif mode in ("lens", "lens_small_budget", "chunked_short"):
        shape = list(run(model, prompt, LogitLens())["logit_lens"]["top_probs"].shape)
    elif mode == "eager_short":
        eager_lens(model, prompt)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "mode": mode,
        "positions": positions,
        "peak_rss_bytes": status("VmHWM"),
        "peak_rss_after_load_bytes": loaded,
        "seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
        "loadavg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "torch_threads": torch.get_num_threads(),
        "memory_budget_env": os.environ.get("WORKBENCH_MEMORY_BUDGET"),
        "top_probs_shape": shape,
    }


def spawn(mode: str, args, tokens: int, env: dict[str, str] | None = None) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--model", args.model, "--tokens", str(tokens)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False, timeout=3600
    )
    if done.returncode != 0:
        raise SystemExit(f"child {mode} failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    mib = row["peak_rss_bytes"] / 2**20
    print(f"{mode}: {row['positions']} positions, peak RSS {mib:.0f} MiB, {row['seconds']} s", file=sys.stderr)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--eager-tokens", type=int, default=250)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.tokens, args.threads)))
        return
    rows = {
        "load": spawn("load", args, args.tokens),
        "forward": spawn("forward", args, args.tokens),
        "lens": spawn("lens", args, args.tokens),
        "lens_small_budget": spawn("lens_small_budget", args, args.tokens, {"WORKBENCH_MEMORY_BUDGET": "48M"}),
        "chunked_short": spawn("chunked_short", args, args.eager_tokens),
        "eager_short": spawn("eager_short", args, args.eager_tokens),
    }
    mib = {name: round(row["peak_rss_bytes"] / 2**20) for name, row in rows.items()}
    report = {
        "benchmark": "logit_lens_memory",
        "model": args.model,
        "tokens": args.tokens,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "peak_rss_mib": mib,
        "lens_over_forward_mib": mib["lens"] - mib["forward"],
        "lens_seconds": rows["lens"]["seconds"],
        "short_prompt": {
            "tokens": args.eager_tokens,
            "eager_over_load_mib": mib["eager_short"] - mib["load"],
            "chunked_over_load_mib": mib["chunked_short"] - mib["load"],
            "eager_over_chunked_seconds": round(rows["eager_short"]["seconds"] / rows["chunked_short"]["seconds"], 2),
        },
        "children": rows,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
