"""Sections 2c and 9 of the study: their numbers equal the functions called directly, the control prompt lacks
only the bound, and both redraw from results.json."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.attribution import direct_logit_attribution
from workbench.attribution.path import path_patching
from workbench.studies.digit_lens import control_prompt, decided_from, digit_rows
from workbench.studies.random_number import StudyOptions, run_study, study_figures


@pytest.fixture(scope="module")
def tiny_study(tiny_llama):
    return run_study(tiny_llama, StudyOptions())


def test_who_writes_the_digits_equals_attribution_and_path_patching(tiny_llama, tiny_study):
    writers, plan = tiny_study.record["writers"], tiny_study.plan
    prompt = tiny_study.record["prompt"]
    found = direct_logit_attribution(tiny_llama, prompt, "digits_above:5", unit="head")
    heads = [i for i, c in enumerate(found.components) if c.kind == "head"]
    expected = found.values[0].numpy()[heads].reshape(tiny_llama.facts.n_layers, tiny_llama.facts.n_heads)
    np.testing.assert_allclose(np.asarray(writers["heads"]), expected, rtol=0, atol=1e-12)
    assert not writers["exact"] and writers["metric"] == "p(digit > 5)"
    path = writers["path"]
    again = path_patching(
        tiny_llama,
        prompt,
        plan.source_prompt,
        senders=path["senders"],
        receivers=path["receivers"],
        metric="digits_above:5",
    )
    np.testing.assert_allclose(np.asarray(path["effect"], dtype=float), again["effect"].numpy(), atol=1e-12)
    assert path["receivers"] == ["logits", *(f"m{b}" for b in plan.late_blocks)]
    keys = [f.key for f in study_figures(tiny_study.record, tiny_study.results)]
    assert {"digit_lens", "writers_heads", "writers_blocks", "writers_paths"} <= set(keys)
    assert any(line.startswith("Who writes the digits") for line in tiny_study.record["headline"])


def test_the_control_prompt_lacks_only_the_bound(tiny_llama, tiny_study):
    prompt, plan = tiny_study.record["prompt"], tiny_study.plan
    control = control_prompt(tiny_llama, prompt, plan.bound_position)
    assert control == prompt.replace("[0, 9]", "[0, ]")
    assert tiny_study.record["digit_lens"]["control_prompt"] == control


def test_digit_rows_and_the_decision_layer():
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.2, 0.3, 0.5], [0.1, 0.3, 0.6]])
    rows = digit_rows(probs, ["embeddings", "after block 0", "after block 1", "final"])
    assert rows[-1]["kl"] == pytest.approx(0) and rows[-1]["spearman"] == pytest.approx(1)
    final = probs[-1] / probs[-1].sum()
    assert rows[0]["kl"] == pytest.approx(float(np.sum(final * np.log(final / probs[0]))))
    assert rows[0]["spearman"] == pytest.approx(-1) and decided_from(rows) == "after block 0"
    rows[1]["spearman"] = 0.5
    assert decided_from(rows) == "after block 1"
