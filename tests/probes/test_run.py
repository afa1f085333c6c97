"""run(): probes compose in one pass, batches equal single prompts, and the model is always left clean."""

from __future__ import annotations

import pytest
import torch

from workbench.errors import ProbeError, TokenError
from workbench.probes import ActivationPatch, AttentionCapture, AttentionMask, BlockReplacement, LogitLens, Probe
from workbench.run import hook_count, run

from .helpers import DIGITS, OTHER, PROMPT, SOURCE, Observe, resid_points


class Boom(Probe):
    """A probe whose hook raises mid-forward."""

    name = "boom"

    def __init__(self, point: str, intervenes: bool):
        self.point = point
        self.intervenes = intervenes

    def hooks(self, ctx):
        def explode(act, hook):
            raise RuntimeError("boom from a hook")

        return [(self.point, explode)]

    def result(self, record):
        raise AssertionError("never reached")


def logits_of(model, prompt=PROMPT):
    with torch.no_grad():
        return model.bridge(model.to_tokens(prompt))


def test_observers_compose_with_each_other(tiny_model):
    together = run(tiny_model, PROMPT, [LogitLens(k=3), AttentionCapture()])
    lens = run(tiny_model, PROMPT, LogitLens(k=3))["logit_lens"]
    attention = run(tiny_model, PROMPT, AttentionCapture())["attention"]
    assert list(together.logits) == ["clean"]
    assert torch.equal(together["logit_lens"]["top_probs"].values, lens["top_probs"].values)
    assert torch.equal(together["attention"]["pattern"].values, attention["pattern"].values)
    assert torch.equal(together.logits["clean"], logits_of(tiny_model))


def test_observers_see_the_intervention_and_keep_a_baseline(tiny_model):
    n = tiny_model.facts.n_layers
    last = n - 1
    result = run(tiny_model, PROMPT, [LogitLens(k=3), AttentionCapture(), BlockReplacement(blocks=last)])
    assert list(result.logits) == ["clean", "intervened"]
    lens, alone = result["logit_lens"], run(tiny_model, PROMPT, LogitLens(k=3))["logit_lens"]
    assert torch.equal(lens.baseline["top_probs"].values, alone["top_probs"].values)
    # The last block is the identity: its output row is the row before, and the output is that row's lens.
    assert torch.equal(
        lens["top_probs"].sel(layer=f"after block {last}").values,
        lens["top_probs"].sel(layer=f"after block {last - 1}").values,
    )
    torch.testing.assert_close(
        lens["top_probs"].sel(layer="final").values,
        lens["top_probs"].sel(layer=f"after block {last - 1}").values,
        atol=1e-6,
        rtol=0,
    )
    replaced = result["block_replacement"]
    assert torch.equal(replaced["top_probs"].sel(phase="intervened").values, result.probs("intervened").topk(10).values)
    assert float(replaced["top_probs"].sel(phase="intervened", prompt=0, rank=0).values) == pytest.approx(
        float(lens["top_probs"].sel(prompt=0, layer="final", position=-1, rank=0).values), abs=1e-6
    )
    # Attention before the replaced block is untouched; the clean pass equals a plain forward.
    assert torch.equal(result["attention"]["pattern"].values, result["attention"].baseline["pattern"].values)
    assert torch.equal(result.logits["clean"], logits_of(tiny_model))


