"""The linear lens on the real SmolLM2, fitted on this repository's documentation (a few thousand tokens)."""

from __future__ import annotations

import pytest
import torch

from workbench.errors import LensError
from workbench.lenses import Lens, corpus_from_text, fit_lens
from workbench.probes import LogitLens, TunedLens
from workbench.run import run

from .conftest import PROMPT, docs_text

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def smollm2_lens(smollm2):
    return fit_lens(smollm2, corpus_from_text(smollm2, docs_text(), tokens=3072, source="docs"))


def test_linear_lens_beats_the_logit_lens_below_the_last_layer(smollm2, smollm2_lens):
    fitted, plain = smollm2_lens.heldout_kl("lens"), smollm2_lens.heldout_kl("logit")
    assert smollm2_lens.labels == ["embeddings", *(f"after block {i}" for i in range(30))]
    for layer in smollm2_lens.labels[:-1]:
        assert fitted[layer] < plain[layer], layer
    assert fitted["after block 29"] == pytest.approx(0, abs=1e-5)
    assert smollm2_lens.weight[-1].abs().max() < 1e-5
    assert smollm2_lens.header["fingerprint"]["kind"] == "file"


def test_zero_lens_is_the_logit_lens(smollm2):
    out = run(smollm2, PROMPT, [LogitLens(positions=[-1]), TunedLens(lens=Lens.identity(smollm2), positions=[-1])])
    for name, array in out["logit_lens"].arrays.items():
        theirs = out["tuned_lens"][name].values
        assert torch.equal(array.values, theirs) if isinstance(theirs, torch.Tensor) else (array.values == theirs).all()


def test_study_prompt_through_the_fitted_lens(smollm2, smollm2_lens, tiny_qwen2, tmp_path):
    path = smollm2_lens.save(tmp_path / "smollm2.lens")
    result = run(smollm2, PROMPT, TunedLens(lens=path, positions=[-1]))["tuned_lens"]
    comparison = result.comparison()
    kl = comparison.kl
    assert kl["logit lens"][-1] == pytest.approx(0, abs=1e-4) and kl["linear lens"][-1] == pytest.approx(0, abs=1e-4)
    assert kl["linear lens"].mean() < kl["logit lens"].mean()
    first = comparison.first_in_top_k()
    assert set(first) == {"logit lens", "linear lens"} and all(
        v is None or v in comparison.layers for v in first.values()
    )
    assert "first in the top-10" in comparison.sentence()
    assert result.figure("comparison").layout.title.text.startswith("Logit lens vs linear lens")
    with pytest.raises(LensError, match="fitted on SmolLM2"):
        Lens.load(path, tiny_qwen2)


def test_the_studys_lens_check_on_smollm2(smollm2, smollm2_lens):
    """The study's section: under the logit lens the digits enter the top-10 for good only late (block ≥ 15
    of 30, the claim under test); the verdict states both lenses' layers and follows the stated criterion."""
    from workbench.studies.random_number import StudyOptions, fitted_lens_view, lens_check

    result = fitted_lens_view(smollm2, StudyOptions(lens=smollm2_lens))
    check = lens_check(result, smollm2.facts.n_layers)
    layers, stays = check["layers"], check["in_top_k_from"]
    assert check["targets"] == [str(d) for d in range(10)]
    assert stays["logit lens"] is not None and layers.index(stays["logit lens"]) >= 16  # row i + 1 = after block i
    fitted = stays["linear lens"]
    assert check["survives"] == (fitted is None or layers.index(fitted) >= layers.index("after block 15"))
    assert f"from {stays['logit lens']} under the logit lens" in check["verdict"]
    assert ("survives" if check["survives"] else "does not survive") in check["verdict"]
