"""Fit time and held-out KL per layer of the linear and tuned lenses, and whether "the digits appear late" survives.

    python benchmarks/lens_fit.py --model smollm2 [--corpus FILE] [--tokens 8192] [--tuned-steps 40]
        [--tokens-per-step 256] [--threads 2] [--out benchmarks/results/lens-smollm2.json]
        [--figure docs/img/lens_comparison.png]

One process, one corpus (text sampled from the model unless ``--corpus``), one train/validation/test split:
the linear lens is fitted, then the tuned lens trains from it with the stated budget; both report held-out
KL on the same test tokens as the logit lens. Then the study prompt is read through all three lenses: the
first layer at which a digit is in the top-k. Wall times come with the load average before and after each
phase (the machine may be shared), and the JSON line is also written to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

PROMPT = "I'm generating a random number between [0, 9]. The number is "


def timed(phases: dict, name: str, fn):
    before = os.getloadavg()[0]
    started = time.perf_counter()
    value = fn()
    phases[name] = {
        "seconds": round(time.perf_counter() - started, 2),
        "loadavg": [round(before, 2), round(os.getloadavg()[0], 2)],
    }
    print(f"{name}: {phases[name]['seconds']:.1f} s (load {before:.1f} → {os.getloadavg()[0]:.1f})", flush=True)
    return value


def main() -> None:
    from workbench import load_model, run
    from workbench.lenses import TunedSettings, fit_linear, fit_tuned, make_corpus
    from workbench.lenses.fit import Splits
    from workbench.lenses.lens import model_header
    from workbench.probes import TunedLens

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--corpus", default=None, help="text file (default: text sampled from the model)")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tuned-steps", type=int, default=40)
    parser.add_argument("--tokens-per-step", type=int, default=256)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--figure", type=Path, default=None, help="comparison figure (.png/.html) for the docs")
    parser.add_argument("--save-lenses", type=Path, default=None, help="folder to write linear.lens and tuned.lens")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    phases: dict = {}
    model = timed(phases, "load model", lambda: load_model(args.model))
    corpus = timed(
        phases, "corpus", lambda: make_corpus(model, args.corpus, tokens=args.tokens, seed=args.seed, progress=True)
    )
    splits = Splits.of(corpus, args.seed)
    header = {
        **model_header(model, args.model),
        "corpus": corpus.to_dict(),
        "seed": args.seed,
        "tokens": splits.tokens(skip_first=True),
        "skip_first": True,
    }
    linear = timed(phases, "linear fit", lambda: fit_linear(model, splits, header=header, progress=True))
    settings = TunedSettings(steps=args.tuned_steps, tokens_per_step=args.tokens_per_step)
    tuned = timed(
        phases,
        "tuned fit",
        lambda: fit_tuned(model, splits, linear, settings, header=header, seed=args.seed, corpus=corpus, progress=True),
    )
    readings = {}
    for name, lens in (("linear", linear), ("tuned", tuned)):
        result = run(model, PROMPT, TunedLens(lens=lens, k=args.k, positions=[-1]))["tuned_lens"]
        readings[name] = result.comparison()
    labels = linear.labels
    row = {
        "benchmark": "lens fit",
        "model": model.facts.name,
        "corpus": corpus.to_dict(),
        "tokens": splits.tokens(True),
        "phases": phases,
        "tuned_settings": tuned.header["tuned"] | {"train_kl": None},
        "ridge_alpha": linear.header["ridge"]["alpha"],
        "heldout_kl": {
            "layers": labels,
            "logit": linear.header["heldout_kl"]["logit"],
            "linear": linear.header["heldout_kl"]["lens"],
            "tuned": tuned.header["heldout_kl"]["lens"],
        },
        "prompt": PROMPT,
        "k": args.k,
        "first_in_top_k": {
            "logit": readings["linear"].first_in_top_k()["logit lens"],
            "linear": readings["linear"].first_in_top_k()["linear lens"],
            "tuned": readings["tuned"].first_in_top_k()["tuned lens"],
        },
        "in_top_k_from": {
            "logit": readings["linear"].in_top_k_from()["logit lens"],
            "linear": readings["linear"].in_top_k_from()["linear lens"],
            "tuned": readings["tuned"].in_top_k_from()["tuned lens"],
        },
        "prompt_kl": {
            "logit": readings["linear"].kl["logit lens"].tolist(),
            "linear": readings["linear"].kl["linear lens"].tolist(),
            "tuned": readings["tuned"].kl["tuned lens"].tolist(),
        },
        "prompt_best_rank": {
            "logit": readings["linear"].best_rank["logit lens"].tolist(),
            "linear": readings["linear"].best_rank["linear lens"].tolist(),
            "tuned": readings["tuned"].best_rank["tuned lens"].tolist(),
        },
        "prompt_target_mass": {
            "logit": readings["linear"].target_mass["logit lens"].tolist(),
            "linear": readings["linear"].target_mass["linear lens"].tolist(),
            "tuned": readings["tuned"].target_mass["tuned lens"].tolist(),
        },
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    print(json.dumps(row), flush=True)
    if args.save_lenses:
        linear.save(args.save_lenses / "linear.lens")
        tuned.save(args.save_lenses / "tuned.lens")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(row, indent=1) + "\n")
    if args.figure:
        from workbench.export import write_figure

        both = readings["tuned"]
        both.kl["linear lens"] = readings["linear"].kl["linear lens"]
        both.best_rank["linear lens"] = readings["linear"].best_rank["linear lens"]
        both.target_mass["linear lens"] = readings["linear"].target_mass["linear lens"]
        write_figure(both.figure(), args.figure)
    print("layer               logit    linear   tuned   (held-out KL, nats)")
    for i, layer in enumerate(labels):
        kl = row["heldout_kl"]
        print(f"{layer:18s} {kl['logit'][i]:8.4f} {kl['linear'][i]:8.4f} {kl['tuned'][i]:8.4f}")
    print(f"first layer with a digit in the top-{args.k}: {row['first_in_top_k']}")


if __name__ == "__main__":
    main()
