"""Token helpers on a Qwen-style tokenizer (tiny-qwen2: no BOS) and Llama-style ones (tiny-llama, SmolLM2: BOS).

The study prompt must be located by text on every family: the "9" of "[0, 9]" is the token '9'
at a different index when a BOS is prepended.
"""

from __future__ import annotations

import pytest
import torch

from workbench.errors import TokenError
from workbench.tokens import (
    align_prompts,
    digit_token_ids,
    find_position,
    find_positions,
    single_token_id,
    str_tokens,
    to_tokens,
    token_infos,
)

PROMPT = "I'm generating a random number between [0, 9]. The number is "
PROMPT_5 = PROMPT.replace("[0, 9]", "[0, 5]")
PROMPT_10 = PROMPT.replace("[0, 9]", "[0, 10]")  # one token longer: every tokenizer here splits digits

# The mission's 17-token split of the study prompt (Qwen2.5's tokenizer); SmolLM2 gives the same after its BOS.
STUDY_SPLIT = [
    "I",
    "'m",
    " generating",
    " a",
    " random",
    " number",
    " between",
    " [",
    "0",
    ",",
    " ",
    "9",
    "].",
    " The",
    " number",
    " is",
    " ",
]
# The tiny tokenizer has no " generating" in its small vocabulary.
TINY_SPLIT = STUDY_SPLIT[:2] + [" generat", "ing"] + STUDY_SPLIT[3:]

EXPECTED = {
    "tiny_qwen2": dict(tokens=TINY_SPLIT, bos=None, nine=12, generating=2),
    "tiny_llama": dict(tokens=["<|im_start|>", *TINY_SPLIT], bos="<|im_start|>", nine=13, generating=3),
    "smollm2": dict(tokens=["<|im_start|>", *STUDY_SPLIT], bos="<|im_start|>", nine=12, generating=3),
}
FAMILIES = ["tiny_qwen2", "tiny_llama", pytest.param("smollm2", marks=pytest.mark.real)]


@pytest.fixture(params=FAMILIES)
def family(request):
    """``(fixture name, model)`` for each tokenizer family."""
    return request.param, request.getfixturevalue(request.param)


def test_str_tokens(family):
    name, model = family
    assert str_tokens(model, PROMPT) == EXPECTED[name]["tokens"]
    assert model.str_tokens(PROMPT) == EXPECTED[name]["tokens"]


def test_token_infos(family):
    name, model = family
    infos = token_infos(model, PROMPT)
    assert [info.position for info in infos] == list(range(len(EXPECTED[name]["tokens"])))
    assert [info.id for info in infos] == to_tokens(model, PROMPT)[0].tolist()
    assert [info.text for info in infos] == EXPECTED[name]["tokens"]
    # Only the BOS is special, and the other pieces spell the prompt exactly.
    assert [info.text for info in infos if info.special] == ([EXPECTED[name]["bos"]] if EXPECTED[name]["bos"] else [])
    assert "".join(info.text for info in infos if not info.special) == PROMPT


def test_bos_follows_the_family(family):
    name, model = family
    tokens = to_tokens(model, PROMPT)
    assert tokens.shape == (1, len(EXPECTED[name]["tokens"]))
    assert model.facts.prepend_bos == (EXPECTED[name]["bos"] is not None)
    if model.facts.prepend_bos:
        assert tokens[0, 0].item() == model.tokenizer.bos_token_id
    else:
        assert tokens[0, 0].item() not in model.tokenizer.all_special_ids


def test_find_position_of_the_upper_bound(family):
    name, model = family
    position = find_position(model, PROMPT, "9")
    assert position == EXPECTED[name]["nine"]
    assert str_tokens(model, PROMPT)[position] == "9"
    assert find_position(model, PROMPT_5, "5") == position


def test_the_nine_sits_at_a_different_index_on_the_two_families(tiny_qwen2, tiny_llama):
    qwen, llama = find_position(tiny_qwen2, PROMPT, "9"), find_position(tiny_llama, PROMPT, "9")
    assert llama == qwen + 1  # the BOS shifts everything by one
    assert str_tokens(tiny_qwen2, PROMPT)[qwen] == str_tokens(tiny_llama, PROMPT)[llama] == "9"


