"""Linear lens on the tiny models: the zero lens is the logit lens, the closed form equals a direct least-squares
solve, held-out KL checked by plain transformers, exact save/load, and refusal on another model."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from workbench.errors import LensError
from workbench.layers import resid_labels
from workbench.lenses import Lens, collect_residuals, sample_corpus
from workbench.lenses.fit import Splits
from workbench.models import load_model
from workbench.probes import ActivationPatch, LogitLens, TunedLens
from workbench.run import run
from workbench.sampling import generate, make_sampler

from .conftest import PROMPT


def assert_same_arrays(a, b):
    for name, array in a.arrays.items():
        other = b[name].values
        if isinstance(array.values, torch.Tensor):
            assert torch.equal(array.values, other), name
        else:
            assert (array.values == other).all(), name
        assert array.coords == b[name].coords, name


def test_zero_lens_is_the_logit_lens(tiny_model):
    prompts = [PROMPT, PROMPT.replace("9]", "7]")]
    out = run(tiny_model, prompts, [LogitLens(k=5), TunedLens(lens=Lens.identity(tiny_model), k=5)])
    assert_same_arrays(out["logit_lens"], out["tuned_lens"])
    assert_same_arrays(out["logit_lens"], out["tuned_lens"].logit_lens)


def test_zero_lens_is_the_logit_lens_under_an_intervention(tiny_qwen2):
    patch = ActivationPatch(source=PROMPT.replace("9]", "5]"), site="resid_pre", blocks=[1])
    out = run(
        tiny_qwen2,
        PROMPT,
        [LogitLens(positions=[-1]), TunedLens(lens=Lens.identity(tiny_qwen2), positions=[-1]), patch],
    )
    assert_same_arrays(out["logit_lens"], out["tuned_lens"])
    assert_same_arrays(out["logit_lens"].baseline, out["tuned_lens"].baseline)


def test_fitted_lens_beats_the_logit_lens_below_the_last_layer(tiny_model, tiny_linear):
    lens = tiny_linear(tiny_model)
    fitted, plain = lens.heldout_kl("lens"), lens.heldout_kl("logit")
    last = f"after block {tiny_model.facts.n_layers - 1}"
    for layer in lens.labels[:-1]:
        assert fitted[layer] < plain[layer], layer
    assert fitted[last] == pytest.approx(0, abs=1e-6) and plain[last] == pytest.approx(0, abs=1e-6)


def test_last_translator_is_the_identity(tiny_model, tiny_linear):
    lens = tiny_linear(tiny_model)
    assert lens.weight[-1].abs().max() < 1e-6
    assert lens.bias[-1].abs().max() < 1e-5 * lens.bias.abs().max()


def test_heldout_kl_agrees_with_plain_transformers(tiny_model, tiny_corpus, tiny_linear, hf_twin):
    """The header's KL recomputed from HF hidden states, HF's final norm and lm_head, and torch's kl_div."""
    lens = tiny_linear(tiny_model)
    hf = hf_twin(tiny_model)
    test_rows = Splits.of(tiny_corpus(tiny_model), lens.header["seed"]).test
    with torch.no_grad():
        hidden = hf(test_rows, output_hidden_states=True)
    n = tiny_model.facts.n_layers
    final = hidden.logits[:, 1:].float().log_softmax(-1).reshape(-1, tiny_model.facts.d_vocab)
    for layer in range(n + 1):
        # HF's last hidden state is after the final norm; the residual after the last block is its input.
        h = hidden.hidden_states[layer][:, 1:] if layer < n else None
        if h is None:
            continue
        for name, translated in (("logit", h), ("lens", lens.translate(h, layer))):
            with torch.no_grad():
                logq = hf.lm_head(hf.model.norm(translated)).float().log_softmax(-1).reshape(final.shape)
            kl = torch.nn.functional.kl_div(logq, final, log_target=True, reduction="batchmean")
            assert lens.heldout_kl(name)[resid_labels(n)[layer]] == pytest.approx(float(kl), rel=1e-4, abs=1e-6)


