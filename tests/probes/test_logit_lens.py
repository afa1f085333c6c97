"""Logit lens: exact at the last block, and equal to a lens written with plain transformers modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.errors import ProbeError, TokenError
from workbench.layers import resid_labels
from workbench.probes import LogitLens
from workbench.run import run

from .helpers import DIGITS, PROMPT, hf_lens, hf_residuals


def check_final_equals_output(model, result):
    """The lens after the last block is the model's own output distribution."""
    n = model.facts.n_layers
    tokens = model.to_tokens(PROMPT)
    with torch.no_grad():
        own = model.bridge(tokens).float().softmax(-1)
        resid = model.bridge.run_with_cache(tokens, names_filter=f"blocks.{n - 1}.hook_resid_post")[1]
    lensed = LogitLens.unembed(model, resid[f"blocks.{n - 1}.hook_resid_post"]).softmax(-1)
    torch.testing.assert_close(lensed, own, atol=1e-5, rtol=0)
    last, final = f"after block {n - 1}", "final"
    for array in ("top_probs", "target_probs"):
        torch.testing.assert_close(
            result[array].sel(layer=last).values, result[array].sel(layer=final).values, atol=1e-5, rtol=0
        )
    assert (result["top_tokens"].sel(layer=last).numpy() == result["top_tokens"].sel(layer=final).numpy()).all()
    assert result["kl_to_final"].sel(layer=last).values.abs().max() <= 1e-5
    own_top = own.topk(result.meta["k"], dim=-1)
    torch.testing.assert_close(result["top_probs"].sel(layer=final).values, own_top.values, atol=1e-6, rtol=0)


def check_against_hf(model, hf, result, layers=None):
    """Every row equals lm_head(norm(h)) where h is read from the HF modules' outputs."""
    tokens = model.to_tokens(PROMPT)
    resids, hf_logits = hf_residuals(hf, tokens)
    labels = resid_labels(model.facts.n_layers)
    assert len(resids) == len(labels) - 1
    rows = range(len(labels)) if layers is None else layers
    k = result.meta["k"]
    for row in rows:
        logits = hf_logits.float() if labels[row] == "final" else hf_lens(hf, resids[row])
        probs = logits.softmax(-1)
        top = probs.topk(k, dim=-1)
        torch.testing.assert_close(result["top_probs"].sel(layer=labels[row]).values, top.values, atol=1e-5, rtol=0)
        decoded = [[[model.tokenizer.decode([int(i)]) for i in pos] for pos in prompt] for prompt in top.indices]
        ours = result["top_tokens"].sel(layer=labels[row]).numpy().tolist()
        assert ours == decoded, labels[row]
        targets = torch.tensor([model.tokenizer.encode(str(d), add_special_tokens=False)[0] for d in range(10)])
        torch.testing.assert_close(
            result["target_probs"].sel(layer=labels[row]).values, probs[..., targets], atol=1e-5, rtol=0
        )
        # Rank: how many tokens have a larger logit, counted by sorting instead of comparing.
        order = torch.sort(logits, dim=-1, descending=True, stable=True).indices
        ranks = order.argsort(-1)[..., targets]
        assert torch.equal(result["target_ranks"].sel(layer=labels[row]).values, ranks), labels[row]
        final = hf_logits.float().log_softmax(-1)
        kl = torch.nn.functional.kl_div(logits.log_softmax(-1), final, log_target=True, reduction="none").sum(-1)
        # KL at the embeddings is O(100) nats: float32 allows a relative 1e-6 there.
        torch.testing.assert_close(result["kl_to_final"].sel(layer=labels[row]).values, kl, atol=1e-5, rtol=1e-6)


def test_final_layer_equals_output(tiny_model):
    result = run(tiny_model, PROMPT, LogitLens())["logit_lens"]
    check_final_equals_output(tiny_model, result)


def test_matches_plain_transformers(tiny_model, hf_twins):
    result = run(tiny_model, PROMPT, LogitLens(k=5), targets=DIGITS)["logit_lens"]
    check_against_hf(tiny_model, hf_twins(tiny_model), result)


def test_layer_labels_follow_the_convention(tiny_model):
    result = run(tiny_model, PROMPT, LogitLens(k=3), targets=DIGITS)["logit_lens"]
    n = tiny_model.facts.n_layers
    assert result["top_probs"].coords["layer"] == ["embeddings", *(f"after block {i}" for i in range(n)), "final"]
    assert result["top_probs"].shape == (1, n + 2, len(tiny_model.str_tokens(PROMPT)), 3)
    assert result["top_probs"].coords["position"] == tiny_model.str_tokens(PROMPT)
    assert result["target_probs"].coords["target"] == [str(d) for d in range(10)]


