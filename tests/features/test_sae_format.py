"""SAELens' folder format: encode/decode against SAELens' formulas written out here from its source
(sae_lens/saes/{standard,topk,jumprelu,batchtopk}_sae.py, transcoder.py, sae.py), exact save → load round
trips, minimal folders, and one-line refusals of folders that are missing, corrupt or do not fit the model."""

from __future__ import annotations

import json

import pytest
import torch

from tests.features.helpers import random_sae_folder, random_weights, saelens_cfg, write_folder
from workbench.errors import ExportError, FeatureError
from workbench.features import SparseAutoencoder, load_sae, site_of_hook

# float32 matmuls of the same sizes in a different order: differences of a few ulps of values ~1, far below 1e-5.
TOL = 1e-5


# ----- SAELens' formulas, transcribed ---------------------------------------------------------------


def saelens_encode(arch: str, w: dict, cfg: dict, x: torch.Tensor) -> torch.Tensor:
    # SAE.process_sae_in: x - b_dec * apply_b_dec_to_input (transcoders: no bias subtraction)
    sae_in = x if "transcoder" in arch else x - w["b_dec"] * cfg["apply_b_dec_to_input"]
    hidden_pre = sae_in @ w["W_enc"] + w["b_enc"]
    if arch in ("standard", "transcoder", "skip_transcoder"):
        return torch.nn.functional.relu(hidden_pre)
    if arch == "topk":  # TopK.forward: topk values, relu, scattered into zeros
        values, indices = torch.topk(hidden_pre, k=cfg["k"], dim=-1, sorted=False)
        result = torch.zeros_like(hidden_pre)
        result.scatter_(-1, indices, values.relu())
        return result
    if arch in ("jumprelu", "jumprelu_transcoder"):  # JumpReLUSAE.encode
        base = torch.nn.functional.relu(hidden_pre)
        return base * (hidden_pre > w["threshold"]).to(base.dtype)
    if arch == "batchtopk":  # BatchTopK.forward
        acts = hidden_pre.relu()
        flat = acts.flatten()
        n = acts.shape[:-1].numel()
        top = torch.topk(flat, int(cfg["k"] * n), dim=-1)
        return torch.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(acts.shape)
    raise AssertionError(arch)


def saelens_decode(w: dict, f: torch.Tensor) -> torch.Tensor:
    return f @ w["W_dec"] + w["b_dec"]


ARCHS = ["standard", "topk", "batchtopk", "jumprelu"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_encode_decode_match_saelens_formulas(tmp_path, arch, apply_b_dec):
    extra = {"k": 7} if arch in ("topk", "batchtopk") else {}
    if arch == "topk":
        extra["rescale_acts_by_decoder_norm"] = False
    cfg = saelens_cfg(arch, apply_b_dec_to_input=apply_b_dec, **extra)
    w = random_weights(arch, seed=3)
    sae = load_sae(write_folder(tmp_path / "sae", cfg, w))
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(1))
    f = sae.encode(x)
    expected_f = saelens_encode(arch, w, cfg, x)
    assert torch.allclose(f, expected_f, atol=TOL)
    assert (f > 0).any(), "some features fire, so the comparison is not all zeros"
    assert torch.allclose(sae.decode(f), saelens_decode(w, expected_f), atol=TOL)
    assert torch.allclose(sae.forward(x), saelens_decode(w, expected_f), atol=TOL)
    if arch == "topk":
        assert int((f != 0).sum(-1).max()) <= 7


def test_topk_rescaled_by_decoder_norm(tmp_path):
    cfg = saelens_cfg("topk", k=5, rescale_acts_by_decoder_norm=True)
    w = random_weights("topk", seed=4)
    sae = load_sae(write_folder(tmp_path / "sae", cfg, w))
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(2))
    norms = w["W_dec"].norm(dim=-1)
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    values, indices = torch.topk(pre * norms, k=5, dim=-1, sorted=False)  # TopKSAE.encode
    expected = torch.zeros_like(pre).scatter_(-1, indices, values.relu())
    assert torch.allclose(sae.encode(x), expected, atol=TOL)
    assert torch.allclose(sae.decode(expected), (expected / norms) @ w["W_dec"] + w["b_dec"], atol=TOL)


