"""Tiny language models built in process: real architectures, a real BPE tokenizer, no download.

They exist so that tests run in seconds and plugin authors can try a probe without weights. Each
``tiny-<family>`` is a seeded random model from that family's own transformers config class, small
enough to run a forward pass in milliseconds, with the family's quirks switched on where they are
cheap (a sliding window shorter than the study prompt, soft-capping, q/k norms, partial rotary,
parallel attention + MLP, fused projections, grouped key/value heads). :data:`TINY_FAMILIES` is the
table: adding a family is one row.

Two rows are the ones the workbench was built around and stay bit-identical across releases:

- ``tiny-qwen2``: Qwen2, 4 query heads sharing 2 key/value heads, tied embeddings, no BOS (like
  Qwen2.5-0.5B-Instruct);
- ``tiny-llama``: Llama, 6 query heads sharing 3 key/value heads, the tokenizer prepends a BOS
  (like SmolLM2-135M-Instruct).

Every family shares one byte-level BPE tokenizer trained here, deterministically, on a small English
corpus with Qwen2's pre-tokenizer (every digit is its own token, so "[0, 9]" splits as in the study).
Whether a BOS is prepended is the family's convention as TransformerLens applies it: with
``tokenizer_bos`` the tokenizer adds ``<|im_start|>`` itself (as Llama's does); otherwise the bridge
decides (it prepends ``<|endoftext|>`` for GPT-2-style families and nothing for Qwen, Pythia, …).
The weights are random but seeded: the same seed gives bit-identical logits.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

# Qwen2's pre-tokenizer: single digits, contractions, words with one leading non-letter.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = """\
I'm generating a random number between [0, 9]. The number is 7.
Generate a random number between [0, 9]: 4
Pick a number from 1 to 10. The answer is 3. Give me a digit: 5.
The quick brown fox jumps over the lazy dog. A random sample is not a random number.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 42 100 2024. Between zero and nine there are ten digits.
The model attends to the number, the bound, the prompt and the token. Attention is all you need.
In the Vitali set, without the axiom of choice, beyond omega, between [null, null] and [0, -inf].
Language models predict the next token. The residual stream carries information between layers.
She said: "I'm not sure." He'll go. They've been there. It's a test of the tokenizer, isn't it?
Hello world! Python code: def f(x): return x + 1 # comment
"""

# Shorter than the study prompt (18 tokens without a BOS), so a sliding window changes the result.
WINDOW = 8


@dataclass(frozen=True)
class TinySpec:
    """One tiny model: a transformers ``model_type``, its shape, and the family's own config keys.

    The shape is passed under transformers' standard names where the family's config has them;
    ``config`` adds the family's own keys (its quirks, or its names for the shape, e.g. GPT-2's
    ``n_inner``) and wins over the standard ones.
    """

    architecture: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_mlp: int
    tokenizer_bos: bool = False
    tied: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    seed: int = 0

    @property
    def family(self) -> str:
        """The family as the workbench names it (``gemma3_text`` is Gemma 3's text-only model)."""
        return self.architecture.removesuffix("_text")


def _layers(*kinds: str) -> list[str]:
    return [{"s": "sliding_attention", "f": "full_attention"}[k] for k in kinds]


S, F = "s", "f"
# Quirks set away from a family's defaults are ones its GGUF cannot carry; the family matrix says which.
TINY_FAMILIES: dict[str, TinySpec] = {
    "tiny-qwen2": TinySpec("qwen2", 4, 64, 4, 2, 128, tied=True, note="Qwen2 (tied embeddings, no BOS, like Qwen2.5)"),
    "tiny-llama": TinySpec("llama", 3, 48, 6, 3, 96, tokenizer_bos=True, note="Llama (BOS prepended, like SmolLM2)"),
    "tiny-gpt2": TinySpec(
        "gpt2",
        3,
        64,
        4,
        4,
        256,
        tied=True,
        config=dict(n_positions=1024),
        note="GPT-2 (learned positions, fused c_attn, LayerNorm, tied embeddings, 4× MLP)",
    ),
    "tiny-gpt_neox": TinySpec(
        "gpt_neox",
        3,
        64,
        4,
        4,
        128,
        config=dict(use_parallel_residual=True),
        note="GPT-NeoX / Pythia (parallel attention + MLP, rotary on 1/4 of each head, fused qkv)",
    ),
    "tiny-qwen3": TinySpec(
        "qwen3",
        3,
        64,
        4,
        2,
        128,
        tied=True,
        config=dict(head_dim=24),
        note="Qwen3 (q/k RMSNorm per head, heads × head_dim ≠ d_model)",
    ),
    "tiny-gemma2": TinySpec(
        "gemma2",
        4,
        64,
        4,
        2,
        128,
        tokenizer_bos=True,
        tied=True,
        config=dict(
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=WINDOW,
            layer_types=_layers(S, F, S, F),
            attn_logit_softcapping=2.0,
            final_logit_softcapping=3.0,
        ),
        note=f"Gemma 2 (sliding window {WINDOW} on alternate blocks, soft-capped scores and logits, query scale 24)",
    ),
    "tiny-gemma3": TinySpec(
        "gemma3_text",
        6,
        64,
        4,
        2,
        128,
        tokenizer_bos=True,
        tied=True,
        config=dict(head_dim=16, sliding_window=WINDOW),
        note=f"Gemma 3 text (q/k norms, 5 sliding-window ({WINDOW}) blocks with their own rotary base, then 1 full)",
    ),
    "tiny-mistral": TinySpec(
        "mistral",
        3,
        64,
        4,
        2,
        128,
        tokenizer_bos=True,
        config=dict(sliding_window=WINDOW),
        note=f"Mistral (sliding window {WINDOW})",
    ),
    "tiny-phi3": TinySpec("phi3", 3, 64, 4, 2, 128, note="Phi-3 (fused qkv_proj and gate_up_proj, as Phi-3-mini)"),
    "tiny-olmo2": TinySpec(
        "olmo2", 3, 64, 4, 2, 128, note="OLMo 2 (norms after attention and MLP, q/k RMSNorm across all heads)"
    ),
    # Families the issue does not list; the family matrix (docs/models.md) marks how far each one works.
    "tiny-gptj": TinySpec(
        "gptj",
        3,
        64,
        4,
        4,
        128,
        config=dict(n_inner=128, rotary_dim=8),
        note="GPT-J (parallel attention + MLP, interleaved rotary on half of each head)",
    ),
    "tiny-falcon": TinySpec(
        "falcon",
        3,
        64,
        4,
        1,
        256,
        tied=True,
        config=dict(multi_query=True, parallel_attn=True),
        note="Falcon-7B layout (multi-query attention, parallel attention + MLP)",
    ),
    "tiny-bloom": TinySpec("bloom", 3, 64, 4, 4, 256, tied=True, note="BLOOM (ALiBi position biases, fused qkv)"),
    "tiny-starcoder2": TinySpec(
        "starcoder2",
        3,
        64,
        4,
        2,
        128,
        tied=True,
        config=dict(sliding_window=WINDOW),
        note=f"StarCoder2 (LayerNorm with biases, sliding window {WINDOW})",
    ),
    "tiny-opt": TinySpec(
        "opt",
        3,
        64,
        4,
        4,
        128,
        tokenizer_bos=True,
        tied=True,
        config=dict(ffn_dim=128),
        note="OPT (learned positions offset by 2, ReLU MLP)",
    ),
    "tiny-phi": TinySpec(
        "phi",
        3,
        64,
        4,
        4,
        128,
        config=dict(rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5)),
        note="Phi-1/2 (parallel attention + MLP, rotary on half of each head)",
    ),
}
TINY_SPECS = tuple(TINY_FAMILIES)


