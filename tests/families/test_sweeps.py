"""Sweeps on every family: the naive path equals plain transformers cell by cell, and the fast engine equals
the naive path wherever it supports the family (elsewhere the cell is skipped, saying so)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.sweeps import block_sweep, mask_sweep, patch_sweep
from workbench.sweeps import engine as fast_engine
from workbench.tokens import single_token_id

from .conftest import PROMPT, SOURCE, note
from .hf_sites import hf_identity_logits, hf_resid_pre_patch_logits

ATOL = 1e-5
METRIC = "logit_diff:9,5"


def logit_diff(model, logits: torch.Tensor) -> float:
    """logit("9") − logit("5") at the readout: the sweeps' ``logit_diff:9,5``, written again on plain logits."""
    return float(logits[0, -1, single_token_id(model, "9")] - logits[0, -1, single_token_id(model, "5")])


@pytest.mark.column("naive sweeps")
def test_naive_patch_sweep_equals_transformers_cell_by_cell(model, hf, family):
    sweep = patch_sweep(model, PROMPT, SOURCE, site="resid_pre", metric=METRIC, method="naive")
    target, source = model.to_tokens(PROMPT).cpu(), model.to_tokens(SOURCE).cpu()
    expected = [
        [logit_diff(model, hf_resid_pre_patch_logits(hf, target, source, b, p)) for p in range(target.shape[-1])]
        for b in range(model.facts.n_layers)
    ]
    np.testing.assert_allclose(sweep["metric"].numpy(), np.array(expected), atol=ATOL, rtol=0)
    assert np.abs(sweep["delta"].numpy()).max() > 1e-3  # the patch does something


@pytest.mark.column("naive sweeps")
def test_naive_block_sweep_equals_transformers_block_by_block(model, hf, family):
    sweep = block_sweep(model, PROMPT, modes=["identity"], metric=METRIC, method="naive")
    tokens = model.to_tokens(PROMPT).cpu()
    expected = [logit_diff(model, hf_identity_logits(hf, tokens, b)) for b in range(model.facts.n_layers)]
    np.testing.assert_allclose(sweep["metric"].numpy()[0], np.array(expected), atol=ATOL, rtol=0)


def fast_or_skip(model) -> None:
    """Run the fast cells where the engine's self-check accepts the family; where it refuses, the cell says why
    (sweeps there fall back to one hooked forward per cell, tested in the naive column)."""
    try:
        fast_engine.Engine(model, model.to_tokens(PROMPT))
    except fast_engine.EngineCheckError as exc:
        pytest.skip(f"the engine refuses ({exc}): sweeps run one forward per cell")


def assert_same(fast, naive, family, request):
    """Fast equals naive; for a family whose row states how the engine gets it wrong, it must differ."""
    assert fast.meta["method"] == "fast" and naive.meta["method"] == "naive"
    assert fast["metric"].dims == naive["metric"].dims
    if "fast sweeps" in family.known:
        assert not np.allclose(fast["metric"].numpy(), naive["metric"].numpy(), atol=ATOL, rtol=0), (
            f"the fast engine now equals naive on {family.name}: "
            "drop its 'fast sweeps' entry in tests/families/table.py"
        )
        note(request, family.known["fast sweeps"])
        return
    np.testing.assert_allclose(fast["metric"].numpy(), naive["metric"].numpy(), atol=ATOL, rtol=0)


@pytest.mark.column("fast sweeps")
@pytest.mark.parametrize("site", ["resid_pre", "attn_out", "z", "v"])
def test_fast_patch_sweep_equals_one_hooked_forward_per_cell(model, family, site, request):
    fast_or_skip(model)
    fast = patch_sweep(model, PROMPT, SOURCE, site=site, metric=METRIC, method="fast")
    naive = patch_sweep(model, PROMPT, SOURCE, site=site, metric=METRIC, method="naive")
    assert_same(fast, naive, family, request)


@pytest.mark.column("fast sweeps")
@pytest.mark.parametrize("sweep", ["blocks", "masks"])
def test_fast_block_and_mask_sweeps_equal_the_naive_ones(model, family, sweep, request):
    fast_or_skip(model)
    if sweep == "masks" and not model.facts.editable_attention:
        pytest.skip("the bridge hands this family's attention to transformers: its scores cannot be masked")
    if sweep == "blocks":
        modes = ["identity", "zero_attn", "mean_mlp"]
        results = [block_sweep(model, PROMPT, modes=modes, metric="kl", method=m) for m in ("fast", "naive")]
    else:
        results = [mask_sweep(model, PROMPT, cumulative=True, metric="kl", method=m) for m in ("fast", "naive")]
    assert_same(*results, family, request)
