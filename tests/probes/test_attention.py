"""Attention capture: patterns equal transformers' own eager attention weights; GQA groups, sink, display."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.errors import LayerError
from workbench.probes import AttentionCapture, display_pattern
from workbench.run import run

from .helpers import PROMPT, hf_forward


def hf_attentions(model, hf) -> torch.Tensor:
    """``[batch, layer, head, query, key]`` from ``output_attentions=True``."""
    out = hf_forward(hf, model.to_tokens(PROMPT), output_attentions=True)
    return torch.stack(out.attentions, 1).float()


def check_patterns(model, hf, result, blocks):
    expected = hf_attentions(model, hf)[:, blocks]
    pattern = result["pattern"].values
    torch.testing.assert_close(pattern, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]), atol=1e-5, rtol=0)
    n = pattern.shape[-1]
    future = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    assert (pattern[..., future] == 0).all()
    return expected


def test_patterns_match_transformers(tiny_model, hf_twins):
    result = run(tiny_model, PROMPT, AttentionCapture())["attention"]
    n = tiny_model.facts.n_layers
    check_patterns(tiny_model, hf_twins(tiny_model), result, list(range(n)))
    assert result["pattern"].dims == ("prompt", "block", "head", "query", "key")
    assert result["pattern"].coords["block"] == list(range(n))
    assert result["pattern"].coords["query"] == tiny_model.str_tokens(PROMPT)


def test_chosen_blocks_and_heads(tiny_model, hf_twins):
    blocks, heads = [1, -1], [1, 3]
    result = run(tiny_model, PROMPT, AttentionCapture(blocks=blocks, heads=heads))["attention"]
    last = tiny_model.facts.n_layers - 1
    assert result["pattern"].coords["block"] == [1, last] and result["pattern"].coords["head"] == heads
    expected = hf_attentions(tiny_model, hf_twins(tiny_model))[:, [1, last]][:, :, heads]
    torch.testing.assert_close(result["pattern"].values, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(result["pattern"].sel(block=last, head=3).values, expected[:, 1, 1], atol=1e-6, rtol=0)


def test_group_means_and_sink_share(tiny_model, hf_twins):
    result = run(tiny_model, PROMPT, AttentionCapture())["attention"]
    attn = hf_attentions(tiny_model, hf_twins(tiny_model))
    n_heads = tiny_model.bridge.original_model.config.num_attention_heads
    n_kv = tiny_model.bridge.original_model.config.num_key_value_heads
    per_group = n_heads // n_kv
    for group in range(n_kv):
        members = list(range(group * per_group, (group + 1) * per_group))  # HF's repeat_kv layout
        torch.testing.assert_close(
            result["group_mean"].sel(group=group).values, attn[:, :, members].mean(2), atol=1e-6, rtol=0
        )
        assert all(result.meta["head_to_group"][h] == group for h in members)
    sink = torch.stack([attn[..., q, 0] for q in range(1, attn.shape[-2])], -1).mean(-1)
    torch.testing.assert_close(result["sink_share"].values, sink, atol=1e-6, rtol=0)
    readout = result.meta["readout"]
    torch.testing.assert_close(result["readout_attention"].values, attn[:, :, :, readout], atol=1e-6, rtol=0)
    torch.testing.assert_close(result.attention_to(0).values, attn[0, :, :, readout, 0], atol=1e-6, rtol=0)


def test_group_mean_of_a_head_subset(tiny_llama, hf_twins):
    # Heads 0, 1 are group 0, head 2 is group 1, nothing of group 2 is captured.
    result = run(tiny_llama, PROMPT, AttentionCapture(blocks=[0], heads=[0, 1, 2]))["attention"]
    attn = hf_attentions(tiny_llama, hf_twins(tiny_llama))[:, [0]]
    group_mean = result["group_mean"].values
    torch.testing.assert_close(group_mean[:, :, 0], attn[:, :, [0, 1]].mean(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(group_mean[:, :, 1], attn[:, :, 2], atol=1e-6, rtol=0)
    assert torch.isnan(group_mean[:, :, 2]).all()


def test_display_options(tiny_qwen2):
    result = run(tiny_qwen2, PROMPT, AttentionCapture(blocks=[2]))["attention"]
    raw = result["pattern"].sel(prompt=0, block=2).numpy()
    n = raw.shape[-1]
    shown = result.patterns(2, hide_sink=True, renormalise=True)
    assert np.isnan(shown[:, 0]).all()  # query 0 sees only the sink: nothing left to show
    assert np.isnan(shown[..., 0]).all()
    rows = np.nansum(shown[:, 1:], axis=-1)
    np.testing.assert_allclose(rows, 1.0, atol=1e-6)
    for q in range(1, n):
        visible = raw[:, q, 1 : q + 1]
        np.testing.assert_allclose(shown[:, q, 1 : q + 1], visible / visible.sum(-1, keepdims=True), atol=1e-6)
        assert np.isnan(shown[:, q, q + 1 :]).all()
    no_diag = display_pattern(raw, hide_diagonal=True)
    assert np.isnan(no_diag[:, np.arange(n), np.arange(n)]).all()
    off = ~np.eye(n, dtype=bool)
    np.testing.assert_array_equal(no_diag[:, off], raw[:, off])
    both = display_pattern(raw, hide_diagonal=True, hide_sink=True, renormalise=True)
    # Query 1 sees the sink and itself only: both hidden, the row stays blank.
    assert np.isnan(both[:, 1]).all()
    np.testing.assert_allclose(np.nansum(both[:, 2:], axis=-1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(display_pattern(raw), raw)


@pytest.mark.parametrize("option", [{"blocks": 99}, {"blocks": [0, 4]}, {"heads": 4}, {"heads": [-5]}])
def test_missing_block_or_head_raises_layer_error(tiny_qwen2, option):
    with pytest.raises(LayerError, match="does not exist"):
        run(tiny_qwen2, PROMPT, AttentionCapture(**option))


def test_negative_heads_count_from_the_end(tiny_qwen2):
    last = run(tiny_qwen2, PROMPT, AttentionCapture(blocks=[1], heads=[-1]))["attention"]
    explicit = run(tiny_qwen2, PROMPT, AttentionCapture(blocks=[1], heads=[3]))["attention"]
    assert last["pattern"].coords["head"] == [3]
    assert np.array_equal(last["pattern"].numpy(), explicit["pattern"].numpy())


@pytest.mark.real
def test_smollm2_patterns(smollm2, hf_twins):
    blocks = [0, 6, 14, 21, 29]
    result = run(smollm2, PROMPT, AttentionCapture(blocks=blocks))["attention"]
    attn = check_patterns(smollm2, hf_twins(smollm2), result, blocks)
    assert result.meta["head_to_group"] == {h: h // 3 for h in range(9)}
    torch.testing.assert_close(result["group_mean"].sel(group=1).values, attn[:, :, 3:6].mean(2), atol=1e-6, rtol=0)
    shown = result.patterns(21, hide_sink=True, renormalise=True)
    np.testing.assert_allclose(np.nansum(shown[:, 1:], axis=-1), 1.0, atol=1e-5)
