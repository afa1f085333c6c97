"""The random-number study on every family: it runs, and its clean and identity-block numbers equal transformers."""

from __future__ import annotations

import pytest
import torch

from workbench.errors import ProbeError
from workbench.studies.random_number import STUDY_PROMPT, run_study
from workbench.tokens import DIGITS, digit_token_ids

from .conftest import note
from .hf_sites import hf_identity_logits

pytestmark = pytest.mark.column("study")


def digit_probs(model, logits: torch.Tensor) -> dict[str, float]:
    probs = logits[0, -1].float().softmax(-1)
    return {d: float(probs[i]) for d, i in zip(DIGITS, digit_token_ids(model), strict=True)}


def test_the_study_runs_and_its_numbers_equal_transformers(model, hf, family, request):
    if "study" in family.known:
        with pytest.raises(ProbeError, match=rf"{model.facts.name}'s \({model.facts.architecture}\) attention"):
            run_study(model)
        note(request, family.known["study"])
        return
    study = run_study(model)
    record = study.record
    tokens = model.to_tokens(STUDY_PROMPT).cpu()
    with torch.no_grad():
        clean = digit_probs(model, hf(tokens).logits)
    block = study.plan.block
    identity = digit_probs(model, hf_identity_logits(hf, tokens, block))
    assert record["distributions"]["clean"] == pytest.approx(clean, abs=1e-6)
    assert record["distributions"][f"identity_block_{block}"] == pytest.approx(identity, abs=1e-6)
    assert record["distributions"]["clean"] != pytest.approx(identity, abs=1e-6)
    assert len(record["identity_sweep"]) == model.facts.n_layers
    assert record["model"]["architecture"] == model.facts.architecture
