"""run(..., separate=True): each intervention on its own rows of one forward equals running it alone;
the default (joint) applies them together. Probes are reusable: a run stores nothing on them."""

from __future__ import annotations

import pytest
import torch

from workbench.errors import ProbeError
from workbench.probes import ActivationPatch, AttentionCapture, AttentionMask, BlockReplacement, LogitLens, Probe
from workbench.run import hook_count, run

PROMPT = "I'm generating a random number between [0, 9]. The number is "
SOURCE = "I'm generating a random number between [0, 5]. The number is "
OTHER = "I'm generating a random number between [0, 7]. The number is "
TOL = dict(atol=1e-5, rtol=0)


def three():
    return [
        BlockReplacement(blocks=1),
        AttentionMask(keys=" [", blocks=[1, 2]),
        ActivationPatch(source=SOURCE, site="kv", blocks=[0, 1]),
    ]


@pytest.mark.parametrize("prompts", [PROMPT, [PROMPT, OTHER]], ids=["one prompt", "a batch"])
def test_separate_equals_each_intervention_alone(tiny_model, prompts):
    observers = [LogitLens(k=3), AttentionCapture(blocks=[0, 2])]
    together = run(tiny_model, prompts, [*three(), *observers], separate=True, targets=["0", "5", "9"])
    assert sorted(together.conditions) == ["attention_mask", "block_replacement", "patch"]
    for probe in three():
        alone = run(
            tiny_model, prompts, [probe, LogitLens(k=3), AttentionCapture(blocks=[0, 2])], targets=["0", "5", "9"]
        )
        name = probe.name
        mine = together.conditions[name]
        torch.testing.assert_close(mine.logits["intervened"], alone.logits["intervened"], **TOL)
        torch.testing.assert_close(mine.logits["clean"], alone.logits["clean"], **TOL)
        for array in ("target_probs", "top_probs", "kl"):
            torch.testing.assert_close(together[name][array].values, alone[name][array].values, **TOL)
        for observer, array in (("logit_lens", "top_probs"), ("attention", "pattern")):
            torch.testing.assert_close(mine[observer][array].values, alone[observer][array].values, **TOL)
            torch.testing.assert_close(
                mine[observer].baseline[array].values, alone[observer].baseline[array].values, **TOL
            )
        assert together[name].meta["description"] == alone[name].meta["description"]
    # The top level holds each intervention's result and the observers' clean results.
    clean = run(tiny_model, prompts, observers, targets=["0", "5", "9"])
    torch.testing.assert_close(
        together["logit_lens"]["top_probs"].values, clean["logit_lens"]["top_probs"].values, **TOL
    )
    assert hook_count(tiny_model) == 0


def test_joint_is_not_separate(tiny_qwen2):
    """The default applies the interventions together: its result differs from each alone."""
    joint = run(tiny_qwen2, PROMPT, three())
    separate = run(tiny_qwen2, PROMPT, three(), separate=True)
    for name in separate.conditions:
        assert not torch.allclose(joint.logits["intervened"], separate.conditions[name].logits["intervened"], atol=1e-4)


def test_a_probe_object_is_reusable_and_keeps_no_run_state(tiny_model):
    probe = ActivationPatch(source=SOURCE, blocks=[0])
    before = dict(vars(probe))
    first = run(tiny_model, PROMPT, probe)
    second = run(tiny_model, OTHER, probe)
    again = run(tiny_model, PROMPT, probe)
    assert vars(probe) == before
    assert torch.equal(first.logits["intervened"], again.logits["intervened"])
    assert not torch.equal(first.logits["intervened"], second.logits["intervened"])


def test_separate_refuses_edits_made_through_raw_hooks(tiny_qwen2):
    class RawEdit(Probe):
        name = "raw"
        intervenes = True

        def hooks(self, ctx):
            return [("blocks.0.hook_resid_pre", lambda act, hook: act * 0)]

    with pytest.raises(ProbeError, match="raw hooks"):
        run(tiny_qwen2, PROMPT, [RawEdit(), BlockReplacement(blocks=1)], separate=True)
    assert hook_count(tiny_qwen2) == 0


def test_core_probes_work_on_a_prompt_without_digits(tiny_model):
    """Nothing in the core probes assumes the random-number prompt: no digit, no "9", named options."""
    prompt, source = "The quick brown fox jumps over the lazy dog.", "The quick brown dog jumps over the lazy fox."
    out = run(
        tiny_model,
        prompt,
        [
            LogitLens(k=3),
            AttentionCapture(),
            BlockReplacement(blocks=1),
            AttentionMask(keys=" fox", blocks=[1, 2]),
            ActivationPatch(source=source),
        ],
        separate=True,
    )
    lens = out["logit_lens"]
    assert lens["target_probs"].coords["target"] == out.context.target_labels  # the clean run's top tokens
    assert len(out.context.target_labels) == 10
    tokens = tiny_model.str_tokens(prompt)
    assert out["patch"].meta["positions"] == [tokens.index(" fox"), tokens.index(" dog")]  # where they differ
    for name in ("block_replacement", "attention_mask", "patch"):
        assert float(out[name]["kl"].values[0]) > 0, name
        assert out[name].figure() is not None
    assert out["attention"]["pattern"].shape[1] == tiny_model.facts.n_layers
