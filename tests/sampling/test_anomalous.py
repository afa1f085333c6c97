"""The anomalous-token finder: T → 0⁻ picks argmins; centroid ranks and T = 1 probabilities recomputed."""

import pytest
import torch

from workbench.errors import SamplingError
from workbench.models import load_model
from workbench.sampling import centroid_distances, find_anomalous_tokens

PROMPTS = ["The quick brown fox", "The number is "]


def test_first_tokens_at_negative_temperature_are_the_argmins(tiny_qwen2):
    result = find_anomalous_tokens(tiny_qwen2, PROMPTS, temperature=-0.001, max_new_tokens=1, top=50)
    argmins = {int(tiny_qwen2.bridge(tiny_qwen2.to_tokens(p))[0, -1].argmin()) for p in PROMPTS}
    assert {t.token_id for t in result.tokens} == argmins


def test_ranks_probabilities_and_overlap_are_recomputed(tiny_llama):
    result = find_anomalous_tokens(tiny_llama, PROMPTS, max_new_tokens=4, top=100)
    embedding = tiny_llama.bridge.original_model.get_input_embeddings().weight.detach()
    distance = (embedding - embedding.mean(0)).norm(dim=-1)
    torch.testing.assert_close(centroid_distances(tiny_llama), distance)
    closest = set(distance.argsort()[:100].tolist())
    probs = torch.stack([tiny_llama.bridge(tiny_llama.to_tokens(p))[0, -1].softmax(-1) for p in PROMPTS]).detach()
    for token in result.tokens:
        assert token.centroid_rank == int((distance < distance[token.token_id]).sum())
        assert token.best_prob_t1 == pytest.approx(float(probs[:, token.token_id].max()), rel=1e-5)
    assert result.overlap == len({t.token_id for t in result.tokens} & closest)
    assert sum(t.count for t in result.tokens) == len(PROMPTS) * 4
    assert [t.centroid_rank for t in result.tokens] == sorted(t.centroid_rank for t in result.tokens)


def test_a_token_moved_to_the_centroid_ranks_first():
    model = load_model("tiny-qwen2")  # a private copy: its embedding is edited
    embedding = model.bridge.original_model.get_input_embeddings().weight
    with torch.no_grad():
        embedding[300] = embedding.mean(0)
    assert int(centroid_distances(model).argmin()) == 300


def test_finder_needs_negative_temperature(tiny_qwen2, counted_bigram):
    with pytest.raises(SamplingError, match="negative"):
        find_anomalous_tokens(tiny_qwen2, PROMPTS, temperature=0.5)
    with pytest.raises(SamplingError, match="embedding"):
        find_anomalous_tokens(counted_bigram, ["="])
