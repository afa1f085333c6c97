"""Activation patching: self-patching is exact, every site equals the same edit made on the plain HF model."""

from __future__ import annotations

import pytest
import torch

from workbench.errors import LayerError, ProbeError, TokenError
from workbench.probes import ActivationPatch, AttentionCapture
from workbench.run import run
from workbench.tokens import find_position

from .helpers import NINE_POSITION, PROMPT, SITES, SOURCE, heads_of, hf_forward

RESIDUAL_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
# Study blocks 6 and 14 of 24 at the same relative depth.
SCALED_BLOCKS = {"tiny-qwen2": [1, 2], "tiny-llama": [1]}  # the study's blocks 6, 14 at the same relative depth


def hf_site(hf, site: str, block: int):
    """``(module, "out" | "pre", n_heads or None)``: where transformers computes the activation of ``site``."""
    layer, config = hf.model.layers[block], hf.config
    attn = layer.self_attn
    return {
        "q": (attn.q_proj, "out", config.num_attention_heads),
        "k": (attn.k_proj, "out", config.num_key_value_heads),
        "v": (attn.v_proj, "out", config.num_key_value_heads),
        "z": (attn.o_proj, "pre", config.num_attention_heads),
        "resid_pre": (layer, "pre", None),
        "resid_post": (layer, "out", None),
        "attn_out": (attn, "out", None),
        "mlp_out": (layer.mlp, "out", None),
    }[site]


def _get(args, kwargs, output, kind):
    if kind == "pre":
        return args[0] if args else kwargs["hidden_states"]
    return output[0] if isinstance(output, tuple) else output


def hf_patched_logits(hf, target, source, site, blocks, positions, heads=None):
    """Patch written on plain transformers modules with torch hooks: capture on ``source``, write on ``target``.

    ``resid_mid`` has no module boundary in HF; since the MLP acts per position, patching the residual
    between attention and MLP at some positions gives exactly the source's block output there, so it is
    checked as ``resid_post`` at the same positions.
    """
    parts = ["k", "v"] if site == "kv" else ["resid_post"] if site == "resid_mid" else [site]
    sites = [(b, part, *hf_site(hf, part, b)) for b in blocks for part in parts]
    captured = {}

    def capture(key, kind):
        def hook(module, args, kwargs_or_output, *rest):
            kwargs = kwargs_or_output if kind == "pre" else {}
            captured[key] = _get(args, kwargs, kwargs_or_output, kind).detach().clone()

        return hook

    def replace(key, kind, n_heads):
        def write(act):
            act = act.clone()
            src = captured[key].expand_as(act)
            if heads is None:
                act[:, positions] = src[:, positions]
            else:
                view, src_view = heads_of(act, n_heads), heads_of(src, n_heads)
                for p in positions:
                    view[:, p, heads] = src_view[:, p, heads]
            return act

        def hook(module, args, kwargs_or_output):
            if kind == "pre":
                args, kwargs = list(args), dict(kwargs_or_output)
                if args:
                    args[0] = write(args[0])
                else:
                    kwargs["hidden_states"] = write(kwargs["hidden_states"])
                return tuple(args), kwargs
            output = kwargs_or_output
            if isinstance(output, tuple):
                return (write(output[0]), *output[1:])
            return write(output)

        return hook

    def registrations(make):
        regs = []
        for b, part, module, kind, n_heads in sites:
            key = (b, part)
            fn = make(key, kind) if make is capture else make(key, kind, n_heads)
            if kind == "pre":
                regs.append((module.register_forward_pre_hook, fn, {"with_kwargs": True}))
            else:
                regs.append((module.register_forward_hook, fn))
        return regs

    hf_forward(hf, source, *registrations(capture))
    return hf_forward(hf, target, *registrations(replace)).logits


@pytest.mark.parametrize("site", SITES)
def test_patching_a_prompt_with_itself_is_an_exact_no_op(tiny_model, site):
    blocks = list(range(tiny_model.facts.n_layers))
    result = run(tiny_model, PROMPT, ActivationPatch(source=PROMPT, site=site, blocks=blocks))
    assert result["patch"].meta["positions"] == list(range(len(tiny_model.str_tokens(PROMPT))))
    assert torch.equal(result.logits["intervened"], result.logits["clean"])


