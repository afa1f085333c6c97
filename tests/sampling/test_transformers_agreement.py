"""The processors agree with transformers' own LogitsProcessors on the same logits, alone and chained,
and greedy/seeded generation agrees with ``model.generate`` of the underlying Hugging Face model."""

import pytest
import torch
from transformers import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from workbench.sampling import (
    MinP,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
    beam_search,
    generate,
    greedy,
    make_sampler,
)
from workbench.tiny import build_tiny_model

GEN = torch.Generator().manual_seed(0)
LOGITS = torch.randn(6, 64, generator=GEN) * 2.5
IDS = torch.randint(0, 64, (6, 12), generator=GEN)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (Temperature(0.7), TemperatureLogitsWarper(0.7)),
        (Temperature(1.9), TemperatureLogitsWarper(1.9)),
        (TopK(1), TopKLogitsWarper(1)),
        (TopK(7), TopKLogitsWarper(7)),
        (TopP(0.3), TopPLogitsWarper(0.3)),
        (TopP(0.8), TopPLogitsWarper(0.8)),
        (TopP(0.95), TopPLogitsWarper(0.95)),
        (MinP(0.05), MinPLogitsWarper(0.05)),
        (MinP(0.4), MinPLogitsWarper(0.4)),
        (RepetitionPenalty(1.3), RepetitionPenaltyLogitsProcessor(1.3)),
        (RepetitionPenalty(0.7), RepetitionPenaltyLogitsProcessor(0.7)),
    ],
    ids=str,
)
def test_each_processor_matches_transformers(ours, theirs):
    torch.testing.assert_close(ours(LOGITS, IDS), theirs(IDS, LOGITS.clone()))


def test_chain_matches_transformers_chain():
    theirs = LogitsProcessorList(
        [
            RepetitionPenaltyLogitsProcessor(1.2),
            TemperatureLogitsWarper(0.8),
            TopKLogitsWarper(20),
            TopPLogitsWarper(0.9),
            MinPLogitsWarper(0.02),
        ]
    )
    ours = make_sampler(0.8, top_k=20, top_p=0.9, min_p=0.02, repetition_penalty=1.2)
    torch.testing.assert_close(ours.process(LOGITS, IDS), theirs(IDS, LOGITS.clone()))
    torch.testing.assert_close(ours.probs(LOGITS, IDS), theirs(IDS, LOGITS.clone()).softmax(-1))


def test_greedy_matches_argmax_of_transformers_scores():
    assert torch.equal(greedy().sample(LOGITS), LOGITS.argmax(-1))


def _hf_generate(tiny, prompt, **kwargs):
    # A fresh Hugging Face model with the same seed: independent of the bridge (whose wrapped
    # model does not give the same tokens through generate's KV cache).
    hf, _ = build_tiny_model(tiny.facts.name)
    ids = tiny.to_tokens(prompt)
    out = hf.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, min_new_tokens=8, pad_token_id=0, **kwargs
    )
    return out[0, ids.shape[1] :].tolist()


def test_greedy_generation_matches_hf_generate(tiny_model):
    ours = generate(tiny_model, "The quick brown fox", greedy(), 8, stop_at_eos=False)
    assert ours.row_tokens(0) == _hf_generate(tiny_model, "The quick brown fox", do_sample=False)


def test_seeded_sampling_matches_hf_generate(tiny_qwen2):
    """Same seed, same multinomial over the same processed distribution: the same tokens."""
    ours = generate(
        tiny_qwen2, "The quick brown fox", make_sampler(0.9, top_k=50, top_p=0.95, seed=123), 8, stop_at_eos=False
    )
    torch.manual_seed(123)
    theirs = _hf_generate(tiny_qwen2, "The quick brown fox", do_sample=True, temperature=0.9, top_k=50, top_p=0.95)
    assert ours.row_tokens(0) == theirs


# --- beam search: equal to transformers' generate(num_beams=...) --------------------------------------

BEAM_PROMPTS = ["The quick brown fox", "I'm generating a random number between [0, 9]. The number is ", "Hello world"]


