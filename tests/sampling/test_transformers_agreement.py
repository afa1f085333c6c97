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

from workbench.tiny import build_tiny_model
from workbench.sampling import MinP, RepetitionPenalty, Temperature, TopK, TopP, generate, greedy, make_sampler

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
        [RepetitionPenaltyLogitsProcessor(1.2), TemperatureLogitsWarper(0.8), TopKLogitsWarper(20), TopPLogitsWarper(0.9), MinPLogitsWarper(0.02)]
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
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, min_new_tokens=8, pad_token_id=0, **kwargs)
    return out[0, ids.shape[1]:].tolist()


def test_greedy_generation_matches_hf_generate(tiny_model):
    ours = generate(tiny_model, "The quick brown fox", greedy(), 8, stop_at_eos=False)
    assert ours.row_tokens(0) == _hf_generate(tiny_model, "The quick brown fox", do_sample=False)


def test_seeded_sampling_matches_hf_generate(tiny_qwen2):
    """Same seed, same multinomial over the same processed distribution: the same tokens."""
    ours = generate(tiny_qwen2, "The quick brown fox", make_sampler(0.9, top_k=50, top_p=0.95, seed=123), 8, stop_at_eos=False)
    torch.manual_seed(123)
    theirs = _hf_generate(tiny_qwen2, "The quick brown fox", do_sample=True, temperature=0.9, top_k=50, top_p=0.95)
    assert ours.row_tokens(0) == theirs
