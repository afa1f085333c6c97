"""Random models shaped like GPT-2 small, Pythia-160M and Gemma-2-2B (scaled to ≤ 300M parameters), for the
sweep benchmarks: timing needs the shape (blocks, widths, heads, the family's own modules), not trained weights.

    python benchmarks/family_shapes.py save all --out benchmarks/shapes/      # one Hugging Face folder per shape
    workbench bench patching-sweep --model benchmarks/shapes/shape-gpt2-small --json
    python benchmarks/family_shapes.py check --layers 2                        # every shape at 2 blocks, one sweep each

The names start with ``shape-`` so that TransformerLens does not take them for its aliases of real
checkpoints (``gpt2-small``).

or in Python (``benchmarks/`` on ``sys.path``)::

    from family_shapes import load_shape
    from workbench.sweeps import bench
    bench.patching_sweep(load_shape("shape-pythia-160m"))

Each shape is its family's own transformers config with the published geometry and vocabulary size,
except where noted (``SHAPES[name].changes``). The tokenizer is the workbench's tiny BPE (512 tokens, every
digit one token), so the study prompt is 18 tokens plus the family's BOS, as with the real tokenizers.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Shape:
    architecture: str
    config: dict[str, Any]
    parameters: int  # exact count of distinct parameters, checked when built
    tokenizer_bos: bool = False
    changes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


SHAPES = {
    # GPT-2 small: 12 blocks × 768, 12 heads, learned positions (1024), tied 50257-token unembedding.
    "shape-gpt2-small": Shape(
        "gpt2",
        dict(
            num_hidden_layers=12,
            hidden_size=768,
            num_attention_heads=12,
            max_position_embeddings=1024,
            vocab_size=50257,
            tie_word_embeddings=True,
        ),
        parameters=124_439_808,
    ),
    # Pythia-160M: GPT-NeoX, 12 blocks × 768, 12 heads, MLP 3072, rotary on 1/4 of each head, parallel blocks.
    "shape-pythia-160m": Shape(
        "gpt_neox",
        dict(
            num_hidden_layers=12,
            hidden_size=768,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=2048,
            vocab_size=50304,
            use_parallel_residual=True,
            tie_word_embeddings=False,
        ),
        parameters=162_322_944,
    ),
    # Gemma-2-2B's head geometry (d_model 2304, 8 query heads sharing 4 key/value heads of 256), window 4096
    # on alternate blocks and its soft-caps; 26 → 8 blocks, MLP 9216 → 2304 and vocabulary 256000 → 24576 so
    # the whole model stays under 300M parameters (the real embedding alone is 590M).
    "shape-gemma2-2b-300m": Shape(
        "gemma2",
        dict(
            num_hidden_layers=8,
            hidden_size=2304,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=256,
            intermediate_size=2304,
            query_pre_attn_scalar=256,
            sliding_window=4096,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            max_position_embeddings=8192,
            vocab_size=24576,
            tie_word_embeddings=True,
        ),
        parameters=297_347_328,
        tokenizer_bos=True,
        changes="26 → 8 blocks, MLP 9216 → 2304, vocabulary 256000 → 24576 (≤ 300M parameters)",
    ),
}


def shape_config(name: str, **overrides):
    """The transformers config of shape ``name``; ``overrides`` (standard names) shrink it for a quick check."""
    from transformers import AutoConfig

    shape = SHAPES[name]
    config_class = type(AutoConfig.for_model(shape.architecture))
    aliases = config_class.attribute_map  # GPT-2 calls num_hidden_layers n_layer, …
    kwargs = {aliases.get(key, key): value for key, value in (shape.config | overrides).items()}
    config = config_class(**kwargs)
    config.name_or_path = name
    return config


def build_shape(name: str, seed: int = 0, **overrides):
    """``(hf_model, tokenizer)``: shape ``name`` with seeded random weights, in float32, eval mode."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    from workbench.tiny import build_tokenizer

    config = shape_config(name, **overrides)
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    config.architectures = [model_class.__name__]
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = model_class(config).eval()
    finally:
        torch.random.set_rng_state(state)
    if not overrides:
        count = sum(p.numel() for p in model.parameters())
        assert count == SHAPES[name].parameters, f"{name}: {count} parameters, expected {SHAPES[name].parameters}"
    return model, build_tokenizer(SHAPES[name].tokenizer_bos)


def load_shape(name: str, device: str | None = None, **overrides):
    """Shape ``name`` booted as a workbench :class:`~workbench.models.Model` (what the benchmarks take)."""
    from workbench.models import from_transformers

    hf_model, tokenizer = build_shape(name, **overrides)
    return from_transformers(hf_model, tokenizer, name=name, device=device)


def save_shape(name: str, folder: Path, **overrides) -> Path:
    """Write shape ``name`` as a Hugging Face folder, which ``--model FOLDER`` loads."""
    hf_model, tokenizer = build_shape(name, **overrides)
    hf_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    save = commands.add_parser("save", help="write shapes as Hugging Face folders")
    save.add_argument("names", nargs="+", help=f"{', '.join(SHAPES)} or all")
    save.add_argument("--out", type=Path, default=Path("benchmarks/shapes"))
    save.add_argument("--layers", type=int, default=None, help="fewer blocks, for a quick check")
    check = commands.add_parser("check", help="build every shape at a few blocks and run the sweep benchmark once")
    check.add_argument("--layers", type=int, default=2)
    args = parser.parse_args(argv)
    shrink = {} if args.layers is None else {"num_hidden_layers": args.layers}
    names = list(SHAPES) if args.command == "check" or "all" in args.names else args.names
    for name in names:
        if name not in SHAPES:
            sys.exit(f"error: unknown shape {name!r}: use one of {', '.join(SHAPES)} or all.")
    if args.command == "save":
        for name in names:
            print(save_shape(name, args.out / name, **shrink), flush=True)
        return
    from workbench.sweeps import bench

    for name in names:
        row = bench.patching_sweep(load_shape(name, **shrink))
        print(json.dumps({"shape": name, "blocks": args.layers, **row}), flush=True)


if __name__ == "__main__":
    main()
