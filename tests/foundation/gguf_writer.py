"""Write a tiny model as a GGUF the way llama.cpp's ``convert_hf_to_gguf.py`` writes that family.

F32 tensors under llama.cpp's names (``gguf.get_tensor_name_map``), the family's hyperparameters under
its ``<arch>.*`` keys, the BPE vocabulary as ``gpt2`` tokenizer metadata, and the per-family layout
changes the converter makes, which transformers' de-quantizer must undo:

- Llama (and Mistral, which llama.cpp writes as ``llama``): Q/K rows permuted for its rotary layout;
- Gemma 2/3: every RMSNorm weight stored as ``1 + w`` (the multiplier itself);
- GPT-2: Conv1D weights stored transposed, and the tied unembedding written out as ``output.weight``;
- BLOOM: the fused qkv regrouped from (head, q/k/v) to (q/k/v, head).

Loading the file exercises transformers' real de-quantizer and GGUF tokenizer builder in well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from workbench.tiny import build_tiny_model

# llama.cpp's architecture for a transformers model_type, where the names differ (OPT: llama.cpp has none).
LLAMA_CPP_ARCHITECTURES = {
    "mistral": "llama",
    "gemma3_text": "gemma3",
    "gpt_neox": "gptneox",
    "phi": "phi2",
    "opt": None,
}


def llama_cpp_architecture(model_type: str) -> str | None:
    return LLAMA_CPP_ARCHITECTURES.get(model_type, model_type)


def _permute_for_llama_cpp(weight: np.ndarray, n_head: int, n_kv_heads: int) -> np.ndarray:
    """llama.cpp's rotary layout for Q/K rows; transformers undoes it when it loads a llama GGUF."""
    n_head = n_kv_heads if n_head != n_kv_heads else n_head
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _bloom_qkv_for_llama_cpp(tensor: np.ndarray, n_head: int) -> np.ndarray:
    """BLOOM's fused qkv rows from (head, q/k/v, d_head) to (q/k/v, head, d_head)."""
    rows = tensor.reshape(n_head, 3, -1, *tensor.shape[1:])
    return rows.swapaxes(0, 1).reshape(tensor.shape)


def _hparams(config) -> dict:
    """The hyperparameters llama.cpp writes, read from a transformers config whatever the family calls them."""
    get = lambda *names: next((getattr(config, n) for n in names if getattr(config, n, None) is not None), None)  # noqa: E731
    d_model, n_head = get("hidden_size"), get("num_attention_heads")
    n_kv = 1 if getattr(config, "multi_query", False) else get("num_key_value_heads", "num_kv_heads") or n_head
    d_head = get("head_dim") or d_model // n_head
    rope = getattr(config, "rope_parameters", None) or {}
    rotary_fraction = rope.get("partial_rotary_factor")
    return dict(
        context_length=get("max_position_embeddings", "n_positions"),
        embedding_length=d_model,
        block_count=get("num_hidden_layers"),
        feed_forward_length=get("intermediate_size", "n_inner", "ffn_hidden_size", "ffn_dim") or 4 * d_model,
        head_count=n_head,
        head_count_kv=n_kv,
        rope_freq_base=rope.get("rope_theta"),
        rope_dimension_count=get("rotary_dim") or (int(d_head * rotary_fraction) if rotary_fraction else None),
        layer_norm_rms_eps=get("rms_norm_eps"),
        layer_norm_eps=get("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"),
        key_length=get("head_dim"),
        value_length=get("head_dim"),
        sliding_window=get("sliding_window"),
        attn_logit_softcapping=get("attn_logit_softcapping"),
        final_logit_softcapping=get("final_logit_softcapping"),
        vocab_size=get("vocab_size"),
    )


def _write_tokenizer(writer, tokenizer) -> None:
    bpe = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    tokens = [token for token, _ in sorted(bpe["vocab"].items(), key=lambda item: item[1])]
    special = set(tokenizer.all_special_tokens) | {"<|im_start|>", "<|im_end|>", "<|endoftext|>"}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")  # the tiny tokenizer uses Qwen2's pre-tokenizer split
    writer.add_token_list(tokens)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]])
    writer.add_token_types([3 if token in special else 1 for token in tokens])  # 3 = control, 1 = normal
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(tokenizer.bos_token_id is not None)


def _llama_cpp_tensor(arch: str, gguf_name: str, tensor: np.ndarray, hp: dict) -> np.ndarray:
    if arch == "llama" and gguf_name.endswith("attn_q.weight"):
        return _permute_for_llama_cpp(tensor, hp["head_count"], hp["head_count"])
    if arch == "llama" and gguf_name.endswith("attn_k.weight"):
        return _permute_for_llama_cpp(tensor, hp["head_count"], hp["head_count_kv"])
    if arch in ("gemma2", "gemma3") and gguf_name.endswith("norm.weight"):
        return tensor + 1
    if arch == "gpt2" and gguf_name.endswith(
        ("attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight")
    ):
        return tensor.T.copy()
    if arch == "bloom" and "attn_qkv" in gguf_name:
        return _bloom_qkv_for_llama_cpp(tensor, hp["head_count"])
    return tensor


def _llama_cpp_name(names, base: str) -> str | None:
    """llama.cpp's name for a transformers tensor; some converters drop the base model's prefix
    (BLOOM's ``transformer.``)."""
    parts = base.split(".")
    return next(
        (names.get_name(".".join(parts[i:])) for i in range(len(parts)) if names.get_name(".".join(parts[i:]))), None
    )


def write_tiny_gguf(path: Path, name: str = "tiny-llama", drop: frozenset[str] = frozenset()) -> Path:
    """Write tiny model ``name`` (any ``tiny-<family>`` llama.cpp has an architecture for) as an F32 GGUF.

    ``drop`` names GGUF tensors to leave out (e.g. ``blk.2.ffn_down.weight``), to make an incomplete file.
    """
    import gguf

    hf_model, tokenizer = build_tiny_model(name)
    config = hf_model.config
    arch = llama_cpp_architecture(config.model_type)
    if arch is None:
        raise ValueError(f"llama.cpp has no architecture for {config.model_type!r}")
    hp = _hparams(config)
    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_name(name)
    for key, value in hp.items():
        if value is not None:
            getattr(writer, f"add_{key}")(value)
    _write_tokenizer(writer, tokenizer)

    arch_id = next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == arch)
    names = gguf.get_tensor_name_map(arch_id, hp["block_count"])
    for hf_name, value in hf_model.state_dict().items():
        base, suffix = hf_name.rsplit(".", 1)
        if base == "lm_head" and config.tie_word_embeddings and arch != "gpt2":
            continue  # llama.cpp leaves a tied unembedding out; transformers ties it back
        gguf_name = _llama_cpp_name(names, base)
        if gguf_name is None:
            raise ValueError(f"no llama.cpp name for {hf_name} ({arch})")
        tensor = _llama_cpp_tensor(arch, f"{gguf_name}.{suffix}", value.detach().to(torch.float32).numpy(), hp)
        if f"{gguf_name}.{suffix}" not in drop:
            writer.add_tensor(f"{gguf_name}.{suffix}", tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_header_only_gguf(path: Path, arch: str) -> Path:
    """A well-formed GGUF that holds nothing but ``general.architecture``."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
