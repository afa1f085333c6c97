"""A plugin operation written from docs/plugins.md, in one file, shipped as a real installed wheel with a
``workbench.operations`` entry point: it runs unchanged in ``run``, in ``generate`` and beam search, and in
``patch_sweep``/``block_sweep`` on the fast engine, and equals the same edit written by hand."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from plugin_wheel import install_plugin

from workbench.interventions import Intervention, operations
from workbench.run import hook_count, run
from workbench.sweeps import block_sweep, patch_sweep

PROMPT = "I'm generating a random number between [0, 9]. The number is "
DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "wb-steer"
version = "0.0.1"
dependencies = []

[project.entry-points."workbench.operations"]
steer_to_token = "wb_steer:SteerToToken"

[tool.setuptools]
py-modules = ["wb_steer"]
"""


def plugin_source() -> str:
    """The operation exactly as docs/plugins.md shows it."""
    text = DOCS.read_text()
    block = re.search(r"<!-- plugin-operation:begin -->\s*```python\n(.*?)```", text, re.S)
    assert block, "docs/plugins.md lost its plugin-operation block"
    return block.group(1)


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    # Without the decorator: the installed plugin must be found through its entry point alone.
    source = plugin_source().replace("@register_operation\n", "")
    return install_plugin(tmp_path_factory.mktemp("steer"), "wb_steer", source, PYPROJECT)


@pytest.fixture
def installed(plugin_site, monkeypatch, request):
    monkeypatch.setattr(operations, "_OPERATIONS", dict(operations._OPERATIONS))
    monkeypatch.setattr(operations, "_PLUGIN_ERRORS", dict(operations._PLUGIN_ERRORS))
    monkeypatch.syspath_prepend(str(plugin_site))
    request.addfinalizer(lambda: sys.modules.pop("wb_steer", None))
    return plugin_site


def steer(blocks=(1,), positions=(-1,), token="9", coefficient=6.0) -> Intervention:
    data = {
        "site": "resid_pre",
        "op": {"name": "steer_to_token", "token": token, "coefficient": coefficient},
        "blocks": list(blocks),
    }
    if positions is not None:
        data["positions"] = list(positions)
    return Intervention.from_dict(data)


def by_hand(model, block, position, token="9", coefficient=6.0, tokens=None):
    direction = (
        model.bridge.original_model.get_output_embeddings()
        .weight[model.tokenizer.encode(token, add_special_tokens=False)[0]]
        .detach()
        .float()
    )
    direction = direction / direction.norm()

    def add(resid, hook):
        resid = resid.clone()
        resid[:, position] += coefficient * direction
        return resid

    with torch.no_grad():
        return model.bridge.run_with_hooks(
            model.to_tokens(PROMPT) if tokens is None else tokens, fwd_hooks=[(f"blocks.{block}.hook_resid_pre", add)]
        )


def test_the_entry_point_finds_the_operation(installed):
    assert "steer_to_token" not in operations._OPERATIONS
    item = steer()
    assert type(item.op).__module__ == "wb_steer"
    assert Intervention.from_dict(item.to_dict()) == item


def test_run_applies_the_plugin_operation(installed, tiny_model):
    result = run(tiny_model, PROMPT, steer())
    torch.testing.assert_close(result.logits["intervened"], by_hand(tiny_model, 1, -1), atol=1e-5, rtol=0)
    nine = result["intervention"]
    assert "steer_to_token" in nine.meta["description"] and nine.meta["edits"][0]["op"]["name"] == "steer_to_token"
    separate = run(tiny_model, PROMPT, [steer(), steer(blocks=(0,), token="5")], separate=True)
    torch.testing.assert_close(
        separate.conditions["intervention_1"].logits["intervened"],
        by_hand(tiny_model, 0, -1, token="5"),
        atol=1e-5,
        rtol=0,
    )
    assert hook_count(tiny_model) == 0


def test_sweeps_run_the_plugin_operation_on_the_fast_engine(installed, tiny_model):
    template = steer()
    fast = block_sweep(tiny_model, PROMPT, modes=[template], metric="prob:9", method="fast")
    naive = block_sweep(tiny_model, PROMPT, modes=[template], metric="prob:9", method="naive")
    assert fast.meta["method"] == "fast"
    np.testing.assert_allclose(fast["metric"].numpy(), naive["metric"].numpy(), atol=1e-6, rtol=0)
    probs = [
        float(
            by_hand(tiny_model, b, -1)[0, -1].softmax(-1)[tiny_model.tokenizer.encode("9", add_special_tokens=False)[0]]
        )
        for b in range(tiny_model.facts.n_layers)
    ]
    np.testing.assert_allclose(fast["metric"].numpy()[0], probs, atol=1e-6, rtol=0)
    grid = patch_sweep(tiny_model, PROMPT, operation=template.op, metric="prob:9", method="fast")
    grid_naive = patch_sweep(tiny_model, PROMPT, operation=template.op, metric="prob:9", method="naive")
    assert grid["metric"].dims == ("block", "position")
    np.testing.assert_allclose(grid["metric"].numpy(), grid_naive["metric"].numpy(), atol=1e-6, rtol=0)


def test_generation_and_beam_search_run_the_plugin_operation(installed, tiny_qwen2):
    from workbench.sampling import beam_search, generate, greedy, sequence_logprob

    edit = steer(blocks=(1,), positions=(-1,))
    steered = generate(tiny_qwen2, PROMPT, greedy(), 1, stop_at_eos=False, interventions=[edit])
    first = int(by_hand(tiny_qwen2, 1, -1)[0, -1].argmax())
    assert steered.row_tokens(0) == [first]  # the first step equals the hand-written edit
    everywhere = steer(blocks=(1,), positions=None)  # positions not named: every position, generated ones too
    beams = beam_search(tiny_qwen2, PROMPT, width=2, max_new_tokens=3, interventions=[everywhere])
    plain = beam_search(tiny_qwen2, PROMPT, width=2, max_new_tokens=3)
    assert [b.tokens for b in beams.beams] != [b.tokens for b in plain.beams]
    for beam in beams.beams:
        assert beam.logprob == pytest.approx(
            sequence_logprob(tiny_qwen2, PROMPT, beam.tokens, interventions=[everywhere]), abs=1e-3
        )
    assert hook_count(tiny_qwen2) == 0