def test_top_k_and_table_read_the_readout(tiny_qwen2):
    result = run(tiny_qwen2, PROMPT, LogitLens(k=4))["logit_lens"]
    readout = result.meta["readout"]
    assert readout == len(tiny_qwen2.str_tokens(PROMPT)) - 1
    pairs = result.top_k("final")
    assert [p for _, p in pairs] == pytest.approx(result["top_probs"].values[0, -1, readout].tolist())
    assert [p for _, p in pairs] == sorted((p for _, p in pairs), reverse=True)
    table = result.table()
    assert list(table["layer"]) == result["top_probs"].coords["layer"]
    assert list(table.columns) == ["layer", "top 1", "top 2", "top 3", "top 4"]


@pytest.mark.real
def test_smollm2_lens(smollm2, hf_twins):
    result = run(smollm2, PROMPT, LogitLens(k=5), targets=[str(d) for d in range(10)])["logit_lens"]
    check_final_equals_output(smollm2, result)
    n = smollm2.facts.n_layers
    # Embeddings, the study's layer 21, the last block and the output row.
    check_against_hf(smollm2, hf_twins(smollm2), result, layers=[0, 22, n, n + 1])


def test_positions_subset_equals_the_full_lens_columns(tiny_model):
    n = len(tiny_model.str_tokens(PROMPT))
    full = run(tiny_model, PROMPT, LogitLens(k=3))["logit_lens"]
    part = run(tiny_model, PROMPT, LogitLens(k=3, positions=[-1, 2]))["logit_lens"]
    assert part.meta["positions"] == [2, n - 1]
    assert part["top_probs"].coords["position"] == [tiny_model.str_tokens(PROMPT)[p] for p in (2, n - 1)]
    for name in ("top_probs", "target_probs", "kl_to_final"):  # a subset is a smaller matmul: not bit-equal
        torch.testing.assert_close(part[name].values, full[name].values[:, :, [2, n - 1]], atol=1e-6, rtol=1e-5)
    assert torch.equal(part["target_ranks"].values, full["target_ranks"].values[:, :, [2, n - 1]])
    assert (part["top_tokens"].numpy() == full["top_tokens"].numpy()[:, :, [2, n - 1]]).all()
    with pytest.raises(ProbeError, match="not read"):
        part.top_k("final", position=5)
    with pytest.raises(TokenError, match="outside"):  # positions are the token domain
        run(tiny_model, PROMPT, LogitLens(positions=[n]))


# --- chunked computation: the same numbers as one eager [layers, positions, vocab] pass ---------------------


@torch.no_grad()
def eager_lens(model, prompts, k, target_ids):
    """The lens as it was computed before chunking: every layer's logits at every position in one
    ``[layers, batch, pos, vocab]`` tensor, log-softmaxed at once; KL by metrics.kl_divergence."""
    from workbench.metrics import kl_divergence

    n = model.facts.n_layers
    tokens = model.to_tokens(prompts)
    names = ["blocks.0.hook_resid_pre", *(f"blocks.{i}.hook_resid_post" for i in range(n))]
    logits, cache = model.bridge.run_with_cache(tokens, names_filter=lambda name: name in names)
    stack = torch.stack([LogitLens.unembed(model, cache[name]) for name in names] + [logits.float()])
    logp = stack.log_softmax(-1)
    top = logp.exp().topk(k + 1, dim=-1)
    ids = torch.tensor(target_ids)
    target = stack[..., ids]
    return {
        "logits": stack.transpose(0, 1),
        "top_probs": top.values[..., :k].transpose(0, 1),
        "top_k_plus_one": top.values.transpose(0, 1),
        "top_ids": top.indices[..., :k].transpose(0, 1),
        "kl_to_final": kl_divergence(logp[-1].expand_as(logp), logp).transpose(0, 1),
        "target_probs": logp[..., ids].exp().transpose(0, 1),
        "target_ranks": torch.stack([(stack > target[..., t : t + 1]).sum(-1) for t in range(len(ids))], -1).transpose(
            0, 1
        ),
        "target_logits": target.transpose(0, 1),
    }


