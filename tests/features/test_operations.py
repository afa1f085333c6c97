"""SAE operations in the intervention language: through ``run`` and the sweeps (fast and naive), against
reruns computed another way (a hand-written hook that subtracts the feature's decoder contribution,
``Add`` of the decoder row), and serialised by path."""

from __future__ import annotations

import json

import pytest
import torch

from tests.features.helpers import random_sae_folder, random_weights, saelens_cfg, write_folder
from workbench.errors import FeatureError, InterventionError
from workbench.features import FeatureAblate, FeatureClamp, FeatureScale, FeatureSteer, SAESplice, load_sae
from workbench.interventions import Add, Intervention
from workbench.run import run
from workbench.sweeps import intervention_sweep

PROMPT = "The number is 7 and then"
# Logits of a 4-block float32 model whose residual stream is edited by ~1e-7 relative rounding (x − decode(f)
# + decode(f) is x only up to float32 rounding): the output moves by well under 1e-5 on any CPU.
SPLICE_TOL = 1e-5
# The same edit computed in two float32 orders (decode(f') + error against x − f_i·W_dec row): rounding of
# activations of size ~1, carried through at most 3 blocks, stays below 1e-4.
EDIT_TOL = 1e-4


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    # biases pushed down a little so the features are sparse; many fire on some token, some on none
    return random_sae_folder(tmp_path_factory.mktemp("sae") / "resid_pre_1", seed=11)


def clean_act(model, hook: str, prompt: str = PROMPT) -> torch.Tensor:
    kept = {}

    def keep(act, hook):
        kept["x"] = act.detach().clone()

    tokens = model.bridge.to_tokens(prompt, prepend_bos=model.facts.prepend_bos)
    with torch.no_grad(), model.bridge.hooks(fwd_hooks=[(hook, keep)]):
        model.bridge(tokens)
    return kept["x"]


def rerun(model, hook: str, fn, prompt: str = PROMPT) -> torch.Tensor:
    tokens = model.bridge.to_tokens(prompt, prepend_bos=model.facts.prepend_bos)
    with torch.no_grad(), model.bridge.hooks(fwd_hooks=[(hook, lambda act, hook: fn(act))]):
        return model.bridge(tokens).float()


def active_feature(sae, x: torch.Tensor) -> int:
    """A feature active at several positions (so ablating it changes something)."""
    f = sae.encode(x[0])
    return int((f > 0).sum(0).argmax())


def test_splice_leaves_the_output_unchanged(tiny_qwen2, sae_dir):
    out = run(tiny_qwen2, PROMPT, Intervention("resid_pre", SAESplice(sae=str(sae_dir)), blocks=1))
    assert (out.logits["intervened"] - out.logits["clean"]).abs().max() <= SPLICE_TOL
    sae = load_sae(sae_dir)
    x = clean_act(tiny_qwen2, "blocks.1.hook_resid_pre")
    assert (x - sae.forward(x)).abs().max() > 1e-2, "the SAE alone does not reconstruct x: the error term matters"


def test_splice_of_a_hook_z_sae_leaves_the_output_unchanged(tiny_qwen2, tmp_path):
    folder = random_sae_folder(tmp_path / "z", hook_name="blocks.2.attn.hook_z", reshape_activations="hook_z")
    out = run(tiny_qwen2, PROMPT, Intervention("z", SAESplice(sae=str(folder)), blocks=2))
    assert (out.logits["intervened"] - out.logits["clean"]).abs().max() <= SPLICE_TOL


def test_feature_ablation_equals_subtracting_its_decoder_contribution(tiny_qwen2, sae_dir):
    sae = load_sae(sae_dir)
    w = {k: v.float() for k, v in sae.weights.items()}
    x = clean_act(tiny_qwen2, "blocks.1.hook_resid_pre")
    i = active_feature(sae, x)
    # the feature's activation written out (standard SAE: ReLU((x − b_dec) W_enc[:, i] + b_enc[i]))
    act_i = ((x - w["b_dec"]) @ w["W_enc"][:, i] + w["b_enc"][i]).relu()
    assert (act_i > 0).sum() >= 2
    expected = rerun(tiny_qwen2, "blocks.1.hook_resid_pre", lambda a: a - act_i[..., None] * w["W_dec"][i])
    out = run(tiny_qwen2, PROMPT, Intervention("resid_pre", FeatureAblate(sae=str(sae_dir), features=[i]), blocks=1))
    assert (out.logits["intervened"] - expected).abs().max() <= EDIT_TOL
    assert (out.logits["intervened"] - out.logits["clean"]).abs().max() > 1e-3, "the ablation changed something"


