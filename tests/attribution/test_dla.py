"""Direct logit attribution: SmolLM2's heads against plain transformers, a linearised metric against autograd,
the CLI's JSON, and every bad input refused in one line before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from families.test_attribution import hf_head_values, values_by_kind

from workbench.attribution import direct_logit_attribution
from workbench.errors import AttributionError, TokenError
from workbench.probes import DirectLogitAttribution
from workbench.tokens import digit_token_ids

PROMPT = "I'm generating a random number between [0, 9]. The number is "


@pytest.mark.real
def test_smollm2_heads_equal_plain_transformers_and_sum_to_the_logit_difference(smollm2, hf_twins):
    hf = hf_twins(smollm2)
    attribution = direct_logit_attribution(smollm2, PROMPT, "logit_diff:1,5", unit="head")
    expected = hf_head_values(hf, smollm2, "smollm2")
    got = values_by_kind(attribution, "head")
    largest = max(abs(v) for v in expected.values())
    for (block, head), value in expected.items():
        # 30 float32 blocks: the two sides read the same activations, so they agree to float32 rounding (~1e-6)
        assert got[(block, head, None)] == pytest.approx(value, abs=1e-4 * largest), (block, head)
    with torch.no_grad():
        logits = hf(smollm2.to_tokens(PROMPT)).logits[0, -1].double()
    one, five = (smollm2.tokenizer.convert_tokens_to_ids(t) for t in ("1", "5"))
    own = float(logits[one] - logits[five])
    assert float(attribution.values.sum()) == pytest.approx(own, abs=1e-4 * float(logits.abs().max()))
    # The study's finding: block 21's head 2 is the strongest single writer against "1".
    assert min(got, key=got.get) == (21, 2, None) and got[(21, 2, None)] < -0.2
    groups = {c.head: c.kv_head for c in attribution.components if c.kind == "head" and c.block == 0}
    assert groups == {h: h // 3 for h in range(9)}


def test_a_probability_metric_is_attributed_along_its_gradient(tiny_qwen2):
    """prob:… is not linear in the logits: its direction is the autograd gradient at the final logits, and the
    parts sum to gradient · logits (said in the result: exact is False)."""
    attribution = direct_logit_attribution(tiny_qwen2, PROMPT, "digits_above:5", unit="component")
    assert not attribution.exact
    tokens = tiny_qwen2.to_tokens(PROMPT)
    logits = tiny_qwen2.bridge(tokens)[0, -1].detach().double().requires_grad_(True)
    above = digit_token_ids(tiny_qwen2)[6:]
    mass = logits.softmax(-1)[above].sum()
    (grad,) = torch.autograd.grad(mass, logits)
    assert float(attribution.total[0]) == pytest.approx(float(grad @ logits.detach()), rel=1e-4, abs=1e-7)
    assert float(attribution.metric_value[0]) == pytest.approx(float(mass.detach()), rel=1e-5)


def test_another_readout_position_is_read_there(tiny_qwen2):
    at_five = direct_logit_attribution(tiny_qwen2, PROMPT, "logit:1", unit="component", position=5)
    logits = tiny_qwen2.logits(tiny_qwen2.to_tokens(PROMPT))[0, 5]
    one = tiny_qwen2.tokenizer.convert_tokens_to_ids("1")
    assert float(at_five.values.sum()) == pytest.approx(float(logits[one]), abs=1e-4 * float(logits.abs().max()))


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(metric="kl"), AttributionError, "no direction"),
        (dict(metric="rank:1"), AttributionError, "no direction"),
        (dict(metric="logit_diff:1,5", unit="heads"), AttributionError, "Unknown unit"),
        (dict(metric="logit_diff:1,5", position=999), TokenError, "999"),
    ],
)
def test_bad_requests_are_refused_with_their_fix(tiny_qwen2, kwargs, error, words):
    with pytest.raises(error, match=words):
        direct_logit_attribution(tiny_qwen2, PROMPT, **kwargs)


def test_cli_json_sums_to_total_and_writes_figures(tmp_path):
    from reliability.conftest import workbench

    done = workbench(
        "attribute", "--model", "tiny-qwen2", "--target", "1", "--vs", "5", "--json", "--out", str(tmp_path / "dla")
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["metric"] == "logit(1) − logit(5)" and data["exact"]
    assert sum(c["value"] for c in data["components"]) == pytest.approx(data["total"], abs=1e-9)
    assert {"kind", "block", "head", "kv_head", "value"} <= set(data["components"][1])
    assert (tmp_path / "dla" / "dla.json").is_file() and (tmp_path / "dla" / "dla.heads.html").is_file()


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["--metric", "kl"], 28, "no direction in logit space"),
        (["--target", "1", "--metric", "logit:1"], 28, "either --target"),
        (["--vs", "5"], 28, "--vs needs --target"),
        ([], 28, "Say what to attribute"),
        (["--target", "1", "--unit", "blocks"], 28, "Unknown unit"),
        (["--target", "1", "--position", "500"], 7, "500"),
        (["--target", "¤¤¤"], 7, "not one"),
    ],
)
def test_cli_errors_are_one_line_with_their_exit_code(args, code, words):
    from reliability.conftest import workbench

    done = workbench("attribute", "--model", "tiny-qwen2", *args)
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in done.stderr


def test_the_dla_probe_in_run_equals_the_function_and_composes_with_an_edit(tiny_qwen2, tmp_path):
    from workbench import interventions as iv
    from workbench.results import load_result
    from workbench.run import run

    probe_result = run(tiny_qwen2, PROMPT, DirectLogitAttribution(metric="logit_diff:1,5"))["dla"]
    alone = direct_logit_attribution(tiny_qwen2, PROMPT, "logit_diff:1,5", unit="head")
    np.testing.assert_allclose(probe_result["values"].numpy(), alone.values.numpy(), rtol=0, atol=1e-12)
    edited = run(tiny_qwen2, PROMPT, [DirectLogitAttribution(metric="logit_diff:1,5"), iv.identity(blocks=1)])["dla"]
    # Block 1 is the identity: what its heads and MLP computed never reached the stream, and the block's edit
    # component says so by cancelling them; a clean run has no edit component.
    labels, values = edited["values"].coords["component"], edited["values"].numpy()[0]
    block1 = [v for label, v in zip(labels, values, strict=True) if label.startswith(("a1.", "mlp 1", "edit 1"))]
    assert "edit 1" in labels and sum(block1) == pytest.approx(0, abs=1e-5)
    assert not any(label.startswith("edit") for label in probe_result["values"].coords["component"])
    np.testing.assert_allclose(edited.baseline["values"].numpy(), alone.values.numpy(), atol=1e-12)
    logits = run(tiny_qwen2, PROMPT, iv.identity(blocks=1)).logits["intervened"][0, -1]
    one, five = (tiny_qwen2.tokenizer.convert_tokens_to_ids(t) for t in ("1", "5"))
    assert edited.meta["total"][0] == pytest.approx(float(logits[one] - logits[five]), abs=1e-4)
    path = probe_result.save(tmp_path / "dla.json")
    again = load_result(path)
    np.testing.assert_array_equal(again["values"].numpy(), probe_result["values"].numpy())
    assert again.to_json() == probe_result.to_json()


def test_dla_needs_a_metric(tiny_qwen2):
    from workbench.run import run

    with pytest.raises(AttributionError, match="dla needs a metric"):
        run(tiny_qwen2, PROMPT, DirectLogitAttribution())
