"""What a sweep measures at the readout position: one number per patched run.

A metric takes the readout logits ``[batch, vocab]`` and returns ``[batch]``. Metrics that compare
with the unpatched run (``kl``) also receive the prompt's own readout logits ``[vocab]``.
Strings name the common ones, so the CLI and notebooks share a vocabulary:

- ``digits_above:5``: probability of the digit tokens above 5 ("6" … "9"), the study's default;
- ``prob:6,7,8,9``: probability of a token set (each item a single token);
- ``logit_diff:9,5``: logit of "9" minus logit of "5";
- ``kl``: KL(prompt's own distribution ‖ patched distribution), in nats.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float

from workbench.errors import ProbeError
from workbench.tokens import digit_token_ids, single_token_id

MetricFn = Callable[..., torch.Tensor]
DEFAULT_METRIC = "digits_above:5"


@dataclass(frozen=True)
class Metric:
    """A named readout metric. ``fn(logits[, clean])``: ``clean`` only when ``needs_clean``."""

    name: str
    fn: MetricFn
    needs_clean: bool = False

    def __call__(self, logits: Float[torch.Tensor, "batch vocab"],
                 clean: Float[torch.Tensor, "vocab"] | None = None) -> Float[torch.Tensor, "batch"]:
        logits = logits.float()
        out = self.fn(logits, clean.float()) if self.needs_clean else self.fn(logits)
        out = torch.as_tensor(out)
        if out.shape != logits.shape[:1]:
            raise ProbeError(f"Metric {self.name!r} returned shape {tuple(out.shape)} for logits "
                             f"{tuple(logits.shape)}: it must return one value per row, [batch].")
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
    ids = digit_token_ids(model)[threshold + 1:]
    if not ids:
        raise ProbeError(f"No digit is above {threshold}: pick a threshold from 0 to 8.")
    return token_prob(model, ids, name=f"p(digit > {threshold})")


def logit_diff(model, token: str, other: str) -> Metric:
    """``logit(token) − logit(other)``: e.g. "9" vs "5"."""
    a, b = single_token_id(model, token), single_token_id(model, other)

    def fn(logits):
        return logits[:, a] - logits[:, b]

    return Metric(f"logit({token}) − logit({other})", fn)


def kl_to_clean() -> Metric:
    """KL(prompt's own next-token distribution ‖ the patched one), in nats: 0 when nothing changed."""

    def fn(logits, clean):
        clean_logp = clean.log_softmax(-1)
        return (clean_logp.exp() * (clean_logp - logits.log_softmax(-1))).sum(-1)

    return Metric("KL(clean ‖ patched)", fn, needs_clean=True)


def resolve_metric(model, spec: str | Metric | MetricFn | None = None) -> Metric:
    """A :class:`Metric` from a name (see the module docstring), a Metric, or a callable ``logits → [batch]``."""
    if spec is None:
        spec = DEFAULT_METRIC
    if isinstance(spec, Metric):
        return spec
    if callable(spec):
        return Metric(getattr(spec, "__name__", "custom metric"), spec)
    kind, _, arg = str(spec).partition(":")
    items = [a for a in arg.split(",") if a != ""] if arg else []
    if kind == "digits_above":
        return digits_above(model, int(items[0]) if items else 5)
    if kind == "prob" and items:
        return token_prob(model, items)
    if kind == "logit_diff" and len(items) == 2:
        return logit_diff(model, *items)
    if kind == "kl" and not items:
        return kl_to_clean()
    raise ProbeError(f"Unknown metric {spec!r}: use digits_above:5, prob:6,7,8,9, logit_diff:9,5, kl, "
                     "or pass a callable taking logits [batch, vocab] and returning [batch].")