def test_scale_and_clamp_change_only_the_edited_features(tiny_qwen2, sae_dir):
    sae = load_sae(sae_dir)
    w = {k: v.float() for k, v in sae.weights.items()}
    x = clean_act(tiny_qwen2, "blocks.1.hook_resid_pre")
    i = active_feature(sae, x)
    act_i = sae.encode(x)[..., i]
    scaled = rerun(tiny_qwen2, "blocks.1.hook_resid_pre", lambda a: a + 2.0 * act_i[..., None] * w["W_dec"][i])
    out = run(tiny_qwen2, PROMPT, Intervention("resid_pre", FeatureScale(str(sae_dir), [i], 3.0), blocks=1))
    assert (out.logits["intervened"] - scaled).abs().max() <= EDIT_TOL
    clamped = rerun(tiny_qwen2, "blocks.1.hook_resid_pre", lambda a: a + (5.0 - act_i)[..., None] * w["W_dec"][i])
    out = run(
        tiny_qwen2, PROMPT, Intervention("resid_pre", FeatureClamp(str(sae_dir), [i], 5.0), blocks=1, positions=None)
    )
    assert (out.logits["intervened"] - clamped).abs().max() <= EDIT_TOL


def test_steering_equals_add_of_the_decoder_row(tiny_qwen2, sae_dir):
    sae = load_sae(sae_dir)
    steer = Intervention(
        "resid_pre", FeatureSteer(sae=str(sae_dir), feature=5, coefficient=4.0), blocks=1, positions=-1
    )
    add = Intervention("resid_pre", Add(vector=sae.decoder_direction(5), coefficient=4.0), blocks=1, positions=-1)
    a, b = run(tiny_qwen2, PROMPT, steer), run(tiny_qwen2, PROMPT, add)
    assert torch.equal(a.logits["intervened"], b.logits["intervened"])  # the same float32 sum, in the same order
    assert (a.logits["intervened"] - a.logits["clean"]).abs().max() > 1e-3


@pytest.mark.parametrize("method", ["fast", "naive"])
def test_sweeps_run_feature_ablation_cell_by_cell(tiny_qwen2, sae_dir, method):
    sae = load_sae(sae_dir)
    x = clean_act(tiny_qwen2, "blocks.1.hook_resid_pre")
    i = active_feature(sae, x)
    template = Intervention("resid_pre", FeatureAblate(sae=str(sae_dir), features=[i]), blocks=1)

    def logit_7(logits):
        return logits[:, 7]

    sweep = intervention_sweep(tiny_qwen2, PROMPT, template, over=("position",), metric=logit_7, method=method)
    assert sweep.meta["method"] == method
    values = sweep.values()
    n = x.shape[1]
    assert values.shape == (n,)
    for p in range(n):
        one = run(
            tiny_qwen2, PROMPT, Intervention("resid_pre", FeatureAblate(str(sae_dir), [i]), blocks=1, positions=p)
        )
        assert abs(values[p] - float(one.logits["intervened"][0, -1, 7])) <= EDIT_TOL


def test_operations_serialise_by_path(sae_dir):
    ops = [
        SAESplice(sae=str(sae_dir)),
        FeatureAblate(sae=str(sae_dir), features=[1, 2]),
        FeatureScale(sae=str(sae_dir), features=[3], factor=0.5),
        FeatureClamp(sae=str(sae_dir), features=[4], value=2.0),
        FeatureSteer(sae=str(sae_dir), feature=6, coefficient=-3.0),
    ]
    for op in ops:
        iv = Intervention("resid_pre", op, blocks=1, positions=[0, 2])
        data = json.loads(json.dumps(iv.to_dict()))
        assert data["op"]["sae"] == str(sae_dir)
        again = Intervention.from_dict(data)
        assert again == iv
    loaded = load_sae(sae_dir)
    assert SAESplice(sae=loaded).sae == str(sae_dir)  # an SAE read from a folder is referenced by that folder


def test_misplaced_or_malformed_feature_edits_are_refused(tiny_qwen2, sae_dir, tmp_path):
    cases = [
        Intervention("resid_pre", SAESplice(str(sae_dir)), blocks=2),  # another block
        Intervention("resid_post", SAESplice(str(sae_dir)), blocks=1),  # another site
        Intervention("resid_pre", SAESplice(str(sae_dir))),  # every block
        Intervention("resid_pre", FeatureAblate(str(sae_dir), [96]), blocks=1),  # no such feature
    ]
    for iv in cases:
        with pytest.raises(FeatureError) as info:
            run(tiny_qwen2, PROMPT, iv)
        assert "\n" not in str(info.value)
    tc_cfg = saelens_cfg("transcoder", hook_name="blocks.1.hook_resid_pre", apply_b_dec_to_input=False, d_out=64)
    tc_cfg["metadata"]["hook_name_out"] = "blocks.1.hook_mlp_out"
    tc = write_folder(tmp_path / "tc", tc_cfg, random_weights("transcoder"))
    with pytest.raises(FeatureError, match="transcoder"):
        run(tiny_qwen2, PROMPT, Intervention("resid_pre", SAESplice(str(tc)), blocks=1))
    with pytest.raises(FeatureError):
        FeatureAblate(str(sae_dir), features=[])
    with pytest.raises(FeatureError):
        SAESplice(sae="")
    with pytest.raises(InterventionError):
        FeatureScale(str(sae_dir), [1], factor=float("nan"))
    with pytest.raises(FeatureError, match="save it first"):
        SAESplice(sae=type(load_sae(sae_dir))(load_sae(sae_dir).cfg, load_sae(sae_dir).weights))


