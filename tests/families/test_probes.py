"""The probe invariants on every family, checked against the same edit written on plain transformers."""

from __future__ import annotations

import pytest
import torch
from probes.helpers import Observe, resid_points

from workbench.errors import ProbeError
from workbench.probes import ActivationPatch, AttentionCapture, AttentionMask, BlockReplacement, LogitLens
from workbench.probes.patching import PATCH_SITES as SITES
from workbench.run import run
from workbench.tokens import find_position

from .conftest import PROMPT, SOURCE, note
from .hf_sites import hf_identity_logits, hf_kv_patch_logits, hf_logits

ATOL = 1e-5


@torch.no_grad()
def hf_probs(hf, model, prompt=PROMPT) -> torch.Tensor:
    return hf(model.to_tokens(prompt).cpu()).logits.float().softmax(-1)


@pytest.mark.column("logit lens")
def test_lens_after_the_last_block_is_the_output_distribution(model, hf, family):
    n = model.facts.n_layers
    result = run(model, PROMPT, LogitLens(k=5))["logit_lens"]
    expected = hf_probs(hf, model)
    top = expected.topk(5, dim=-1)
    for row in (f"after block {n - 1}", "final"):
        torch.testing.assert_close(result["top_probs"].sel(layer=row).values, top.values, atol=ATOL, rtol=0)
    assert result["kl_to_final"].sel(layer=f"after block {n - 1}").values.abs().max() <= ATOL
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(model.to_tokens(PROMPT), names_filter=f"blocks.{n - 1}.hook_resid_post")
    lensed = LogitLens.unembed(model, cache[f"blocks.{n - 1}.hook_resid_post"]).softmax(-1)
    torch.testing.assert_close(lensed, expected, atol=ATOL, rtol=0)


@pytest.mark.column("identity block")
@pytest.mark.parametrize("where", ["first", "last"])
def test_identity_block_passes_the_residual_through(model, hf, family, where):
    n = model.facts.n_layers
    block = {"first": 0, "last": n - 1}[where]
    observed = run(model, PROMPT, [Observe(resid_points(n)), BlockReplacement(blocks=block)])
    clean, edited = observed["observe"]["clean"], observed["observe"]["intervened"]
    assert torch.equal(edited[f"blocks.{block}.hook_resid_post"], edited[f"blocks.{block}.hook_resid_pre"])
    for b in range(block):
        assert torch.equal(edited[f"blocks.{b}.hook_resid_post"], clean[f"blocks.{b}.hook_resid_post"]), b
    assert torch.equal(edited[f"blocks.{block}.hook_resid_pre"], clean[f"blocks.{block}.hook_resid_pre"])
    expected = hf_identity_logits(hf, model.to_tokens(PROMPT).cpu(), block)
    torch.testing.assert_close(observed.logits["intervened"], expected, atol=ATOL, rtol=0)
    assert not torch.allclose(observed.logits["intervened"], observed.logits["clean"], atol=1e-4)


@pytest.mark.column("self-patch")
@pytest.mark.parametrize("site", SITES)
def test_patching_a_prompt_with_itself_is_an_exact_no_op(model, family, site, request):
    blocks = list(range(model.facts.n_layers))
    probe = ActivationPatch(source=PROMPT, site=site, blocks=blocks)
    if site == "resid_mid" and model.facts.parallel_blocks:
        # Attention and MLP read the same residual: there is no residual between them.
        with pytest.raises(Exception, match="resid_mid"):
            run(model, PROMPT, probe)
        note(
            request,
            "parallel blocks have no resid_mid (attention and MLP read the same residual): the patch raises",
            "✓",
        )
        return
    result = run(model, PROMPT, probe)
    assert torch.equal(result.logits["intervened"], result.logits["clean"])


