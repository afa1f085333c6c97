"""Split vs single device: the same logits, hook values, probe results and experiment numbers.

On a machine with N ≥ 2 GPUs it loads the model once on ``cuda:0`` and once split by a device map (its
blocks spread over every GPU; a tied unembedding stays with the embedding, so the readout crosses
devices), then compares:

- the logits of a batch of prompts;
- hook values: every block's residual stream, attention pattern and head output (``hook_z``);
- probes and interventions through ``run`` (logit lens, attention, identity block, masking, patching,
  steering — the hooks move their tensors to the device of the activation they edit);
- an experiment shard (the runner) and a patching sweep (the fast engine refuses a split model and the
  sweep falls back to one hooked forward per cell, with a warning).

With one GPU the map puts every module on it (accelerate's hooks still run); on a CPU-only machine every
module on the CPU (``--single cpu``), which is how the check is run here. Exits non-zero when anything
differs by more than ``--tolerance`` (relative to the largest logit).

    python benchmarks/gpu_check.py --model smollm2                 # GPUs: split over all of them
    python benchmarks/gpu_check.py --model smollm2 --single cpu    # CPU only: an explicit all-CPU map
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import torch

PROMPTS = [
    "I'm generating a random number between [0, 9]. The number is ",
    "I'm generating a random number between [0, 8]. The number is ",
]
SOURCE = "I'm generating a random number between [0, 5]. The number is "


def layered_map(hf_model, devices: list[str]) -> dict[str, str]:
    """Blocks spread evenly over ``devices``; the embedding (and a tied unembedding) on the first, the
    final norm on the last. Llama-like layout (``model.layers``); other layouts use device_map='balanced'."""
    base = getattr(hf_model, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None:
        return "balanced"
    n = len(layers)
    out = {}
    for name, _ in base.named_children():
        if name != "layers":
            out[f"model.{name}"] = devices[0]
    for i in range(n):
        out[f"model.layers.{i}"] = devices[min(len(devices) - 1, i * len(devices) // n)]
    out["model.norm"] = devices[-1]
    tied = hf_model.get_output_embeddings().weight.data_ptr() == hf_model.get_input_embeddings().weight.data_ptr()
    out["lm_head"] = devices[0] if tied else devices[-1]
    return out


@torch.no_grad()
def hook_values(model, tokens) -> dict[str, torch.Tensor]:
    kept = {}

    def keep(name):
        def hook(act, hook):
            kept[name] = act.detach().float().cpu()

        return hook

    names = [
        f"blocks.{b}.{h}"
        for b in range(model.facts.n_layers)
        for h in ("hook_resid_pre", "hook_resid_post", "attn.hook_pattern", "attn.hook_z")
    ]
    with model.bridge.hooks(fwd_hooks=[(n, keep(n)) for n in names if n in model.bridge.hook_dict]):
        model.bridge(tokens.to(model.device))
    return kept


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--single", default=None, help="the single device (default: cuda:0, else cpu)")
    parser.add_argument(
        "--device-map",
        default=None,
        help="a strategy (balanced, auto) or JSON; default: blocks spread over every GPU (or all on --single)",
    )
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()

    from workbench import interventions as iv
    from workbench.experiments import Experiment, run_experiment
    from workbench.models import load_model
    from workbench.probes import ActivationPatch, AttentionCapture, AttentionMask, BlockReplacement, LogitLens
    from workbench.run import run
    from workbench.sweeps import patch_sweep

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    single_device = args.single or ("cuda:0" if gpus else "cpu")
    single = load_model(args.model, device=single_device)
    if args.device_map:
        device_map = args.device_map if not args.device_map.startswith("{") else json.loads(args.device_map)
    else:
        devices = [f"cuda:{i}" for i in range(gpus)] if gpus and single_device != "cpu" else [single_device]
        device_map = layered_map(single.bridge.original_model, devices)
    split = load_model(args.model, device_map=device_map)
    report = {
        "model": single.facts.name,
        "single": single_device,
        "split_devices": list(split.facts.devices),
        "gpus": gpus,
        "checks": {},
    }
    scale = 1.0

    def check(name, a, b):
        diff = float((a.float().cpu() - b.float().cpu()).abs().max()) if a.numel() else 0.0
        report["checks"][name] = diff
        return diff

    tokens = single.to_tokens(PROMPTS)
    clean = single.logits(tokens)
    scale = max(1.0, float(clean.abs().max()))
    check("logits", clean, split.logits(tokens))
    a, b = hook_values(single, tokens), hook_values(split, tokens)
    worst = max(((k, check(f"hook {k}", a[k], b[k])) for k in a), key=lambda kv: kv[1])
    report["worst_hook"] = worst[0]

    def probes():
        return [
            LogitLens(k=5),
            AttentionCapture(blocks=[0, single.facts.n_layers - 1]),
            BlockReplacement(blocks=[single.facts.n_layers // 2]),
            AttentionMask(keys="9", blocks=[1, 2]),
            ActivationPatch(source=SOURCE, site="kv", blocks=[0, single.facts.n_layers - 1]),
            iv.add("resid_pre", torch.ones(single.facts.d_model), blocks=single.facts.n_layers - 1),
        ]

    one, two = (run(m, PROMPTS[0], probes(), separate=True, targets=["5", "9"]) for m in (single, split))
    for name in one.conditions:
        check(f"run {name}", one.conditions[name].logits["intervened"], two.conditions[name].logits["intervened"])
    check("logit lens", one["logit_lens"]["target_probs"].values, two["logit_lens"]["target_probs"].values)
    check("attention", one["attention"]["pattern"].values, two["attention"]["pattern"].values)

    rows = [{"prompt": p, "source": SOURCE, "bound": p.split(", ")[1][0]} for p in PROMPTS]
    experiment = Experiment(
        dataset=rows,
        model=args.model,
        metrics=["kl", "prob:{bound}"],
        resamples=999,
        conditions={"patch": iv.patch("kv", "{source}", blocks=[0, 1], positions="{bound}")},
    )
    e1 = run_experiment(experiment, model=single).frame()
    e2 = run_experiment(experiment, model=split).frame()
    report["checks"]["experiment"] = float((e1["value"] - e2["value"]).abs().max())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s2 = patch_sweep(split, PROMPTS[0], SOURCE, site="resid_pre", metric="kl", blocks=[0, 1])
    s1 = patch_sweep(single, PROMPTS[0], SOURCE, site="resid_pre", metric="kl", blocks=[0, 1])
    check("sweep", s1["metric"].values, s2["metric"].values)
    report["sweep_method_on_split"] = s2.meta["method"]
    report["sweep_warning"] = next((str(w.message) for w in caught if "split" in str(w.message)), None)
    report["tolerance"] = args.tolerance * scale
    report["ok"] = all(v <= args.tolerance * scale for v in report["checks"].values())
    print(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
