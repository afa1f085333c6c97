"""Logit processors and the sampler chain: logits → (processor, processor, …) → a draw.

Each processor maps logits ``[..., vocab]`` to logits of the same shape and removes a token by setting
its logit to ``-inf`` (as transformers' ``LogitsProcessor`` does). A :class:`Sampler` is an ordered list
of processors plus the draw (argmax or a seeded multinomial), so the order is explicit, as in
llama.cpp's sampler chain: top-k before temperature is not the same as temperature before top-k
(top-nσ and top-k are order-free for T > 0; top-p and min-p are not).

Temperature is defined for every real T, not only T > 0: T < 0 reverses the order of the logits,
T → 0⁻ picks the least likely token, T = ±inf is uniform over the tokens still kept, and T = 0
(or ``-0.0``) is the limit: keep only the argmax (argmin).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from jaxtyping import Float, Int

from workbench.errors import SamplingError

NEG_INF = float("-inf")


@runtime_checkable
class LogitsProcessor(Protocol):
    """Anything that maps logits to logits; ``input_ids`` are the tokens so far (for penalties)."""

    def __call__(
        self, logits: Float[torch.Tensor, "*batch vocab"], input_ids: Int[torch.Tensor, "*batch pos"] | None = None
    ) -> Float[torch.Tensor, "*batch vocab"]: ...


def _finite_mask(logits: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(logits)


def _check_number(name: str, value: float, fix: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise SamplingError(f"{name} must be a number, got {value!r}: {fix}") from None
    if math.isnan(value):
        raise SamplingError(f"{name} is NaN: {fix}")
    return value


@dataclass(frozen=True)
class Temperature:
    """``logits / T`` for any real T; tokens already removed (``-inf``) stay removed.

    T = ±inf gives the uniform distribution over the kept tokens; T = 0 keeps only the argmax and
    T = -0.0 only the argmin (the two one-sided limits).
    """

    temperature: float

    def __post_init__(self) -> None:
        _check_number("Temperature", self.temperature, "pass a real number (±inf means uniform, 0 greedy).")

    def __call__(self, logits, input_ids=None):
        t = float(self.temperature)
        kept = _finite_mask(logits)
        if math.isinf(t):
            return torch.where(kept, torch.zeros_like(logits), torch.full_like(logits, NEG_INF))
        if t == 0.0:
            extreme_is_min = math.copysign(1.0, t) < 0
            return _keep_extreme(logits, kept, lowest=extreme_is_min)
        scaled = logits / t
        return torch.where(kept, scaled, torch.full_like(logits, NEG_INF))

    def __str__(self) -> str:
        return (
            f"temperature={self.temperature:g}"
            if not (self.temperature == 0 and math.copysign(1, self.temperature) < 0)
            else "temperature=-0"
        )


def _keep_extreme(logits: torch.Tensor, kept: torch.Tensor, lowest: bool) -> torch.Tensor:
    """Keep the largest (or smallest) kept logit and its ties; the limit of T → 0⁺ (0⁻)."""
    if lowest:
        target = torch.where(kept, logits, torch.full_like(logits, float("inf"))).amin(dim=-1, keepdim=True)
    else:
        target = torch.where(kept, logits, torch.full_like(logits, NEG_INF)).amax(dim=-1, keepdim=True)
    chosen = kept & (logits == target)
    return torch.where(chosen, torch.zeros_like(logits), torch.full_like(logits, NEG_INF))


@dataclass(frozen=True)
class TopK:
    """Keep the k largest logits (and ties with the k-th); k = 0 disables the filter."""

    k: int

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or int(self.k) != self.k:
            raise SamplingError(f"top-k must be a whole number, got {self.k!r}: pass k ≥ 0 (0 disables it).")
        if self.k < 0:
            raise SamplingError(f"top-k is {self.k}, which is negative: pass k ≥ 0 (0 disables it).")

    def __call__(self, logits, input_ids=None):
        if self.k == 0 or self.k >= logits.shape[-1]:
            return logits
        threshold = torch.topk(logits, int(self.k), dim=-1).values[..., -1:]
        return logits.masked_fill(logits < threshold, NEG_INF)

    def __str__(self) -> str:
        return f"top_k={self.k}"


@dataclass(frozen=True)
class TopP:
    """Nucleus: keep the smallest set of most likely tokens whose probability reaches p."""

    p: float

    def __post_init__(self) -> None:
        p = _check_number("top-p", self.p, "pass p in (0, 1] (1 disables it).")
        if not 0.0 < p <= 1.0:
            raise SamplingError(f"top-p is {p:g}, outside (0, 1]: pass p in (0, 1] (1 disables it).")

    def __call__(self, logits, input_ids=None):
        if self.p >= 1.0:
            return logits
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        remove_sorted = mass_before >= self.p
        remove_sorted[..., 0] = False
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        return logits.masked_fill(remove, NEG_INF)

    def __str__(self) -> str:
        return f"top_p={self.p:g}"


@dataclass(frozen=True)
class MinP:
    """Keep tokens whose probability is at least ``p`` times the top probability (0 disables it)."""

    p: float

    def __post_init__(self) -> None:
        p = _check_number("min-p", self.p, "pass p in [0, 1] (0 disables it).")
        if not 0.0 <= p <= 1.0:
            raise SamplingError(f"min-p is {p:g}, outside [0, 1]: pass p in [0, 1] (0 disables it).")

    def __call__(self, logits, input_ids=None):
        if self.p == 0.0:
            return logits
        probs = logits.softmax(dim=-1)
        remove = probs < self.p * probs.amax(dim=-1, keepdim=True)
        remove &= logits < logits.amax(dim=-1, keepdim=True)  # the top token always stays
        return logits.masked_fill(remove, NEG_INF)

    def __str__(self) -> str:
        return f"min_p={self.p:g}"


@dataclass(frozen=True)
class TopNSigma:
    """Keep logits ≥ max − n·σ, σ the standard deviation of the kept logits (population, ``ddof=0``).

    Scaling the logits by 1/T (T > 0) scales max and σ alike, so the kept set does not depend on T.
    """

    n: float

    def __post_init__(self) -> None:
        n = _check_number("top-nσ", self.n, "pass n ≥ 0 (around 1.0 is typical).")
        if n < 0 or math.isinf(n):
            raise SamplingError(f"top-nσ n is {n:g}: pass a finite n ≥ 0 (around 1.0 is typical).")

    def __call__(self, logits, input_ids=None):
        kept = _finite_mask(logits)
        count = kept.sum(dim=-1, keepdim=True).clamp(min=1)
        filled = torch.where(kept, logits, torch.zeros_like(logits))
        mean = filled.sum(dim=-1, keepdim=True) / count
        var = (torch.where(kept, logits - mean, torch.zeros_like(logits)) ** 2).sum(dim=-1, keepdim=True) / count
        top = torch.where(kept, logits, torch.full_like(logits, NEG_INF)).amax(dim=-1, keepdim=True)
        return logits.masked_fill(logits < top - self.n * var.sqrt(), NEG_INF)

    def __str__(self) -> str:
        return f"top_n_sigma={self.n:g}"


@dataclass(frozen=True)
class RepetitionPenalty:
    """CTRL's penalty on tokens already in ``input_ids``: positive logits / θ, negative logits × θ."""

    penalty: float

    def __post_init__(self) -> None:
        penalty = _check_number("Repetition penalty", self.penalty, "pass a finite θ > 0 (1 disables it).")
        if not (penalty > 0 and math.isfinite(penalty)):
            raise SamplingError(f"Repetition penalty is {penalty:g}: pass a finite θ > 0 (1 disables it).")

    def __call__(self, logits, input_ids=None):
        if input_ids is None or self.penalty == 1.0 or input_ids.numel() == 0:
            return logits
        flat = logits.reshape(-1, logits.shape[-1])
        ids = input_ids.reshape(flat.shape[0], -1).to(flat.device).long()
        seen = torch.zeros_like(flat, dtype=torch.bool).scatter(1, ids, True)
        penalised = torch.where(flat < 0, flat * self.penalty, flat / self.penalty)
        return torch.where(seen, penalised, flat).reshape(logits.shape)

    def __str__(self) -> str:
        return f"repetition_penalty={self.penalty:g}"


