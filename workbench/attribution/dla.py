"""Direct logit attribution: what each component writes into the residual stream, read in the metric's units.

The final residual stream is a sum: the embeddings plus, for every block, what its attention and its MLP
added. With the final norm's scale frozen at the value the forward computed, the map from that sum to the
logits is affine, so a metric that is a direction in logit space (a logit, a logit difference) splits
*exactly* into one number per component — embeddings, each block's attention (each query head, and the
output projection's bias) and MLP (each neuron, and the bias) — plus the constant part (the norm's and the
unembedding's biases) and, on soft-capped families, the cap's own share. Other metrics (a probability, a
token set's mass) are attributed along their gradient at the final logits: a linearisation, said so in the
result. Heads are read on the raw bridge — ``z`` of each query head through its slice of the output
projection (and a post-attention norm where the family has one, frozen the same way) — so grouped- and
multi-query attention need nothing special: a query head is labelled with the key/value head it reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from workbench.attribution.linear import CHECK, FrozenNorm, apply, freeze_norm, post_norm, pullback
from workbench.errors import AttributionError
from workbench.metrics import Metric, resolve_metric
from workbench.models import load_model
from workbench.reads import Read, capture
from workbench.tokens import resolve_readout, single_token_id, to_tokens

UNITS = ("component", "head", "layer", "neuron")
EXACT_KINDS = ("logit", "logit_diff")  # metrics that are a fixed direction in (uncapped) logit space


@dataclass(frozen=True)
class Component:
    """One writer into the residual stream: ``kind`` is embed, head, attn, attn_bias, mlp, neuron, mlp_bias,
    block, bias or softcap."""

    kind: str
    block: int | None = None
    head: int | None = None
    kv_head: int | None = None
    neuron: int | None = None

    @property
    def label(self) -> str:
        if self.kind == "head":
            return f"a{self.block}.h{self.head}"
        if self.kind == "neuron":
            return f"m{self.block}.n{self.neuron}"
        if self.block is not None:
            return f"{self.kind} {self.block}"
        return self.kind

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "block": self.block, "head": self.head, "kv_head": self.kv_head}
        if self.kind == "neuron":
            out["neuron"] = self.neuron
        return out


@dataclass
class Attribution:
    """Per prompt: each component's value (``values[prompt, component]``), the metric's value and the parts'
    total, and how the metric was linearised. ``accumulated[prompt, layer]`` is the residual stream after each
    block read the same way (unit ``layer``)."""

    components: list[Component]
    values: torch.Tensor  # [prompt, component] float64
    total: torch.Tensor  # [prompt] the sum of values
    metric_value: torch.Tensor  # [prompt] the model's own metric
    metric: str
    exact: bool
    readout: int
    attn: torch.Tensor  # [prompt, block] each block's attention component
    mlp: torch.Tensor  # [prompt, block]
    accumulated: torch.Tensor  # [prompt, layer]: embeddings, after block 0 … (no bias)
    unit: str


def metric_spec(target: str | None, vs: str | None, metric: str | None) -> str:
    """The metric string from the CLI's ``--target T [--vs U]`` or ``--metric``."""
    if metric is not None:
        if target is not None or vs is not None:
            raise AttributionError("Give either --target [--vs] or --metric, not both.")
        return metric
    if target is None:
        if vs is not None:
            raise AttributionError("--vs needs --target: write e.g. --target 1 --vs 5.")
        raise AttributionError("Say what to attribute: --target T [--vs U], or --metric (e.g. digits_above:5).")
    return f"logit_diff:{target},{vs}" if vs is not None else f"logit:{target}"


