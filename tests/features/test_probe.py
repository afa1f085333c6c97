"""The ``sae_features`` probe: top features against a direct encoding of the captured activation, logit
effects against the HF model's own final norm and head, figures, a saved result, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.features.helpers import random_sae_folder
from tests.features.test_operations import PROMPT, clean_act
from tests.reliability.conftest import snapshot, workbench
from workbench.errors import ProbeError
from workbench.features import load_sae
from workbench.features.probe import SAEFeatures
from workbench.results import load_result
from workbench.run import run

# float32 encodings of the same activation by the same formula: equal up to a few ulps.
TOL = 1e-5


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    return random_sae_folder(tmp_path_factory.mktemp("sae") / "resid_post_2", hook_name="blocks.2.hook_resid_post")


def test_top_features_are_the_most_active_of_the_encoding(tiny_qwen2, sae_dir):
    result = run(tiny_qwen2, PROMPT, SAEFeatures(sae=str(sae_dir), k=4))["sae_features"]
    sae = load_sae(sae_dir)
    w = {k: v.float() for k, v in sae.weights.items()}
    x = clean_act(tiny_qwen2, "blocks.2.hook_resid_post")
    f = ((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]).relu()  # the standard SAE, written out
    values, _ = f.topk(4, dim=-1)
    assert np.allclose(result["top_activations"].numpy(), values.numpy(), atol=TOL)
    ids = result["top_features"].numpy()
    picked = np.take_along_axis(f.numpy(), ids, axis=-1)
    assert np.allclose(picked, values.numpy(), atol=TOL)  # the features named are the ones with those values
    assert (result["l0"].numpy() == (f > 0).sum(-1).numpy()).all()
    chosen = result.meta["features"]
    assert chosen and len(chosen) <= 24
    heat = result["activations"].sel(prompt=0).numpy()
    assert np.allclose(heat, f[0][:, chosen].T.numpy(), atol=TOL)
    error = (x - (f @ w["W_dec"] + w["b_dec"])).norm(dim=-1) / x.norm(dim=-1)
    assert np.allclose(result["relative_error"].numpy(), error.numpy(), atol=TOL)
    assert result.top_features(-1) == [(int(i), float(v)) for i, v in zip(ids[0, -1], values[0, -1], strict=True)]


def test_logit_effect_is_the_decoder_row_through_the_models_head(tiny_qwen2, sae_dir):
    result = run(tiny_qwen2, PROMPT, SAEFeatures(sae=str(sae_dir), n_tokens=5))["sae_features"]
    sae = load_sae(sae_dir)
    hf = tiny_qwen2.bridge.original_model
    feature = result.meta["features"][0]
    with torch.no_grad():  # the HF model's own final norm and output head, not the workbench's unembed
        logits = hf.lm_head(hf.model.norm(sae.weights["W_dec"][feature].float()))
    up = logits.topk(5)
    effect = result.logit_effect(feature)
    # a norm and a 64-wide matmul in float32 by two code paths: equal to ~1e-6 on logits of size ~1
    assert np.allclose([v for _, v in effect["promoted"]], up.values.numpy(), atol=TOL)
    tok = tiny_qwen2.tokenizer
    assert [t for t, _ in effect["promoted"]] == [tok.decode([int(i)]) for i in up.indices]
    down = (-logits).topk(5)
    assert np.allclose([v for _, v in effect["suppressed"]], -down.values.numpy(), atol=TOL)


def test_figures_and_a_saved_result(tiny_qwen2, sae_dir, tmp_path):
    result = run(tiny_qwen2, PROMPT, SAEFeatures(sae=str(sae_dir)))["sae_features"]
    figures = result.figures()
    assert set(figures) == {"heatmap", "logit_effect"}
    heat = figures["heatmap"].data[0]
    assert np.allclose(np.asarray(heat.z, dtype=float), result["activations"].sel(prompt=0).numpy(), atol=TOL)
    assert len(heat.y) == len(result.meta["features"])
    result.save(tmp_path / "r.json")
    again = load_result(tmp_path / "r.json")
    assert type(again).__name__ == "SAEFeaturesResult" and again.summary() == result.summary()


def test_bad_options_are_refused(tiny_qwen2, sae_dir):
    for probe in (SAEFeatures(sae=str(sae_dir), k=0), SAEFeatures(sae=str(sae_dir), n_tokens=10**6)):
        with pytest.raises(ProbeError):
            run(tiny_qwen2, PROMPT, probe)


def test_cli_runs_the_probe_and_refuses_a_bad_folder(sae_dir, tmp_path):
    out = tmp_path / "out"
    ran = workbench("probe", "sae_features", "--model", "tiny-qwen2", "-o", f"sae={sae_dir}", "--out", str(out))
    assert ran.returncode == 0, ran.stderr
    assert "SAE features at blocks.2.hook_resid_post" in ran.stdout
    names = {p.name for p in out.iterdir()}
    assert {"sae_features.json", "sae_features.heatmap.html", "sae_features.logit_effect.html"} <= names
    data = json.loads((out / "sae_features.json").read_text())
    assert data["probe"] == "sae_features"
    # a folder that is not an SAE: exit 29, one error line, no traceback, nothing changed
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cfg.json").write_text('{"d_in": 64}')
    before = snapshot(tmp_path)
    for folder in (bad, tmp_path / "missing"):
        failed = workbench("probe", "sae_features", "--model", "tiny-qwen2", "-o", f"sae={folder}")
        assert failed.returncode == 29, failed.stderr
        assert len(failed.error_lines) == 1 and "Traceback" not in failed.stderr
    assert snapshot(tmp_path) == before
    missing = workbench("probe", "sae_features", "--model", "tiny-qwen2")
    assert missing.returncode == 29 and "sae=DIR" in missing.stderr


def test_a_transcoder_is_read_at_its_input_hook(tiny_qwen2, tmp_path):
    from tests.features.helpers import random_weights, saelens_cfg, write_folder

    cfg = saelens_cfg("transcoder", hook_name="blocks.1.ln2.hook_normalized", apply_b_dec_to_input=False, d_out=64)
    cfg["metadata"]["hook_name_out"] = "blocks.1.hook_mlp_out"
    w = random_weights("transcoder", seed=2)
    folder = write_folder(tmp_path / "tc", cfg, w)
    result = run(tiny_qwen2, PROMPT, SAEFeatures(sae=str(folder), k=3))["sae_features"]
    x = clean_act(tiny_qwen2, "blocks.1.ln2.hook_normalized")
    f = (x @ w["W_enc"] + w["b_enc"]).relu()  # Transcoder.encode: no b_dec subtracted
    assert np.allclose(result["top_activations"].numpy(), f.topk(3, dim=-1).values.numpy(), atol=TOL)
    assert "relative_error" not in result.arrays and "promoted_tokens" in result.arrays