@pytest.mark.parametrize("site", SITES)
def test_site_matches_plain_hf(tiny_model, hf_twins, site):
    name, n = tiny_model.facts.name, tiny_model.facts.n_layers
    blocks, nine = [0, n - 1], NINE_POSITION[name]
    result = run(tiny_model, PROMPT, ActivationPatch(source=SOURCE, site=site, blocks=blocks))
    assert result["patch"].meta["positions"] == [nine]
    expected = hf_patched_logits(
        hf_twins(tiny_model), tiny_model.to_tokens(PROMPT), tiny_model.to_tokens(SOURCE), site, blocks, [nine]
    )
    torch.testing.assert_close(result.logits["intervened"], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(result.logits["intervened"], result.logits["clean"], atol=1e-4)


@pytest.mark.parametrize(("site", "heads"), [("kv", [1]), ("k", [0]), ("v", [1]), ("q", [0, 3]), ("z", [2])])
def test_per_head_patch_matches_plain_hf(tiny_model, hf_twins, site, heads):
    nine = NINE_POSITION[tiny_model.facts.name]
    result = run(tiny_model, PROMPT, ActivationPatch(source=SOURCE, site=site, blocks=[0, 1], heads=heads))
    assert result["patch"].meta["heads"] == heads
    expected = hf_patched_logits(
        hf_twins(tiny_model),
        tiny_model.to_tokens(PROMPT),
        tiny_model.to_tokens(SOURCE),
        site,
        [0, 1],
        [nine],
        heads=heads,
    )
    torch.testing.assert_close(result.logits["intervened"], expected, atol=1e-5, rtol=1e-5)
    everything = run(tiny_model, PROMPT, ActivationPatch(source=SOURCE, site=site, blocks=[0, 1]))
    assert not torch.allclose(result.logits["intervened"], everything.logits["intervened"], atol=1e-6)


def test_kv_patch_equals_hand_written_hook_k_and_hook_v(tiny_model):
    """The study's edit written directly with TransformerLens hooks: source k and v at the "9" position."""
    nine = NINE_POSITION[tiny_model.facts.name]
    blocks = SCALED_BLOCKS[tiny_model.facts.name]
    names = [f"blocks.{b}.attn.hook_{kv}" for b in blocks for kv in "kv"]
    with torch.no_grad():
        _, cache = tiny_model.bridge.run_with_cache(tiny_model.to_tokens(SOURCE), names_filter=lambda n: n in names)

        def write(act, hook, name):
            act = act.clone()
            act[:, nine] = cache[name][:, nine]
            return act

        hooks = [(n, lambda act, hook, n=n: write(act, hook, n)) for n in names]
        expected = tiny_model.bridge.run_with_hooks(tiny_model.to_tokens(PROMPT), fwd_hooks=hooks)
    result = run(tiny_model, PROMPT, ActivationPatch(source=SOURCE, blocks=blocks))
    assert result["patch"].meta["blocks"] == blocks
    assert torch.equal(result.logits["intervened"], expected)


def test_defaults_locate_the_differing_token_by_text(tiny_model):
    name = tiny_model.facts.name
    result = run(tiny_model, PROMPT, ActivationPatch(source=SOURCE))["patch"]
    nine = find_position(tiny_model, PROMPT, "9")
    assert nine == NINE_POSITION[name]
    assert result.meta["positions"] == [nine]
    assert tiny_model.str_tokens(PROMPT)[nine] == "9" and tiny_model.str_tokens(SOURCE)[nine] == "5"
    every = list(range(tiny_model.facts.n_layers))  # blocks default to every block
    assert result.meta["blocks"] == every
    grid = result["patched"].values
    assert grid.sum() == len(every) and all(grid[b, nine] == 1 for b in every)
    by_text = run(tiny_model, PROMPT, ActivationPatch(source=SOURCE, positions="9"))["patch"]
    assert by_text.meta["positions"] == [nine]


def test_patching_the_embedding_of_the_differing_token_turns_target_into_source(tiny_model):
    """The prompts differ in one token: writing its embedding (resid_pre of block 0) makes the run the source's."""
    probes = [AttentionCapture(), ActivationPatch(source=SOURCE, site="resid_pre", blocks=[0])]
    patched = run(tiny_model, PROMPT, probes)
    source = run(tiny_model, SOURCE, AttentionCapture())
    assert torch.equal(patched["attention"]["pattern"].values, source["attention"]["pattern"].values)
    assert torch.equal(patched.logits["intervened"], source.logits["clean"])


def test_prompts_that_do_not_align_raise_token_error(tiny_model):
    nine = NINE_POSITION[tiny_model.facts.name]
    longer = PROMPT.replace("9]", "10]")  # "10" is two digit tokens
    with pytest.raises(TokenError, match=f"first differ at position {nine} "):
        run(tiny_model, PROMPT, ActivationPatch(source=longer))


@pytest.mark.parametrize("site", RESIDUAL_SITES)
def test_heads_on_a_residual_site_raise_probe_error(tiny_qwen2, site):
    with pytest.raises(ProbeError, match="per-head"):
        run(tiny_qwen2, PROMPT, ActivationPatch(source=SOURCE, site=site, heads=[0]))


@pytest.mark.parametrize(("site", "head"), [("kv", 2), ("k", 2), ("q", 4), ("z", 4)])
def test_missing_head_raises_layer_error(tiny_qwen2, site, head):
    with pytest.raises(LayerError, match=f"Head {head} does not exist"):
        run(tiny_qwen2, PROMPT, ActivationPatch(source=SOURCE, site=site, heads=[head]))


def test_bad_options_raise(tiny_qwen2):
    with pytest.raises(ProbeError, match="source prompt"):
        run(tiny_qwen2, PROMPT, ActivationPatch())
    with pytest.raises(ProbeError, match="Unknown patching site"):
        run(tiny_qwen2, PROMPT, ActivationPatch(source=SOURCE, site="embed"))
    with pytest.raises(LayerError):
        run(tiny_qwen2, PROMPT, ActivationPatch(source=SOURCE, blocks=[4]))


@pytest.mark.real
def test_smollm2_study_patch_and_self_patch(smollm2, hf_twins):
    nine = NINE_POSITION["SmolLM2-135M-Instruct"]
    result = run(smollm2, PROMPT, ActivationPatch(source=SOURCE, blocks=[6, 14]))
    assert result["patch"].meta["blocks"] == [6, 14] and result["patch"].meta["positions"] == [nine]
    expected = hf_patched_logits(
        hf_twins(smollm2), smollm2.to_tokens(PROMPT), smollm2.to_tokens(SOURCE), "kv", [6, 14], [nine]
    )
    torch.testing.assert_close(result.logits["intervened"], expected, atol=1e-4, rtol=1e-4)
    # Every site patched from the prompt itself, all composed in one pass: still bit-identical.
    blocks = [0, 6, 14, 21, 29]
    selfs = run(smollm2, PROMPT, [ActivationPatch(source=PROMPT, site=site, blocks=blocks) for site in SITES])
    assert len(selfs) == len(SITES)
    assert torch.equal(selfs.logits["intervened"], selfs.logits["clean"])
