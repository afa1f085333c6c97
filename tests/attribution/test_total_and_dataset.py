"""Direct beside total effects (each total equals its own hooked run) and attribution over a dataset (each
item equals the prompt attributed alone; intervals and BH-adjusted p-values from the stats module)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from workbench.attribution import direct_logit_attribution
from workbench.attribution.dataset import attribute_dataset
from workbench.attribution.total import direct_vs_total
from workbench.datasets import from_records
from workbench.errors import AttributionError
from workbench.interventions import Intervention
from workbench.interventions.operations import Patch, Zero
from workbench.run import run
from workbench.stats import benjamini_hochberg
from workbench.studies.dataset_effects import BUNDLED
from workbench.tokens import single_token_id

PROMPT = "I'm generating a random number between [0, 9]. The number is "
SOURCE = PROMPT.replace("9]", "5]")


def logit_diff(model, logits) -> float:
    return float(logits[single_token_id(model, "1")] - logits[single_token_id(model, "5")])


@pytest.mark.parametrize("kind", ["zero", "resample"])
def test_each_total_effect_equals_its_own_hooked_run(tiny_llama, kind):
    result = direct_vs_total(tiny_llama, PROMPT, "logit_diff:1,5", unit="head", ablation_kind=kind, source=SOURCE)
    labels, total = result["total"].coords["component"], result["total"].numpy()
    op = Zero() if kind == "zero" else Patch(source=SOURCE)
    clean = logit_diff(tiny_llama, tiny_llama.logits(tiny_llama.to_tokens(PROMPT))[0, -1])
    for label, edit in [
        ("a0.h2", Intervention("z", op, blocks=(0,), heads=(2,))),
        ("a2.h5", Intervention("z", op, blocks=(2,), heads=(5,))),
        ("mlp 1", Intervention("mlp_out", op, blocks=(1,))),
    ]:
        ablated = logit_diff(tiny_llama, run(tiny_llama, PROMPT, edit).logits["intervened"][0, -1])
        # fast engine vs one hooked forward: float32 noise of the edited blocks only
        assert total[labels.index(label)] == pytest.approx(clean - ablated, abs=1e-4), label
    direct = direct_logit_attribution(tiny_llama, PROMPT, "logit_diff:1,5", unit="head")
    np.testing.assert_array_equal(result["direct"].numpy(), direct.values[0].numpy())
    assert np.isnan(total[labels.index("bias")])
    assert result.figure().data[0].x.shape == result.figure().data[0].y.shape


def test_resample_ablation_needs_a_source(tiny_llama):
    with pytest.raises(AttributionError, match="needs a source prompt"):
        direct_vs_total(tiny_llama, PROMPT, "logit_diff:1,5", ablation_kind="resample")
    with pytest.raises(AttributionError, match="Unknown ablation"):
        direct_vs_total(tiny_llama, PROMPT, "logit_diff:1,5", ablation_kind="noise")


def test_dataset_attribution_equals_each_prompt_alone_with_intervals(tiny_qwen2):
    result = attribute_dataset(tiny_qwen2, str(BUNDLED), "logit_diff:{bound},5", resamples=999, progress=False)
    per_item = result["per_item"].numpy()
    assert per_item.shape[0] == 56
    for row in (0, 13, 42):
        item_id = result["per_item"].coords["item"][row]
        bound = item_id.split("-b")[1]
        alone = direct_logit_attribution(tiny_qwen2, result.prompts[row], f"logit_diff:{bound},5", unit="head")
        np.testing.assert_allclose(per_item[row], alone.values[0].numpy(), rtol=0, atol=1e-12)
    mean, low, high = result["mean"].numpy(), result["ci_low"].numpy(), result["ci_high"].numpy()
    np.testing.assert_allclose(mean, per_item.mean(0))
    assert np.all(low <= mean + 1e-12) and np.all(mean <= high + 1e-12)
    np.testing.assert_allclose(result["p_bh"].numpy(), benjamini_hochberg(result["p_value"].numpy()))
    assert set(result.figures()) == {"components", "heads"}
    rows = result.to_json()["components"]
    assert {"mean", "ci_low", "ci_high", "p_value", "p_bh", "kind", "block", "head"} <= set(rows[0])


def test_a_one_prompt_dataset_is_refused_before_any_forward(tiny_qwen2):
    one = from_records([{"prompt": PROMPT}], name="one")
    with pytest.raises(AttributionError, match="at least 2 prompts"):
        attribute_dataset(tiny_qwen2, one, "logit_diff:1,5", progress=False)


def test_cli_dataset_and_total(tmp_path):
    from reliability.conftest import workbench

    done = workbench(
        "attribute", "--model", "tiny-qwen2", "--target", "{bound}", "--vs", "5", "--unit", "component",
        "--dataset", str(BUNDLED), "--resamples", "199", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["n"] == 56 and all(r["ci_low"] <= r["mean"] <= r["ci_high"] for r in data["components"])
    done = workbench("attribute", "--model", "tiny-qwen2", "--target", "1", "--vs", "5", "--total", "zero", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["components"]
    assert all("total_effect" in r for r in rows) and rows[-1]["total_effect"] is None  # the bias
    done = workbench("attribute", "--model", "tiny-qwen2", "--target", "1", "--dataset", str(tmp_path / "none.jsonl"))
    assert done.returncode == 17 and "does not exist" in done.stderr
