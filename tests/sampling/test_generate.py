"""Generation against a hand-written loop, with and without hooks; stop rules; reproducibility."""

import pytest
import torch

from workbench.errors import SamplingError
from workbench.interventions import identity
from workbench.sampling import generate, greedy, make_sampler

PROMPT = "I'm generating a random number between [0, 9]. The number is "


def manual_greedy(model, prompt, steps, fwd_hooks=()):
    tokens = model.to_tokens(prompt)
    out = []
    for _ in range(steps):
        with model.bridge.hooks(fwd_hooks=list(fwd_hooks)):
            logits = model.bridge(tokens)[0, -1]
        token = int(logits.argmax())
        out.append(token)
        tokens = torch.cat([tokens, torch.tensor([[token]])], dim=1)
    return out


def identity_hooks_written_here(block):
    store = {}

    def keep(resid, hook):
        store["x"] = resid.clone()
        return resid

    def give_back(resid, hook):
        return store["x"]

    return [(f"blocks.{block}.hook_resid_pre", keep), (f"blocks.{block}.hook_resid_post", give_back)]


def test_greedy_generation_equals_a_manual_loop(tiny_model):
    result = generate(tiny_model, PROMPT, greedy(), 6, stop_at_eos=False)
    assert result.row_tokens(0) == manual_greedy(tiny_model, PROMPT, 6)
    assert result.texts[0] == tiny_model.tokenizer.decode(result.row_tokens(0))


def test_generation_with_block_1_as_identity_equals_a_manual_loop(tiny_qwen2):
    hooked = generate(tiny_qwen2, PROMPT, greedy(), 6, stop_at_eos=False, interventions=[identity(blocks=1)])
    assert hooked.row_tokens(0) == manual_greedy(tiny_qwen2, PROMPT, 6, identity_hooks_written_here(1))
    assert hooked.interventions == [identity(blocks=1).to_dict()] and hooked.hooks == []
    raw = generate(tiny_qwen2, PROMPT, greedy(), 6, stop_at_eos=False, fwd_hooks=identity_hooks_written_here(1))
    assert raw.row_tokens(0) == hooked.row_tokens(0)  # raw TransformerLens hooks still work
    # the intervention is real: block 1 as identity changes the logits
    tokens = tiny_qwen2.to_tokens(PROMPT)
    plain = tiny_qwen2.bridge(tokens)
    with tiny_qwen2.bridge.hooks(fwd_hooks=identity_hooks_written_here(1)):
        intervened = tiny_qwen2.bridge(tokens)
    assert (plain - intervened).abs().max() > 1e-3


def test_hooks_are_removed_after_generation(tiny_qwen2):
    tokens = tiny_qwen2.to_tokens(PROMPT)
    before = tiny_qwen2.bridge(tokens)
    generate(tiny_qwen2, PROMPT, greedy(), 2, interventions=[identity(blocks=1)])
    torch.testing.assert_close(tiny_qwen2.bridge(tokens), before)


def test_hooks_are_removed_when_generation_fails(tiny_qwen2):
    def explode(resid, hook):
        raise RuntimeError("boom")

    tokens = tiny_qwen2.to_tokens(PROMPT)
    before = tiny_qwen2.bridge(tokens)
    with pytest.raises(RuntimeError, match="boom"):
        generate(tiny_qwen2, PROMPT, greedy(), 2, fwd_hooks=[("blocks.0.hook_resid_post", explode)])
    torch.testing.assert_close(tiny_qwen2.bridge(tokens), before)


def test_logprobs_are_the_model_log_probabilities_of_the_chosen_tokens(tiny_qwen2):
    result = generate(tiny_qwen2, PROMPT, make_sampler(1.0, seed=4), 5, stop_at_eos=False)
    full = torch.cat([tiny_qwen2.to_tokens(PROMPT), result.tokens[:, :5]], dim=1)
    logp = tiny_qwen2.bridge(full)[0].log_softmax(-1)
    start = full.shape[1] - 5
    expected = [float(logp[start - 1 + i, full[0, start + i]]) for i in range(5)]
    torch.testing.assert_close(result.logprobs[0, :5], torch.tensor(expected), atol=1e-4, rtol=1e-4)