def _direction(model, spec: str | Metric, raw: torch.Tensor, cap: float) -> tuple[torch.Tensor, bool, Metric]:
    """``(v [prompt, vocab], exact, metric)``: the metric as a direction in raw (uncapped) logit space — the
    metric itself for a logit or a logit difference, its gradient at the actual logits otherwise."""
    kind = spec.partition(":")[0].strip() if isinstance(spec, str) else ""
    if kind in ("kl", "rank"):
        raise AttributionError(
            f"Metric {spec!r} has no direction in logit space to attribute (a KL needs an edited run, a rank is a "
            "step function): use logit:T, logit_diff:T,U, prob:… or digits_above:N."
        )
    metric = resolve_metric(model, spec)
    if isinstance(spec, str) and kind in EXACT_KINDS:
        v = torch.zeros_like(raw)
        for sign, index in zip((1.0, -1.0), _token_ids(model, spec), strict=False):
            v[:, index] += sign
        return v, True, metric
    raw = raw.detach().double().requires_grad_(True)
    capped = cap * torch.tanh(raw / cap) if cap > 0 else raw
    (grad,) = torch.autograd.grad(metric(capped).sum(), raw)
    if not torch.isfinite(grad).all():
        raise AttributionError(f"Metric {metric.name!r} has no finite gradient at this prompt: nothing to attribute.")
    return grad.detach(), False, metric


def _token_ids(model, spec: str) -> list[int]:
    return [single_token_id(model, t) for t in spec.partition(":")[2].split(",")]


def _pull(norm: FrozenNorm | None, direction: torch.Tensor) -> torch.Tensor:
    """``u`` with ``norm.linear(c) · direction = c · u`` (the identity when there is no norm)."""
    if norm is None:
        return direction
    u = direction * norm.gain_per_row()
    return u - u.mean(-1, keepdim=True) if norm.centres else u


def _write_bias(norm: FrozenNorm | None, bias: torch.Tensor) -> torch.Tensor:
    """What a projection's bias writes into the residual (through a frozen post-norm, with the norm's bias)."""
    return bias if norm is None else norm.linear(bias.expand(norm.scale.shape[0], -1)) + norm.bias


def _unembedding(bridge) -> tuple[torch.Tensor, torch.Tensor]:
    head = getattr(bridge.unembed, "_original_component", bridge.unembed)
    weight = head.weight.detach()
    d_model = weight.shape[1]
    with torch.no_grad():
        bias = head(torch.zeros(1, d_model, dtype=weight.dtype, device=weight.device))[0].double().cpu()
    return weight, bias


def direct_logit_attribution(
    model,
    prompts: str | Sequence[str],
    metric: str | Metric,
    *,
    unit: str = "head",
    position: int = -1,
) -> Attribution:
    """Split ``metric`` at the readout ``position`` into what each component wrote (see the module docstring).

    ``unit``: ``component`` (embeddings, each block's attention and MLP, biases), ``head`` (each query head
    and each block's attention bias instead of the attention), ``layer`` (each block as one component, and the
    accumulated residual stream per layer), ``neuron`` (each MLP neuron and the MLP's bias instead of the MLP).
    The values sum to ``total``; for ``logit:T`` and ``logit_diff:T,U`` that is the model's own metric.
    """
    model = load_model(model)
    check_unit(unit)
    tokens = to_tokens(model, [prompts] if isinstance(prompts, str) else list(prompts))
    readout = resolve_readout(tokens.shape[-1], position)
    cache, logits = capture(model, tokens, dla_reads(model, unit, readout))
    return attribute(model, cache, logits, metric, unit=unit, readout=readout)


def check_unit(unit: str) -> None:
    if unit not in UNITS:
        raise AttributionError(f"Unknown unit {unit!r}: use one of {', '.join(UNITS)}.")


def dla_reads(model, unit: str, readout: int) -> list[Read]:
    """What direct attribution reads at the readout position, for ``unit``."""
    blocks = tuple(range(model.facts.n_layers))
    at = (readout,)
    reads = [
        Read("resid_pre", (0,), at),
        Read("resid_post", blocks, at),
        Read("attn_out", blocks, at),
        Read("mlp_out", blocks, at),
    ]
    if unit == "head":
        reads += [Read("z", blocks, at), Read("attn_proj_out", blocks, at)]
    if unit == "neuron":
        reads += [Read("mlp_hidden", blocks, at), Read("mlp_proj_out", blocks, at)]
    return reads