def test_closed_form_equals_a_direct_least_squares_solve(tiny_qwen2, tiny_corpus, tiny_linear):
    """Ridge towards the identity, solved as one stacked least-squares problem by scipy."""
    lens = tiny_linear(tiny_qwen2)
    train = Splits.of(tiny_corpus(tiny_qwen2), lens.header["seed"]).train
    stack = collect_residuals(tiny_qwen2, train).double().numpy()
    y = stack[-1]
    for layer in (0, 2):
        x = stack[layer]
        n, d = x.shape
        lam = lens.header["ridge"]["alpha"][layer] * np.trace(np.cov(x.T, bias=True)) / d
        # rows [x, 1] Θ ≈ y − x, plus sqrt(n λ)·[I, 0] Θ ≈ 0 (the ridge on A only, towards the identity).
        design = np.vstack(
            [np.hstack([x, np.ones((n, 1))]), np.sqrt(n * lam) * np.hstack([np.eye(d), np.zeros((d, 1))])]
        )
        target = np.vstack([y - x, np.zeros((d, d))])
        theta = scipy.linalg.lstsq(design, target)[0]
        np.testing.assert_allclose(lens.weight[layer].double().numpy(), theta[:d].T, rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(lens.bias[layer].double().numpy(), theta[d], rtol=1e-3, atol=1e-4)


def test_save_and_load_round_trip_exactly(tiny_qwen2, tiny_linear, tmp_path):
    lens = tiny_linear(tiny_qwen2)
    path = lens.save(tmp_path / "qwen.lens")
    again = Lens.load(path, tiny_qwen2)
    assert torch.equal(again.weight, lens.weight) and torch.equal(again.bias, lens.bias)
    assert again.header == {"format": "workbench.lens/1", **lens.header, "tensors": again.header["tensors"]}
    assert set(again.header["tensors"]) == {"weight", "bias"}
    again.save(tmp_path / "again.lens")
    assert (tmp_path / "again.lens").read_bytes() == path.read_bytes()
    out = run(tiny_qwen2, PROMPT, [TunedLens(lens=path), TunedLens(lens=lens)])
    assert_same_arrays(out["tuned_lens"], out["tuned_lens_1"])


def test_lens_is_refused_on_another_model(tiny_qwen2, tiny_llama, tiny_linear, tmp_path):
    path = tiny_linear(tiny_qwen2).save(tmp_path / "qwen.lens")
    with pytest.raises(LensError, match="fitted on tiny-qwen2"):
        Lens.load(path, tiny_llama)
    other_weights = load_model("tiny-qwen2", seed=1)  # same shapes, other weights
    with pytest.raises(LensError, match="weights"):
        Lens.load(path, other_weights)
    with pytest.raises(LensError, match="fitted on tiny-qwen2"):
        run(tiny_llama, PROMPT, TunedLens(lens=path))


def test_unreadable_lens_files_are_refused(tmp_path, tiny_qwen2):
    from safetensors.torch import save_file

    garbage = tmp_path / "garbage.lens"
    garbage.write_bytes(b"not a lens")
    with pytest.raises(LensError, match="not a readable lens"):
        Lens.load(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, foreign)
    before = foreign.read_bytes()
    with pytest.raises(LensError, match="not a workbench lens"):
        Lens.load(foreign)
    with pytest.raises(LensError, match="No lens file"):
        Lens.load(tmp_path / "missing.lens")
    with pytest.raises(LensError, match="never overwritten"):
        Lens.identity(tiny_qwen2).save(foreign)
    assert foreign.read_bytes() == before


def test_sampled_corpus_is_generate_with_a_seed_per_block(tiny_llama, monkeypatch):
    a = sample_corpus(tiny_llama, tokens=80, seed=3)
    assert torch.equal(a.rows, sample_corpus(tiny_llama, tokens=80, seed=3).rows)
    assert not torch.equal(a.rows, sample_corpus(tiny_llama, tokens=80, seed=4).rows)
    assert a.rows.shape == (3, 64) and (a.rows[:, 0] == tiny_llama.tokenizer.bos_token_id).all()
    assert a.settings["sampling"] == "kv-cache copy"
    from workbench.lenses.corpus import block_seed

    prompt = torch.tensor([[tiny_llama.tokenizer.bos_token_id]])
    # The KV-cached draw gives generate()'s tokens for the same sampler and seed.
    out = generate(tiny_llama, prompt, make_sampler(seed=block_seed(3, 0)), max_new_tokens=63, n=3, stop_at_eos=False)
    assert torch.equal(a.rows[:, 1:], out.tokens)
    assert a.to_dict()["sha256"] == sample_corpus(tiny_llama, tokens=80, seed=3).sha256
    monkeypatch.setattr("workbench.lenses.corpus.kv_copy", lambda model, check: None)  # no plain copy: generate()
    fallback = sample_corpus(tiny_llama, tokens=80, seed=3)
    assert fallback.settings["sampling"] == "generate" and torch.equal(fallback.rows, a.rows)


@pytest.fixture(scope="session")
def hf_twin():
    """A plain transformers copy of a tiny model's weights (no bridge, no workbench code on its path)."""
    from workbench.tiny import build_tiny_model

    cache = {}

    def twin(model):
        if model.facts.name not in cache:
            hf, _ = build_tiny_model(model.facts.name)
            hf.set_attn_implementation("eager")
            cache[model.facts.name] = hf.eval()
        return cache[model.facts.name]

    return twin


def test_every_split_gets_rows_even_from_a_tiny_corpus(tiny_qwen2):
    from workbench.lenses import Corpus

    rows = torch.arange(3 * 5).reshape(3, 5)
    parts = Corpus(rows=rows, source="three rows", settings={}).split((0.8, 0.1, 0.1), seed=0)
    assert [len(p) for p in parts] == [1, 1, 1]
    assert sorted(torch.cat(parts)[:, 0].tolist()) == [0, 5, 10]
    parts = Corpus(rows=torch.zeros(50, 4, dtype=torch.long), source="fifty", settings={}).split(
        (0.8, 0.1, 0.1), seed=1
    )
    assert [len(p) for p in parts] == [40, 5, 5]
    with pytest.raises(LensError, match="too few"):
        Corpus(rows=torch.zeros(2, 4, dtype=torch.long), source="two", settings={}).split((0.8, 0.1, 0.1))
