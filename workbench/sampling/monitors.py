"""Numbers that describe one next-token distribution: how spread, how peaked, how far from a reference.

Everything is computed from logits so that removed tokens (``-inf``, e.g. after top-k) count as
probability 0. ``tokens=`` restricts the distribution to a token set (renormalised), e.g. the ten
digits, which is what "how random is the model's digit" asks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Float

from workbench.errors import SamplingError

LN2 = math.log(2.0)


@dataclass(frozen=True)
class DistributionStats:
    """Monitors of one distribution over ``size`` tokens (the vocabulary, or the ``tokens=`` set).

    ``max_min_ratio`` is p_max / p_min over tokens with p > 0 (inf when any token has p = 0 is not
    useful, so zeros are left out and counted in ``n_zero``). Skewness and (excess, Fisher) kurtosis
    are of the finite logits. The distances compare p to the reference q: KL(p‖q) in nats,
    total variation ½Σ|p − q|, and Pearson's χ² divergence Σ(p − q)²/q.
    """

    size: int
    entropy_nats: float
    entropy_bits: float
    max_entropy_bits: float
    perplexity: float
    max_prob: float
    min_prob: float
    max_min_ratio: float
    n_zero: int
    logit_skewness: float
    logit_kurtosis: float
    top_k: int
    top_k_mass: float
    kl_to_reference: float
    tv_to_reference: float
    chi2_to_reference: float
    reference: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_probs(x: torch.Tensor, is_probs: bool) -> torch.Tensor:
    return x / x.sum() if is_probs else x.float().softmax(dim=-1)


def distribution_stats(
    logits: Float[torch.Tensor, " vocab"],
    *,
    k: int = 10,
    tokens: Sequence[int] | None = None,
    reference: Float[torch.Tensor, " size"] | None = None,
    reference_name: str | None = None,
    is_probs: bool = False,
) -> DistributionStats:
    """Entropy, perplexity, ratios, logit moments, top-k mass and distances to ``reference``.

    ``reference`` is a probability vector over the same ``size`` tokens; the default is uniform.
    With ``is_probs=True`` the input is a probability vector (logit moments then use its log).
    """
    values = torch.as_tensor(logits).detach().double().cpu()
    if values.dim() != 1:
        raise SamplingError(
            f"distribution_stats takes one distribution (1-D), got shape {tuple(values.shape)}: index a row first."
        )
    if torch.isnan(values).any():
        raise SamplingError(
            "The logits contain NaN: check the model output (a NaN usually means an overflow upstream)."
        )
    if tokens is not None:
        index = torch.as_tensor(list(tokens), dtype=torch.long)
        if index.numel() == 0 or int(index.max()) >= values.numel() or int(index.min()) < 0:
            raise SamplingError(f"tokens must be non-empty ids in [0, {values.numel()}): got {list(tokens)[:10]}.")
        values = values[index]
    logit_values = values.clamp(min=0).log() if is_probs else values
    p = _as_probs(values, is_probs)
    size = p.numel()
    positive = p > 0
    entropy = float(-(p[positive] * p[positive].log()).sum())
    finite = logit_values[torch.isfinite(logit_values)]
    centred = finite - finite.mean()
    m2 = float((centred**2).mean())
    skew = float((centred**3).mean()) / m2**1.5 if m2 > 0 else float("nan")
    kurt = float((centred**4).mean()) / m2**2 - 3.0 if m2 > 0 else float("nan")
    if reference is None:
        q = torch.full_like(p, 1.0 / size)
        ref_name = reference_name or f"uniform over {size} tokens"
    else:
        q = torch.as_tensor(reference).detach().double().cpu()
        if q.shape != p.shape or (q < 0).any() or not math.isclose(float(q.sum()), 1.0, rel_tol=1e-6, abs_tol=1e-6):
            raise SamplingError(
                f"reference must be a probability vector of length {size} summing to 1: "
                f"got shape {tuple(q.shape)}, sum {float(q.sum()):.6g}."
            )
        ref_name = reference_name or "given reference"
    both = positive & (q > 0)
    kl = float((p[both] * (p[both] / q[both]).log()).sum()) if not (positive & (q == 0)).any() else float("inf")
    chi2 = float(((p - q) ** 2)[q > 0].div(q[q > 0]).sum()) if not (positive & (q == 0)).any() else float("inf")
    kk = max(1, min(int(k), size))
    return DistributionStats(
        size=size,
        entropy_nats=entropy,
        entropy_bits=entropy / LN2,
        max_entropy_bits=math.log2(size),
        perplexity=math.exp(entropy),
        max_prob=float(p.max()),
        min_prob=float(p.min()),
        max_min_ratio=float(p.max() / p[positive].min()),
        n_zero=int((~positive).sum()),
        logit_skewness=skew,
        logit_kurtosis=kurt,
        top_k=kk,
        top_k_mass=float(p.topk(kk).values.sum()),
        kl_to_reference=kl,
        tv_to_reference=float(0.5 * (p - q).abs().sum()),
        chi2_to_reference=chi2,
        reference=ref_name,
    )


def batch_stats(logits: Float[torch.Tensor, "batch vocab"], **kwargs) -> list[DistributionStats]:
    """:func:`distribution_stats` for every row of a batch."""
    return [distribution_stats(row, **kwargs) for row in torch.as_tensor(logits)]


def entropy_bits(probs: Sequence[float] | torch.Tensor) -> float:
    """Shannon entropy in bits of a (possibly unnormalised) histogram or probability vector."""
    p = torch.as_tensor(probs, dtype=torch.float64)
    total = float(p.sum())
    if total <= 0:
        return float("nan")
    p = p[p > 0] / total
    return max(0.0, float(-(p * p.log2()).sum()))
