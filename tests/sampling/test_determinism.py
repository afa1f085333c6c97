"""The same seed gives the same samples whatever the batch size or the memory budget: sample i draws from
its own stream (seed, i), and every batched computation equals the unbatched one."""

import pytest
import torch

from workbench.sampling import beam_search, exact_number_distribution, generate, make_sampler, randomness_audit
from workbench.sampling.processors import sample_seed

PROMPT = "The number is "
SAMPLER = dict(temperature=1.3, top_k=60)


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-llama"])
def test_generation_does_not_depend_on_the_batch_size(name, request):
    model = request.getfixturevalue(name.replace("-", "_"))
    runs = {
        size: generate(model, PROMPT, make_sampler(**SAMPLER, seed=11), 6, n=7, batch_size=size, stop_at_eos=False)
        for size in (1, 3, 7, None)
    }
    reference = runs[None]
    assert len(set(reference.texts)) > 1  # seven draws at T = 1.3 are not all alike
    for size, run in runs.items():
        assert torch.equal(run.tokens, reference.tokens), size
        torch.testing.assert_close(run.logprobs, reference.logprobs)


def test_sample_i_is_drawn_from_its_own_stream(tiny_qwen2):
    """A hand loop per sample with torch.Generator(sample_seed(seed, i)) gives the same tokens."""
    seed, steps = 5, 4
    result = generate(
        tiny_qwen2, PROMPT, make_sampler(**SAMPLER, seed=seed), steps, n=3, batch_size=2, stop_at_eos=False
    )
    for i in range(3):
        generator = torch.Generator().manual_seed(sample_seed(seed, i))
        tokens = tiny_qwen2.to_tokens(PROMPT)
        for _ in range(steps):
            logits = tiny_qwen2.bridge(tokens)[:, -1].detach()
            probs = make_sampler(**SAMPLER).probs(logits, tokens)
            token = torch.multinomial(probs, 1, generator=generator)
            tokens = torch.cat([tokens, token], dim=1)
        assert result.row_tokens(i) == tokens[0, -steps:].tolist()
    assert sample_seed(seed, 0) == seed and len({sample_seed(seed, i) for i in range(1000)}) == 1000


def test_prompts_times_n_keep_their_sample_indices(tiny_llama):
    """Two prompts × n = 3: row k is sample k whatever the chunking, prompt k // 3."""
    prompts = ["The number is ", "The digit is "]
    runs = [generate(tiny_llama, prompts, make_sampler(**SAMPLER, seed=2), 4, n=3, batch_size=b) for b in (1, 4, None)]
    for run in runs[1:]:
        assert torch.equal(run.tokens, runs[0].tokens)
    assert runs[0].prompt_tokens[:3].unique(dim=0).shape[0] == 1 and not torch.equal(
        runs[0].prompt_tokens[0], runs[0].prompt_tokens[3]
    )


def test_audit_does_not_depend_on_the_batch_size(tiny_qwen2):
    """Multi-token answers (0–12) by generation: the histograms are identical for batch sizes 1, 3, 7, all."""
    audits = {
        size: randomness_audit(
            tiny_qwen2, samples=40, samplers=["t=1.5", "t=2,top_k=100"], low=0, high=12, seed=3, batch_size=size
        )
        for size in (1, 3, 7, 40)
    }
    reference = audits[40]
    assert reference.method == "generate"
    for size, audit in audits.items():
        for ours, theirs in zip(audit.samplers, reference.samplers, strict=True):
            assert (ours.counts, ours.failed, ours.failed_examples) == (
                theirs.counts,
                theirs.failed,
                theirs.failed_examples,
            ), size
    assert reference.samplers[0].failed + reference.samplers[0].n_valid == 40


class CountingModel:
    """Wraps a next-token model and records the rows of every forward."""

    def __init__(self, model):
        from workbench.sampling import as_next_token_model

        self.inner = as_next_token_model(model)
        self.rows: list[int] = []
        for name in ("name", "d_vocab", "eos_token_id", "n_ctx", "tokenizer"):
            setattr(self, name, getattr(self.inner, name))

    def encode(self, text):
        return self.inner.encode(text)

    def decode(self, ids):
        return self.inner.decode(ids)

    def bytes_per_row(self, length):
        return self.inner.bytes_per_row(length)

    def next_token_logits(self, tokens):
        self.rows.append(tokens.shape[0])
        return self.inner.next_token_logits(tokens)


def test_a_small_memory_budget_batches_the_work_and_changes_no_number(tiny_qwen2, monkeypatch):
    """Under WORKBENCH_MEMORY_BUDGET=64K every forward holds one row (a tiny-qwen2 row takes more), and
    generation, the exact law, beam search and the audit give exactly what the default budget gives."""

    def everything(model):
        return (
            generate(model, PROMPT, make_sampler(**SAMPLER, seed=1), 5, n=6, stop_at_eos=False).tokens,
            exact_number_distribution(model, "Pick a number from 1 to 10. The answer is ", range(0, 40)),
            [(b.tokens, b.score) for b in beam_search(model, PROMPT, 5, 6, 1.0).beams],
            randomness_audit(model, samples=30, samplers=["t=1.5"], low=0, high=30, seed=4).samplers[0].counts,
        )

    roomy = CountingModel(tiny_qwen2)
    expected = everything(roomy)
    monkeypatch.setenv("WORKBENCH_MEMORY_BUDGET", "64K")
    tight = CountingModel(tiny_qwen2)
    got = everything(tight)
    assert max(roomy.rows) > 1 and max(tight.rows) == 1
    assert torch.equal(got[0], expected[0])
    assert got[1][0] == pytest.approx(expected[1][0], rel=1e-5, abs=1e-12) and got[1][1] == pytest.approx(
        expected[1][1], rel=1e-5
    )
    assert [tokens for tokens, _ in got[2]] == [tokens for tokens, _ in expected[2]]
    assert [score for _, score in got[2]] == pytest.approx([score for _, score in expected[2]], abs=1e-5)
    assert got[3] == expected[3]
