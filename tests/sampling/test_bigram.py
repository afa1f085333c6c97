"""The bigram model: probabilities are pair counts, by hand; it runs every sampling tool."""

import math

import pytest
import torch

from workbench.errors import SamplingError
from workbench.sampling import BigramModel, distribution_stats, make_sampler


def probs_after(model, text):
    return model.next_token_logits(torch.tensor([model.encode(text)])).softmax(-1)[0]


def test_word_bigram_probabilities_are_pair_counts():
    model = BigramModel.from_text("a b a c")
    # tokens: a ␣ b ␣ a ␣ c — after '␣': b, a, c once each; after 'a': '␣' twice out of 2 (the last a is followed by ␣)
    after_space = probs_after(model, "a ")
    for word in ("a", "b", "c"):
        assert float(after_space[model.encode(word)[0]]) == pytest.approx(1 / 3)
    assert float(probs_after(model, "a")[model.encode(" ")[0]]) == pytest.approx(1.0)
    assert model.decode(model.encode("a b")) == "a b"


def test_unseen_context_falls_back_to_unigram_and_smoothing_is_add_alpha():
    model = BigramModel.from_text("a b a c")
    unigram = probs_after(model, "zzz")  # unknown word → <unk> context, never seen
    assert float(unigram[model.encode("a")[0]]) == pytest.approx(2 / 7)
    smooth = BigramModel.from_text("a b a c", alpha=0.5)
    v = smooth.d_vocab
    assert float(probs_after(smooth, "a ")[smooth.encode("b")[0]]) == pytest.approx((1 + 0.5) / (3 + 0.5 * v))


def test_bigram_on_a_model_tokenizer_counts_its_tokens(tiny_qwen2):
    text = "The number is 7. The number is 3. The number is 7."
    model = BigramModel.from_text(text, tokenizer=tiny_qwen2.tokenizer)
    assert model.d_vocab == tiny_qwen2.facts.d_vocab
    ids = tiny_qwen2.tokenizer.encode(text, add_special_tokens=False)
    last = ids[ids.index(tiny_qwen2.tokenizer.encode(" is", add_special_tokens=False)[0]) + 1]
    followers = [b for a, b in zip(ids, ids[1:], strict=False) if a == last]
    seven = tiny_qwen2.tokenizer.encode("7", add_special_tokens=False)[0]
    probs = model.next_token_logits(torch.tensor([[last]])).softmax(-1)[0]
    assert float(probs[seven]) == pytest.approx(followers.count(seven) / len(followers))


def test_samplers_and_monitors_run_on_the_bigram(counted_bigram):
    logits = counted_bigram.next_token_logits(torch.tensor([counted_bigram.encode("=")]))[0]
    stats = distribution_stats(logits)
    expected = -(0.6 * math.log2(0.6) + 2 * 0.2 * math.log2(0.2))
    assert stats.entropy_bits == pytest.approx(expected, abs=1e-6)
    assert counted_bigram.decode([int(make_sampler(0.0).sample(logits))]) == "7"
    assert counted_bigram.decode([int(make_sampler(-1e-3).sample(logits, num_samples=1)[0])]) != "7"


def test_bigram_errors():
    with pytest.raises(SamplingError, match="empty"):
        BigramModel.from_text("   ")
    with pytest.raises(SamplingError, match="alpha"):
        BigramModel.from_text("a b", alpha=-1)