def test_two_interventions_compose(tiny_model, hf_twins):
    """Zeroed MLP in block 0 and an identity last block, in one pass, equal both edits made on plain HF."""
    hf = hf_twins(tiny_model)
    last = tiny_model.facts.n_layers - 1
    result = run(tiny_model, PROMPT, [BlockReplacement(blocks=0, mode="zero_mlp"), BlockReplacement(blocks=last)])
    assert list(result) == ["block_replacement", "block_replacement_1"]
    assert result["block_replacement"].meta["interventions"] == ["block 0 → MLP zeroed", f"block {last} → identity"]

    class PassThrough(torch.nn.Module):
        def forward(self, hidden_states, *args, **kwargs):
            return hidden_states

    original = hf.model.layers[last]
    handle = hf.model.layers[0].mlp.register_forward_hook(lambda mod, args, out: torch.zeros_like(out))
    hf.model.layers[last] = PassThrough()
    try:
        with torch.no_grad():
            expected = hf(tiny_model.to_tokens(PROMPT)).logits
    finally:
        handle.remove()
        hf.model.layers[last] = original
    torch.testing.assert_close(result.logits["intervened"], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("intervenes", [False, True])
@pytest.mark.parametrize("point", ["blocks.0.hook_resid_pre", "blocks.1.attn.hook_pattern"])
def test_a_raising_hook_leaves_no_hook_behind(tiny_model, point, intervenes):
    before = logits_of(tiny_model)
    probes = [LogitLens(), AttentionCapture(), Boom(point, intervenes)]
    if intervenes:
        probes.insert(0, ActivationPatch(source=SOURCE))
    with pytest.raises(RuntimeError, match="boom from a hook"):
        run(tiny_model, PROMPT, probes)
    assert hook_count(tiny_model) == 0
    assert torch.equal(logits_of(tiny_model), before)


def test_errors_before_the_pass_leave_no_hook_behind(tiny_model):
    before = logits_of(tiny_model)
    with pytest.raises(TokenError):
        run(tiny_model, PROMPT, [LogitLens(), ActivationPatch(source=PROMPT + "extra words")])
    with pytest.raises(ProbeError):
        run(tiny_model, PROMPT, [AttentionCapture(), AttentionMask(keys=[0])])
    assert hook_count(tiny_model) == 0
    assert torch.equal(logits_of(tiny_model), before)


def test_every_probe_together_leaves_the_model_clean(tiny_model):
    before = logits_of(tiny_model)
    n = tiny_model.facts.n_layers
    run(
        tiny_model,
        PROMPT,
        [
            Observe(resid_points(n)),
            LogitLens(),
            AttentionCapture(),
            BlockReplacement(blocks=n - 1),
            AttentionMask(keys="9"),
            ActivationPatch(source=SOURCE, site="resid_mid"),
        ],
    )
    assert hook_count(tiny_model) == 0
    assert torch.equal(logits_of(tiny_model), before)


def test_batch_equals_each_prompt_alone(tiny_model):
    def probes():
        return [LogitLens(k=4), AttentionCapture(), BlockReplacement(blocks=0), AttentionMask(keys=" [", blocks=[1])]

    batch = run(tiny_model, [PROMPT, OTHER], probes(), targets=DIGITS)
    for i, prompt in enumerate([PROMPT, OTHER]):
        alone = run(tiny_model, prompt, probes(), targets=DIGITS)
        torch.testing.assert_close(batch.logits["intervened"][i], alone.logits["intervened"][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(batch.logits["clean"][i], alone.logits["clean"][0], atol=1e-5, rtol=0)
        for name, array in [
            ("logit_lens", "top_probs"),
            ("logit_lens", "target_probs"),
            ("attention", "pattern"),
            ("attention", "sink_share"),
            ("block_replacement", "target_probs"),
            ("attention_mask", "target_probs"),
        ]:
            ours, theirs = batch[name][array], alone[name][array]
            axis = ours.dims.index("prompt")
            torch.testing.assert_close(ours.values.select(axis, i), theirs.values.select(axis, 0), atol=1e-5, rtol=0)
        assert (batch["logit_lens"]["top_tokens"].numpy()[i] == alone["logit_lens"]["top_tokens"].numpy()[0]).all()


def test_batch_patching_uses_one_source_for_every_prompt(tiny_model):
    batch = run(tiny_model, [PROMPT, OTHER], ActivationPatch(source=SOURCE))
    for i, prompt in enumerate([PROMPT, OTHER]):
        alone = run(tiny_model, prompt, ActivationPatch(source=SOURCE))
        torch.testing.assert_close(batch.logits["intervened"][i], alone.logits["intervened"][0], atol=1e-5, rtol=0)


def test_prompts_of_unequal_length_raise_token_error(tiny_model):
    with pytest.raises(TokenError, match="same number of tokens"):
        run(tiny_model, [PROMPT, "I'm generating a random number."], LogitLens())


def test_readout_targets_and_errors(tiny_qwen2):
    result = run(tiny_qwen2, PROMPT, LogitLens(k=2), readout=3, targets=["0", " number"])
    assert result.context.readout == 3
    probs = logits_of(tiny_qwen2)[0, 3].softmax(-1)
    ids = [tiny_qwen2.tokenizer.encode(t, add_special_tokens=False)[0] for t in ("0", " number")]
    assert result.target_probs() == pytest.approx(
        {"0": float(probs[ids[0]]), " number": float(probs[ids[1]])}, abs=1e-7
    )
    assert result["logit_lens"]["target_probs"].coords["target"] == ["0", " number"]
    with pytest.raises(TokenError, match="Readout position"):
        run(tiny_qwen2, PROMPT, LogitLens(), readout=40)
    with pytest.raises(TokenError, match="not one"):
        run(tiny_qwen2, PROMPT, LogitLens(), targets=["generating"])
    with pytest.raises(ProbeError, match="No probe"):
        run(tiny_qwen2, PROMPT, [])
    with pytest.raises(ProbeError, match="No result named"):
        result["attention"]


@pytest.mark.real
def test_smollm2_raising_hook_leaves_the_model_clean(smollm2):
    before = logits_of(smollm2)
    with pytest.raises(RuntimeError, match="boom from a hook"):
        run(
            smollm2,
            PROMPT,
            [AttentionCapture(blocks=[0]), BlockReplacement(blocks=21), Boom("blocks.21.hook_resid_post", True)],
        )
    assert hook_count(smollm2) == 0
    assert torch.equal(logits_of(smollm2), before)
