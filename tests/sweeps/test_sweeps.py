"""Every fast sweep equals the naive one-hooked-forward-per-cell sweep (the reference path)."""

import numpy as np
import pytest
import torch

from workbench.errors import ProbeError
from workbench.sweeps import block_sweep, mask_sweep, patch_sweep, resolve_metric
from workbench.sweeps.attribution import attribution_sweep, compare_attribution
from workbench.sweeps.sweep import HEAD_SITES, RESID_SITES

PROMPT = "I'm generating a random number between [0, 9]. The number is "
SOURCE = "I'm generating a random number between [0, 5]. The number is "
TOL = 1e-5
# A 30-block real model's logits are O(10) in float32: the two paths sum the same terms in a different
# order (prefix cache, suffix-only blocks), which moves a logit difference by up to ~2e-5 (seen: 1.7e-5).
REAL_TOL = 1e-4


def assert_same(fast, naive, atol=TOL):
    assert fast["metric"].dims == naive["metric"].dims
    assert fast.meta["method"] == "fast" and naive.meta["method"] == "naive"
    np.testing.assert_allclose(fast["metric"].numpy(), naive["metric"].numpy(), atol=atol, rtol=0)


@pytest.mark.parametrize("site", RESID_SITES)
def test_resid_sites_match_naive(tiny_model, site):
    fast = patch_sweep(tiny_model, PROMPT, SOURCE, site=site, metric="logit_diff:9,5", method="fast")
    naive = patch_sweep(tiny_model, PROMPT, SOURCE, site=site, metric="logit_diff:9,5", method="naive")
    assert_same(fast, naive)
    assert np.abs(fast["delta"].numpy()).max() > 1e-3  # the patch does something


def test_full_grid_without_prefix_skip_matches_naive(tiny_qwen2):
    fast = patch_sweep(tiny_qwen2, PROMPT, SOURCE, metric="digits_above:5", reuse_prefix=False, method="fast")
    naive = patch_sweep(tiny_qwen2, PROMPT, SOURCE, metric="digits_above:5", method="naive")
    assert_same(fast, naive)


@pytest.mark.parametrize("site", HEAD_SITES)
@pytest.mark.parametrize("by_position", [False, True])
def test_head_sites_match_naive(tiny_model, site, by_position):
    fast = patch_sweep(
        tiny_model, PROMPT, SOURCE, site=site, by_position=by_position, metric="logit_diff:9,5", method="fast"
    )
    naive = patch_sweep(
        tiny_model, PROMPT, SOURCE, site=site, by_position=by_position, metric="logit_diff:9,5", method="naive"
    )
    assert_same(fast, naive)
    heads = tiny_model.facts.n_kv_heads if site in "kv" else tiny_model.facts.n_heads
    assert fast["metric"].shape[-1] == heads


def test_block_sweep_matches_naive(tiny_model):
    modes = ["identity", "zero_attn", "zero_mlp", "mean_attn", "mean_mlp"]
    fast = block_sweep(tiny_model, PROMPT, modes=modes, metric="kl", method="fast")
    naive = block_sweep(tiny_model, PROMPT, modes=modes, metric="kl", method="naive")
    assert_same(fast, naive)
    assert fast["metric"].shape == (5, tiny_model.facts.n_layers)


@pytest.mark.parametrize("cumulative", [False, True])
def test_mask_sweep_matches_naive(tiny_model, cumulative):
    fast = mask_sweep(tiny_model, PROMPT, cumulative=cumulative, metric="kl", method="fast")
    naive = mask_sweep(tiny_model, PROMPT, cumulative=cumulative, metric="kl", method="naive")
    assert_same(fast, naive)


def test_custom_metric_and_readout(tiny_llama):
    ids = [5, 6, 7]

    def metric(logits):
        return logits[:, ids].sum(-1)

    fast = patch_sweep(tiny_llama, PROMPT, SOURCE, metric=metric, readout=-2, method="fast")
    naive = patch_sweep(tiny_llama, PROMPT, SOURCE, metric=metric, readout=-2, method="naive")
    assert_same(fast, naive)
    # position -1 is after the readout: patching it cannot change anything
    assert np.abs(fast["delta"].numpy()[:, -1]).max() == 0


