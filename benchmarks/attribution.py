"""Attribution benchmarks, as ratios against a baseline run in the same process.

    python benchmarks/attribution.py dla --model smollm2 --out benchmarks/results/attribution-dla-smollm2-cpu.json
    python benchmarks/attribution.py path --layers 12 --out benchmarks/results/attribution-path-gpt2-small.json

``dla``: direct logit attribution of every head (one forward with reads at the readout, then linear algebra)
against a plain forward of the same prompt: ``dla_vs_forward``.
``path``: path patching from every head into the logits and into every later head's query input, against
TransformerLens' ``get_act_patch_direct_path_all_sources(component="q")`` on a GPT-2-small-shaped random model
(TransformerLens refuses grouped-query models here): both read the same paths, so the numbers are compared too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

PROMPT = "I'm generating a random number between [0, 9]. The number is "
SOURCE = PROMPT.replace("9]", "5]")


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def dla(model_spec: str, repeats: int) -> dict:
    from workbench.attribution import direct_logit_attribution
    from workbench.models import load_model

    model = load_model(model_spec)
    tokens = model.to_tokens(PROMPT)
    forward = _median_seconds(lambda: model.logits(tokens), repeats)
    heads = _median_seconds(lambda: direct_logit_attribution(model, PROMPT, "logit_diff:1,5", unit="head"), repeats)
    return {
        "model": model.facts.name,
        "threads": torch.get_num_threads(),
        "forward_s": forward,
        "dla_heads_s": heads,
        "dla_vs_forward": heads / forward,
    }


def path(layers: int, repeats: int) -> dict:
    from family_shapes import load_shape
    from transformer_lens.patching import get_act_patch_direct_path_all_sources

    from workbench.attribution.path import path_patching
    from workbench.metrics import resolve_metric

    model = load_shape("shape-gpt2-small", num_hidden_layers=layers)
    facts, bridge = model.facts, model.bridge
    metric = resolve_metric(model, "logit_diff:1,5")
    clean, corrupt = model.to_tokens(PROMPT), model.to_tokens(SOURCE)
    with torch.no_grad():
        _, clean_cache = bridge.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_z"))
        _, corrupt_cache = bridge.run_with_cache(corrupt, names_filter=lambda n: n.endswith("hook_z"))

    def tl():
        with torch.no_grad():
            return get_act_patch_direct_path_all_sources(
                bridge, corrupt, clean_cache, corrupt_cache, lambda logits: metric(logits[:, -1])[0], verbose=False
            )

    heads = [f"a{b}.h{h}" for b in range(facts.n_layers) for h in range(facts.n_heads)]
    receivers = [f"a{b}.h{h}<q>" for b in range(1, facts.n_layers) for h in range(facts.n_heads)]
    # TransformerLens runs the corrupted prompt and patches the clean head's write into the path: ours with the
    # prompts the other way round.
    ours = lambda: path_patching(model, SOURCE, PROMPT, senders=heads, receivers=receivers, metric=metric)  # noqa: E731
    to_logits = lambda: path_patching(model, SOURCE, PROMPT, senders=heads, receivers=["logits"], metric=metric)  # noqa: E731
    tl_s = _median_seconds(tl, repeats)
    ours_s = _median_seconds(ours, repeats)
    logits_s = _median_seconds(to_logits, repeats)
    theirs, mine = tl(), ours()
    base = mine.meta["clean_metric"]
    effect = mine["effect"].numpy()
    worst = 0.0
    for j, name in enumerate(receivers):
        block, head = (int(x) for x in name[1:].split("<")[0].split(".h"))
        for i, sender in enumerate(heads):
            sb, sh = (int(x) for x in sender[1:].split(".h"))
            if sb < block:
                worst = max(worst, abs(float(theirs[sb, sh, block, head]) - (base + float(effect[i, j]))))
    return {
        "model": f"shape-gpt2-small ({layers} blocks, random weights)",
        "threads": torch.get_num_threads(),
        "paths_q": len(heads) * len(receivers),
        "transformerlens_all_sources_q_s": tl_s,
        "ours_heads_to_q_s": ours_s,
        "ours_heads_to_logits_s": logits_s,
        "speedup_q": tl_s / ours_s,
        "speedup_logits_vs_tl_all_sources": tl_s / logits_s,
        "max_abs_difference_q": worst,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("dla", "path"))
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    result = dla(args.model, args.repeats) if args.what == "dla" else path(args.layers, args.repeats)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
