"""Direct logit attribution on every family: exact sums, heads that add up to their block's attention, and — where
the family's formulas are written out here with plain transformers hooks — each head's value itself."""

from __future__ import annotations

import pytest
import torch

from workbench.attribution import direct_logit_attribution
from workbench.attribution.result import attribution_result
from workbench.tokens import single_token_id

from .conftest import PROMPT
from .hf_sites import attention, forward_hooks, hf_layers

METRIC = "logit_diff:1,5"
# Every sum below is of float64 copies of float32 activations: what separates two ways of summing them is the
# float32 rounding of the activations themselves, a few ulp of the largest logit (|logit| < 100 on these models).
SUM_TOL = 1e-4


def values_by_kind(attribution, kind):
    return {
        (c.block, c.head, c.neuron): float(attribution.values[0, i])
        for i, c in enumerate(attribution.components)
        if c.kind == kind
    }


@torch.no_grad()
def own_logit_diff(hf, model) -> float:
    logits = hf(model.to_tokens(PROMPT).cpu()).logits[0, -1].double()
    return float(logits[single_token_id(model, "1")] - logits[single_token_id(model, "5")])


def test_components_sum_to_the_models_own_logit_difference(model, hf, family):
    expected = own_logit_diff(hf, model)
    for unit in ("component", "head", "layer", "neuron"):
        attribution = direct_logit_attribution(model, PROMPT, METRIC, unit=unit)
        assert attribution.exact and not [c for c in attribution.components if c.kind == "edit"], unit
        assert float(attribution.values.sum()) == pytest.approx(expected, abs=SUM_TOL * (1 + abs(expected))), unit
        assert float(attribution.total[0]) == pytest.approx(float(attribution.values.sum()), abs=1e-12)


def test_heads_sum_to_their_blocks_attention_and_neurons_to_their_mlp(model, family):
    components = direct_logit_attribution(model, PROMPT, METRIC, unit="component")
    heads = direct_logit_attribution(model, PROMPT, METRIC, unit="head")
    neurons = direct_logit_attribution(model, PROMPT, METRIC, unit="neuron")
    attn, mlp = values_by_kind(components, "attn"), values_by_kind(components, "mlp")
    per_head, head_bias = values_by_kind(heads, "head"), values_by_kind(heads, "attn_bias")
    per_neuron, mlp_bias = values_by_kind(neurons, "neuron"), values_by_kind(neurons, "mlp_bias")
    scale = 1 + max(abs(v) for v in attn.values())
    for block in range(model.facts.n_layers):
        summed = sum(v for (b, _, _), v in per_head.items() if b == block) + head_bias.get((block, None, None), 0.0)
        assert summed == pytest.approx(attn[(block, None, None)], abs=SUM_TOL * scale), block
        summed = sum(v for (b, _, _), v in per_neuron.items() if b == block) + mlp_bias.get((block, None, None), 0.0)
        assert summed == pytest.approx(mlp[(block, None, None)], abs=SUM_TOL * scale), block
    groups = {c.head: c.kv_head for c in heads.components if c.kind == "head"}
    per_group = model.facts.n_heads // model.facts.n_kv_heads
    assert groups == {h: h // per_group for h in range(model.facts.n_heads)}


def test_the_result_figures_and_json_keep_the_sum(model, family):
    result = attribution_result(direct_logit_attribution(model, PROMPT, METRIC, unit="head"), model, [PROMPT])
    data = result.to_json()
    assert sum(c["value"] for c in data["components"]) == pytest.approx(data["total"], abs=1e-9)
    assert {c["kind"] for c in data["components"]} >= {"embed", "head", "mlp", "bias"}
    figures = result.figures()
    assert set(figures) == {"heads", "components", "layers"}
    assert figures["heads"].data[0].z.shape == (model.facts.n_layers, model.facts.n_heads)


# The independent path: each family's formulas written out on plain transformers (no bridge, no workbench code).
def _rms(x, eps):
    return torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def _final_norm(hf, family_name):
    """``(module, centres, eps, gain)`` of the final norm: GPT-2's LayerNorm centres, Gemma's RMSNorm scales by
    ``1 + w``."""
    base = hf.base_model
    norm = getattr(base, "norm", None) or base.ln_f
    eps = getattr(norm, "variance_epsilon", None) or norm.eps
    gain = 1 + norm.weight.double() if family_name.startswith("tiny-gemma") else norm.weight.double()
    return norm, family_name == "tiny-gpt2", eps, gain


def hf_head_values(hf, model, family_name) -> dict[tuple[int, int], float]:
    """Each head's direct effect on logit("1") − logit("5"): z_h through its columns of the output projection,
    the post-attention norm (Gemma 2) and the final norm with their scales from this forward."""
    layers, facts = hf_layers(hf), model.facts
    captured: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, kwargs):
            captured[name] = (args[0] if args else kwargs["hidden_states"])[0, -1].detach().double()

        return hook

    projections = [getattr(attention(layer), "o_proj", None) or attention(layer).c_proj for layer in layers]
    norm, centres, eps, gain = _final_norm(hf, family_name)
    registrations = [(p, keep(f"z{i}"), "pre") for i, p in enumerate(projections)] + [(norm, keep("final"), "pre")]
    gemma = family_name.startswith("tiny-gemma")
    if gemma:
        registrations += [(layer.post_attention_layernorm, keep(f"o{i}"), "pre") for i, layer in enumerate(layers)]
    with torch.no_grad(), forward_hooks(*registrations):
        hf(model.to_tokens(PROMPT).cpu())
    final = captured["final"]
    scale = 1 / _rms(final - final.mean() if centres else final, eps)
    w_u = hf.get_output_embeddings().weight.double()
    direction = w_u[single_token_id(model, "1")] - w_u[single_token_id(model, "5")]
    out = {}
    for i, projection in enumerate(projections):
        weight = projection.weight.double()
        weight = weight if family_name == "tiny-gpt2" else weight.T  # Conv1D stores [in, out]
        for h in range(facts.n_heads):
            cols = slice(h * facts.d_head, (h + 1) * facts.d_head)
            write = captured[f"z{i}"][cols] @ weight[cols]
            if gemma:
                post = layers[i].post_attention_layernorm
                write = write * (1 + post.weight.double()) / _rms(captured[f"o{i}"], post.eps)
            if centres:
                write = write - write.mean()
            out[(i, h)] = float((write * scale * gain * direction).sum().detach())
    return out


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-mistral", "tiny-gpt2", "tiny-gemma2"])
def test_each_head_equals_the_formula_written_on_plain_transformers(name):
    from workbench.models import load_model
    from workbench.tiny import build_tiny_model

    model = load_model(name)
    hf = build_tiny_model(name)[0].eval()
    expected = hf_head_values(hf, model, name)
    got = values_by_kind(direct_logit_attribution(model, PROMPT, METRIC, unit="head"), "head")
    largest = max(abs(v) for v in expected.values())
    for (block, head), value in expected.items():
        # relative to the largest head: both sides are float64 sums of the same float32 activations
        assert got[(block, head, None)] == pytest.approx(value, abs=1e-5 * largest), (block, head)