def refused(model, family, column, probe, request) -> bool:
    """A family whose attention the bridge cannot edit: the probe refuses in one line, and the cell says why."""
    if column not in family.known:
        assert model.facts.editable_attention
        return False
    assert not model.facts.editable_attention, (
        f"the bridge now computes {family.name}'s attention itself: "
        f"drop its '{column}' entry in tests/families/table.py"
    )
    with pytest.raises(ProbeError, match=rf"{model.facts.name}'s \({model.facts.architecture}\) attention"):
        run(model, PROMPT, probe)
    note(request, family.known[column])
    return True


@pytest.mark.column("masking")
def test_masking_no_key_is_an_exact_no_op_and_a_masked_key_gets_nothing(model, family, request):
    blocks = list(range(model.facts.n_layers))
    if refused(model, family, "masking", AttentionMask(keys="9", blocks=blocks), request):
        return
    result = run(model, PROMPT, AttentionMask(keys=[], blocks=blocks))
    assert torch.equal(result.logits["intervened"], result.logits["clean"])
    nine = find_position(model, PROMPT, "9")
    masked = run(model, PROMPT, [AttentionCapture(), AttentionMask(keys="9", blocks=blocks)])
    pattern = masked["attention"]["pattern"].values[0]
    assert (pattern[..., nine] == 0).all()
    torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]), atol=ATOL, rtol=0)
    assert not torch.allclose(masked.logits["intervened"], masked.logits["clean"], atol=1e-4)


@pytest.mark.column("attention")
def test_attention_patterns_equal_transformers_and_rows_sum_to_one(model, hf, family, request):
    if refused(model, family, "attention", AttentionCapture(), request):
        return
    pattern = run(model, PROMPT, AttentionCapture())["attention"]["pattern"].values
    tokens = model.to_tokens(PROMPT).cpu()
    with torch.no_grad():
        expected = torch.stack(hf(tokens, output_attentions=True).attentions, 1).float()
    torch.testing.assert_close(pattern, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]), atol=ATOL, rtol=0)
    n = pattern.shape[-1]
    assert (pattern[..., torch.ones(n, n, dtype=torch.bool).triu(1)] == 0).all()


@pytest.mark.column("k/v patch")
@pytest.mark.parametrize(("site", "heads"), [("kv", None), ("k", "first"), ("v", "last")])
def test_kv_patch_equals_the_same_edit_on_transformers(model, hf, family, site, heads, request):
    facts = model.facts
    blocks, nine = [0, facts.n_layers - 1], find_position(model, PROMPT, "9")
    kv_heads = None if heads is None else [0 if heads == "first" else facts.n_kv_heads - 1]
    result = run(model, PROMPT, ActivationPatch(source=SOURCE, site=site, blocks=blocks, heads=kv_heads))
    assert result["patch"].meta["positions"] == [nine]
    target, source = model.to_tokens(PROMPT).cpu(), model.to_tokens(SOURCE).cpu()
    parts = ("k", "v") if site == "kv" else (site,)
    per_head_key = site == "k" and kv_heads is not None
    if per_head_key and "k/v patch" in family.known:  # the bridge's hook_k sits before an all-heads k_norm
        expected = hf_kv_patch_logits(
            hf, family, facts, target, source, blocks, [nine], kv_heads, parts, keys_before_norm=True
        )
        after_norm = hf_kv_patch_logits(hf, family, facts, target, source, blocks, [nine], kv_heads, parts)
        assert not torch.allclose(result.logits["intervened"], after_norm, atol=1e-4), (
            f"{family.name}'s k site now sits after k_norm: drop its 'k/v patch' entry in tests/families/table.py"
        )
        note(request, family.known["k/v patch"], "◐")
    else:
        expected = hf_kv_patch_logits(hf, family, facts, target, source, blocks, [nine], kv_heads, parts)
    torch.testing.assert_close(result.logits["intervened"], expected, atol=ATOL, rtol=0)
    assert not torch.allclose(result.logits["intervened"], hf_logits(hf, target), atol=1e-5)
