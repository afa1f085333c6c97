"""Fixtures for the foundation tests: GGUF files written here from the tiny models, and isolated caches.

A GGUF is written the way llama.cpp's ``convert_hf_to_gguf.py`` writes one (F32 tensors, llama.cpp
tensor names, Q/K rows permuted for the llama architecture, the BPE vocabulary as ``gpt2`` metadata),
so loading it exercises transformers' real de-quantizer and GGUF tokenizer builder in well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.tiny import build_tiny_model

PROMPT = "I'm generating a random number between [0, 9]. The number is "


def _permute_for_llama_cpp(weight: np.ndarray, n_head: int, n_kv_heads: int) -> np.ndarray:
    """llama.cpp's rotary layout for Q/K rows; transformers undoes it when it loads a llama GGUF."""
    n_head = n_kv_heads if n_head != n_kv_heads else n_head
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_gguf(path: Path, name: str = "tiny-llama", drop: frozenset[str] = frozenset()) -> Path:
    """Write tiny model ``name`` (``tiny-llama`` or ``tiny-qwen2``) as an F32 GGUF at ``path``.

    ``drop`` names GGUF tensors to leave out (e.g. ``blk.2.ffn_down.weight``), to make an incomplete file.
    """
    import gguf

    hf_model, tokenizer = build_tiny_model(name)
    config = hf_model.config
    arch = config.model_type  # "llama" or "qwen2", which are also the GGUF architecture names
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_name(name)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(config.hidden_size // n_head)

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

    state = {key: value.detach().to(torch.float32).numpy() for key, value in hf_model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    if not config.tie_word_embeddings:
        writer.add_tensor("output.weight", state["lm_head.weight"])
    names = {
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "self_attn.q_proj.bias": "attn_q.bias",
        "self_attn.k_proj.bias": "attn_k.bias",
        "self_attn.v_proj.bias": "attn_v.bias",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    for block in range(config.num_hidden_layers):
        for hf_name, gguf_name in names.items():
            key = f"model.layers.{block}.{hf_name}"
            if key not in state:
                continue
            tensor = state[key]
            if arch == "llama" and gguf_name == "attn_q.weight":
                tensor = _permute_for_llama_cpp(tensor, n_head, n_head)
            elif arch == "llama" and gguf_name == "attn_k.weight":
                tensor = _permute_for_llama_cpp(tensor, n_head, n_kv)
            if f"blk.{block}.{gguf_name}" not in drop:
                writer.add_tensor(f"blk.{block}.{gguf_name}", tensor)
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


@pytest.fixture(scope="session")
def tiny_gguf_dir(tmp_path_factory) -> Path:
    """A folder with ``tiny-llama.gguf`` and ``tiny-qwen2.gguf``, written once per session."""
    folder = tmp_path_factory.mktemp("tiny-gguf")
    for name in ("tiny-llama", "tiny-qwen2"):
        write_tiny_gguf(folder / f"{name}.gguf", name)
    return folder


@pytest.fixture
def tiny_llama_gguf(tiny_gguf_dir, tmp_path) -> Path:
    """A private copy of the tiny-llama GGUF (tests may touch or move it)."""
    target = tmp_path / "model" / "tiny-llama.gguf"
    target.parent.mkdir()
    target.write_bytes((tiny_gguf_dir / "tiny-llama.gguf").read_bytes())
    return target


@pytest.fixture
def workbench_cache(tmp_path, monkeypatch) -> Path:
    """An empty model cache for this test only (``WORKBENCH_CACHE``)."""
    cache = tmp_path / "workbench-cache"
    monkeypatch.setenv("WORKBENCH_CACHE", str(cache))
    return cache


@pytest.fixture
def from_pretrained_calls(monkeypatch) -> list[tuple[str, dict]]:
    """Record every ``AutoModelForCausalLM.from_pretrained`` call as ``(path, kwargs)``.

    A call with ``gguf_file`` is a de-quantization; one without is a load of a saved folder.
    """
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained
    calls: list[tuple[str, dict]] = []

    def recording(path, *args, **kwargs):
        calls.append((str(path), dict(kwargs)))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", recording)
    return calls


@pytest.fixture(scope="session")
def smollm2_converted(tmp_path_factory):
    """Convert SmolLM2's Q4_1 GGUF once per session into a fresh cache: ``(cache, tokens, logits)``.

    The only real conversion of the test session (tens of seconds); tests that need a converted
    SmolLM2 in their own ``WORKBENCH_CACHE`` point it here.
    """
    from workbench.models import load_model

    cache = tmp_path_factory.mktemp("smollm2-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBENCH_CACHE", str(cache))
        model = load_model("smollm2", cache=True)
        tokens = model.to_tokens(PROMPT)
        logits = model.logits(tokens)
    return cache, tokens, logits
