"""Attention masking: the masked key gets exactly zero attention, softmax renormalises, nothing else moves."""

from __future__ import annotations

import pytest
import torch

from workbench.errors import ProbeError, TokenError
from workbench.probes import AttentionCapture, AttentionMask
from workbench.run import run

from .helpers import NINE_POSITION, PROMPT


def manual_mask_logits(model, blocks, key, heads=None, queries=None):
    """The edit written by hand: −∞ on the scores toward ``key`` with a direct ``run_with_hooks``."""
    heads = list(range(model.facts.n_heads)) if heads is None else heads
    queries = slice(None) if queries is None else list(queries)

    def mask(scores, hook):
        scores = scores.clone()
        for h in heads:
            scores[:, h, queries, key] = float("-inf")
        return scores

    with torch.no_grad():
        return model.bridge.run_with_hooks(
            model.to_tokens(PROMPT), fwd_hooks=[(f"blocks.{b}.attn.hook_attn_scores", mask) for b in blocks]
        )


def check_mask(model, probe, blocks, key, heads=None):
    result = run(model, PROMPT, [AttentionCapture(), probe])
    attention, masked = result["attention"], result["attention_mask"]
    edited, clean = attention["pattern"].values[0], attention.baseline["pattern"].values[0]
    heads = list(range(model.facts.n_heads)) if heads is None else heads
    others = [h for h in range(model.facts.n_heads) if h not in heads]
    assert masked.meta["blocks"] == blocks and masked.meta["key_positions"] == [[key]]
    for b in blocks:
        assert (edited[b][heads][:, :, key] == 0).all(), b
        assert (clean[b][heads][key:, key] > 0).all(), b
        torch.testing.assert_close(edited[b].sum(-1), torch.ones(edited[b].shape[:-1]), atol=1e-5, rtol=0)
    for b in range(blocks[0]):
        assert torch.equal(edited[b], clean[b])
    # In the first masked block the inputs are untouched, so softmax's renormalisation is visible directly:
    # p'(q, k) = p(q, k) / (1 − p(q, key)) for every other key.
    first = blocks[0]
    p = clean[first][heads]
    expected = p / (1 - p[..., key : key + 1])
    expected[..., key] = 0
    torch.testing.assert_close(edited[first][heads], expected, atol=1e-5, rtol=1e-5)
    if others:
        assert torch.equal(edited[first][others], clean[first][others])
    torch.testing.assert_close(
        result.logits["intervened"], manual_mask_logits(model, blocks, key, heads), atol=1e-5, rtol=1e-5
    )
    grid = masked["masked"].values
    assert grid.sum() == len(blocks) and all(grid[b, key] == 1 for b in blocks)
    return result


def test_keys_are_required_and_blocks_default_to_every_block(tiny_model):
    """No default key (masking "9" only makes sense for one prompt); every block by default."""
    with pytest.raises(ProbeError, match="needs the keys"):
        run(tiny_model, PROMPT, AttentionMask())
    name = tiny_model.facts.name
    result = check_mask(
        tiny_model, AttentionMask(keys="9"), list(range(tiny_model.facts.n_layers)), NINE_POSITION[name]
    )
    assert not torch.equal(result.logits["intervened"], result.logits["clean"])


def test_chosen_blocks_and_heads(tiny_model):
    key = NINE_POSITION[tiny_model.facts.name]
    check_mask(tiny_model, AttentionMask(keys="9", blocks=[0, 1], heads=[0, 3]), [0, 1], key, heads=[0, 3])


def test_key_as_position_equals_key_as_text(tiny_model):
    key = NINE_POSITION[tiny_model.facts.name]
    by_text = run(tiny_model, PROMPT, AttentionMask(keys="9", blocks=[1]))
    by_position = run(tiny_model, PROMPT, AttentionMask(keys=[key], blocks=[1]))
    by_negative = run(tiny_model, PROMPT, AttentionMask(keys=key - len(tiny_model.str_tokens(PROMPT)), blocks=[1]))
    assert torch.equal(by_text.logits["intervened"], by_position.logits["intervened"])
    assert torch.equal(by_text.logits["intervened"], by_negative.logits["intervened"])


def test_masking_no_key_is_an_exact_no_op(tiny_model):
    result = run(tiny_model, PROMPT, AttentionMask(keys=[], blocks=[0, 1]))
    assert torch.equal(result.logits["intervened"], result.logits["clean"])


def test_masking_a_key_for_queries_that_cannot_see_it_changes_nothing(tiny_model):
    key = NINE_POSITION[tiny_model.facts.name]
    blocks = list(range(tiny_model.facts.n_layers))
    result = run(tiny_model, PROMPT, AttentionMask(keys="9", blocks=blocks, queries=list(range(key))))
    assert torch.equal(result.logits["intervened"], result.logits["clean"])


def test_first_token_for_every_query_is_refused(tiny_model):
    with pytest.raises(ProbeError, match="query position 0"):
        run(tiny_model, PROMPT, AttentionMask(keys=[0]))


def test_first_token_from_query_one_on(tiny_model):
    n = len(tiny_model.str_tokens(PROMPT))
    blocks = [0, tiny_model.facts.n_layers - 1]
    result = run(
        tiny_model, PROMPT, [AttentionCapture(), AttentionMask(keys=[0], blocks=blocks, queries=list(range(1, n)))]
    )
    edited, clean = result["attention"]["pattern"].values[0], result["attention"].baseline["pattern"].values[0]
    for b in blocks:
        assert (edited[b][:, 1:, 0] == 0).all()
        assert torch.equal(edited[b][:, 0], clean[b][:, 0])  # query 0 keeps its only key
        torch.testing.assert_close(edited[b].sum(-1), torch.ones(edited[b].shape[:-1]), atol=1e-5, rtol=0)
    expected = manual_mask_logits(tiny_model, blocks, 0, queries=range(1, n))
    torch.testing.assert_close(result.logits["intervened"], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("keys", ["banana", ["9", "banana"]])
def test_key_text_not_in_prompt_raises_token_error(tiny_model, keys):
    with pytest.raises(TokenError, match="banana"):
        run(tiny_model, PROMPT, AttentionMask(keys=keys))


def test_queries_are_positions_like_keys(tiny_qwen2):
    n = len(tiny_qwen2.str_tokens(PROMPT))
    last = run(tiny_qwen2, PROMPT, AttentionMask(keys="9", blocks=[3], queries=[n - 1]))
    negative = run(tiny_qwen2, PROMPT, AttentionMask(keys="9", blocks=[3], queries=[-1]))
    assert torch.equal(negative.logits["intervened"], last.logits["intervened"])
    with pytest.raises(TokenError, match="outside"):  # positions are the token domain
        run(tiny_qwen2, PROMPT, AttentionMask(keys="9", queries=[n]))


def test_key_position_out_of_range_raises(tiny_qwen2):
    with pytest.raises(TokenError, match="outside"):
        run(tiny_qwen2, PROMPT, AttentionMask(keys=[40]))


@pytest.mark.real
def test_smollm2_mask_nine_from_block_13(smollm2):
    check_mask(
        smollm2,
        AttentionMask(keys="9", blocks=list(range(13, 30))),
        list(range(13, 30)),
        NINE_POSITION["SmolLM2-135M-Instruct"],
    )