def test_find_positions_spanning_several_tokens(family):
    name, model = family
    nine = EXPECTED[name]["nine"]
    # "[0, 9]" covers ' [', '0', ',', ' ', '9' and the '].' it ends inside.
    assert find_positions(model, PROMPT, "[0, 9]") == list(range(nine - 4, nine + 2))
    generating = find_positions(model, PROMPT, "generating")
    assert generating[0] == EXPECTED[name]["generating"]
    assert "".join(str_tokens(model, PROMPT)[p] for p in generating).strip() == "generating"


def test_find_position_refuses_text_spanning_several_tokens(tiny_qwen2):
    with pytest.raises(TokenError, match=r"'generating' spans 2 tokens \[' generat', 'ing'\] at positions \[2, 3\]"):
        find_position(tiny_qwen2, PROMPT, "generating")


def test_find_position_occurrences(family):
    name, model = family
    first, last = find_position(model, PROMPT, "number"), find_position(model, PROMPT, "number", occurrence=-1)
    assert str_tokens(model, PROMPT)[first] == str_tokens(model, PROMPT)[last] == " number"
    assert last - first == 9
    assert find_position(model, PROMPT, "number", occurrence=1) == last
    with pytest.raises(TokenError, match=r"'number' occurs 2 time\(s\); occurrence 2 does not exist"):
        find_position(model, PROMPT, "number", occurrence=2)
    with pytest.raises(TokenError, match=r"'Vitali' is not in the prompt"):
        find_positions(model, PROMPT, "Vitali")


def test_single_token_id(family):
    _, model = family
    nine = single_token_id(model, "9")
    assert to_tokens(model, PROMPT)[0, find_position(model, PROMPT, "9")].item() == nine
    assert single_token_id(model.tokenizer, "9") == nine
    with pytest.raises(TokenError, match=r"Target ' random number' is 2 tokens \[' random', ' number'\], not one"):
        single_token_id(model, " random number")


def test_digit_token_ids(family):
    _, model = family
    ids = digit_token_ids(model)
    assert len(ids) == len(set(ids)) == 10
    assert [model.tokenizer.decode([i]) for i in ids] == [str(d) for d in range(10)]
    assert [model.tokenizer.encode(str(d), add_special_tokens=False) for d in range(10)] == [[i] for i in ids]


def test_to_tokens_batches_prompts_of_one_length(family):
    _, model = family
    batch = to_tokens(model, [PROMPT, PROMPT_5])
    nine = find_position(model, PROMPT, "9")
    assert batch.shape[0] == 2
    assert torch.equal(batch[0], to_tokens(model, PROMPT)[0])
    assert (batch[0] != batch[1]).nonzero().flatten().tolist() == [nine]


def test_to_tokens_refuses_prompts_of_different_lengths(family):
    _, model = family
    n = len(str_tokens(model, PROMPT))
    with pytest.raises(TokenError, match=rf"same number of tokens \(prompt 0: {n}, prompt 1: {n + 1}\)"):
        to_tokens(model, [PROMPT, PROMPT_10])
    with pytest.raises(TokenError, match=r"No prompt given"):
        to_tokens(model, [])


def test_align_prompts(family):
    _, model = family
    target, source = align_prompts(model, PROMPT, PROMPT_5)
    nine = find_position(model, PROMPT, "9")
    assert target.shape == source.shape == (1, len(str_tokens(model, PROMPT)))
    assert (target != source).nonzero()[:, 1].tolist() == [nine]


def test_align_prompts_names_the_first_differing_position(family):
    _, model = family
    n, nine = len(str_tokens(model, PROMPT)), find_position(model, PROMPT, "9")
    with pytest.raises(TokenError) as error:
        align_prompts(model, PROMPT, PROMPT_10)
    message = str(error.value)
    assert f"target has {n} tokens, source {n + 1}" in message
    assert f"first differ at position {nine} ('9' vs '1')" in message
