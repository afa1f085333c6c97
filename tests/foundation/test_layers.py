"""The layer-naming convention (``workbench.layers``), checked against TransformerLens' own hooks.

Blocks count from 0; residual rows are ``embeddings``, ``after block i``, ``final``. The hook-name
correspondence claimed in ``docs/layers.md`` is verified on a real bridge forward pass.
"""

from __future__ import annotations

import pytest
import torch

from workbench.errors import LayerError
from workbench.layers import block_label, resid_labels, resolve_blocks, resolve_heads
from workbench.studies.random_number import STUDY_N_LAYERS, scale_block

PROMPT = "I'm generating a random number between [0, 9]. The number is "


def test_resid_labels():
    assert resid_labels(3) == ["embeddings", "after block 0", "after block 1", "after block 2", "final"]
    labels = resid_labels(STUDY_N_LAYERS)
    assert len(labels) == STUDY_N_LAYERS + 2
    # The source study's logit-lens "layer 21" is row 21 (row 0 = embeddings): the residual after block 20.
    assert labels[21] == "after block 20"
    assert labels[-2] == "after block 23"


def test_block_label():
    # The study's attention dump counts from 0, as TransformerLens does: its "layer 21" is blocks.21.
    assert block_label(21) == "block 21"
    assert block_label(0) == "block 0"


def test_labels_name_the_transformerlens_hooks(tiny_model):
    """embeddings = blocks.0.hook_resid_pre, after block i = blocks.i.hook_resid_post, final = logits."""
    n = tiny_model.facts.n_layers
    bridge = tiny_model.bridge
    tokens = tiny_model.to_tokens(PROMPT)
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(tokens)
    # Rotary models add no positional embedding: the stream entering block 0 is the token embedding.
    assert torch.equal(cache["blocks.0.hook_resid_pre"], cache["hook_embed"])
    for block in range(n - 1):
        assert torch.equal(cache[f"blocks.{block}.hook_resid_post"], cache[f"blocks.{block + 1}.hook_resid_pre"])
    with torch.no_grad():
        final = bridge.unembed(bridge.ln_final(cache[f"blocks.{n - 1}.hook_resid_post"]))
    assert torch.equal(final, logits)
    # TransformerLens' own stack labels rows by the block they enter; ours by the block that produced them.
    _, tl_labels = cache.accumulated_resid(return_labels=True)
    assert tl_labels == [*(f"{i}_pre" for i in range(n)), "final_post"]
    ours = resid_labels(n)
    assert ours[0] == "embeddings"  # 0_pre
    assert ours[1:n] == [f"after block {i - 1}" for i in range(1, n)]  # i_pre for i ≥ 1
    assert ours[n] == f"after block {n - 1}"  # final_post (before the final norm)


def test_resolve_blocks(tiny_qwen2):
    facts = tiny_qwen2.facts  # 4 blocks
    assert resolve_blocks(facts, None) == [0, 1, 2, 3]
    assert resolve_blocks(facts, None, default=[1, 2]) == [1, 2]
    assert resolve_blocks(facts, 2) == [2]
    assert resolve_blocks(facts, -1) == [3]
    assert resolve_blocks(facts, [0, -4, 3]) == [
        0,
        3,
    ]  # -4 is block 0: named twice, edited once (a scale would compound)
    assert resolve_blocks(facts, range(2)) == [0, 1]


@pytest.mark.parametrize("block", [4, 21, -5])
def test_a_block_that_does_not_exist(tiny_qwen2, block):
    with pytest.raises(
        LayerError, match=rf"Block {block} does not exist: tiny-qwen2 has blocks 0–3 \(counted from 0\)"
    ):
        resolve_blocks(tiny_qwen2.facts, block)
    with pytest.raises(IndexError):  # LayerError is also an IndexError, for code that catches that
        resolve_blocks(tiny_qwen2.facts, [0, block])


@pytest.mark.real
def test_study_blocks_exist_on_smollm2(smollm2):
    assert resolve_blocks(smollm2.facts, [6, 14, 21, -1]) == [6, 14, 21, 29]
    with pytest.raises(LayerError, match=r"has blocks 0–29"):
        resolve_blocks(smollm2.facts, 30)


def test_resolve_heads(tiny_llama):
    facts = tiny_llama.facts  # 6 query heads
    assert resolve_heads(facts, None) == list(range(6))
    assert resolve_heads(facts, 5) == [5]
    assert resolve_heads(facts, [0, 3]) == [0, 3]
    assert resolve_heads(facts, [-1, -6]) == [5, 0]  # negative heads count from the end, like blocks
    for head in (6, -7):
        with pytest.raises(LayerError, match=rf"Head {head} does not exist: tiny-llama has query heads 0–5"):
            resolve_heads(facts, head)


@pytest.mark.parametrize(
    ("study_block", "n_layers", "expected"),
    [
        (21, 24, 21),  # the study's own depth: unchanged
        (21, 30, 21),  # a deeper model (SmolLM2) has the block: unchanged
        (2, 4, 0),  # a shallow model scales every block, even one it has: round(2 * 3 / 23)
        (6, 8, 2),  # on 8 blocks the study's 6, 14, 21 become 2, 4, 6: the order survives
        (14, 8, 4),
        (21, 8, 6),
        (6, 4, 1),  # round(6 * 3 / 23)
        (14, 4, 2),  # round(14 * 3 / 23)
        (21, 4, 3),  # round(21 * 3 / 23)
        (23, 3, 2),  # the study's last block is the model's last block
        (21, 1, 0),
    ],
)
def test_scale_block(study_block, n_layers, expected):
    assert scale_block(study_block, n_layers) == expected
    assert 0 <= scale_block(study_block, n_layers) < n_layers