def attribute(
    model, cache: dict, logits: torch.Tensor, metric: str | Metric, *, unit: str, readout: int
) -> Attribution:
    """Direct attribution from what :func:`dla_reads` captured (``cache``) and the run's own ``logits``: the
    observer half of :func:`direct_logit_attribution`, shared with the ``dla`` probe."""
    bridge, blocks = model.bridge, tuple(range(model.facts.n_layers))
    row = {key: value[:, 0].double().cpu() for key, value in cache.items()}  # [prompt, ...] at the readout
    own = logits[:, readout].detach().double().cpu()  # the model's own (capped) logits

    final = row[("resid_post", blocks[-1])]
    ln_final = getattr(bridge.ln_final, "_original_component", bridge.ln_final)
    norm = freeze_norm(ln_final, final, "final norm")
    w_u, b_u = _unembedding(bridge)
    raw = ((norm.linear(final) + norm.bias).to(w_u) @ w_u.T).double().cpu() + b_u
    cap = float(getattr(bridge.cfg, "output_logits_soft_cap", 0) or 0)
    _check_sum(cap * torch.tanh(raw / cap) if cap > 0 else raw, own, "the frozen readout", "the model's logits")
    v, exact, metric_fn = _direction(model, metric, raw, cap)
    value = metric_fn(own).double()
    direction = (v.to(w_u) @ w_u).double().cpu()  # [prompt, d_model]: W_U^T v
    pulled = _pull(norm, direction)

    comps, cols, attn, mlp = _block_parts(model, row, pulled, unit)
    comps.append(Component("bias"))
    cols.append((norm.bias * direction).sum(-1) + (v * b_u).sum(-1))
    linear_total = (v * raw).sum(-1)
    _check_sum(torch.stack(cols, -1).sum(-1), linear_total, "the components", "the metric's linear part")
    if exact and cap > 0:
        comps.append(Component("softcap"))
        cols.append(value - linear_total)
    values = torch.stack(cols, -1)
    accumulated = torch.cumsum(torch.cat([cols[0][:, None], attn + mlp], -1), -1)
    return Attribution(
        components=comps,
        values=values,
        total=values.sum(-1),
        metric_value=value,
        metric=metric_fn.name,
        exact=exact,
        readout=readout,
        attn=attn,
        mlp=mlp,
        accumulated=accumulated,
        unit=unit,
    )


def _block_parts(model, row: dict, pulled: torch.Tensor, unit: str):
    """The embeddings and every block's parts for ``unit``: ``(components, values, attn [prompt, block], mlp)``.

    Whatever reaches the residual stream besides the parts — an edit of a run with interventions (a block made
    the identity, a patched residual) — is the block's ``edit`` component, so the values still sum exactly."""
    dot = lambda c: (c * pulled).sum(-1)  # noqa: E731  a pre-norm vector's value, [prompt]
    comps: list[Component] = [Component("embed")]
    cols: list[torch.Tensor] = [dot(row[("resid_pre", 0)])]
    before = row[("resid_pre", 0)]
    attn, mlp = [], []
    for b in range(model.facts.n_layers):
        if unit == "head":
            parts, values, attn_vec = _heads(model, b, row, pulled)
        else:
            attn_vec = row[("attn_out", b)]
            parts, values = [Component("attn", b)], [dot(attn_vec)]
        if unit == "neuron":
            more, more_values, mlp_vec = _neurons(model, b, row, pulled)
        else:
            mlp_vec = row[("mlp_out", b)]
            more, more_values = [Component("mlp", b)], [dot(mlp_vec)]
        if unit == "layer":
            parts, values, more, more_values = [Component("block", b)], [dot(attn_vec + mlp_vec)], [], []
        after = row[("resid_post", b)]
        gap = after - before - attn_vec - mlp_vec
        if float(gap.abs().max()) > CHECK * (1.0 + float(after.abs().max())):
            more, more_values = [*more, Component("edit", b)], [*more_values, dot(gap)]
        comps += parts + more
        cols += values + more_values
        attn.append(dot(attn_vec))
        mlp.append(dot(mlp_vec))
        before = after
    return comps, cols, torch.stack(attn, -1), torch.stack(mlp, -1)