def tiny_description(name: str) -> str:
    """One line for ``workbench models list``."""
    spec = TINY_FAMILIES[name]
    return (
        f"{spec.note}; {spec.n_layers} blocks, {spec.n_heads} query / {spec.n_kv_heads} key-value heads, "
        "built in process"
    )


@lru_cache(maxsize=4)
def _tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    return tokenizer.to_str()


def build_tokenizer(prepend_bos: bool, vocab_size: int = 512):
    """A byte-level BPE tokenizer (a ``PreTrainedTokenizerFast``) trained on a fixed corpus.

    With ``prepend_bos`` the tokenizer itself adds ``<|im_start|>`` as BOS, as SmolLM2's does.
    """
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(_tokenizer_json(vocab_size))
    bos = "<|im_start|>"
    if prepend_bos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos if prepend_bos else None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        add_bos_token=prepend_bos,
    )
    # TransformerLens reads these to decide whether the tokenizer already adds the BOS itself.
    tokenizer.init_kwargs["name_or_path"] = "workbench-tiny-bpe"
    tokenizer.init_kwargs["add_bos_token"] = prepend_bos
    return tokenizer


def tiny_config(name: str, vocab_size: int, eos_token_id: int, bos_token_id: int | None = None, **overrides):
    """The transformers config of tiny model ``name`` (its family's own config class); ``overrides`` set
    further config keys (e.g. ``sliding_window=None``)."""
    from transformers import AutoConfig

    spec = TINY_FAMILIES[name]
    config_class = type(AutoConfig.for_model(spec.architecture))
    known = {f.name for f in dataclasses.fields(config_class)} | set(config_class.attribute_map)
    standard = dict(
        vocab_size=vocab_size,
        hidden_size=spec.d_model,
        intermediate_size=spec.d_mlp,
        num_hidden_layers=spec.n_layers,
        num_attention_heads=spec.n_heads,
        num_key_value_heads=spec.n_kv_heads,
        max_position_embeddings=256,
        initializer_range=0.2,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        bos_token_id=bos_token_id,
        tie_word_embeddings=spec.tied,
    )
    aliases = config_class.attribute_map  # e.g. GPT-2's n_positions for max_position_embeddings
    kwargs: dict[str, Any] = {
        aliases.get(key, key): value for key, value in standard.items() if key in known and value is not None
    }
    kwargs |= spec.config | overrides
    config = config_class(**kwargs)
    config.name_or_path = name
    return config


def build_tiny_model(name: str, seed: int | None = None, dtype: torch.dtype = torch.float32, **overrides):
    """Return ``(hf_model, tokenizer)`` for a tiny spec; same seed, same weights.

    ``overrides`` set config keys that leave the weights' shapes alone, to see what a quirk does:
    ``build_tiny_model("tiny-gemma2", attn_logit_softcapping=None)`` has the same weights, uncapped.
    """
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    spec = TINY_FAMILIES[name]
    tokenizer = build_tokenizer(spec.tokenizer_bos)
    config = tiny_config(name, len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id, **overrides)
    # transformers annotates every auto mapping's value as the tokenizers' (slow, fast) pair; a model mapping
    # returns the model class.
    model_class: type[torch.nn.Module] = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]  # type: ignore[assignment]
    config.architectures = [model_class.__name__]  # as a saved config.json says; the bridge picks its adapter by it
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(spec.seed if seed is None else seed)
    try:
        model = model_class(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.to(dtype).eval(), tokenizer