SEED_LIMIT = 1 << 63


def check_seed(seed: int | None) -> int | None:
    """A seed is None (fresh randomness) or a whole number in [0, 2**63)."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < SEED_LIMIT:
        raise SamplingError(
            f"seed is {seed!r}: pass a whole number from 0 to 2**63 - 1 (or none for fresh randomness)."
        )
    return int(seed)


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index``'s own random stream, derived from (``seed``, ``index``) alone.

    Sample 0 uses ``seed`` itself, so one sample equals transformers' ``generate`` after
    ``torch.manual_seed(seed)``; the others hash (seed, index) with numpy's ``SeedSequence``. Because a
    sample's draws depend on nothing else, they do not change with the batch size or the chunking.
    """
    if index == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0] >> np.uint64(1))


@dataclass
class Sampler:
    """An ordered chain of processors and a draw: ``greedy`` takes the argmax, otherwise a multinomial.

    ``seed`` makes draws reproducible: every call of :meth:`sample` starts a fresh ``torch.Generator``
    from it, and :func:`~workbench.sampling.generate.generate` gives sample *i* its own generator seeded
    :func:`sample_seed(seed, i) <sample_seed>`, so the same seed gives the same samples whatever the
    batch size.
    """

    processors: list = field(default_factory=list)
    greedy: bool = False
    seed: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        self.seed = check_seed(self.seed)

    def process(
        self, logits: Float[torch.Tensor, "*batch vocab"], input_ids: Int[torch.Tensor, "*batch pos"] | None = None
    ) -> Float[torch.Tensor, "*batch vocab"]:
        """The logits after every processor, in order (removed tokens are ``-inf``)."""
        out = logits.float()
        for processor in self.processors:
            out = processor(out, input_ids)
        return out

    def probs(
        self, logits: Float[torch.Tensor, "*batch vocab"], input_ids: Int[torch.Tensor, "*batch pos"] | None = None
    ) -> Float[torch.Tensor, "*batch vocab"]:
        """The exact distribution the draw follows (a one-hot on the argmax when greedy)."""
        processed = self.process(logits, input_ids)
        if self.greedy:
            return torch.nn.functional.one_hot(processed.argmax(dim=-1), processed.shape[-1]).to(processed.dtype)
        return processed.softmax(dim=-1)

    def new_generator(self, device: torch.device | str = "cpu") -> torch.Generator | None:
        if self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(int(self.seed))

    def sample(
        self,
        logits: Float[torch.Tensor, "*batch vocab"],
        input_ids: Int[torch.Tensor, "*batch pos"] | None = None,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Int[torch.Tensor, "*batch"] | Int[torch.Tensor, "*batch num_samples"]:
        """Draw token ids: one per row, or ``num_samples`` per row (with replacement) when given."""
        processed = self.process(logits, input_ids)
        flat = processed.reshape(-1, processed.shape[-1])
        n = 1 if num_samples is None else int(num_samples)
        if n < 1:
            raise SamplingError(f"num_samples is {num_samples}: pass at least 1.")
        if self.greedy:
            draws = flat.argmax(dim=-1, keepdim=True).expand(-1, n)
        else:
            gen = generator if generator is not None else self.new_generator(flat.device)
            draws = torch.multinomial(flat.softmax(dim=-1), n, replacement=True, generator=gen)
        shape = processed.shape[:-1]
        return draws.reshape(shape) if num_samples is None else draws.reshape(*shape, n)

    def sample_generators(self, indices, device: torch.device | str = "cpu") -> list[torch.Generator] | None:
        """One generator per sample index (seeded :func:`sample_seed`), or None when unseeded or greedy."""
        if self.seed is None or self.greedy:
            return None
        return [torch.Generator(device=device).manual_seed(sample_seed(self.seed, int(i))) for i in indices]

    def sample_rows(
        self,
        logits: Float[torch.Tensor, "batch vocab"],
        input_ids: Int[torch.Tensor, "batch pos"] | None = None,
        generators: list[torch.Generator] | None = None,
    ) -> Int[torch.Tensor, " batch"]:
        """One token per row, row *i* drawn with ``generators[i]`` (its sample's own stream)."""
        if generators is None:
            return self.sample(logits, input_ids)
        processed = self.process(logits, input_ids)
        if self.greedy:
            return processed.argmax(dim=-1)
        probs = processed.softmax(dim=-1)
        draws = [torch.multinomial(probs[i : i + 1], 1, generator=g)[0, 0] for i, g in enumerate(generators)]
        return torch.stack(draws) if draws else torch.empty(0, dtype=torch.long, device=logits.device)

    def __call__(self, logits, input_ids=None, generator=None):
        return self.sample(logits, input_ids, generator=generator)

    def describe(self) -> str:
        """The chain in order, e.g. ``top_k=40 → temperature=0.7 → sample(seed=0)``."""
        if self.name:
            return self.name
        steps = [str(p) for p in self.processors]
        steps.append("argmax" if self.greedy else f"sample(seed={self.seed})" if self.seed is not None else "sample")
        return " → ".join(steps)

    def __str__(self) -> str:
        return self.describe()


def make_sampler(
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    top_n_sigma: float | None = None,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    name: str | None = None,
) -> Sampler:
    """A sampler in transformers' order: repetition penalty → temperature → top-k → top-p → min-p → top-nσ.

    ``temperature=0`` means greedy (an argmax draw); ``-0.0`` and tiny negative values are anti-greedy.
    Disabled filters (k = 0, p = 1, min-p = 0, n = None, penalty = 1) are left out of the chain.
    """
    t = _check_number("Temperature", temperature, "pass a real number (±inf means uniform, 0 greedy).")
    chain: list = []
    if repetition_penalty != 1.0:
        chain.append(RepetitionPenalty(repetition_penalty))
    greedy = t == 0.0 and math.copysign(1.0, t) > 0
    if not greedy and t != 1.0:
        chain.append(Temperature(t))
    for processor, disabled in (
        (TopK(top_k), top_k == 0),
        (TopP(top_p), top_p == 1.0),
        (MinP(min_p), min_p == 0.0),
        (TopNSigma(top_n_sigma) if top_n_sigma is not None else None, top_n_sigma is None),
    ):
        if not disabled:
            chain.append(processor)
    return Sampler(chain, greedy=greedy, seed=seed, name=name)


def greedy() -> Sampler:
    return Sampler([], greedy=True, name="greedy")


_KEYS = {
    "t": "temperature",
    "temp": "temperature",
    "temperature": "temperature",
    "k": "top_k",
    "top_k": "top_k",
    "topk": "top_k",
    "p": "top_p",
    "top_p": "top_p",
    "topp": "top_p",
    "min_p": "min_p",
    "minp": "min_p",
    "n_sigma": "top_n_sigma",
    "top_n_sigma": "top_n_sigma",
    "nsigma": "top_n_sigma",
    "sigma": "top_n_sigma",
    "rep": "repetition_penalty",
    "repetition_penalty": "repetition_penalty",
    "penalty": "repetition_penalty",
    "seed": "seed",
}


def parse_sampler(text: str, seed: int | None = None) -> Sampler:
    """Parse a CLI sampler spec: ``greedy`` or ``key=value`` pairs joined by commas.

    Keys: ``t``/``temperature``, ``top_k``, ``top_p``, ``min_p``, ``top_n_sigma``, ``repetition_penalty``,
    ``seed`` (e.g. ``t=0.7,top_p=0.9`` or ``t=-0.001``). Values accept ``inf`` and ``-inf``.
    """
    spec = text.strip()
    if spec.lower() in ("greedy", "argmax", "t=0", "temperature=0"):
        return Sampler([], greedy=True, name="greedy")
    kwargs: dict = {"seed": seed}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().lower().replace("-", "_")
        if not sep or key not in _KEYS:
            raise SamplingError(
                f"Cannot read {part!r} in sampler spec {text!r}: use key=value pairs with keys "
                "t, top_k, top_p, min_p, top_n_sigma, repetition_penalty, seed (or just 'greedy')."
            )
        target = _KEYS[key]
        try:
            kwargs[target] = int(value) if target in ("top_k", "seed") else float(value)
        except ValueError:
            raise SamplingError(
                f"{key}={value!r} in sampler spec {text!r} is not a number: pass e.g. {key}=1."
            ) from None
    return make_sampler(**kwargs, name=spec)
