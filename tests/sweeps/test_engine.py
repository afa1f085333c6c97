"""The fast engine guards itself: whatever it adds to the model's own blocks (the sliced per-layer
arguments, the cached keys/values, the readout) is checked against the bridge when it is built; a
broken engine is caught and the sweep falls back to one hooked forward per cell, saying why."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench import interventions as iv
from workbench.errors import SweepError
from workbench.sweeps import engine as engine_module
from workbench.sweeps import evaluate_cells, patch_sweep
from workbench.sweeps.engine import Cell, Engine, EngineCheckError

PROMPT = "I'm generating a random number between [0, 9]. The number is "
SOURCE = "I'm generating a random number between [0, 5]. The number is "


def test_a_clean_engine_reproduces_the_bridge(tiny_model):
    tokens = tiny_model.to_tokens(PROMPT)
    engine = Engine(tiny_model, tokens)
    with torch.no_grad():
        own = tiny_model.bridge(tokens)[0, -1].float()
    n, blocks = tokens.shape[-1], tiny_model.facts.n_layers
    cells = [Cell([], start, suffix) for start in range(blocks) for suffix in range(n)]
    logits = engine.run_cells(cells)
    torch.testing.assert_close(logits, own.expand_as(logits), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fault", ["perturbed keys", "shifted rotary", "perturbed readout"])
def test_a_broken_engine_is_caught_and_the_sweep_falls_back(tiny_qwen2, monkeypatch, fault):
    naive = patch_sweep(tiny_qwen2, PROMPT, SOURCE, metric="logit_diff:9,5", method="naive")
    if fault == "perturbed keys":
        update = engine_module._Recorder.update

        def perturbed(self, key, value, layer_idx, *args, **kwargs):
            out = update(self, key, value, layer_idx, *args, **kwargs)
            self.kv[layer_idx] = (self.kv[layer_idx][0] * 1.01, self.kv[layer_idx][1])
            return out

        monkeypatch.setattr(engine_module._Recorder, "update", perturbed)
    elif fault == "shifted rotary":
        slice_kwargs = engine_module._slice_kwargs

        def shifted(kwargs, p, n, family):
            out = slice_kwargs(kwargs, p, n, family)
            if "position_embeddings" in out and p > 0:
                out["position_embeddings"] = tuple(t.roll(1, -2) for t in out["position_embeddings"])
            return out

        monkeypatch.setattr(engine_module, "_slice_kwargs", shifted)
    else:
        unembed = Engine.unembed
        monkeypatch.setattr(Engine, "unembed", lambda self, h: unembed(self, h) * 1.001)
    with pytest.raises(EngineCheckError, match="differs from the bridge"):
        Engine(tiny_qwen2, tiny_qwen2.to_tokens(PROMPT))
    with pytest.warns(RuntimeWarning, match="fast engine refused"):
        fallback = patch_sweep(tiny_qwen2, PROMPT, SOURCE, metric="logit_diff:9,5")
    assert fallback.meta["method"] == "naive" and "refused" in fallback.meta["note"]
    np.testing.assert_array_equal(fallback["metric"].numpy(), naive["metric"].numpy())
    with pytest.raises(SweepError, match="refuses"):
        patch_sweep(tiny_qwen2, PROMPT, SOURCE, metric="logit_diff:9,5", method="fast")


def test_an_argument_the_engine_cannot_slice_is_refused(tiny_qwen2, monkeypatch):
    slice_kwargs = engine_module._slice_kwargs

    def with_unknown(kwargs, p, n, family):
        return slice_kwargs({**kwargs, "relative_bias": torch.zeros(1, 1, n)}, p, n, family)

    monkeypatch.setattr(engine_module, "_slice_kwargs", with_unknown)
    with pytest.raises(EngineCheckError, match="cannot slice the argument 'relative_bias'"):
        Engine(tiny_qwen2, tiny_qwen2.to_tokens(PROMPT))


def test_cells_of_several_interventions_start_at_the_first_edit(tiny_model):
    """A cell is any list of interventions: the engine starts at its first block and position."""
    n = tiny_model.to_tokens(PROMPT).shape[-1]
    last = tiny_model.facts.n_layers - 1
    cells = [
        [iv.patch("resid_pre", SOURCE, blocks=1, positions=[-4]), iv.scale("attn_out", 0.5, blocks=last)],
        [iv.identity(blocks=last), iv.mask_keys([3], blocks=[0], queries=list(range(4, n)))],
        [iv.patch("kv", SOURCE, blocks=[0, last], heads=[0])],
    ]
    fast = evaluate_cells(tiny_model, PROMPT, cells, method="fast")
    naive = evaluate_cells(tiny_model, PROMPT, cells, method="naive")
    assert fast.method == "fast" and naive.method == "naive"
    torch.testing.assert_close(fast.logits, naive.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.clean, naive.clean, atol=1e-5, rtol=0)


def test_a_patch_sweep_runs_its_source_once(tiny_model):
    """Every cell patches from the same source: its clean forward runs once for the grid, not once per cell
    (it did once, and made a 228-cell sweep 15× slower). Clean, source, engine self-check: a few, whatever the grid."""
    from workbench.sweeps import patch_sweep

    calls = []
    handle = tiny_model.bridge.blocks[0].register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[1]))
    try:
        result = patch_sweep(
            tiny_model,
            "I'm generating a random number between [0, 9]. The number is ",
            "I'm generating a random number between [0, 5]. The number is ",
            site="resid_pre",
            metric="logit_diff:9,5",
            method="fast",
        )
    finally:
        handle.remove()
    n = len(result.meta["tokens"]) if "tokens" in result.meta else max(calls)
    full = [c for c in calls if c == n]
    assert result["metric"].values.numel() > 4
    assert len(full) <= 5, (
        f"{len(full)} full-length forwards through block 0 for {result['metric'].values.numel()} cells"
    )
