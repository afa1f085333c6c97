"""The benchmark shapes (benchmarks/family_shapes.py) have the published geometry, and boot as workbench models."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from workbench.models import Model

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "family_shapes.py"
_spec = importlib.util.spec_from_file_location("family_shapes", PATH)
shapes = sys.modules.setdefault("family_shapes", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(shapes)

# Published parameter counts: GPT-2 small (tied) and Pythia-160M (EleutherAI's model card).
PUBLISHED = {"shape-gpt2-small": 124_439_808, "shape-pythia-160m": 162_322_944}


@pytest.mark.parametrize("name", list(shapes.SHAPES))
def test_shape_parameter_count(name):
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    config = shapes.shape_config(name)
    with torch.device("meta"):  # counts without allocating a byte
        model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)](config)
    count = sum(p.numel() for p in model.parameters())
    assert count == shapes.SHAPES[name].parameters
    assert count == PUBLISHED.get(name, count)
    assert count <= 300_000_000


def test_gemma_shape_keeps_gemma2_2b_head_geometry_window_and_caps():
    config = shapes.shape_config("shape-gemma2-2b-300m")
    assert (config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (
        2304,
        8,
        4,
        256,
    )
    assert (config.sliding_window, config.attn_logit_softcapping, config.final_logit_softcapping) == (4096, 50.0, 30.0)
    assert config.query_pre_attn_scalar == 256


@pytest.mark.parametrize("name", list(shapes.SHAPES))
def test_a_one_block_shape_boots_as_a_model(name):
    model = shapes.load_shape(name, device="cpu", num_hidden_layers=1)
    assert isinstance(model, Model) and model.facts.n_layers == 1
    assert model.facts.architecture == shapes.SHAPES[name].architecture
