"""Benchmarks, same process and same inputs: our sweeps vs TransformerLens' ``patching``, and the cost of observers.

TransformerLens' ``generic_activation_patch`` runs on a ``TransformerBridge`` as it is (it only needs
``run_with_hooks``, ``cfg.n_layers``/``n_heads`` and an ``ActivationCache``), so the baseline is the real
``get_act_patch_resid_pre`` / ``get_act_patch_attn_head_out_all_pos``, one hooked forward per cell.
"""

from __future__ import annotations

import time

import torch

from workbench.models import load_model
from workbench.sweeps.sweep import patch_sweep
from workbench.tokens import digit_token_ids


def _timed(fn):
    began = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - began


def patching_sweep(model, prompt: str, source: str, *, site: str = "resid_pre", device: str | None = None) -> dict:
    """Our ``site`` sweep vs TransformerLens' (``resid_pre`` → ``get_act_patch_resid_pre``, ``z`` →
    ``get_act_patch_attn_head_out_all_pos``), metric p(digit > 5), on the same tokens."""
    from transformer_lens import patching

    model = load_model(model, device=device)
    bridge = model.bridge
    digits = torch.tensor(digit_token_ids(model)[6:], device=model.device)

    def metric(logits):  # TransformerLens' scalar metric: p(digit > 5) at the last position
        return logits[:, -1].float().softmax(-1)[:, digits].sum(-1).mean()

    tokens, source_tokens = model.to_tokens(prompt), model.to_tokens(source)
    baseline_name = {"resid_pre": "get_act_patch_resid_pre", "z": "get_act_patch_attn_head_out_all_pos"}[site]
    baseline_fn = getattr(patching, baseline_name)
    patch_sweep(model, prompt, source, site=site, blocks=[0], metric="digits_above:5")  # warm-up
    ours, ours_s = _timed(lambda: patch_sweep(model, prompt, source, site=site, metric="digits_above:5"))
    full, full_s = _timed(
        lambda: patch_sweep(model, prompt, source, site=site, metric="digits_above:5", reuse_prefix=False)
    )

    def baseline():
        with torch.no_grad():
            _, cache = bridge.run_with_cache(source_tokens)
            return baseline_fn(bridge, tokens, cache, metric)

    theirs, baseline_s = _timed(baseline)
    theirs = theirs.detach().float().cpu()
    diff = float((ours["metric"].values - theirs).abs().max())
    return {
        "model": model.facts.name,
        "device": str(model.device),
        "site": site,
        "cells": int(theirs.numel()),
        "ours_s": ours_s,
        "ours_full_grid_s": full_s,
        "baseline_s": baseline_s,
        "speedup": baseline_s / ours_s,
        "speedup_full_grid": baseline_s / full_s,
        "max_abs_diff": diff,
        "max_abs_diff_full_grid": float((full["metric"].values - theirs).abs().max()),
        "baseline": f"transformer_lens.patching.{baseline_name} on the TransformerBridge",
        "engine": ours.meta["engine"],  # "fast", or "hooks: <why the fast engine did not run>"
        "engine_full_grid": full.meta["engine"],
        "torch_threads": torch.get_num_threads(),
    }


