"""Block replacement: the identity really passes the residual through, ablations match plain-HF edits."""

from __future__ import annotations

import pytest
import torch

from workbench.errors import LayerError, ProbeError
from workbench.probes import BlockReplacement
from workbench.run import run

from .helpers import DIGITS, PROMPT, Observe, hf_forward, resid_points


class PassThrough(torch.nn.Module):
    """Stands in for an HF decoder layer (transformers 5 layers return the hidden states tensor)."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def hf_identity_logits(hf, tokens, block):
    original = hf.model.layers[block]
    hf.model.layers[block] = PassThrough()
    try:
        with torch.no_grad():
            return hf(tokens).logits
    finally:
        hf.model.layers[block] = original


def check_identity(model, hf, block, probe=None):
    probe = probe or BlockReplacement(blocks=block)
    observed = run(model, PROMPT, [Observe(resid_points(model.facts.n_layers)), probe], targets=DIGITS)
    clean, edited = observed["observe"]["clean"], observed["observe"]["intervened"]
    assert torch.equal(edited[f"blocks.{block}.hook_resid_post"], edited[f"blocks.{block}.hook_resid_pre"])
    assert not torch.equal(clean[f"blocks.{block}.hook_resid_post"], clean[f"blocks.{block}.hook_resid_pre"])
    for b in range(block):
        assert torch.equal(edited[f"blocks.{b}.hook_resid_post"], clean[f"blocks.{b}.hook_resid_post"]), b
    assert torch.equal(edited[f"blocks.{block}.hook_resid_pre"], clean[f"blocks.{block}.hook_resid_pre"])
    expected = hf_identity_logits(hf, model.to_tokens(PROMPT), block)
    torch.testing.assert_close(observed.logits["intervened"], expected, atol=1e-5, rtol=1e-5)
    result = observed["block_replacement"]
    probs = expected[0, -1].float().softmax(-1)
    digits = [model.tokenizer.encode(str(d), add_special_tokens=False)[0] for d in range(10)]
    torch.testing.assert_close(
        result["target_probs"].sel(phase="intervened", prompt=0).values, probs[digits], atol=1e-6, rtol=0
    )
    assert result["replaced"].values.tolist() == [float(b == block) for b in range(model.facts.n_layers)]
    return result


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_identity_block(tiny_model, hf_twins, where):
    n = tiny_model.facts.n_layers
    block = {"first": 0, "middle": n // 2, "last": n - 1}[where]
    check_identity(tiny_model, hf_twins(tiny_model), block)


@pytest.mark.parametrize("mode", ["zero_attn", "zero_mlp", "mean_attn", "mean_mlp"])
def test_ablation_matches_plain_hf(tiny_model, hf_twins, mode):
    hf, block = hf_twins(tiny_model), 1
    kind, sublayer = mode.split("_")
    module = hf.model.layers[block].self_attn if sublayer == "attn" else hf.model.layers[block].mlp

    def ablate(mod, args, output):
        out = output[0] if isinstance(output, tuple) else output
        new = torch.zeros_like(out) if kind == "zero" else out.mean(dim=(0, 1), keepdim=True).expand_as(out)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    tokens = tiny_model.to_tokens([PROMPT, PROMPT.replace("9]", "5]")])
    expected = hf_forward(hf, tokens, (module.register_forward_hook, ablate)).logits
    result = run(tiny_model, [PROMPT, PROMPT.replace("9]", "5]")], BlockReplacement(blocks=block, mode=mode))
    torch.testing.assert_close(result.logits["intervened"], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(result.logits["intervened"], result.logits["clean"])


def test_blocks_are_required_and_named_in_the_description(tiny_model):
    """No default block: the block to replace is the question itself (the study names its own)."""
    with pytest.raises(ProbeError, match="needs the blocks"):
        run(tiny_model, PROMPT, BlockReplacement())
    with pytest.raises(LayerError, match="empty"):
        run(tiny_model, PROMPT, BlockReplacement(blocks=[]))
    block = tiny_model.facts.n_layers - 1
    result = run(tiny_model, PROMPT, BlockReplacement(blocks=block))["block_replacement"]
    assert result.meta["blocks"] == [block]
    assert result.meta["description"] == f"block {block} → identity"


@pytest.mark.parametrize("blocks", [99, [0, 99], -99])
def test_missing_block_raises_layer_error(tiny_model, blocks):
    with pytest.raises(LayerError, match="does not exist"):
        run(tiny_model, PROMPT, BlockReplacement(blocks=blocks))


def test_negative_block_counts_from_the_end(tiny_qwen2):
    result = run(tiny_qwen2, PROMPT, BlockReplacement(blocks=-1))["block_replacement"]
    assert result.meta["blocks"] == [3]


def test_unknown_mode_raises_probe_error(tiny_qwen2):
    with pytest.raises(ProbeError, match="zero_attn"):
        run(tiny_qwen2, PROMPT, BlockReplacement(mode="delete"))


def test_distribution_arrays_are_consistent(tiny_qwen2):
    result = run(tiny_qwen2, PROMPT, BlockReplacement(blocks=1))
    probe = result["block_replacement"]
    clean, edited = result.probs("clean")[0], result.probs("intervened")[0]
    kl = (clean * (clean.log() - edited.log())).sum()
    assert float(probe["kl"].values[0]) == pytest.approx(float(kl), abs=1e-6)
    assert float(probe["total_variation"].values[0]) == pytest.approx(
        float(0.5 * (clean - edited).abs().sum()), abs=1e-6
    )
    top = edited.topk(10)
    torch.testing.assert_close(probe["top_probs"].sel(phase="intervened", prompt=0).values, top.values)
    assert [t for t, _ in probe.top_k("intervened")] == [tiny_qwen2.tokenizer.decode([int(i)]) for i in top.indices]
    assert probe.distribution("clean") == pytest.approx(result.target_probs("clean"), abs=1e-7)


@pytest.mark.real
def test_smollm2_identity_block_21(smollm2, hf_twins):
    result = check_identity(smollm2, hf_twins(smollm2), 21, probe=BlockReplacement(blocks=21))
    assert result.meta["blocks"] == [21] and not result.meta["noop"]
