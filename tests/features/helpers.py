"""SAELens-style folders with random weights, written the way SAELens' ``save_model`` writes them
(``json.dump(cfg)`` and ``safetensors.save_file(state_dict)``), not through the workbench."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

D_MODEL = 64  # tiny-qwen2


def random_weights(
    architecture: str, d_in: int = D_MODEL, d_sae: int = 96, d_out: int | None = None, seed: int = 0
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d_out = d_in if d_out is None else d_out
    weights = {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        "W_dec": torch.randn(d_sae, d_out, generator=g) / d_sae**0.5,
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "b_dec": torch.randn(d_out, generator=g) * 0.1,
    }
    if "jumprelu" in architecture:
        weights["threshold"] = torch.rand(d_sae, generator=g) * 0.3
    if architecture == "skip_transcoder":
        weights["W_skip"] = torch.randn(d_out, d_in, generator=g) / d_in**0.5
    return weights


def saelens_cfg(
    architecture: str,
    hook_name: str = "blocks.1.hook_resid_pre",
    d_in: int = D_MODEL,
    d_sae: int = 96,
    apply_b_dec_to_input: bool = True,
    **extra,
) -> dict:
    """Every field SAELens 6's ``SAEConfig.to_dict`` writes (plus ``extra``)."""
    return {
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": "tiny-qwen2",
            "hook_name": hook_name,
            "model_class_name": "HookedTransformer",
            "hook_head_index": None,
            "model_from_pretrained_kwargs": {},
            "prepend_bos": True,
            "exclude_special_tokens": False,
            "neuronpedia_id": None,
            "context_size": 128,
            "seqpos_slice": [None],
            "dataset_path": "none",
            "sae_lens_version": "6.12.0",
            "sae_lens_training_version": "6.12.0",
        },
        "architecture": architecture,
        **extra,
    }


def write_folder(folder: Path, cfg: dict, weights: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def random_sae_folder(
    folder: Path, architecture: str = "standard", hook_name: str = "blocks.1.hook_resid_pre", seed: int = 0, **cfg
) -> Path:
    d_in = cfg.pop("d_in", D_MODEL)
    d_sae = cfg.pop("d_sae", 96)
    weights = random_weights(architecture, d_in=d_in, d_sae=d_sae, seed=seed)
    return write_folder(folder, saelens_cfg(architecture, hook_name, d_in=d_in, d_sae=d_sae, **cfg), weights)