def test_stop_token_and_stop_string_end_the_row(tiny_qwen2):
    free = generate(tiny_qwen2, PROMPT, greedy(), 6, stop_at_eos=False).row_tokens(0)
    by_id = generate(tiny_qwen2, PROMPT, greedy(), 6, stop=[free[2]], stop_at_eos=False)
    first = free.index(free[2])
    assert by_id.row_tokens(0) == free[: first + 1] and by_id.stopped == [True]
    text = tiny_qwen2.tokenizer.decode(free[:3])
    by_text = generate(tiny_qwen2, PROMPT, greedy(), 6, stop=text[-1], stop_at_eos=False)
    assert by_text.stopped == [True] and text[-1] in by_text.texts[0]
    assert len(by_text.row_tokens(0)) <= 3


def test_seeded_batch_generation_is_reproducible(tiny_llama):
    a = generate(tiny_llama, "The number is ", make_sampler(1.2, top_k=40, seed=9), 5, n=4, batch_size=3)
    b = generate(tiny_llama, "The number is ", make_sampler(1.2, top_k=40, seed=9), 5, n=4, batch_size=3)
    assert a.tokens.shape == (4, 5)
    assert torch.equal(a.tokens, b.tokens) and a.texts == b.texts
    assert len(set(a.texts)) > 1  # four draws at T = 1.2 over 40 tokens are not all identical


def test_generation_runs_on_the_bigram(counted_bigram):
    result = generate(counted_bigram, "=", greedy(), 2)
    assert result.texts == ["7;"]


def test_bad_generation_requests(counted_bigram, tiny_qwen2):
    with pytest.raises(SamplingError, match="hook"):
        generate(counted_bigram, "=", greedy(), 2, fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x)])
    with pytest.raises(SamplingError, match="max_new_tokens"):
        generate(tiny_qwen2, PROMPT, greedy(), -1)
    with pytest.raises(SamplingError, match="same token length"):
        generate(tiny_qwen2, ["The number is ", "The quick brown fox jumps over"], greedy(), 1)


def test_an_intervention_without_positions_edits_every_generated_token(tiny_qwen2):
    """Positions not named: every position of every step, the generated ones included (written by hand here)."""
    from workbench.interventions import scale

    edited = generate(
        tiny_qwen2, PROMPT, greedy(), 5, stop_at_eos=False, interventions=[scale("z", 0.5, blocks=[0, 1])]
    )
    by_hand = [(f"blocks.{b}.attn.hook_z", lambda z, hook: z * 0.5) for b in (0, 1)]
    assert edited.row_tokens(0) == manual_greedy(tiny_qwen2, PROMPT, 5, by_hand)
    assert edited.row_tokens(0) != generate(tiny_qwen2, PROMPT, greedy(), 5, stop_at_eos=False).row_tokens(0)


def test_interventions_follow_each_prompt_of_a_batch(tiny_qwen2):
    """Two prompts, each continued twice: a chunk never mixes prompts, so each gets its own edit."""
    from workbench.interventions import mask_keys

    prompts = [PROMPT, PROMPT.replace("9]", "7]")]
    edits = [mask_keys([12], blocks=[0, 1])]  # the bound of each prompt
    both = generate(tiny_qwen2, prompts, greedy(), 4, n=2, stop_at_eos=False, interventions=edits, batch_size=3)
    for i, prompt in enumerate(prompts):
        alone = generate(tiny_qwen2, prompt, greedy(), 4, stop_at_eos=False, interventions=edits)
        assert both.row_tokens(2 * i) == both.row_tokens(2 * i + 1) == alone.row_tokens(0)
