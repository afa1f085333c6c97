"""Interventions as data: descriptions round-trip, bad ones are refused with the package's errors, and
every operation equals the same edit written by hand with TransformerLens hooks (an independent path)."""

from __future__ import annotations

import json

import pytest
import torch

from workbench import interventions as iv
from workbench.errors import InterventionError, LayerError, ProbeError, TokenError
from workbench.interventions import Intervention, compile_hooks, resolve
from workbench.run import hook_count, run

PROMPT = "I'm generating a random number between [0, 9]. The number is "
SOURCE = "I'm generating a random number between [0, 5]. The number is "
OTHER = "I'm generating a random number between [0, 7]. The number is "


def edited(model, interventions, prompts=PROMPT):
    prompts = [prompts] if isinstance(prompts, str) else prompts
    tokens = model.to_tokens(prompts)
    resolved = [resolve(item, model, prompts, tokens) for item in interventions]
    with torch.no_grad(), model.bridge.hooks(fwd_hooks=compile_hooks(resolved)):
        return model.bridge(tokens)


def by_hand(model, hooks, prompts=PROMPT):
    with torch.no_grad():
        return model.bridge.run_with_hooks(model.to_tokens(prompts), fwd_hooks=hooks)


EXAMPLES = [
    iv.identity(blocks=2),
    iv.identity(blocks=[0, -1], site="attn_out"),
    iv.zero("mlp_out", blocks=1, positions=[3, -1]),
    iv.mean("z", blocks=1, heads=[0, 2], prompts=[PROMPT, "Hello world"]),
    iv.mask_keys(["9", 0], blocks=range(1, 3), queries=[-1, -2]),
    iv.patch("kv", SOURCE, blocks=[0, 1], positions="9", heads=[1]),
    iv.scale("attn_scores", 0.5, blocks=1),
    iv.add("resid_pre", [0.5] * 64, blocks=1, positions=-1, coefficient=-2.0),
]


@pytest.mark.parametrize("item", EXAMPLES, ids=lambda item: item.op.name + "-" + item.site)
def test_descriptions_round_trip_through_json(item):
    data = json.loads(json.dumps(item.to_dict()))
    assert Intervention.from_dict(data) == item
    assert item.describe()  # printable in titles and reports
    hash(item)  # frozen: usable as a key


def test_static_errors_name_the_problem():
    with pytest.raises(InterventionError, match="Unknown site 'resid'"):
        Intervention("resid", "zero")
    with pytest.raises(InterventionError, match="Unknown operation 'delete'"):
        Intervention("resid_pre", "delete")
    with pytest.raises(InterventionError, match="cannot edit site 'resid_pre'"):
        Intervention("resid_pre", iv.MaskKeys(("9",)))
    with pytest.raises(InterventionError, match="heads= only applies"):
        Intervention("resid_pre", "zero", heads=[0])
    with pytest.raises(InterventionError, match="no parameter"):
        Intervention.from_dict({"site": "z", "op": {"name": "scale", "factr": 2}})
    with pytest.raises(InterventionError, match="needs a source"):
        iv.patch("kv", "")
    with pytest.raises(InterventionError, match="unknown field"):
        Intervention.from_dict({"site": "z", "op": "zero", "layers": [1]})
    assert issubclass(InterventionError, ProbeError)


def test_resolution_errors_use_one_rule_per_input(tiny_qwen2):
    tokens = tiny_qwen2.to_tokens(PROMPT)
    with pytest.raises(LayerError, match="Block 9 does not exist"):
        resolve(iv.zero("attn_out", blocks=9), tiny_qwen2, [PROMPT], tokens)
    with pytest.raises(LayerError, match="empty"):
        resolve(iv.zero("attn_out", blocks=[]), tiny_qwen2, [PROMPT], tokens)
    with pytest.raises(LayerError, match="key/value heads 0–1"):
        resolve(iv.zero("k", blocks=0, heads=[2]), tiny_qwen2, [PROMPT], tokens)
    resolve(iv.zero("q", blocks=0, heads=[3]), tiny_qwen2, [PROMPT], tokens)  # 4 query heads
    with pytest.raises(TokenError, match="outside the prompt"):
        resolve(iv.zero("attn_out", blocks=0, positions=[40]), tiny_qwen2, [PROMPT], tokens)
    with pytest.raises(TokenError, match="not in the prompt"):
        resolve(iv.zero("attn_out", blocks=0, positions="zebra"), tiny_qwen2, [PROMPT], tokens)
    with pytest.raises(InterventionError, match="is 64 wide"):
        resolve(iv.add("resid_pre", [1.0, 2.0], blocks=0), tiny_qwen2, [PROMPT], tokens)
    with pytest.raises(InterventionError, match="no visible key"):
        resolve(iv.mask_keys([0], blocks=0), tiny_qwen2, [PROMPT], tokens)
    with pytest.raises(TokenError, match="do not align"):
        resolve(iv.patch("kv", PROMPT + " more words", blocks=0), tiny_qwen2, [PROMPT], tokens)
    assert hook_count(tiny_qwen2) == 0


def test_zero_and_scale_equal_hand_written_hooks(tiny_model):
    n = tiny_model.to_tokens(PROMPT).shape[-1]

    def zero_mlp(act, hook):
        act = act.clone()
        act[:, [3, n - 1]] = 0
        return act

    expected = by_hand(tiny_model, [("blocks.1.hook_mlp_out", zero_mlp)])
    assert torch.equal(edited(tiny_model, [iv.zero("mlp_out", blocks=1, positions=[3, -1])]), expected)

    def halve(scores, hook):
        return scores * 0.5

    expected = by_hand(tiny_model, [("blocks.1.attn.hook_attn_scores", halve)])
    torch.testing.assert_close(edited(tiny_model, [iv.scale("attn_scores", 0.5, blocks=1)]), expected, atol=0, rtol=0)


