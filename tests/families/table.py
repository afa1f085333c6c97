"""The family table: one row per family the matrix covers. Adding a family is one row here.

``kv`` says where keys and values live in the family's plain transformers attention module (see
:func:`hf_sites.kv_columns`); ``gguf`` is llama.cpp's architecture name for the family (``None``: llama.cpp
has none); whether transformers can de-quantize it is read from transformers itself, and where it
cannot, ``load_model`` must say so in one line;
``known`` maps a matrix column to what does not work there and why: the test of that cell asserts
the failure as stated, so a fix upstream fails the test and the row is updated.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Family:
    name: str
    kv: str
    gguf: str | None
    listed: bool = True
    known: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.name.removeprefix("tiny-")


# TransformerLens' plain AttentionBridge runs the transformers attention whole and fires the pattern hooks on a
# reconstruction afterwards: reads differ from transformers and edits are discarded, so the probes refuse.
DELEGATED = "the bridge hands attention to transformers whole: patterns cannot be read or edited (ProbeError)"
DELEGATED_STUDY = "stops at the attention step with that one-line ProbeError"

FAMILIES = [
    Family("tiny-gpt2", kv="q|k|v", gguf="gpt2"),
    Family("tiny-gpt_neox", kv="per-head qkv", gguf="gptneox"),
    Family("tiny-llama", kv="separate", gguf="llama"),
    Family("tiny-qwen2", kv="separate", gguf="qwen2"),
    Family("tiny-qwen3", kv="separate", gguf="qwen3"),
    Family("tiny-gemma2", kv="separate", gguf="gemma2"),
    Family("tiny-gemma3", kv="separate", gguf="gemma3"),
    Family("tiny-mistral", kv="separate", gguf="llama", known={
        "fast sweeps": "today's hand-written engine ignores the sliding window: its numbers differ from naive"}),
    Family("tiny-phi3", kv="q|k|v", gguf="phi3"),
    Family("tiny-olmo2", kv="separate", gguf="olmo2", known={
        "k/v patch": "per-head k is patched before OLMo 2's k_norm, which mixes all key heads (kv, v exact)"}),
    Family("tiny-gptj", kv="separate", gguf="gptj", listed=False,
           known={"attention": DELEGATED, "masking": DELEGATED, "study": DELEGATED_STUDY}),
    Family("tiny-falcon", kv="q|k|v", gguf="falcon", listed=False),
    Family("tiny-bloom", kv="per-head qkv", gguf="bloom", listed=False),
    Family("tiny-starcoder2", kv="separate", gguf="starcoder2", listed=False),
    Family("tiny-opt", kv="separate", gguf=None, listed=False,
           known={"attention": DELEGATED, "masking": DELEGATED, "study": DELEGATED_STUDY}),
    Family("tiny-phi", kv="separate", gguf="phi2", listed=False),
]
BY_NAME = {family.name: family for family in FAMILIES}
