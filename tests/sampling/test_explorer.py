"""The temperature explorer: its numbers against direct softmaxes, and the kept-set invariants."""

import pytest
import torch

from workbench.sampling import TopP, temperature_sweep
from workbench.tokens import digit_token_ids

PROMPT = "I'm generating a random number between [0, 9]. The number is "


@pytest.fixture(scope="module")
def sweep(tiny_qwen2):
    return temperature_sweep(tiny_qwen2, PROMPT, temperatures=[-2, -1, -0.5, -0.01, 0, 0.01, 0.5, 1, 2])


def test_digit_probabilities_match_a_direct_softmax(tiny_qwen2, sweep):
    logits = tiny_qwen2.bridge(tiny_qwen2.to_tokens(PROMPT))[0, -1].detach()
    digits = logits[digit_token_ids(tiny_qwen2)]
    for i, t in enumerate(sweep.temperatures):
        row = torch.tensor(sweep.probs[i])
        assert float(row.sum()) == pytest.approx(1.0, abs=1e-5)
        if t == 0:
            assert int(row.argmax()) == int(digits.argmax()) and float(row.max()) == 1.0
        else:
            torch.testing.assert_close(row, (digits / t).softmax(-1), atol=1e-5, rtol=1e-4)
        assert sweep.set_mass[i] == pytest.approx(
            float((logits / t).softmax(-1)[digit_token_ids(tiny_qwen2)].sum())
            if t
            else float(int(logits.argmax()) in digit_token_ids(tiny_qwen2)),
            abs=1e-5,
        )
    assert int(torch.tensor(sweep.probs[3]).argmax()) == int(digits.argmin())  # T = −0.01: the least likely digit


def test_kept_sets_follow_their_rules(tiny_qwen2, sweep):
    positive = [i for i, t in enumerate(sweep.temperatures) if t > 0]
    sigma = sweep.kept["top-nσ (n=1)"]
    assert len({sigma[i] for i in positive}) == 1
    assert all(k == 10 for t, k in zip(sweep.temperatures, sweep.kept["top-k (k=10)"], strict=True) if t != 0)
    top_p = [sweep.kept["top-p (p=0.9)"][i] for i in positive]
    assert top_p == sorted(top_p)  # hotter, flatter: the nucleus grows
    logits = tiny_qwen2.bridge(tiny_qwen2.to_tokens(PROMPT))[0, -1].detach()
    assert sweep.kept["top-p (p=0.9)"][-1] == int(torch.isfinite(TopP(0.9)(logits / 2)).sum())
    fig = sweep.figure()
    assert fig.data[0].type == "heatmap" and len(fig.data) == 1 + len(sweep.kept)