def test_batchtopk_with_a_threshold_is_jumprelu(tmp_path):
    # SAELens saves a batchtopk SAE for inference as JumpReLU with threshold = topk_threshold everywhere.
    w = random_weights("standard", seed=5) | {"topk_threshold": torch.tensor(0.2)}
    sae = load_sae(write_folder(tmp_path / "sae", saelens_cfg("batchtopk", k=4), w))
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(3))
    expected = saelens_encode("jumprelu", w | {"threshold": torch.full((96,), 0.2)}, {"apply_b_dec_to_input": True}, x)
    assert torch.allclose(sae.encode(x), expected, atol=TOL)


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_expected_average_only_in_equals_saelens_folded_weights(tmp_path, apply_b_dec):
    """SAELens folds the norm scaling factor s into the weights (W_enc·s, W_dec/s, b_dec/s,
    SAE.fold_activation_norm_scaling_factor); the workbench scales the input and output instead."""
    s = 1.7
    cfg = saelens_cfg("standard", apply_b_dec_to_input=apply_b_dec, normalize_activations="expected_average_only_in")
    w = random_weights("standard", seed=6)
    folder = write_folder(tmp_path / "sae", cfg, w)
    with pytest.raises(FeatureError, match="scaling factor"):
        load_sae(folder)
    (folder / "activation_scaler.json").write_text(json.dumps({"scaling_factor": s}))
    sae = load_sae(folder)
    folded = {"W_enc": w["W_enc"] * s, "W_dec": w["W_dec"] / s, "b_dec": w["b_dec"] / s, "b_enc": w["b_enc"]}
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(4))
    f = saelens_encode("standard", folded, cfg, x)
    assert torch.allclose(sae.encode(x), f, atol=TOL)
    assert torch.allclose(sae.decode(f), saelens_decode(folded, f), atol=TOL)
    assert torch.allclose(load_sae(folder, scaling_factor=s).encode(x), f, atol=TOL)
    # decoder_direction is the folded W_dec row: what one unit of the feature adds to the activation
    assert torch.allclose(sae.decoder_direction(3), folded["W_dec"][3], atol=TOL)


@pytest.mark.parametrize("arch", ["transcoder", "skip_transcoder", "jumprelu_transcoder"])
def test_transcoders_match_saelens_formulas(tmp_path, arch, tiny_qwen2):
    cfg = saelens_cfg(arch, hook_name="blocks.2.hook_resid_mid", apply_b_dec_to_input=False, d_out=64)
    cfg["metadata"]["hook_name_out"] = "blocks.2.hook_mlp_out"
    w = random_weights(arch, seed=7)
    sae = load_sae(write_folder(tmp_path / "tc", cfg, w), tiny_qwen2)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(5))
    f = saelens_encode(arch, w, cfg, x)
    out = saelens_decode(w, f) + (x @ w["W_skip"].T if arch == "skip_transcoder" else 0)
    assert torch.allclose(sae.encode(x), f, atol=TOL)
    assert torch.allclose(sae.forward(x), out, atol=TOL)
    assert (sae.site, sae.block, sae.hook_name_out) == ("resid_mid", 2, "blocks.2.hook_mlp_out")
    cfg["apply_b_dec_to_input"] = True  # SAELens' TranscoderConfig refuses it: b_dec is on the output side
    with pytest.raises(FeatureError, match="apply_b_dec_to_input"):
        SparseAutoencoder(cfg, w)


# ----- round trips and minimal folders -----------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip_is_exact(tmp_path, arch):
    extra = {"k": 5, "unknown_field": {"kept": [1, 2]}} if arch in ("topk", "batchtopk") else {"unknown_field": 3}
    cfg = saelens_cfg(arch, normalize_activations="expected_average_only_in", **extra)
    w = random_weights(arch, seed=8)
    first = load_sae(write_folder(tmp_path / "in", cfg, w), scaling_factor=0.8)
    first.save(tmp_path / "out")
    again = load_sae(tmp_path / "out")
    assert again.cfg == first.cfg
    assert again.cfg["unknown_field"] == cfg["unknown_field"]
    assert set(again.weights) == set(w)
    assert all(torch.equal(again.weights[k], w[k]) for k in w)
    assert again.scaling_factor == 0.8
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(6))
    assert torch.equal(again.encode(x), first.encode(x))
    first.save(tmp_path / "out")  # the workbench's own SAE folder may be replaced
    assert json.loads((tmp_path / "out" / "cfg.json").read_text()) == first.cfg


def test_save_never_writes_over_a_folder_the_workbench_did_not_write(tmp_path):
    sae = load_sae(random_sae_folder(tmp_path / "in"))
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="notes.txt"):
        sae.save(theirs)
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"] and (theirs / "notes.txt").read_text() == "mine"
    with pytest.raises(ExportError):  # an SAELens folder written by SAELens is not replaced either
        sae.save(tmp_path / "in")


