"""The randomness audit on models whose distribution is known: χ² accepts the true law and rejects uniformity."""

import json
import math

import pytest
import torch
from scipy.stats import chisquare

from workbench.errors import SamplingError
from workbench.sampling import (
    BigramModel,
    chi_square,
    exact_number_distribution,
    make_sampler,
    parse_answer,
    randomness_audit,
    secrets_histogram,
)


def test_chi_square_matches_scipy_and_handles_impossible_cells():
    counts, probs = [30, 50, 20], [0.3, 0.5, 0.2]
    expected = chisquare(counts, [30.0, 50.0, 20.0])
    assert chi_square(counts, probs) == pytest.approx((expected.statistic, expected.pvalue))
    assert chi_square([10, 0, 5], [0.6, 0.0, 0.4]) == pytest.approx(chisquare([10, 5], [9.0, 6.0]))
    assert chi_square([10, 1, 5], [0.6, 0.0, 0.4]) == (float("inf"), 0.0)
    assert chi_square([0, 7, 0], [0.0, 1.0, 0.0]) == (0.0, 1.0)


def test_audit_accepts_the_known_law_and_rejects_uniform(skewed_digits):
    model, law = skewed_digits
    audit = randomness_audit(model, samples=4000, samplers=[make_sampler(1.0, seed=0)], prompt="x")
    s = audit.samplers[0]
    assert audit.method == "first-token"
    torch.testing.assert_close(torch.tensor(s.exact), torch.tensor(law), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(torch.tensor(audit.model_exact), torch.tensor(law), atol=1e-6, rtol=1e-6)
    assert s.valid_mass == pytest.approx(0.8, abs=1e-6)
    assert s.p_exact > 1e-3  # the sampler draws from this law (seeded: the same numbers every run)
    assert s.p_uniform < 1e-12
    assert s.n_valid + s.failed == 4000
    assert s.failed == pytest.approx(0.2 * 4000, abs=4 * math.sqrt(4000 * 0.2 * 0.8))
    assert s.entropy_bits < audit.uniform_entropy_bits - 1
    assert s.exact_entropy_bits == pytest.approx(-sum(p * math.log2(p) for p in law))
    assert s.failed_examples == ["x"]


def test_audit_accepts_uniform_on_a_uniform_model(uniform_digits):
    audit = randomness_audit(uniform_digits, samples=3000, samplers=["t=1"], prompt="x", seed=5)
    s = audit.samplers[0]
    assert s.failed == 0 and s.p_uniform > 1e-3
    assert s.exact_entropy_bits == pytest.approx(math.log2(10))


def test_each_sampler_gets_its_own_exact_law(skewed_digits):
    model, law = skewed_digits
    # top-4 keeps the digits 0, 1, 2 and the non-digit 'x' (P ≈ 0.40, 0.20, 0.10 and 0.20)
    audit = randomness_audit(model, 3000, ["t=1,top_k=4", "t=2", "t=-0.001", "greedy"], prompt="x", seed=1)
    top3, hot, anti, argmax = audit.samplers
    kept = torch.tensor(law[:3]) / sum(law[:3])
    torch.testing.assert_close(torch.tensor(top3.exact[:3]), kept, atol=1e-6, rtol=1e-6)
    assert top3.valid_mass == pytest.approx(sum(law[:3]) * 0.8 / (sum(law[:3]) * 0.8 + 0.2), abs=1e-6)
    assert top3.counts[3:] == [0] * 7 and top3.failed > 0 and top3.p_exact > 1e-3
    assert hot.p_exact > 1e-3 and hot.exact_entropy_bits > top3.exact_entropy_bits
    # T → 0⁻ picks the least likely token, 9 (the 'x' holds 20 %, the digit 9 the least)
    assert anti.counts == [0] * 9 + [3000] and anti.p_exact == 1.0
    assert argmax.counts[0] == 3000 and argmax.p_exact == 1.0 and argmax.p_uniform < 1e-12


def test_bigram_with_a_skewed_known_law(counted_bigram):
    audit = randomness_audit(counted_bigram, samples=2000, prompt="=", seed=3)
    s = audit.samplers[0]
    hand = [0.0, 0.2, 0.0, 0.2, 0.0, 0.0, 0.0, 0.6, 0.0, 0.0]
    torch.testing.assert_close(torch.tensor(audit.model_exact), torch.tensor(hand), atol=1e-6, rtol=1e-6)
    assert s.failed == 0 and s.counts[7] > s.counts[1]
    assert s.p_exact > 1e-3 and s.p_uniform < 1e-12
    assert [c for i, c in enumerate(s.counts) if hand[i] == 0] == [0] * 7


def test_multi_token_answers_by_generation():
    bigram = BigramModel.from_text("=12;=12;=7;=30;")
    # by hand: '1' then '2' then ';' → 12 w.p. 1/2; 7 w.p. 1/4; '3' then '0' then ';' → 30 w.p. 1/4
    exact, valid = exact_number_distribution(bigram, "=", range(0, 41))
    assert valid == pytest.approx(1.0)
    assert exact[12] == pytest.approx(0.5) and exact[7] == pytest.approx(0.25) and exact[30] == pytest.approx(0.25)
    assert exact[1] == 0.0 and exact[3] == 0.0  # '1' is always continued by '2'
    audit = randomness_audit(bigram, samples=400, low=0, high=40, prompt="=", seed=2)
    s = audit.samplers[0]
    assert audit.method == "generate" and s.failed == 0
    assert sum(s.counts) == 400 and s.counts[12] + s.counts[7] + s.counts[30] == 400
    assert s.p_exact > 1e-3 and s.p_uniform < 1e-12


def test_first_token_and_generation_agree_when_digits_end_the_answer():
    bigram = BigramModel.from_text("=7;=7;=3;=5;")
    first = randomness_audit(bigram, 500, prompt="=", method="first-token", seed=0)
    generated = randomness_audit(bigram, 500, prompt="=", method="generate", seed=0)
    torch.testing.assert_close(
        torch.tensor(first.model_exact), torch.tensor(generated.model_exact), atol=1e-6, rtol=1e-6
    )


def test_exact_multi_token_law_on_a_transformer_matches_a_hand_product(tiny_qwen2):
    prompt = "Pick a number from 1 to 10. The answer is "
    exact, valid = exact_number_distribution(tiny_qwen2, prompt, range(0, 13))
    tok = lambda s: tiny_qwen2.tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    digit_start = torch.tensor(
        [tiny_qwen2.tokenizer.decode([i])[:1].isdigit() for i in range(tiny_qwen2.facts.d_vocab)]
    )

    def next_probs(text_ids):
        ids = torch.cat([tiny_qwen2.to_tokens(prompt), torch.tensor([text_ids], dtype=torch.long)], dim=1)
        return tiny_qwen2.bridge(ids)[0, -1].softmax(-1).detach()

    p1 = next_probs([])[tok("1")[0]]
    p10 = next_probs(tok("1"))[tok("0")[0]]
    p_end = 1 - next_probs(tok("10"))[digit_start].sum()
    assert exact[10] * valid == pytest.approx(float(p1 * p10 * p_end), rel=1e-4)
    assert sum(exact) == pytest.approx(1.0)


def test_secrets_baseline_and_serialisation(skewed_digits):
    baseline = secrets_histogram(list(range(10)), 20000)
    assert sum(baseline.counts) == 20000 and baseline.failed == 0
    assert 3.30 < baseline.entropy_bits <= math.log2(10)
    model, _ = skewed_digits
    audit = randomness_audit(model, 200, ["t=1", "t=0.5"], prompt="x")
    data = json.loads(json.dumps(audit.to_dict()))
    assert data["values"] == list(range(10)) and len(data["samplers"]) == 2
    assert data["uniform_entropy_bits"] == pytest.approx(math.log2(10))
    fig = audit.figure()
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 4  # model exact, two samplers, secrets


def test_parse_answer():
    assert parse_answer("7.", range(10)) == 7
    assert parse_answer("12 apples", range(20)) == 12
    assert parse_answer("12", range(10)) is None
    assert parse_answer(" 7", range(10)) is None
    assert parse_answer("seven", range(10)) is None


def test_audit_errors(skewed_digits, tiny_qwen2):
    model, _ = skewed_digits
    with pytest.raises(SamplingError, match="method"):
        randomness_audit(model, 10, prompt="x", method="magic")
    with pytest.raises(SamplingError, match="range"):
        randomness_audit(model, 10, prompt="x", low=5, high=2)
    with pytest.raises(SamplingError, match="samples is 0"):
        randomness_audit(model, 0, prompt="x")
    with pytest.raises(SamplingError, match="several tokens"):
        randomness_audit(tiny_qwen2, 10, low=0, high=12, method="first-token")
