"""Each processor against a hand computation on small logits, the temperature invariants, and the draw."""

import math

import pytest
import torch
from scipy.stats import chisquare
from workbench_typecheck import unchecked

from workbench.errors import SamplingError
from workbench.sampling import (
    MinP,
    RepetitionPenalty,
    Sampler,
    Temperature,
    TopK,
    TopNSigma,
    TopP,
    greedy,
    make_sampler,
    parse_sampler,
)

INF = float("inf")
Z = torch.tensor([2.0, 1.0, 0.0, -1.0])
# softmax(Z) by hand: e^2, e^1, e^0, e^-1 over their sum
P = torch.tensor([math.exp(2), math.exp(1), 1.0, math.exp(-1)]) / (math.exp(2) + math.exp(1) + 1.0 + math.exp(-1))


def kept(logits):
    return torch.isfinite(logits).nonzero()[:, 0].tolist()


def test_temperature_divides_the_logits_for_either_sign():
    torch.testing.assert_close(Temperature(2.0)(Z), torch.tensor([1.0, 0.5, 0.0, -0.5]))
    torch.testing.assert_close(Temperature(-1.0)(Z), torch.tensor([-2.0, -1.0, 0.0, 1.0]))
    assert int(Temperature(-0.5)(Z).argmax()) == 3


def test_temperature_infinite_is_uniform_over_kept_tokens():
    for t in (INF, -INF):
        torch.testing.assert_close(Temperature(t)(Z).softmax(-1), torch.full((4,), 0.25))
    masked = torch.tensor([2.0, -INF, 0.0, 1.0])
    torch.testing.assert_close(Temperature(INF)(masked).softmax(-1), torch.tensor([1 / 3, 0.0, 1 / 3, 1 / 3]))


def test_negative_temperature_keeps_removed_tokens_removed():
    masked = torch.tensor([2.0, -INF, 0.0, 1.0])
    out = Temperature(-0.01)(masked)
    assert kept(out) == [0, 2, 3]
    assert int(out.argmax()) == 2  # the least likely *kept* token, not the removed one


def test_temperature_one_leaves_probabilities_unchanged():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(make_sampler(1.0).probs(logits), logits.softmax(-1))
    torch.testing.assert_close(Sampler([Temperature(1.0)]).probs(logits), logits.softmax(-1))


def test_temperature_to_zero_from_above_is_greedy_and_from_below_is_argmin():
    gen = torch.Generator().manual_seed(1)
    # distinct logits 0.1 apart, so at |T| ≤ 1e-3 the extreme token holds all but e^-100 of the mass
    logits = torch.stack([torch.randperm(100, generator=gen) * 0.1 - 5 for _ in range(8)])
    for t in (1e-3, 1e-5):
        probs = make_sampler(t).probs(logits)
        assert torch.equal(probs.argmax(-1), logits.argmax(-1))
        assert float(probs.max(-1).values.min()) > 0.999
        assert torch.equal(make_sampler(t, seed=0).sample(logits), greedy().sample(logits))
    for t in (-1e-3, -1e-5, -0.0):
        sampler = make_sampler(t, seed=0)
        assert torch.equal(sampler.sample(logits), logits.argmin(-1))
        assert float(sampler.probs(logits).max(-1).values.min()) > 0.999
    assert make_sampler(0.0).greedy and torch.equal(make_sampler(0.0).sample(logits), logits.argmax(-1))


def test_temperature_zero_processor_keeps_the_extreme_and_ties():
    ties = torch.tensor([3.0, 1.0, 3.0, -2.0, -2.0])
    assert kept(Temperature(0.0)(ties)) == [0, 2]
    assert kept(Temperature(-0.0)(ties)) == [3, 4]


def test_top_k_by_hand_and_ties_and_disabled():
    assert kept(TopK(2)(Z)) == [0, 1]
    torch.testing.assert_close(TopK(2)(Z)[:2], Z[:2])
    assert kept(TopK(1)(torch.tensor([1.0, 1.0, 0.0]))) == [0, 1]
    assert torch.equal(TopK(0)(Z), Z)
    assert torch.equal(TopK(10)(Z), Z)


def test_top_p_by_hand():
    # P ≈ [0.644, 0.237, 0.087, 0.032]; cumulative 0.644, 0.881, 0.968, 1
    assert kept(TopP(0.6)(Z)) == [0]
    assert kept(TopP(0.7)(Z)) == [0, 1]
    assert kept(TopP(0.88)(Z)) == [0, 1]
    assert kept(TopP(0.9)(Z)) == [0, 1, 2]
    assert kept(TopP(0.99)(Z)) == [0, 1, 2, 3]
    assert torch.equal(TopP(1.0)(Z), Z)


def test_top_p_keeps_the_smallest_set_reaching_p():
    gen = torch.Generator().manual_seed(2)
    for _ in range(50):
        logits = torch.randn(30, generator=gen) * 2
        p = float(torch.rand(1, generator=gen)) * 0.98 + 0.01
        probs = logits.softmax(-1)
        chosen = kept(TopP(p)(logits))
        mass = float(probs[chosen].sum())
        assert mass >= p - 1e-6
        dropped = [float(probs[i]) for i in range(30) if i not in chosen]
        assert float(probs[chosen].min()) >= max(dropped, default=0.0)  # the most likely tokens
        assert mass - float(probs[chosen].min()) < p  # dropping the least likely kept token falls below p


