"""Find a model's anomalous tokens by sampling at negative temperature.

At T → 0⁻ the sampler picks the *least* likely token. The tokens that come out are often the
under-trained ones ("glitch" tokens such as `Хронологија` for LLaMA, SolidGoldMagikarp for GPT-2):
rows of the embedding matrix that training barely moved, which therefore sit close to the embedding
centroid. This module samples them, ranks every token by its embedding's distance to the centroid,
reports the overlap, and shows each found token's best probability at T = 1 on the same prompts
(anomalous tokens are ones the model essentially never says).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from jaxtyping import Float

from workbench.errors import SamplingError
from workbench.sampling.checks import whole_number
from workbench.sampling.generate import generate
from workbench.sampling.lm import BridgeModel, as_next_token_model, check_context, prompt_tokens
from workbench.sampling.processors import make_sampler

DEFAULT_PROMPTS = (
    "I'm generating a random number between [0, 9]. The number is ",
    "The capital of France is",
    "Once upon a time",
)


@dataclass
class AnomalousToken:
    token_id: int
    text: str
    count: int
    centroid_distance: float
    centroid_rank: int
    best_prob_t1: float
    best_prompt: str


@dataclass
class AnomalousTokens:
    """Tokens found at negative temperature, with their place in the embedding space.

    ``centroid_rank`` is 0 for the token closest to the embedding centroid; ``closest`` lists the
    ``top`` closest tokens; ``overlap`` counts found tokens among them.
    """

    model: str
    temperature: float
    prompts: list[str]
    tokens: list[AnomalousToken]
    closest: list[tuple[int, str, float]]
    overlap: int
    vocab_size: int
    generations: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lines = [
            f"anomalous tokens of {self.model} at T={self.temperature:g} ({len(self.tokens)} found, "
            f"{self.overlap} among the {len(self.closest)} closest to the embedding centroid of {self.vocab_size})"
        ]
        for t in self.tokens:
            lines.append(
                f"{t.token_id:>7} {t.text!r:<24} ×{t.count:<3} centroid rank {t.centroid_rank:>6} "
                f"(distance {t.centroid_distance:.3f})  best P at T=1: {t.best_prob_t1:.2e}"
            )
        return "\n".join(lines)

    def figure(self):
        """Distance to the centroid for every token (sorted), found tokens marked."""
        import plotly.graph_objects as go

        fig = go.Figure()
        fig.add_trace(
            go.Scatter(
                x=[t.centroid_rank for t in self.tokens],
                y=[t.centroid_distance for t in self.tokens],
                mode="markers+text",
                text=[repr(t.text) for t in self.tokens],
                textposition="top center",
                marker=dict(size=10, color="crimson"),
                name="found at negative T",
            )
        )
        fig.update_layout(
            title=(
                f"{self.model}: tokens found at T={self.temperature:g}, by distance of their embedding to the centroid"
            ),
            xaxis_title="rank by distance to the centroid (0 = closest)",
            yaxis_title="distance",
            template="plotly_white",
        )
        return fig


def embedding_matrix(model: Any) -> Float[torch.Tensor, "vocab d_model"]:
    """The input embedding rows: the HF model's own (untouched by any processing), else the bridge's W_E."""
    lm = as_next_token_model(model)
    if not isinstance(lm, BridgeModel):
        raise SamplingError(f"{lm.name} has no embedding matrix: the anomalous-token finder needs a workbench Model.")
    original = getattr(lm.bridge, "original_model", None)
    if original is not None and hasattr(original, "get_input_embeddings"):
        return original.get_input_embeddings().weight.detach().float()
    return lm.bridge.W_E.detach().float()


def centroid_distances(model: Any) -> Float[torch.Tensor, " vocab"]:
    """Euclidean distance of every token embedding to the mean embedding."""
    embedding = embedding_matrix(model)
    return (embedding - embedding.mean(dim=0)).norm(dim=-1)


@torch.no_grad()
def find_anomalous_tokens(
    model: Any,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    temperature: float = -0.001,
    max_new_tokens: int = 8,
    samples_per_prompt: int = 1,
    top: int = 100,
    seed: int | None = 0,
) -> AnomalousTokens:
    """Sample at ``temperature`` (< 0) from each prompt and locate the tokens that come out."""
    if not (float(temperature) < 0 and math.isfinite(float(temperature))):
        raise SamplingError(f"temperature is {temperature}: the finder samples at a finite negative T (e.g. -0.001).")
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise SamplingError("No prompt given: pass at least one prompt.")
    max_new_tokens = whole_number("max_new_tokens", max_new_tokens, 1)
    samples_per_prompt = whole_number("samples_per_prompt", samples_per_prompt, 1)
    top = whole_number("top", top, 0)
    lm = as_next_token_model(model)
    for prompt in prompts:  # refuse an over-long prompt before any sampling
        check_context(lm, len(lm.encode(prompt)), max_new_tokens)
    distances = centroid_distances(lm)
    order = distances.argsort()
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel())
    sampler = make_sampler(temperature, seed=seed)
    found: Counter = Counter()
    texts = []
    for prompt in prompts:
        generation = generate(lm, prompt, sampler, max_new_tokens, n=samples_per_prompt, stop_at_eos=False)
        texts.extend(generation.texts)
        for row in range(len(generation.lengths)):
            found.update(generation.row_tokens(row))
    best = torch.zeros(lm.d_vocab, dtype=torch.float64)
    best_prompt = [""] * lm.d_vocab
    for prompt in prompts:
        probs = lm.next_token_logits(prompt_tokens(lm, prompt)).float().softmax(dim=-1)[0].double().cpu()
        better = probs > best
        best = torch.where(better, probs, best)
        for i in better.nonzero()[:, 0].tolist():
            best_prompt[i] = prompt
    n_top = min(int(top), order.numel())
    closest_ids = order[:n_top].tolist()
    rows = [
        AnomalousToken(
            token_id=int(t),
            text=lm.decode([int(t)]),
            count=int(c),
            centroid_distance=float(distances[t]),
            centroid_rank=int(ranks[t]),
            best_prob_t1=float(best[t]) if t < lm.d_vocab else 0.0,
            best_prompt=best_prompt[t] if t < lm.d_vocab else "",
        )
        for t, c in found.most_common()
    ]
    rows.sort(key=lambda r: r.centroid_rank)
    return AnomalousTokens(
        model=lm.name,
        temperature=float(temperature),
        prompts=list(prompts),
        tokens=rows,
        closest=[(int(t), lm.decode([int(t)]), float(distances[t])) for t in closest_ids],
        overlap=len(set(found) & set(closest_ids)),
        vocab_size=int(order.numel()),
        generations=texts,
    )
