"""The sampling lab on the real SmolLM2-135M-Instruct: a few forwards each."""

import math

import pytest
import torch
from transformers import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from workbench.interventions import identity
from workbench.sampling import DEFAULT_PROMPT, beam_search, generate, greedy, make_sampler, randomness_audit
from workbench.tokens import digit_token_ids

pytestmark = pytest.mark.real


def test_audit_on_smollm2_rejects_uniform_and_matches_the_model(smollm2):
    logits = smollm2.bridge(smollm2.to_tokens(DEFAULT_PROMPT))[0, -1].detach()
    ids = digit_token_ids(smollm2)
    direct = logits.softmax(-1)[ids]
    audit = randomness_audit(smollm2, samples=1000, samplers=["t=1", "t=0.7,top_p=0.9"], seed=0)
    torch.testing.assert_close(torch.tensor(audit.model_exact), direct / direct.sum(), atol=1e-5, rtol=1e-4)
    assert audit.model_valid_mass == pytest.approx(float(direct.sum()), abs=1e-5)
    t1 = audit.samplers[0]
    assert t1.p_uniform < 1e-10 and t1.p_exact > 1e-3
    assert audit.model_exact_entropy_bits < math.log2(10) - 0.3
    # the same logits through transformers' chain give the second sampler's law
    chain = LogitsProcessorList([TemperatureLogitsWarper(0.7), TopPLogitsWarper(0.9)])
    theirs = chain(None, logits[None].clone()).softmax(-1)[0, ids]
    torch.testing.assert_close(torch.tensor(audit.samplers[1].exact), theirs / theirs.sum(), atol=1e-5, rtol=1e-4)
    ours = make_sampler(1.3, top_k=50, min_p=0.05).process(logits[None])
    reference = LogitsProcessorList([TemperatureLogitsWarper(1.3), TopKLogitsWarper(50), MinPLogitsWarper(0.05)])(
        None, logits[None].clone()
    )
    torch.testing.assert_close(ours, reference)


@pytest.fixture(scope="module")
def smollm2_hf(smollm2):
    """A plain transformers copy of SmolLM2 from the workbench's de-quantized cache (the bridge's wrapped
    model cannot run ``generate``): the reference beam search runs on it."""
    from transformers import AutoModelForCausalLM

    from workbench.cache import gguf_cache_dir
    from workbench.models import smollm2_gguf_path

    folder = gguf_cache_dir(smollm2_gguf_path(), torch.float32)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize(
    "prompt, width, max_new_tokens, length_penalty, early_stopping",
    [
        ("The capital of France is", 4, 8, 1.0, False),
        ("Once upon a time", 2, 6, 2.0, "never"),
        ("The capital of France is", 3, 5, 0.0, True),
    ],
)
def test_beam_search_equals_transformers_on_smollm2(
    smollm2, smollm2_hf, prompt, width, max_new_tokens, length_penalty, early_stopping
):
    eos = smollm2.tokenizer.eos_token_id
    ids = torch.tensor([smollm2.tokenizer(prompt)["input_ids"]])
    ours = beam_search(smollm2, prompt, width, max_new_tokens, length_penalty, early_stopping=early_stopping)
    assert ours.prompt_tokens == ids[0].tolist() and ids[0, 0] == smollm2.tokenizer.bos_token_id
    out = smollm2_hf.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        num_beams=width,
        num_return_sequences=width,
        max_new_tokens=max_new_tokens,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    theirs = []
    for row in out.sequences[:, ids.shape[1] :].tolist():
        theirs.append(row[: row.index(eos) + 1] if eos in row else row)
    assert [b.tokens for b in ours.beams] == theirs
    assert [b.score for b in ours.beams] == pytest.approx(out.sequences_scores.tolist(), abs=1e-4)
    if prompt == "The capital of France is" and width == 4:  # the case our old search got wrong
        texts = {b.text: b.score for b in ours.beams}
        assert texts[" Paris, the capital of Europe.\n"] == pytest.approx(-0.986, abs=1e-3)


def test_beam_width_one_is_greedy_and_scores_recompute(smollm2):
    prompt = "The capital of France is"
    greedy_tokens = generate(smollm2, prompt, greedy(), 3).row_tokens(0)
    assert beam_search(smollm2, prompt, width=1, max_new_tokens=3).beams[0].tokens == greedy_tokens
    result = beam_search(smollm2, prompt, width=2, max_new_tokens=2, length_penalty=0.0)
    prompt_ids = smollm2.to_tokens(prompt)
    rows = torch.cat([prompt_ids.expand(2, -1), torch.tensor([b.tokens for b in result.beams])], dim=1)
    logp = smollm2.bridge(rows).log_softmax(-1).detach()
    start = prompt_ids.shape[1]
    for row, beam in enumerate(result.beams):
        expected = sum(float(logp[row, start - 1 + i, t]) for i, t in enumerate(beam.tokens))
        assert beam.logprob == pytest.approx(expected, abs=1e-3)


def test_generation_with_block_21_removed_equals_a_manual_loop(smollm2):
    result = generate(smollm2, DEFAULT_PROMPT, greedy(), 2, interventions=[identity(blocks=21)])
    tokens = smollm2.to_tokens(DEFAULT_PROMPT)
    manual = []
    stored = {}

    def keep(resid, hook):
        stored["input"] = resid

    def pass_through(resid, hook):
        return stored["input"]

    for _ in range(2):
        with smollm2.bridge.hooks(
            fwd_hooks=[("blocks.21.hook_resid_pre", keep), ("blocks.21.hook_resid_post", pass_through)]
        ):
            manual.append(int(smollm2.bridge(tokens)[0, -1].argmax()))
        tokens = torch.cat([tokens, torch.tensor([[manual[-1]]])], dim=1)
    assert result.row_tokens(0) == manual


def test_samples_do_not_depend_on_the_batch_size_on_smollm2(smollm2):
    runs = [
        generate(smollm2, "Once upon a time", make_sampler(1.0, top_k=50, seed=7), 3, n=4, batch_size=b)
        for b in (1, None)
    ]
    for run in runs[1:]:
        assert torch.equal(run.tokens, runs[0].tokens)
    assert len(set(runs[0].texts)) > 1


def test_a_prompt_beyond_smollm2s_context_is_refused(smollm2):
    from workbench.errors import SamplingError

    n_ctx = smollm2.facts.n_ctx
    prompt = "1" * (n_ctx - 3)  # BOS + one token per digit
    assert len(smollm2.tokenizer(prompt)["input_ids"]) == n_ctx - 2
    said = (
        f"{n_ctx - 2} tokens and 5 new tokens would make {n_ctx + 3}, "
        f"more than SmolLM2-135M-Instruct's context of {n_ctx}"
    )
    with pytest.raises(SamplingError, match=said):
        generate(smollm2, prompt, greedy(), 5)
