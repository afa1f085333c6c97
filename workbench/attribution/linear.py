"""The linear pieces of a forward pass, read off the model's own modules — the same code for every family.

Direct logit attribution splits what reaches the logits into what each component wrote. Two facts make that
exact: projections are affine (a head's output projection, an MLP's down projection, the unembedding), and a
norm is affine once its scale is *frozen* at the value the actual forward computed. Weights are not looked up
by family: an affine module's worth along a direction is one backward pass through the module itself
(``pullback``), and each norm is probed with ``±αv`` (its gain and bias) — GPT-2's Conv1D, Falcon's Linear,
Gemma's ``(1 + w)`` RMSNorm and LayerNorm with bias all come out the same way. Every piece checks itself against
the module's own output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.errors import AttributionError

CHECK = 1e-4  # relative to the largest |value|: float32 rounding of one norm or projection is ~1e-6 of it


def _module_dtype(module: torch.nn.Module) -> torch.dtype:
    for p in module.parameters():
        return p.dtype
    return torch.float32


def _device(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def pullback(module: torch.nn.Module, direction: torch.Tensor, d_in: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u, b)`` for an affine ``module(x) = x @ W + b``: ``u = direction @ W.T`` ``[rows, d_in]`` (what each input
    feature is worth along ``direction`` ``[rows, d_out]``) by one backward pass, and the bias ``b`` (float64)."""
    dtype, device = _module_dtype(module), _device(module)
    x = torch.zeros(direction.shape[0], d_in, dtype=dtype, device=device, requires_grad=True)
    with torch.enable_grad():
        y = module(x)
        (grad,) = torch.autograd.grad((y * direction.to(y)).sum(), x)
    return grad.double().cpu(), y[0].detach().double().cpu()


@torch.no_grad()
def apply(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` in the module's dtype and device, returned as float64 on the CPU."""
    return module(x.to(dtype=_module_dtype(module), device=_device(module))).double().cpu()


@dataclass
class FrozenNorm:
    """A norm at one set of inputs with its scale frozen: ``norm(x) = gain ⊙ P(x) / scale + bias`` where ``P``
    centres (LayerNorm) or not (RMSNorm) and ``scale`` is the one the forward computed per row."""

    gain: torch.Tensor  # [d]
    bias: torch.Tensor  # [d]
    centres: bool
    scale: torch.Tensor  # [rows, 1]

    def linear(self, parts: torch.Tensor) -> torch.Tensor:
        """The frozen norm's linear part applied to ``parts`` ``[..., rows, d]`` (no bias)."""
        if self.centres:
            parts = parts - parts.mean(-1, keepdim=True)
        return parts * (self.gain / self.scale)

    def gain_per_row(self) -> torch.Tensor:
        """``gain / scale`` ``[rows, d]``: the diagonal map the frozen norm is after centring."""
        return self.gain / self.scale


@torch.no_grad()
def freeze_norm(norm: torch.nn.Module, x: torch.Tensor, what: str) -> FrozenNorm:
    """The norm ``norm`` frozen at inputs ``x`` ``[rows, d]`` (float64 result), checked against ``norm(x)``."""
    d = x.shape[-1]
    if d % 2:
        raise AttributionError(f"The {what} has an odd width ({d}): the workbench cannot probe its gain.")
    dtype, device = _module_dtype(norm), _device(norm)
    v = torch.ones(d, dtype=torch.float64)
    v[1::2] = -1.0  # mean 0, mean square 1: a LayerNorm and an RMSNorm both see it as already normalised
    alpha = 64.0  # large next to any eps (1e-5 … 1e-6), small enough for half precision
    probes = torch.stack([alpha * v, -alpha * v, alpha * v + 3.0]).to(device=device, dtype=dtype)
    out = norm(probes).double().cpu()
    bias = (out[0] + out[1]) / 2
    gain = (out[0] - out[1]) / 2 * v
    centres = bool(torch.allclose(out[2], out[0], rtol=1e-4, atol=1e-4 * float(out[0].abs().max())))
    actual = norm(x.to(device=device, dtype=dtype)).double().cpu()
    x64 = x.double().cpu()
    centred = x64 - x64.mean(-1, keepdim=True) if centres else x64
    shaped = gain * centred
    scale = (shaped * shaped).sum(-1, keepdim=True) / (shaped * (actual - bias)).sum(-1, keepdim=True)
    frozen = FrozenNorm(gain=gain, bias=bias, centres=centres, scale=scale)
    error = float((frozen.linear(x64) + bias - actual).abs().max())
    if not error <= CHECK * (1.0 + float(actual.abs().max())):
        raise AttributionError(
            f"The {what} is not a LayerNorm or RMSNorm the workbench can freeze (off by {error:.3g}): "
            "direct attribution needs an affine norm once its scale is fixed."
        )
    return frozen


def post_norm(bridge, block: int, which: str) -> torch.nn.Module | None:
    """The norm between block ``block``'s attention (``which="attn"``) or MLP (``"mlp"``) output and the residual
    stream: Gemma 2/3 and OLMo 2 normalise what both write (``post_*_layernorm`` beside
    ``post_feedforward_layernorm``); other families add the projection's output as it is (None)."""
    layer = bridge.blocks[block]._original_component
    if not hasattr(layer, "post_feedforward_layernorm"):
        return None
    return getattr(layer, "post_attention_layernorm" if which == "attn" else "post_feedforward_layernorm")