@pytest.mark.parametrize("rows", [1, 5, None])  # one row per chunk, chunks that split prompts and positions, one chunk
def test_chunked_lens_equals_the_eager_computation(tiny_model, monkeypatch, rows):
    from workbench.probes.logit_lens import LENS_ROW_COPIES

    from .helpers import OTHER

    if rows is not None:  # the budget of exactly `rows` (layer, position) rows
        monkeypatch.setenv("WORKBENCH_MEMORY_BUDGET", str(rows * LENS_ROW_COPIES * 4 * tiny_model.facts.d_vocab))
    prompts = [PROMPT, OTHER, PROMPT]
    k = 4
    result = run(tiny_model, prompts, LogitLens(k=k), targets=DIGITS)["logit_lens"]
    target_ids = [tiny_model.tokenizer.encode(d, add_special_tokens=False)[0] for d in DIGITS]
    eager = eager_lens(tiny_model, prompts, k, target_ids)
    assert result["top_probs"].shape == (3, tiny_model.facts.n_layers + 2, len(tiny_model.str_tokens(PROMPT)), k)
    # A row's numbers come from the same float32 operations over its own vocabulary whatever the chunk; only the
    # unembedding's matmul sees another number of rows (another blocking of the same sums: logits differ by
    # ≲ 1e-5 absolute at these magnitudes, probabilities by ≲ 1e-6), and the KL skips re-normalising
    # already-normalised log-probabilities (~1e-7 per term, KL up to ~100 nats at the embeddings).
    for name in ("top_probs", "target_probs"):
        torch.testing.assert_close(result[name].values, eager[name], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(result["kl_to_final"].values, eager["kl_to_final"], atol=1e-5, rtol=1e-5)
    # Ranks count strictly larger logits: exact, except that a token within that rounding of the target's
    # logit may fall on either side of it. The difference is bounded by the number of such near-ties.
    near = 1e-5 * eager["logits"].abs().amax(-1, keepdim=True)
    close = torch.stack(
        [
            ((eager["logits"] - eager["target_logits"][..., t : t + 1]).abs() <= near).sum(-1) - 1
            for t in range(len(target_ids))
        ],
        -1,
    )
    ranks = result["target_ranks"].values
    assert ((ranks - eager["target_ranks"]).abs() <= close).all()
    assert (ranks == eager["target_ranks"]).float().mean() > 0.99  # near-ties are rare
    # Top tokens: the same, except between two probabilities within rounding of each other.
    decoded = np.vectorize(lambda i: tiny_model.tokenizer.decode([int(i)]), otypes=[object])(eager["top_ids"].numpy())
    differ = result["top_tokens"].numpy() != decoded
    plus = eager["top_k_plus_one"]
    gap = torch.minimum(
        torch.cat([torch.full_like(plus[..., :1], 1.0), plus[..., :-2] - plus[..., 1:-1]], -1),
        plus[..., :-1] - plus[..., 1:],
    )  # each rank's distance to its nearer neighbour
    assert (gap[torch.from_numpy(differ)] <= 1e-6).all()


def test_chunks_follow_the_budget(monkeypatch):
    from workbench.errors import BudgetError
    from workbench.probes.logit_lens import LENS_CHUNK_ROWS, LENS_ROW_COPIES

    row = LENS_ROW_COPIES * 4 * 1000  # bytes of one (layer, position) row with a vocabulary of 1000
    monkeypatch.setenv("WORKBENCH_MEMORY_BUDGET", str(7 * row))
    assert LogitLens.chunk_shape(1, 100, 1000) == (1, 7)
    assert LogitLens.chunk_shape(3, 100, 1000) == (3, 2)
    assert LogitLens.chunk_shape(10, 100, 1000) == (7, 1)
    assert LogitLens.chunk_shape(1, 4, 1000) == (1, 4)
    monkeypatch.setenv("WORKBENCH_MEMORY_BUDGET", "64G")  # the cap holds whatever the budget
    assert LogitLens.chunk_shape(1, 10**6, 49152) == (1, LENS_CHUNK_ROWS)
    assert LogitLens.chunk_shape(1000, 10, 49152) == (LENS_CHUNK_ROWS, 1)
    monkeypatch.setenv("WORKBENCH_MEMORY_BUDGET", str(row - 1))
    with pytest.raises(BudgetError, match="one \\(layer, position\\) row"):
        LogitLens.chunk_shape(1, 100, 1000)


def test_ranks_above_counts_strictly_larger_logits():
    from workbench.probes.logit_lens import ranks_above

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 300, generator=generator).round(decimals=1)  # rounding makes many ties
    ids = torch.tensor([0, 5, 5, 17, 299, 42])  # a repeated target, the last token
    targets = logits[..., ids]
    expected = torch.stack([(logits > targets[..., j : j + 1]).sum(-1) for j in range(len(ids))], -1)
    ranks = ranks_above(logits, targets)
    assert ranks.dtype == torch.int64 and torch.equal(ranks, expected)
    top = logits.argmax(-1, keepdim=True)
    assert (ranks_above(logits, logits.gather(-1, top)) == 0).all()


def test_lazy_arrays_compute_once_when_first_read():
    """The lens hands its result LazyArrays: nothing is computed until something reads them, then once. (In the
    test session the type checker reads a result's arrays as it is built, so the laziness itself is shown here;
    `workbench bench probe-overhead` measures what it saves.)"""
    import copy
    import pickle

    from workbench.results import LazyArrays, Named

    calls = []

    def compute():
        calls.append(1)
        return {"x": Named(torch.ones(2), ("i",))}

    for read in (
        lambda a: a["x"],
        lambda a: "x" in a,
        lambda a: list(a),
        len,
        lambda a: a.items(),
        lambda a: a.get("x"),
    ):
        arrays = LazyArrays(compute)
        assert not arrays.computed and not calls
        read(arrays)
        read(arrays)
        assert arrays.computed and len(calls) == 1
        calls.clear()
    arrays = LazyArrays(compute)
    assert copy.deepcopy(arrays).keys() == {"x"} and pickle.loads(pickle.dumps(arrays)).keys() == {"x"}