def observer_hooks(model, kept: dict) -> list:
    """The read-only side of the five core probes: LogitLens (embeddings + every block's output),
    AttentionCapture (patterns), and what the three interventions read (scores for masking, k/v for
    patching, the residual entering each block for block replacement), each kept as a detached copy."""
    n = model.facts.n_layers
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{b}.hook_resid_post" for b in range(n)]
    names += [f"blocks.{b}.attn.hook_pattern" for b in range(n)]
    names += [f"blocks.{b}.attn.hook_attn_scores" for b in range(n)]
    names += [f"blocks.{b}.attn.hook_{kv}" for b in range(n) for kv in "kv"]
    names += [f"blocks.{b}.hook_resid_pre" for b in range(1, n)]

    def keep(name):
        def hook(act, hook):
            kept[name] = act.detach().clone()

        return hook

    return [(name, keep(name)) for name in names]


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def core_probes(model, prompt: str) -> list:
    """The five core probes as a study would run them: the logit lens, attention, the middle block as the
    identity, attention to the second token masked from the middle on, and keys/values patched from the prompt
    with its last character changed (a source of the same length)."""
    from workbench.probes import ActivationPatch, AttentionCapture, AttentionMask, BlockReplacement, LogitLens

    n = model.facts.n_layers
    source = prompt.replace("9]", "5]") if "9]" in prompt else prompt
    return [
        LogitLens(),
        AttentionCapture(),
        BlockReplacement(blocks=[n // 2]),
        AttentionMask(keys=[1], blocks=list(range(n // 2, n))),
        ActivationPatch(source=source, site="kv", blocks=[n // 4]),
    ]


def probe_overhead(model, prompt: str, *, repeats: int = 10, device: str | None = None) -> dict:
    """Plain forward vs forward with the five observers' hooks (capture only) vs ``workbench.run.run``
    with LogitLens + AttentionCapture (capture + result building) and with the five core probes
    (``run_vs_forward``, results built); kept bytes vs ``run_with_cache``."""
    from workbench.probes import AttentionCapture, LogitLens
    from workbench.run import run

    model = load_model(model, device=device)
    bridge = model.bridge
    tokens = model.to_tokens(prompt)

    def best(fn):
        fn()
        times = []
        for _ in range(repeats):
            times.append(_timed(fn)[1])
        return min(times), sorted(times)[len(times) // 2]

    def plain():
        with torch.no_grad():
            bridge(tokens)

    kept: dict = {}

    def observed():
        kept.clear()
        with torch.no_grad(), bridge.hooks(fwd_hooks=observer_hooks(model, kept)):
            bridge(tokens)

    def cached():
        with torch.no_grad():
            return bridge.run_with_cache(tokens)

    plain_min, plain_med = best(plain)
    obs_min, obs_med = best(observed)
    cache_min, cache_med = best(cached)
    run_min, run_med = best(lambda: run(model, prompt, [LogitLens(), AttentionCapture()]))
    five = core_probes(model, prompt)
    five_min, _ = best(lambda: run(model, prompt, five))
    _, cache = cached()
    return {
        "model": model.facts.name,
        "device": str(model.device),
        "positions": int(tokens.shape[-1]),
        "plain_forward_s": plain_min,
        "observers_forward_s": obs_min,
        "run_with_cache_s": cache_min,
        "workbench_run_s": run_min,
        "observer_ratio": obs_min / plain_min,
        "observer_ratio_median": obs_med / plain_med,
        "workbench_run_ratio": run_min / plain_min,
        "run_five_probes_s": five_min,
        "run_vs_forward": five_min / plain_min,
        "observer_kept_bytes": _tensor_bytes(kept.values()),
        "observer_hooks": len(kept),
        "run_with_cache_bytes": _tensor_bytes(cache.values()),
        "run_with_cache_entries": len(cache),
        "memory_ratio": _tensor_bytes(kept.values()) / _tensor_bytes(cache.values()),
        "torch_threads": torch.get_num_threads(),
    }


def separate_runs(model, prompt: str, source: str, *, repeats: int = 5, device: str | None = None) -> dict:
    """``run(..., separate=True)`` with three interventions (identity block, masking, patching) vs three
    separate ``run`` calls, and vs one plain forward of the same batch (clean + three rows)."""
    from workbench.probes import ActivationPatch, AttentionMask, BlockReplacement
    from workbench.run import run

    model = load_model(model, device=device)
    n = model.facts.n_layers

    def probes():
        return [
            BlockReplacement(blocks=n // 2),
            AttentionMask(keys=[1], blocks=list(range(n // 2, n))),
            ActivationPatch(source=source, blocks=[0, n // 2]),
        ]

    tokens = model.to_tokens(prompt)
    batch = tokens.repeat(4, 1)

    def best(fn):
        fn()
        return min(_timed(fn)[1] for _ in range(repeats))

    def plain():
        with torch.no_grad():
            model.bridge(batch)

    together, _ = best(lambda: run(model, prompt, probes(), separate=True)), None
    apart = best(lambda: [run(model, prompt, probe) for probe in probes()])
    forward = best(plain)
    out = run(model, prompt, probes(), separate=True)
    diff = max(
        float((out.conditions[p.name].logits["intervened"] - run(model, prompt, p).logits["intervened"]).abs().max())
        for p in probes()
    )
    return {
        "model": model.facts.name,
        "device": str(model.device),
        "interventions": 3,
        "separate_run_s": together,
        "three_runs_s": apart,
        "batched_forward_s": forward,
        "speedup_vs_three_runs": apart / together,
        "cost_in_batched_forwards": together / forward,
        "max_abs_diff": diff,
        "torch_threads": torch.get_num_threads(),
    }