@pytest.fixture(scope="module")
def plain_hf():
    """Fresh Hugging Face copies of the tiny models (same seed as the bridged ones), built once."""
    return {name: build_tiny_model(name) for name in ("tiny-qwen2", "tiny-llama")}


@pytest.fixture
def beam_search_at_width_one(monkeypatch):
    """transformers routes num_beams=1 to greedy decoding; route it to its beam search instead, whose
    rules (a stopped hypothesis is set aside, the best live one continues) width 1 follows."""
    from transformers.generation.configuration_utils import GenerationConfig, GenerationMode

    original = GenerationConfig.get_generation_mode

    def mode(self, assistant_model=None):
        if self.num_beams == 1 and not self.do_sample:
            return GenerationMode.BEAM_SEARCH
        return original(self, assistant_model)

    monkeypatch.setattr(GenerationConfig, "get_generation_mode", mode)


def hf_beams(hf, ids, stops, width, length_penalty, early_stopping, max_new_tokens=8):
    """transformers' beams as (generated ids up to and including the first stop token, sequences_scores)."""
    out = hf.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        num_beams=width,
        num_return_sequences=width,
        max_new_tokens=max_new_tokens,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
        eos_token_id=stops,
        pad_token_id=stops[0],
    )
    beams = []
    for row, score in zip(out.sequences[:, ids.shape[1] :].tolist(), out.sequences_scores.tolist(), strict=True):
        ends = [i for i, t in enumerate(row) if t in stops]
        beams.append((row[: ends[0] + 1] if ends else row, score))
    return beams


@pytest.mark.parametrize("early_stopping", [False, True, "never"])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0, -0.5])
@pytest.mark.parametrize("width", [1, 2, 4, 5])
@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-llama"])
def test_beam_search_equals_transformers(
    name, width, length_penalty, early_stopping, plain_hf, beam_search_at_width_one, request
):
    """Same sequences, same scores, for every width × length penalty × early-stopping rule. Besides EOS, two
    tokens of the greedy continuation are stop tokens, so hypotheses finish at different steps."""
    model = request.getfixturevalue(name.replace("-", "_"))
    hf, tokenizer = plain_hf[name]
    eos = tokenizer.eos_token_id
    for prompt in BEAM_PROMPTS:
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        greedy_tokens = generate(model, prompt, greedy(), 4, stop_at_eos=False).row_tokens(0)
        stops = [eos, *sorted({greedy_tokens[1], greedy_tokens[3]} - {eos})]
        ours = beam_search(model, prompt, width, 8, length_penalty, stop=stops, early_stopping=early_stopping)
        assert ours.prompt_tokens == ids[0].tolist()  # the same BOS convention on both sides
        theirs = hf_beams(hf, ids, stops, width, length_penalty, early_stopping)
        assert [b.tokens for b in ours.beams] == [tokens for tokens, _ in theirs], prompt
        torch.testing.assert_close(
            torch.tensor([b.score for b in ours.beams]), torch.tensor([s for _, s in theirs]), atol=2e-5, rtol=1e-5
        )
        for beam in ours.beams:
            assert beam.finished == (beam.tokens[-1] in stops)


@pytest.mark.parametrize("num_return_sequences", [1, 3])
def test_beam_search_with_eos_only_and_fewer_returned(tiny_llama, plain_hf, num_return_sequences):
    hf, tokenizer = plain_hf["tiny-llama"]
    prompt = BEAM_PROMPTS[0]
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    ours = beam_search(tiny_llama, prompt, 4, 6, 1.0, num_return_sequences=num_return_sequences)
    theirs = hf_beams(hf, ids, [tokenizer.eos_token_id], 4, 1.0, False, max_new_tokens=6)[:num_return_sequences]
    assert [b.tokens for b in ours.beams] == [tokens for tokens, _ in theirs]
    assert [b.score for b in ours.beams] == pytest.approx([s for _, s in theirs], abs=2e-5)
