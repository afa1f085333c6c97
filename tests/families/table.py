"""The family table: one row per family the matrix covers. Adding a family is one row here.

``kv`` says where keys and values live in the family's plain transformers attention module (see
:func:`hf_sites.kv_columns`). ``known`` maps a matrix column to what does not work there and why: the test
of that cell asserts the failure as stated, so a fix upstream fails the test and the row is updated.
``gguf_loses`` lists the config keys transformers does not read from the family's GGUF, with the value it
assumes instead: the loaded GGUF must equal the tiny model rebuilt with exactly those values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Family:
    name: str
    kv: str
    listed: bool = True
    known: dict[str, str] = field(default_factory=dict)
    gguf_loses: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.name.removeprefix("tiny-")


# TransformerLens' plain AttentionBridge runs the transformers attention whole and fires the pattern hooks on a
# reconstruction afterwards: reads differ from transformers and edits are discarded, so the probes refuse.
DELEGATED = "the bridge hands attention to transformers whole: patterns cannot be read or edited (ProbeError)"
DELEGATED_STUDY = "stops at the attention step with that one-line ProbeError"

FAMILIES = [
    Family("tiny-gpt2", kv="q|k|v"),
    Family("tiny-gpt_neox", kv="per-head qkv"),
    Family("tiny-llama", kv="separate"),
    Family("tiny-qwen2", kv="separate"),
    Family(
        "tiny-qwen3",
        kv="separate",
        known={
            "GGUF": "transformers reads no head_dim from it and assumes 128 (every Qwen3's): head_dim 24 fails to load"
        },
    ),
    Family(
        "tiny-gemma2",
        kv="separate",
        gguf_loses=dict(attn_logit_softcapping=50.0, final_logit_softcapping=30.0, query_pre_attn_scalar=256),
    ),
    Family("tiny-gemma3", kv="separate"),
    Family("tiny-mistral", kv="separate", gguf_loses=dict(sliding_window=None)),
    Family("tiny-phi3", kv="q|k|v"),
    Family(
        "tiny-olmo2",
        kv="separate",
        known={"k/v patch": "per-head k is patched before OLMo 2's k_norm, which mixes all key heads (kv, v exact)"},
    ),
    Family(
        "tiny-gptj",
        kv="separate",
        listed=False,
        known={"attention": DELEGATED, "masking": DELEGATED, "study": DELEGATED_STUDY},
    ),
    Family("tiny-falcon", kv="q|k|v", listed=False),
    Family("tiny-bloom", kv="per-head qkv", listed=False),
    Family("tiny-starcoder2", kv="separate", listed=False, gguf_loses=dict(sliding_window=None)),
    Family(
        "tiny-opt",
        kv="separate",
        listed=False,
        known={"attention": DELEGATED, "masking": DELEGATED, "study": DELEGATED_STUDY},
    ),
    Family("tiny-phi", kv="separate", listed=False),
]
BY_NAME = {family.name: family for family in FAMILIES}
