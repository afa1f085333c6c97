"""A layout the bridge does not fit never reaches a probe: the load stops with one line naming the family.

Falcon-40B/180B's grouped qkv (``new_decoder_architecture``) is such a layout in TransformerLens 4: with
several key/value heads its adapter either fails to boot or boots and computes something else.
"""

from __future__ import annotations

import pytest

from workbench.errors import ModelSpecError
from workbench.models import load_model
from workbench.tiny import build_tiny_model


def saved(tmp_path, **config):
    hf_model, tokenizer = build_tiny_model("tiny-falcon", **config)
    folder = tmp_path / "falcon-40b-layout"
    hf_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_bridge_that_does_not_reproduce_transformers_is_refused(tmp_path):
    folder = saved(tmp_path, new_decoder_architecture=True, num_kv_heads=2, multi_query=False)
    with pytest.raises(
        ModelSpecError,
        match=r"bridge for falcon-40b-layout \(falcon, FalconForCausalLM\) does not "
        r"reproduce transformers' own logits \(max \|diff\| [0-9.]+",
    ):
        load_model(folder, device="cpu")


def test_a_bridge_that_cannot_boot_is_one_line(tmp_path):
    folder = saved(tmp_path, new_decoder_architecture=True, num_kv_heads=2)
    with pytest.raises(
        ModelSpecError,
        match=r"TransformerLens cannot boot falcon-40b-layout \(falcon, "
        r"FalconForCausalLM\): split_with_sizes",
    ) as error:
        load_model(folder, device="cpu")
    assert "\n" not in str(error.value)


def test_the_same_family_in_a_layout_the_bridge_fits_loads(tmp_path):
    model = load_model(saved(tmp_path, multi_query=False), device="cpu")
    assert (model.facts.architecture, model.facts.n_kv_heads) == ("falcon", 4)