def test_the_sae_is_read_and_checked_once_for_a_whole_sweep(tiny_qwen2, tmp_path, monkeypatch):
    import workbench.features.sae as sae_module

    folder = random_sae_folder(tmp_path / "once", seed=12)
    calls = []
    real = sae_module.hook_widths
    monkeypatch.setattr(sae_module, "hook_widths", lambda *a: calls.append(1) or real(*a))
    template = Intervention("resid_pre", FeatureAblate(sae=str(folder), features=[0]), blocks=1)
    sweep = intervention_sweep(tiny_qwen2, PROMPT, template, over=("position",), method="naive")
    assert sweep.meta["cells"] > 1 and len(calls) == 1  # one width check, not one forward per cell


def test_generation_runs_feature_edits_on_every_new_token(tiny_qwen2, sae_dir):
    from workbench.sampling import generate, greedy

    plain = generate(tiny_qwen2, PROMPT, greedy(), max_new_tokens=6, stop_at_eos=False)
    splice = [Intervention("resid_pre", SAESplice(str(sae_dir)), blocks=1)]
    spliced = generate(tiny_qwen2, PROMPT, greedy(), max_new_tokens=6, stop_at_eos=False, interventions=splice)
    assert torch.equal(spliced.tokens, plain.tokens)
    # a splice moves log-probabilities by rounding only (see SPLICE_TOL)
    assert (spliced.logprobs - plain.logprobs).abs().max() <= SPLICE_TOL
    sae = load_sae(sae_dir)
    steer = [Intervention("resid_pre", FeatureSteer(str(sae_dir), feature=5, coefficient=8.0), blocks=1)]
    add = [Intervention("resid_pre", Add(vector=sae.decoder_direction(5), coefficient=8.0), blocks=1)]
    a = generate(tiny_qwen2, PROMPT, greedy(), max_new_tokens=6, stop_at_eos=False, interventions=steer)
    b = generate(tiny_qwen2, PROMPT, greedy(), max_new_tokens=6, stop_at_eos=False, interventions=add)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logprobs, b.logprobs)


@pytest.mark.parametrize(
    "site, hook",
    [
        ("resid_mid", "blocks.2.hook_resid_mid"),  # written through attn_out
        ("resid_post", "blocks.2.hook_resid_post"),
        ("attn_out", "blocks.2.hook_attn_out"),
        ("mlp_out", "blocks.2.hook_mlp_out"),
        ("mlp_hidden", "blocks.2.mlp.hook_post"),
    ],
)
def test_ablation_at_every_site_kind_equals_subtracting_the_decoder_contribution(tiny_qwen2, tmp_path, site, hook):
    from workbench.features.sae import hook_widths

    width = hook_widths(tiny_qwen2, [hook])[hook][-1]
    folder = random_sae_folder(tmp_path / site, hook_name=hook, d_in=width, seed=13)
    spliced = run(tiny_qwen2, PROMPT, Intervention(site, SAESplice(str(folder)), blocks=2))
    assert (spliced.logits["intervened"] - spliced.logits["clean"]).abs().max() <= SPLICE_TOL
    sae = load_sae(folder)
    x = clean_act(tiny_qwen2, hook)
    i = active_feature(sae, x)
    contribution = sae.encode(x)[..., i : i + 1] * sae.weights["W_dec"][i]
    # resid_mid = resid_pre + attn_out; on the bridge an edit of hook_resid_mid reaches the MLP's input but not the
    # skip connection, so the reference subtracts the contribution where the residual stream is written: attn_out
    where = "blocks.2.hook_attn_out" if site == "resid_mid" else hook
    expected = rerun(tiny_qwen2, where, lambda a: a - contribution)
    out = run(tiny_qwen2, PROMPT, Intervention(site, FeatureAblate(str(folder), [i]), blocks=2))
    assert (out.logits["intervened"] - expected).abs().max() <= EDIT_TOL
