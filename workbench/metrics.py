"""What an edited run is measured by at the readout position, and the divergences used everywhere.

A metric takes the readout logits ``[batch, vocab]`` and returns ``[batch]``. Metrics that compare
with the unedited run (``kl``) also receive the prompt's own readout logits ``[vocab]``.
Strings name the common ones, so the CLI, sweeps, experiments and notebooks share a vocabulary:

- ``kl`` (the default): KL(the prompt's own distribution ‖ the edited one), in nats;
- ``prob:6,7,8,9``: probability of a token set (each item a single token);
- ``logit_diff:9,5``: logit of "9" minus logit of "5";
- ``logit:9``: the logit of one token;
- ``rank:9``: rank of a token among all tokens (0 = the most likely);
- ``digits_above:5``: probability of the digit tokens above 5 ("6" … "9").

KL divergence is computed by one function, :func:`kl_divergence`, in nats (``bits=True`` for bits).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float

from workbench.errors import ProbeError
from workbench.metric_names import DEFAULT_METRIC, METRIC_FORMS
from workbench.tokens import digit_token_ids, single_token_id

MetricFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Metric:
    """A named readout metric. ``fn(logits[, clean])``: ``clean`` only when ``needs_clean``."""

    name: str
    fn: MetricFn
    needs_clean: bool = False

    def __call__(
        self, logits: Float[torch.Tensor, "batch vocab"], clean: Float[torch.Tensor, "*#batch vocab"] | None = None
    ) -> Float[torch.Tensor, " batch"]:
        logits = logits.float()
        if not self.needs_clean:
            out = self.fn(logits)
        elif clean is None:
            raise ProbeError(f"Metric {self.name!r} compares with the unedited run: pass its readout logits as clean=.")
        else:
            out = self.fn(logits, clean.float())
        out = torch.as_tensor(out)
        if out.shape != logits.shape[:1]:
            raise ProbeError(
                f"Metric {self.name!r} returned shape {tuple(out.shape)} for logits "
                f"{tuple(logits.shape)}: it must return one value per row, [batch]."
            )
        return out


def token_prob(model, tokens: Sequence[str | int], name: str | None = None) -> Metric:
    """Probability of a token set (strings must be single tokens; ints are token ids)."""
    ids = [t if isinstance(t, int) else single_token_id(model, t) for t in tokens]
    if not ids:
        raise ProbeError("token_prob needs at least one token.")

    def fn(logits):
        return logits.softmax(-1)[:, ids].sum(-1)

    return Metric(name or f"p({'+'.join(map(str, tokens))})", fn)


def digits_above(model, threshold: int = 5) -> Metric:
    """Probability of the digits strictly above ``threshold`` (the study: "6"…"9")."""
    ids = digit_token_ids(model)[threshold + 1 :]
    if not ids:
        raise ProbeError(f"No digit is above {threshold} among 0–9: pick a threshold from 0 to 8.")
    return token_prob(model, ids, name=f"p(digit > {threshold})")


def logit_diff(model, token: str, other: str) -> Metric:
    """``logit(token) − logit(other)``: e.g. "9" vs "5"."""
    a, b = single_token_id(model, token), single_token_id(model, other)

    def fn(logits):
        return logits[:, a] - logits[:, b]

    return Metric(f"logit({token}) − logit({other})", fn)


def token_logit(model, token: str) -> Metric:
    """The logit of one token (``logit:9``)."""
    index = single_token_id(model, token)

    def fn(logits):
        return logits[:, index]

    return Metric(f"logit({token})", fn)


def kl_divergence(
    p_logits: Float[torch.Tensor, "... vocab"], q_logits: Float[torch.Tensor, "... vocab"], bits: bool = False
) -> Float[torch.Tensor, " ..."]:
    """KL(p ‖ q) between the distributions of two logit (or log-probability) tensors, in nats (bits with
    ``bits=True``). The one KL of the workbench: probes, sweeps, the lens and the study all call it."""
    p_logp = p_logits.float().log_softmax(-1)
    q_logp = q_logits.float().log_softmax(-1)
    kl = (p_logp.exp() * (p_logp - q_logp)).sum(-1)
    return kl / math.log(2) if bits else kl


def rank_of(model, token: str | int, name: str | None = None) -> Metric:
    """Rank of one token among all tokens at the readout (0 = most likely; ties count as above)."""
    index = token if isinstance(token, int) else single_token_id(model, token)

    def fn(logits):
        return (logits > logits[:, index : index + 1]).sum(-1).float()

    return Metric(name or f"rank({token})", fn)


def kl_to_clean() -> Metric:
    """KL(prompt's own next-token distribution ‖ the edited one), in nats: 0 when nothing changed."""

    def fn(logits, clean):
        return kl_divergence(clean.expand_as(logits), logits)

    return Metric("KL(clean ‖ edited)", fn, needs_clean=True)


def resolve_metric(model, spec: str | Metric | MetricFn | None = None) -> Metric:
    """A :class:`Metric` from a name (see the module docstring), a Metric, or a callable ``logits → [batch]``."""
    if spec is None:
        spec = DEFAULT_METRIC
    if isinstance(spec, Metric):
        return spec
    if callable(spec):
        return Metric(getattr(spec, "__name__", "custom metric"), spec)
    if not isinstance(spec, str):
        raise ProbeError(f"Metric {spec!r} is neither a name nor a callable: use one of {METRIC_FORMS}.")
    kind, _, arg = spec.partition(":")
    kind = kind.strip()
    items = arg.split(",") if arg else []  # not stripped: " Paris" and "Paris" are different tokens
    if any(item == "" for item in items):
        raise ProbeError(f"Metric {spec!r} has an empty argument: write e.g. prob:6,7 (no stray commas).")
    if kind == "digits_above":
        if len(items) > 1 or (items and not items[0].strip().lstrip("-").isdigit()):
            raise ProbeError(
                f"digits_above takes one whole number from 0 to 8, not {arg!r}: write e.g. digits_above:5."
            )
        threshold = int(items[0]) if items else 5
        if not 0 <= threshold <= 8:
            raise ProbeError(f"No digit is above {threshold} among 0–9: pick a threshold from 0 to 8.")
        return digits_above(model, threshold)
    if kind == "prob" and items:
        return token_prob(model, items)
    if kind == "logit_diff" and len(items) == 2:
        return logit_diff(model, *items)
    if kind == "logit" and len(items) == 1:
        return token_logit(model, items[0])
    if kind == "rank" and len(items) == 1:
        return rank_of(model, items[0])
    if kind == "kl" and not items:
        return kl_to_clean()
    raise ProbeError(
        f"Unknown metric {spec!r}: use {METRIC_FORMS}, "
        "or pass a callable taking logits [batch, vocab] and returning [batch]."
    )
