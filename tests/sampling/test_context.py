"""A prompt that, with the tokens asked for, does not fit the model's context (``n_ctx``) is refused with
both numbers and the fix, never silently cut (tiny-qwen2: n_ctx = 256, every digit one token, no BOS)."""

import pytest

from workbench.errors import SamplingError
from workbench.sampling import (
    as_next_token_model,
    beam_search,
    find_anomalous_tokens,
    generate,
    greedy,
    randomness_audit,
    temperature_sweep,
)

from .test_cli import run


def digits(n):
    return "1" * n


def test_the_context_is_known_and_prompts_are_never_truncated(tiny_qwen2):
    lm = as_next_token_model(tiny_qwen2)
    assert lm.n_ctx == tiny_qwen2.facts.n_ctx == 256
    assert len(lm.encode(digits(300))) == 300


def test_generation_that_fits_exactly_runs(tiny_qwen2):
    result = generate(tiny_qwen2, digits(250), greedy(), 6, stop_at_eos=False)
    assert result.prompt_tokens.shape[1] == 250 and result.lengths == [6]


@pytest.mark.parametrize(
    "call",
    [
        lambda m: generate(m, digits(250), greedy(), 7),
        lambda m: beam_search(m, digits(250), 2, 7),
        lambda m: find_anomalous_tokens(m, [digits(250)], max_new_tokens=7),
    ],
    ids=["generate", "beam_search", "anomalous"],
)
def test_prompt_plus_new_tokens_beyond_the_context_is_refused(tiny_qwen2, call):
    with pytest.raises(SamplingError) as error:
        call(tiny_qwen2)
    message = str(error.value)
    assert "250 tokens" in message and "7 new tokens" in message and "257" in message and "256 tokens" in message
    assert "at most 6 new tokens" in message and "\n" not in message


def test_readouts_of_an_overlong_prompt_are_refused(tiny_qwen2):
    with pytest.raises(SamplingError, match="257 tokens, more than tiny-qwen2's context of 256"):
        temperature_sweep(tiny_qwen2, digits(257))
    with pytest.raises(SamplingError, match="256 tokens and 1 new tokens would make 257"):
        randomness_audit(tiny_qwen2, samples=5, prompt=digits(256))  # first-token: reads one more token
    with pytest.raises(
        SamplingError, match="251 tokens and 6 new tokens would make 257"
    ):  # 5 digits and an end, before the exact law
        randomness_audit(tiny_qwen2, samples=5, prompt=digits(251), low=0, high=20000, max_contexts=30000)


def test_the_cli_says_it_in_one_line(capsys):
    code, _, err = run(["sample", "next", "-m", "tiny-qwen2", "-p", digits(300)], capsys)
    assert (
        code == 10 and "300 tokens, more than tiny-qwen2's context of 256" in err and len(err.strip().splitlines()) == 1
    )
    code, _, err = run(["sample", "generate", "-m", "tiny-qwen2", "-p", digits(200), "--max-new-tokens", "100"], capsys)
    assert code == 10 and "at most 56 new tokens" in err and len(err.strip().splitlines()) == 1