def _check_sum(got: torch.Tensor, expected: torch.Tensor, what: str, of: str) -> None:
    error = float((got - expected).abs().max())
    if not error <= CHECK * (1.0 + float(expected.abs().max())):
        raise AttributionError(
            f"{what} sum to {float(got[0]):.6g}, not {of} {float(expected[0]):.6g}: a bug, please report it."
        )


def _frozen_post(bridge, block: int, which: str, projected: torch.Tensor) -> FrozenNorm | None:
    post = post_norm(bridge, block, which)
    return None if post is None else freeze_norm(post, projected, f"post-{which} norm of block {block}")


def _heads(model, b: int, row: dict, pulled: torch.Tensor):
    """Each query head's value in block ``b`` (z through its slice of the output projection), the bias's, and
    the attention's write they add up to."""
    facts, bridge = model.facts, model.bridge
    z = row[("z", b)]  # [prompt, n_heads, d_head]
    n_heads, d_head = z.shape[-2], z.shape[-1]
    o = getattr(bridge.blocks[b].attn.o, "_original_component", bridge.blocks[b].attn.o)
    projected = apply(o, z.reshape(z.shape[0], -1))
    _check_sum(projected, row[("attn_proj_out", b)], f"block {b}'s heads through the output projection", "its output")
    post = _frozen_post(bridge, b, "attn", projected)
    worth, b_o = pullback(o, _pull(post, pulled), n_heads * d_head)  # [prompt, n_heads * d_head]: W_O u
    per_head = (z * worth.reshape(z.shape)).sum(-1)  # [prompt, n_heads]
    comps = [Component("head", b, h, facts.head_to_group[h]) for h in range(n_heads)]
    return _with_bias(
        comps, [per_head[:, h] for h in range(n_heads)], Component("attn_bias", b), post, b_o, projected, pulled
    )


def _neurons(model, b: int, row: dict, pulled: torch.Tensor):
    """Each MLP neuron's value in block ``b`` (its activation times its output row), the bias's, and the MLP's
    write they add up to."""
    bridge = model.bridge
    hidden = row[("mlp_hidden", b)]  # [prompt, d_mlp]
    out = getattr(bridge.blocks[b].mlp.out, "_original_component", bridge.blocks[b].mlp.out)
    projected = apply(out, hidden)
    _check_sum(projected, row[("mlp_proj_out", b)], f"block {b}'s neurons", "its MLP output")
    post = _frozen_post(bridge, b, "mlp", projected)
    worth, b_out = pullback(out, _pull(post, pulled), hidden.shape[-1])
    per_neuron = hidden * worth  # [prompt, d_mlp]
    comps = [Component("neuron", b, neuron=n) for n in range(hidden.shape[-1])]
    return _with_bias(comps, list(per_neuron.unbind(-1)), Component("mlp_bias", b), post, b_out, projected, pulled)


def _with_bias(comps, cols, bias_part: Component, post, bias, projected, pulled):
    """The parts plus the projection's bias (where it writes anything) and the write they all add up to."""
    written = _write_bias(post, bias)
    if float(written.abs().max()) > 0:
        comps, cols = [*comps, bias_part], [*cols, (written * pulled).sum(-1)]
    write = projected if post is None else post.linear(projected) + post.bias
    return comps, cols, write