def test_add_is_steering_at_the_chosen_positions(tiny_qwen2):
    vector = torch.linspace(-1, 1, tiny_qwen2.facts.d_model)

    def steer(resid, hook):
        resid = resid.clone()
        resid[:, -1] += 3.0 * vector
        return resid

    expected = by_hand(tiny_qwen2, [("blocks.2.hook_resid_pre", steer)])
    got = edited(tiny_qwen2, [iv.add("resid_pre", vector, blocks=2, positions=-1, coefficient=3.0)])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_mean_over_a_dataset_is_the_token_average(tiny_qwen2):
    dataset = [PROMPT, "Hello world", "The quick brown fox"]
    captured = []

    def keep(z, hook):
        captured.append(z[0].reshape(-1, *z.shape[2:]))

    for text in dataset:
        by_hand(tiny_qwen2, [("blocks.1.attn.hook_z", keep)], text)
    mean = torch.cat(captured).mean(0)  # [head, d_head]

    def ablate(z, hook):
        z = z.clone()
        z[:, :, [0, 2]] = mean[[0, 2]]
        return z

    expected = by_hand(tiny_qwen2, [("blocks.1.attn.hook_z", ablate)])
    got = edited(tiny_qwen2, [iv.mean("z", blocks=1, heads=[0, 2], prompts=dataset)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_patch_takes_one_source_per_prompt_and_locates_text_per_prompt(tiny_qwen2):
    """Two prompts, two sources: each row gets its own source's values at "]."."""
    prompts, sources = [PROMPT, OTHER], [SOURCE, SOURCE.replace("5]", "3]")]
    together = edited(tiny_qwen2, [iv.patch("resid_pre", sources, blocks=1, positions="].")], prompts)
    for i, (prompt, source) in enumerate(zip(prompts, sources, strict=True)):
        alone = edited(tiny_qwen2, [iv.patch("resid_pre", source, blocks=1, positions="].")], prompt)
        torch.testing.assert_close(together[i], alone[0], atol=1e-5, rtol=0)
    with pytest.raises(InterventionError, match="2 source prompts for 1 prompts"):
        edited(tiny_qwen2, [iv.patch("resid_pre", sources, blocks=1)], PROMPT)


def test_interventions_compose_in_order_and_leave_no_hook(tiny_qwen2):
    """The joint effect: scale then add at the same hook is (x·2) + v, not (x + v)·2."""
    vector = torch.ones(tiny_qwen2.facts.d_model)

    def both(resid, hook):
        return resid * 2 + vector

    expected = by_hand(tiny_qwen2, [("blocks.1.hook_resid_pre", both)])
    got = edited(tiny_qwen2, [iv.scale("resid_pre", 2.0, blocks=1), iv.add("resid_pre", vector, blocks=1)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert hook_count(tiny_qwen2) == 0


def test_raw_interventions_run_as_probes(tiny_qwen2):
    out = run(tiny_qwen2, PROMPT, [iv.identity(blocks=1), iv.zero("attn_out", blocks=2)])
    assert list(out) == ["intervention", "intervention_1"]
    result = out["intervention"]
    assert result.meta["edits"] == [iv.identity(blocks=1).to_dict()]
    assert "block" in result.meta["description"] and not result.meta["noop"]
    expected = edited(tiny_qwen2, [iv.identity(blocks=1), iv.zero("attn_out", blocks=2)])
    assert torch.equal(out.logits["intervened"], expected)


def test_a_no_op_is_labelled_as_such(tiny_qwen2):
    result = run(tiny_qwen2, PROMPT, iv.mask_keys([], blocks=[0, 1]))["intervention"]
    assert result.meta["noop"] and "no-op" in result.meta["description"]
    assert float(result["kl"].values[0]) == 0.0


def test_templates_give_each_prompt_its_own_positions_keys_and_source(tiny_qwen2):
    """One description for prompts that differ: {fields} are filled from each prompt's own row."""
    prompts = [PROMPT, OTHER]
    rows = [{"bound": "9", "source": SOURCE}, {"bound": "7", "source": SOURCE.replace("5]", "3]")}]
    tokens = tiny_qwen2.to_tokens(prompts)
    template = iv.patch("kv", "{source}", blocks=[0, 1], positions="{bound}")
    resolved = resolve(template, tiny_qwen2, prompts, tokens, fields=rows)
    with torch.no_grad(), tiny_qwen2.bridge.hooks(fwd_hooks=compile_hooks([resolved])):
        together = tiny_qwen2.bridge(tokens)
    for i, (prompt, row) in enumerate(zip(prompts, rows, strict=True)):
        alone = edited(tiny_qwen2, [iv.patch("kv", row["source"], blocks=[0, 1], positions=row["bound"])], prompt)
        torch.testing.assert_close(together[i], alone[0], atol=1e-5, rtol=0)
    masked = resolve(iv.mask_keys("{bound}", blocks=1), tiny_qwen2, prompts, tokens, fields=rows)
    assert masked.state["keys"] == [[12], [12]]
    with pytest.raises(InterventionError, match="names the field 'bond'"):
        resolve(iv.zero("attn_out", blocks=0, positions="{bond}"), tiny_qwen2, prompts, tokens, fields=rows)
