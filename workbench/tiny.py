"""Tiny language models built in process: real architectures, a real BPE tokenizer, no download.

They exist so that tests run in seconds and plugin authors can try a probe without weights. Two
families mirror the two the workbench is built around:

- ``tiny-qwen2``: Qwen2 architecture, grouped-query attention (4 query heads, 2 key/value heads),
  tied embeddings, no BOS token (like Qwen2.5-0.5B-Instruct);
- ``tiny-llama``: Llama architecture, 6 query heads, 3 key/value heads, a BOS token is prepended
  (like SmolLM2-135M-Instruct).

Both share a byte-level BPE tokenizer trained here, deterministically, on a small English corpus
with Qwen2's pre-tokenizer (every digit is its own token, so "[0, 9]" splits as in the study).
The weights are random but seeded: the same seed gives bit-identical logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

TINY_SPECS = ("tiny-qwen2", "tiny-llama")

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


@dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny model; defaults give a model that runs a forward in milliseconds."""

    architecture: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_mlp: int
    prepend_bos: bool
    seed: int = 0


TINY_CONFIGS = {
    "tiny-qwen2": TinySpec("qwen2", n_layers=4, d_model=64, n_heads=4, n_kv_heads=2, d_mlp=128, prepend_bos=False),
    "tiny-llama": TinySpec("llama", n_layers=3, d_model=48, n_heads=6, n_kv_heads=3, d_mlp=96, prepend_bos=True),
}


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


def build_tiny_model(name: str, seed: int | None = None, dtype: torch.dtype = torch.float32):
    """Return ``(hf_model, tokenizer)`` for a tiny spec; same seed, same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    spec = TINY_CONFIGS[name]
    tokenizer = build_tokenizer(spec.prepend_bos)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.d_model,
        intermediate_size=spec.d_mlp,
        num_hidden_layers=spec.n_layers,
        num_attention_heads=spec.n_heads,
        num_key_value_heads=spec.n_kv_heads,
        max_position_embeddings=256,
        initializer_range=0.2,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if spec.architecture == "qwen2":
        config = Qwen2Config(tie_word_embeddings=True, **common)
        model_class = Qwen2ForCausalLM
    else:
        config = LlamaConfig(tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, **common)
        model_class = LlamaForCausalLM
    config.name_or_path = name
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(spec.seed if seed is None else seed)
    try:
        model = model_class(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.to(dtype).eval(), tokenizer
