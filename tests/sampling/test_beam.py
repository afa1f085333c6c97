"""Beam search: width 1 is greedy; every score matches a fresh forward; wide enough is exhaustive."""

import pytest
import torch
from workbench_typecheck import unchecked

from workbench.errors import SamplingError
from workbench.interventions import identity, scale
from workbench.sampling import beam_search, generate, greedy, sequence_logprob

PROMPT = "The quick brown fox"


def recomputed_logprob(model, prompt, continuation):
    """log P(continuation | prompt) from one forward over the whole sequence."""
    prompt_ids = model.to_tokens(prompt)
    full = torch.cat([prompt_ids, torch.tensor([continuation])], dim=1)
    logp = model.bridge(full)[0].log_softmax(-1)
    start = prompt_ids.shape[1]
    return sum(float(logp[start - 1 + i, t]) for i, t in enumerate(continuation))


def test_width_one_is_greedy_decoding(tiny_model):
    beams = beam_search(tiny_model, PROMPT, width=1, max_new_tokens=6)
    assert len(beams.beams) == 1
    assert beams.beams[0].tokens == generate(tiny_model, PROMPT, greedy(), 6).row_tokens(0)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_scores_match_a_fresh_forward(tiny_qwen2, length_penalty):
    result = beam_search(tiny_qwen2, PROMPT, width=3, max_new_tokens=4, length_penalty=length_penalty)
    assert len(result.beams) == 3
    assert len({tuple(b.tokens) for b in result.beams}) == 3
    for beam in result.beams:
        expected = recomputed_logprob(tiny_qwen2, PROMPT, beam.tokens)
        assert beam.logprob == pytest.approx(expected, abs=1e-3)
        assert beam.score == pytest.approx(expected / len(beam.tokens) ** length_penalty, abs=1e-3)
        assert beam.text == tiny_qwen2.tokenizer.decode(beam.tokens)
    scores = [b.score for b in result.beams]
    assert scores == sorted(scores, reverse=True)


def test_full_width_two_steps_is_exhaustive(tiny_qwen2):
    """Width = vocabulary over two steps keeps every first token: the best beam is the best pair."""
    prompt = tiny_qwen2.to_tokens(PROMPT)
    vocab = tiny_qwen2.facts.d_vocab
    first = tiny_qwen2.bridge(prompt)[0, -1].log_softmax(-1)
    rows = torch.cat([prompt.expand(vocab, -1), torch.arange(vocab)[:, None]], dim=1)
    second = tiny_qwen2.bridge(rows)[:, -1].log_softmax(-1)
    eos = tiny_qwen2.tokenizer.eos_token_id
    totals = first[:, None] + second
    totals[eos, :] = float("-inf")  # a sequence ending on EOS after one token is a one-token beam
    best = int(totals.flatten().argmax())
    result = beam_search(tiny_qwen2, PROMPT, width=vocab, max_new_tokens=2, length_penalty=0.0, stop_at_eos=False)
    assert result.beams[0].tokens == [best // vocab, best % vocab]
    assert result.beams[0].logprob == pytest.approx(float(totals.flatten().max()), abs=1e-3)


def test_sequence_logprob_agrees_with_one_forward(tiny_llama):
    continuation = [300, 301, 302]
    assert sequence_logprob(tiny_llama, PROMPT, continuation) == pytest.approx(
        recomputed_logprob(tiny_llama, PROMPT, continuation), abs=1e-3
    )


def test_beam_search_on_the_bigram_finds_the_likeliest_answer(counted_bigram):
    result = beam_search(counted_bigram, "=", width=2, max_new_tokens=2, length_penalty=0.0)
    assert [b.text for b in result.beams] == ["7;", "1;"] or [b.text for b in result.beams] == ["7;", "3;"]
    assert result.beams[0].logprob == pytest.approx(torch.log(torch.tensor(0.6)).item(), abs=1e-6)


def test_bad_beam_settings(tiny_qwen2):
    with pytest.raises(SamplingError, match="width"):
        beam_search(tiny_qwen2, PROMPT, width=0)
    with pytest.raises(SamplingError, match="length_penalty"):
        beam_search(tiny_qwen2, PROMPT, width=2, length_penalty=float("nan"))


def test_hooks_stay_attached_for_the_whole_search_and_are_removed(tiny_qwen2):
    """With block 1 as the identity every beam's log-probability is the hooked model's (fresh forwards with
    the same hooks), the search differs from the plain one, and the bridge is plain again afterwards."""
    tokens = tiny_qwen2.to_tokens(PROMPT)
    before = tiny_qwen2.bridge(tokens)
    plain = beam_search(tiny_qwen2, PROMPT, width=3, max_new_tokens=4, length_penalty=1.0)
    edits = [identity(blocks=1)]
    hooked = beam_search(tiny_qwen2, PROMPT, width=3, max_new_tokens=4, length_penalty=1.0, interventions=edits)
    assert [b.tokens for b in hooked.beams] != [b.tokens for b in plain.beams]
    for beam in hooked.beams:
        expected = sequence_logprob(tiny_qwen2, PROMPT, beam.tokens, interventions=edits)
        assert beam.logprob == pytest.approx(expected, abs=1e-3)
    torch.testing.assert_close(tiny_qwen2.bridge(tokens), before)
    # An intervention with no positions named edits the generated tokens too (here: attention halved there).
    halved = [scale("z", 0.5, blocks=[0, 1])]
    for beam in beam_search(tiny_qwen2, PROMPT, width=2, max_new_tokens=3, interventions=halved).beams:
        expected = sequence_logprob(tiny_qwen2, PROMPT, beam.tokens, interventions=halved)
        assert beam.logprob == pytest.approx(expected, abs=1e-3)

    def explode(resid, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        beam_search(tiny_qwen2, PROMPT, width=2, max_new_tokens=2, fwd_hooks=[("blocks.0.hook_resid_post", explode)])
    torch.testing.assert_close(tiny_qwen2.bridge(tokens), before)


def test_finished_hypotheses_never_take_a_live_slot(tiny_qwen2):
    """The greedy path's tokens are stop tokens, so the likeliest hypothesis stops after one token. It is
    set aside in the pool while three live beams go on to ``max_new_tokens``: the pool ends with it and the
    two best full-length beams (transformers' agreement tests check the same on every setting)."""
    free = generate(tiny_qwen2, PROMPT, greedy(), 3, stop_at_eos=False).row_tokens(0)
    result = beam_search(tiny_qwen2, PROMPT, width=3, max_new_tokens=5, length_penalty=0.0, stop=free)
    assert result.steps == 5
    assert [(len(b.tokens), b.finished) for b in result.beams] == [(1, True), (5, False), (5, False)]
    assert result.beams[0].tokens == free[:1]
    for beam in result.beams[1:]:
        assert all(t not in free for t in beam.tokens)


def test_bad_early_stopping_and_return_counts(tiny_qwen2):
    with pytest.raises(SamplingError, match="early_stopping is 'sometimes'"):
        unchecked(beam_search)(tiny_qwen2, PROMPT, width=2, early_stopping="sometimes")
    with pytest.raises(SamplingError, match="num_return_sequences is 3: pass a whole number from 1 to 2"):
        beam_search(tiny_qwen2, PROMPT, width=2, num_return_sequences=3)
    with pytest.raises(SamplingError, match="Stop token id 100000 is not in"):
        beam_search(tiny_qwen2, PROMPT, width=2, stop=[100000])
    assert len(beam_search(tiny_qwen2, PROMPT, width=3, max_new_tokens=2, num_return_sequences=1).beams) == 1
