"""Path patching against computations written by hand: sender → logits with one TransformerLens hook, sender →
a key/value head's input under grouped-query attention with plain transformers hooks; batched equals one row
at a time; names are checked before any forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from families.hf_sites import attention, forward_hooks, hf_layers, kv_columns

from workbench.attribution.path import path_patching
from workbench.errors import AttributionError
from workbench.tiny import build_tiny_model
from workbench.tokens import single_token_id

PROMPT = "I'm generating a random number between [0, 9]. The number is "
SOURCE = PROMPT.replace("9]", "5]")
RECEIVERS = ["logits", "m2", "a2.h1<q>", "a2.kv1<k>", "a2.kv2<v>", "a1.kv0<v>"]


def logit_diff(logits: torch.Tensor, model) -> float:
    return float(logits[single_token_id(model, "1")] - logits[single_token_id(model, "5")])


@pytest.fixture(scope="module")
def hf_llama():
    return build_tiny_model("tiny-llama")[0].eval()


def hf_z(hf, tokens) -> dict[int, torch.Tensor]:
    """Each layer's o_proj input (the heads' z, flattened) for one prompt, ``[pos, heads * d_head]``."""
    out = {}

    def keep(i):
        return lambda module, args, kwargs: out.__setitem__(i, args[0][0].detach().clone())

    projections = [attention(layer).o_proj for layer in hf_layers(hf)]
    with torch.no_grad(), forward_hooks(*[(p, keep(i), "pre") for i, p in enumerate(projections)]):
        hf(tokens)
    return out


def head_delta(hf, model, block, head, z_clean, z_source) -> torch.Tensor:
    d = model.facts.d_head
    cols = slice(head * d, (head + 1) * d)
    weight = attention(hf_layers(hf)[block]).o_proj.weight
    return (z_source[block][:, cols] - z_clean[block][:, cols]) @ weight[:, cols].T  # [pos, d_model]


def test_a_head_to_the_logits_equals_one_hand_written_hook(tiny_llama, hf_llama):
    model, n = tiny_llama, tiny_llama.facts.n_layers
    result = path_patching(model, PROMPT, SOURCE, senders=["a0.h3", "a1.h4", "m0"], receivers=["logits"])
    tokens, source = model.to_tokens(PROMPT), model.to_tokens(SOURCE)
    z_clean, z_source = hf_z(hf_llama, tokens), hf_z(hf_llama, source)
    clean = logit_diff(model.logits(tokens)[0, -1], model)
    for i, (block, head) in enumerate([(0, 3), (1, 4)]):
        delta = head_delta(hf_llama, model, block, head, z_clean, z_source)
        hook = (f"blocks.{n - 1}.hook_resid_post", lambda act, hook=None, delta=delta: act + delta)
        with torch.no_grad(), model.bridge.hooks(fwd_hooks=[hook]):
            patched = logit_diff(model.bridge(tokens)[0, -1], model)
        # both are one float32 forward of the same model plus the same Δ
        assert float(result["effect"].numpy()[i, 0]) == pytest.approx(patched - clean, abs=1e-5)


def test_a_head_to_a_key_value_head_equals_plain_transformers(tiny_llama, hf_llama):
    """Block 0's head 3 → block 2's key/value head 1 (keys) and 2 (values), written with transformers hooks:
    the residual into layer 2 gets Δ, its k_proj (or v_proj) output for that group is kept, and the clean run
    gets only that group's keys (values) replaced."""
    model, facts = tiny_llama, tiny_llama.facts
    tokens, source = model.to_tokens(PROMPT), model.to_tokens(SOURCE)
    z_clean, z_source = hf_z(hf_llama, tokens), hf_z(hf_llama, source)
    delta = head_delta(hf_llama, model, 0, 3, z_clean, z_source)
    layer = hf_layers(hf_llama)[2]
    clean = logit_diff(hf_llama(tokens).logits[0, -1].detach(), model)
    result = path_patching(model, PROMPT, SOURCE, senders=["a0.h3"], receivers=["a2.kv1<k>", "a2.kv2<v>"])
    for j, (part, group) in enumerate([("k", 1), ("v", 2)]):
        module, cols = kv_columns("separate", layer, facts.n_heads, facts.n_kv_heads, facts.d_head)[part]
        cols = cols[group]
        kept: dict[str, torch.Tensor] = {}

        def keep(m, a, k, out, kept=kept, cols=cols):
            kept["x"] = out[..., cols].clone()

        def add(module, args, kwargs):
            if args:
                return (args[0] + delta, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + delta}

        with (
            torch.no_grad(),
            forward_hooks((layer, add, "pre"), (module, keep)),
        ):
            hf_llama(tokens)

        def replace(m, a, k, out, kept=kept, cols=cols):
            out = out.clone()
            out[..., cols] = kept["x"]
            return out

        with torch.no_grad(), forward_hooks((module, replace)):
            patched = logit_diff(hf_llama(tokens).logits[0, -1], model)
        assert float(result["effect"].numpy()[0, j]) == pytest.approx(patched - clean, abs=1e-5), part


def test_batched_equals_one_row_at_a_time_and_paths_respect_the_order(tiny_llama):
    batched = path_patching(tiny_llama, PROMPT, SOURCE, receivers=RECEIVERS)
    alone = path_patching(tiny_llama, PROMPT, SOURCE, receivers=RECEIVERS, batch_size=1)
    np.testing.assert_allclose(batched["effect"].numpy(), alone["effect"].numpy(), atol=1e-6, equal_nan=True)
    effect, senders = batched["effect"].numpy(), batched["effect"].coords["sender"]
    # a receiver never reads a later writer: block 2's MLP from block 2's heads yes, from m2 no
    assert np.isnan(effect[senders.index("m2"), RECEIVERS.index("m2")])
    assert np.isfinite(effect[senders.index("a2.h0"), RECEIVERS.index("m2")])
    assert np.isnan(effect[senders.index("a1.h0"), RECEIVERS.index("a1.kv0<v>")])
    assert batched.figure().data[0].z.shape == (len(RECEIVERS), len(senders))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(senders=["a9.h0"]), "block 9 does not exist"),
        (dict(senders=["head 3"]), "Unknown sender"),
        (dict(receivers=["a2.h1<k>"]), "write a2.kv0<k>"),
        (dict(receivers=["a2.kv5<v>"]), "key/value head 5 does not exist"),
        (dict(receivers=["a2.kv1<q>"]), "queries belong to query heads"),
        (dict(receivers=[]), "at least one"),
    ],
)
def test_bad_names_are_refused_before_any_forward(tiny_llama, kwargs, words):
    with pytest.raises(AttributionError, match=words):
        path_patching(tiny_llama, PROMPT, SOURCE, **kwargs)
