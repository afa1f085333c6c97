"""Distribution monitors against hand computations and scipy."""

import math

import pytest
import torch
from scipy import stats
from workbench_typecheck import unchecked

from workbench.errors import SamplingError
from workbench.sampling import batch_stats, distribution_stats, entropy_bits

P = torch.tensor([0.5, 0.25, 0.25])


def test_hand_computed_monitors():
    s = distribution_stats(P.log(), k=1)
    assert s.entropy_bits == pytest.approx(1.5)
    assert s.entropy_nats == pytest.approx(1.5 * math.log(2))
    assert s.perplexity == pytest.approx(2**1.5)
    assert s.max_entropy_bits == pytest.approx(math.log2(3))
    assert s.max_prob == pytest.approx(0.5) and s.min_prob == pytest.approx(0.25)
    assert s.max_min_ratio == pytest.approx(2.0)
    assert s.top_k_mass == pytest.approx(0.5)
    assert s.kl_to_reference == pytest.approx(math.log(3) - 1.5 * math.log(2))
    assert s.tv_to_reference == pytest.approx(1 / 6)
    assert s.chi2_to_reference == pytest.approx(1 / 8)  # 3·((1/6)² + 2·(1/12)²)
    assert s.reference == "uniform over 3 tokens"


def test_logit_moments_match_scipy():
    logits = torch.randn(300, generator=torch.Generator().manual_seed(0)) ** 3
    s = distribution_stats(logits)
    assert s.logit_skewness == pytest.approx(float(stats.skew(logits.double().numpy())), rel=1e-6)
    assert s.logit_kurtosis == pytest.approx(float(stats.kurtosis(logits.double().numpy())), rel=1e-6)


def test_removed_tokens_count_as_zero_and_leave_the_ratio_finite():
    s = distribution_stats(torch.tensor([0.0, math.log(3.0), float("-inf")]))
    assert s.n_zero == 1 and s.min_prob == 0.0
    assert s.max_min_ratio == pytest.approx(3.0)
    assert s.entropy_bits == pytest.approx(entropy_bits([0.25, 0.75]))


def test_token_subset_and_a_given_reference():
    logits = torch.tensor([5.0, math.log(2.0), 0.0, 9.0])
    s = distribution_stats(logits, tokens=[1, 2], reference=torch.tensor([0.5, 0.5]), reference_name="fair coin")
    assert s.size == 2 and s.max_prob == pytest.approx(2 / 3)
    assert s.kl_to_reference == pytest.approx(2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3))
    assert s.reference == "fair coin"


def test_kl_is_infinite_when_the_reference_excludes_a_token():
    s = distribution_stats(P, is_probs=True, reference=torch.tensor([0.5, 0.5, 0.0]))
    assert s.kl_to_reference == float("inf") and s.tv_to_reference == pytest.approx(0.25)


def test_uniform_is_at_the_maximum():
    s = distribution_stats(torch.zeros(10))
    assert s.entropy_bits == pytest.approx(math.log2(10))
    assert s.kl_to_reference == pytest.approx(0.0, abs=1e-12)
    assert s.max_min_ratio == pytest.approx(1.0)


def test_batch_and_errors():
    rows = batch_stats(torch.stack([P.log(), torch.zeros(3)]))
    assert [round(r.entropy_bits, 6) for r in rows] == [1.5, round(math.log2(3), 6)]
    with pytest.raises(SamplingError, match="1-D"):
        unchecked(distribution_stats)(torch.zeros(2, 3))
    with pytest.raises(SamplingError, match="NaN"):
        distribution_stats(torch.tensor([0.0, float("nan")]))
    with pytest.raises(SamplingError, match="reference"):
        distribution_stats(torch.zeros(3), reference=torch.tensor([0.5, 0.6, 0.0]))


def test_entropy_bits_of_a_histogram():
    assert entropy_bits([5, 5, 0, 10]) == pytest.approx(1.5)
    assert math.isnan(entropy_bits([0, 0]))