def test_min_p_by_hand():
    # threshold 0.3 × 0.644 = 0.193: keeps 0.644 and 0.237
    assert kept(MinP(0.3)(Z)) == [0, 1]
    assert kept(MinP(0.1)(Z)) == [0, 1, 2]
    assert kept(MinP(1.0)(Z)) == [0]
    assert torch.equal(MinP(0.0)(Z), Z)


def test_top_n_sigma_by_hand():
    # mean 0.5, population σ = sqrt(1.25) ≈ 1.118: n = 1 keeps logits ≥ 0.882
    assert kept(TopNSigma(1.0)(Z)) == [0, 1]
    # n = 2: keeps ≥ 2 − 2.236 = −0.236
    assert kept(TopNSigma(2.0)(Z)) == [0, 1, 2]
    assert kept(TopNSigma(0.0)(Z)) == [0]


def test_top_n_sigma_kept_set_does_not_depend_on_positive_temperature():
    logits = torch.randn(4, 200, generator=torch.Generator().manual_seed(3)) * 3
    reference = torch.isfinite(TopNSigma(1.0)(logits))
    for t in (0.05, 0.3, 1.0, 1.7, 10.0, 1e4):
        assert torch.equal(torch.isfinite(TopNSigma(1.0)(Temperature(t)(logits))), reference)
    flipped = torch.isfinite(TopNSigma(1.0)(Temperature(-1.0)(logits)))
    assert not torch.equal(flipped, reference)  # a negative T selects from the other end


def test_repetition_penalty_by_hand():
    out = RepetitionPenalty(2.0)(Z, torch.tensor([0, 3, 3]))
    torch.testing.assert_close(out, torch.tensor([1.0, 1.0, 0.0, -2.0]))
    assert torch.equal(RepetitionPenalty(2.0)(Z, None), Z)


def test_processors_on_a_batch_equal_row_by_row():
    logits = torch.randn(5, 40, generator=torch.Generator().manual_seed(4))
    ids = torch.randint(0, 40, (5, 7), generator=torch.Generator().manual_seed(5))
    for processor in (Temperature(-0.7), TopK(5), TopP(0.8), MinP(0.1), TopNSigma(1.0), RepetitionPenalty(1.5)):
        batch = processor(logits, ids)
        for row in range(5):
            torch.testing.assert_close(batch[row], processor(logits[row], ids[row]))


def test_the_order_of_the_chain_is_explicit():
    # top-1 then T<0: only the argmax survives; T<0 then top-1: the argmin
    assert int(Sampler([TopK(1), Temperature(-1.0)]).sample(Z)) == 0
    assert int(Sampler([Temperature(-1.0), TopK(1)]).sample(Z)) == 3
    assert make_sampler(0.5, top_k=3, top_p=0.9).describe() == "temperature=0.5 → top_k=3 → top_p=0.9 → sample"


def test_seeded_draws_are_reproducible():
    logits = torch.randn(3, 30, generator=torch.Generator().manual_seed(6))
    a = make_sampler(1.3, top_p=0.95, seed=11).sample(logits, num_samples=200)
    b = make_sampler(1.3, top_p=0.95, seed=11).sample(logits, num_samples=200)
    c = make_sampler(1.3, top_p=0.95, seed=12).sample(logits, num_samples=200)
    assert a.shape == (3, 200)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_draws_follow_the_processed_distribution():
    sampler = make_sampler(0.8, top_k=3, seed=0)
    draws = sampler.sample(Z, num_samples=20000)
    counts = torch.bincount(draws, minlength=4).double()
    expected = (Z[:3].double() / 0.8).softmax(-1) * 20000
    assert counts[3] == 0  # outside the top-3
    assert chisquare(counts[:3].numpy(), expected.numpy()).pvalue > 1e-3


@pytest.mark.parametrize(
    "build",
    [
        lambda: Temperature(float("nan")),
        lambda: make_sampler(float("nan")),
        lambda: TopP(0.0),
        lambda: TopP(1.5),
        lambda: TopP(float("nan")),
        lambda: TopK(-1),
        lambda: unchecked(TopK)(2.5),
        lambda: TopNSigma(-0.1),
        lambda: MinP(1.5),
        lambda: RepetitionPenalty(0.0),
        lambda: parse_sampler("t=0.7,bogus=1"),
        lambda: parse_sampler("t=abc"),
    ],
)
def test_bad_settings_raise_sampling_error(build):
    with pytest.raises(SamplingError):
        build()


def test_infinite_temperature_is_allowed_and_nan_message_is_clear():
    assert make_sampler(INF).probs(Z).allclose(torch.full((4,), 0.25))
    with pytest.raises(SamplingError, match="NaN"):
        Temperature(float("nan"))


def test_parse_sampler():
    s = parse_sampler("t=-0.001,top_k=5,seed=3")
    assert [str(p) for p in s.processors] == ["temperature=-0.001", "top_k=5"]
    assert s.seed == 3 and not s.greedy
    assert parse_sampler("greedy").greedy
    assert parse_sampler("t=0").greedy
    assert str(parse_sampler("t=inf").processors[0]) == "temperature=inf"
    assert parse_sampler("top_p=0.9", seed=7).seed == 7