def test_sweep_result_figure_and_export(tiny_qwen2, tmp_path):
    result = patch_sweep(tiny_qwen2, PROMPT, SOURCE, site="z", by_position=True)
    assert result.figure().data[0].z.shape[0] == tiny_qwen2.facts.n_layers * tiny_qwen2.facts.n_heads
    assert set(result.figures()) >= {"delta", "metric"}
    assert result.save(tmp_path / "sweep.json").is_file()
    assert "largest change" in result.summary()


def test_metric_errors(tiny_qwen2):
    with pytest.raises(ProbeError, match="Unknown metric"):
        resolve_metric(tiny_qwen2, "entropy")
    with pytest.raises(ProbeError, match="Unknown sweep site"):
        patch_sweep(tiny_qwen2, PROMPT, SOURCE, site="resid")


def test_attribution_matches_autograd_through_the_bridge(tiny_qwen2):
    """The estimate equals Δa · ∂metric/∂a computed independently with the bridge's hook points."""
    metric = resolve_metric(tiny_qwen2, "logit_diff:9,5")
    estimate = attribution_sweep(tiny_qwen2, PROMPT, SOURCE, site="resid_pre", metric=metric)
    bridge = tiny_qwen2.bridge
    tokens, source = tiny_qwen2.to_tokens(PROMPT), tiny_qwen2.to_tokens(SOURCE)
    kept = {}

    def keep(name):
        def hook(act, hook):
            act.retain_grad()
            kept[name] = act

        return hook

    _, cache = bridge.run_with_cache(source)
    names = [f"blocks.{b}.hook_resid_pre" for b in range(tiny_qwen2.facts.n_layers)]
    with torch.enable_grad(), bridge.hooks(fwd_hooks=[(n, keep(n)) for n in names]):
        logits = bridge(tokens)[:, -1]
        metric(logits).sum().backward()
    expected = torch.stack([((cache[n][0] - kept[n][0]) * kept[n].grad[0]).sum(-1) for n in names]).detach()
    np.testing.assert_allclose(estimate["delta"].numpy(), expected.numpy(), atol=1e-4, rtol=1e-3)
    bridge.zero_grad(set_to_none=True)


def test_compare_attribution_figure(tiny_llama):
    comparison = compare_attribution(tiny_llama, PROMPT, SOURCE, site="attn_out", blocks=[0, 2])
    assert comparison["exact"].shape == comparison["attribution"].shape
    assert len(comparison.figure().data) == 4
    assert "correlation" in comparison.summary()


@pytest.mark.real
def test_smollm2_resid_pre_matches_naive(smollm2):
    blocks = [0, 14, 29]
    metric = "digits_above:5"
    fast = patch_sweep(smollm2, PROMPT, SOURCE, blocks=blocks, metric=metric, reuse_prefix=False, method="fast")
    naive = patch_sweep(smollm2, PROMPT, SOURCE, blocks=blocks, metric=metric, method="naive")
    assert fast["metric"].shape == (3, 18)
    assert_same(fast, naive, atol=REAL_TOL)


@pytest.mark.real
def test_smollm2_heads_and_blocks_match_naive(smollm2):
    fast = patch_sweep(smollm2, PROMPT, SOURCE, site="z", blocks=[6, 14], metric="logit_diff:9,5", method="fast")
    naive = patch_sweep(smollm2, PROMPT, SOURCE, site="z", blocks=[6, 14], metric="logit_diff:9,5", method="naive")
    assert_same(fast, naive, atol=REAL_TOL)
    fast = block_sweep(smollm2, PROMPT, blocks=[0, 21, 29], metric="kl", method="fast")
    naive = block_sweep(smollm2, PROMPT, blocks=[0, 21, 29], metric="kl", method="naive")
    assert_same(fast, naive, atol=REAL_TOL)
    fast = mask_sweep(
        smollm2, PROMPT, blocks=[13], keys=[0, 11], cumulative=True, metric="digits_above:5", method="fast"
    )
    naive = mask_sweep(
        smollm2, PROMPT, blocks=[13], keys=[0, 11], cumulative=True, metric="digits_above:5", method="naive"
    )
    assert_same(fast, naive, atol=REAL_TOL)