@pytest.mark.parametrize(
    "cfg",
    [
        {"d_in": 64, "d_sae": 96, "architecture": "standard"},  # SAELens 6: the dataclass' required fields
        {"d_in": 64, "d_sae": 96, "hook_point": "blocks.1.hook_resid_pre"},  # SAELens < 6
        {
            "d_in": 64,
            "d_sae": 96,
            "hook_name": "blocks.1.hook_resid_pre",
            "activation_fn": "topk",
            "activation_fn_kwargs": {"k": 3},
        },
    ],
)
def test_a_folder_with_only_the_required_fields_loads(tmp_path, cfg, tiny_qwen2):
    arch = "topk" if cfg.get("activation_fn") == "topk" else "standard"
    w = random_weights(arch, seed=9)
    sae = load_sae(write_folder(tmp_path / "sae", cfg, w))
    assert sae.cfg["apply_b_dec_to_input"] is True and sae.cfg["normalize_activations"] == "none"
    assert sae.architecture == arch and (arch != "topk" or sae.cfg["k"] == 3)
    x = torch.randn(2, 64)
    assert torch.allclose(sae.encode(x), saelens_encode(arch, w, sae.cfg, x), atol=TOL)
    if sae.hook_name:
        load_sae(tmp_path / "sae", tiny_qwen2)
    else:
        with pytest.raises(FeatureError, match="hook_name"):
            load_sae(tmp_path / "sae", tiny_qwen2)


# ----- sites ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hook, site",
    [
        ("blocks.0.hook_resid_pre", ("resid_pre", 0)),
        ("blocks.3.hook_resid_post", ("resid_post", 3)),
        ("blocks.2.hook_resid_mid", ("resid_mid", 2)),
        ("blocks.1.hook_mlp_out", ("mlp_out", 1)),
        ("blocks.1.hook_attn_out", ("attn_out", 1)),
        ("blocks.2.attn.hook_z", ("z", 2)),
        ("blocks.2.mlp.hook_post", ("mlp_hidden", 2)),
        ("blocks.2.ln2.hook_normalized", (None, 2)),
        ("hook_embed", (None, None)),
    ],
)
def test_hook_names_map_to_the_site_table(hook, site):
    assert site_of_hook(hook) == site


def test_a_hook_z_sae_fits_every_head_of_z(tmp_path, tiny_qwen2):
    sae = load_sae(
        random_sae_folder(tmp_path / "z", hook_name="blocks.1.attn.hook_z", reshape_activations="hook_z"), tiny_qwen2
    )
    assert (sae.site, sae.block, sae.n_heads) == ("z", 1, 4)
    z = torch.randn(3, 4, 16)
    assert sae.decode(sae.encode(z)).shape == (3, 4, 16)
    assert torch.allclose(sae.encode(z), sae.encode(z.flatten(-2)), atol=0)


# ----- refusals ---------------------------------------------------------------------------------------


def test_folders_that_do_not_fit_are_refused_in_one_line(tmp_path, tiny_qwen2):
    cases = {}
    cases["missing"] = tmp_path / "nowhere"
    cases["no weights"] = tmp_path / "noweights"
    cases["no weights"].mkdir()
    (cases["no weights"] / "cfg.json").write_text("{}")
    cases["bad json"] = random_sae_folder(tmp_path / "badjson")
    (cases["bad json"] / "cfg.json").write_text("{not json")
    cases["bad safetensors"] = random_sae_folder(tmp_path / "badst")
    (cases["bad safetensors"] / "sae_weights.safetensors").write_bytes(b"\x00" * 20)
    cases["gated"] = write_folder(tmp_path / "gated", saelens_cfg("gated"), random_weights("standard"))
    cases["shape"] = write_folder(tmp_path / "shape", saelens_cfg("standard", d_sae=50), random_weights("standard"))
    w = random_weights("jumprelu")
    del w["threshold"]
    cases["no threshold"] = write_folder(tmp_path / "nothr", saelens_cfg("jumprelu"), w)
    w = random_weights("standard")
    w["W_enc"][0, 0] = float("nan")
    cases["nan"] = write_folder(tmp_path / "nan", saelens_cfg("standard"), w)
    cases["norm"] = random_sae_folder(tmp_path / "norm", normalize_activations="layer_norm")
    for name, folder in cases.items():
        with pytest.raises(FeatureError) as info:
            load_sae(folder)
        message = str(info.value)
        assert "\n" not in message and ":" in message, name
        assert info.value.exit_code == 29
    misfits = {
        "width": random_sae_folder(tmp_path / "narrow", d_in=32),
        "block": random_sae_folder(tmp_path / "deep", hook_name="blocks.9.hook_resid_pre"),
        "not a site": random_sae_folder(tmp_path / "ln", hook_name="blocks.1.ln2.hook_normalized"),
    }
    for name, folder in misfits.items():
        load_sae(folder)  # readable on its own
        with pytest.raises(FeatureError) as info:
            load_sae(folder, tiny_qwen2)
        assert "\n" not in str(info.value), name
    with pytest.raises(FeatureError, match="32-wide"):
        load_sae(misfits["width"], tiny_qwen2)
    with pytest.raises(FeatureError, match="4 blocks"):
        load_sae(misfits["block"], tiny_qwen2)
