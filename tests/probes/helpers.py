"""Independent paths for the probe tests: the plain Hugging Face model and an observer probe.

The HF twin is a second copy of the same weights, run by transformers alone, edited with plain
``torch`` forward hooks on its modules: no TransformerLens hook point and no workbench code is on
that path, so agreement with a probe's numbers is evidence, not a tautology.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from workbench.probes.base import Probe

PROMPT = "I'm generating a random number between [0, 9]. The number is "
SOURCE = "I'm generating a random number between [0, 5]. The number is "
# Same token length as PROMPT on every model here: a second prompt for batches.
OTHER = "I'm generating a random number between [0, 7]. The number is "
DIGITS = [str(d) for d in range(10)]  # the targets the digit checks read (results default to the top tokens)

# Where the "9" of "[0, 9]" sits: Qwen-style tokenizers add no BOS, Llama-style ones do.
NINE_POSITION = {"tiny-qwen2": 12, "tiny-llama": 13, "SmolLM2-135M-Instruct": 12}
SITES = ("kv", "k", "v", "q", "z", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


@dataclass
class Observe(Probe):
    """Saves the named hook points of every pass, untouched: ``result`` gives ``{phase: {hook: tensor}}``."""

    points: list[str] = field(default_factory=list)
    name = "observe"

    def hooks(self, ctx):
        def save(act, hook, point):
            ctx.save(point, act)

        return [(p, lambda act, hook, p=p: save(act, hook, p)) for p in self.points]

    def result(self, record):
        return {phase: dict(saved) for phase, saved in record.saved.items()}


def resid_points(n_layers: int) -> list[str]:
    return [f"blocks.{b}.hook_resid_{w}" for b in range(n_layers) for w in ("pre", "post")]


@contextlib.contextmanager
def torch_hooks(*registrations):
    """Register plain torch hooks, given as ``(register_method, fn)`` or ``(register_method, fn, kwargs)``."""
    handles = []
    try:
        for reg in registrations:
            method, fn, *rest = reg
            handles.append(method(fn, **(rest[0] if rest else {})))
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def hf_forward(hf, tokens: torch.Tensor, *registrations, **kwargs):
    """One plain transformers forward pass with the given torch hooks attached."""
    with torch_hooks(*registrations):
        return hf(tokens, **kwargs)


@torch.no_grad()
def hf_residuals(hf, tokens: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``[embeddings, after layer 0, …, after layer n-1]`` read from HF module outputs, plus the logits."""
    seen: list[torch.Tensor] = []

    def keep(module, args, output):
        seen.append((output[0] if isinstance(output, tuple) else output).detach().clone())

    regs = [(hf.model.embed_tokens.register_forward_hook, keep)]
    regs += [(layer.register_forward_hook, keep) for layer in hf.model.layers]
    out = hf_forward(hf, tokens, *regs)
    return seen, out.logits


def hf_lens(hf, resid: torch.Tensor) -> torch.Tensor:
    """The logit lens written with HF modules: final RMSNorm then lm_head."""
    with torch.no_grad():
        return hf.lm_head(hf.model.norm(resid)).float()


def heads_of(tensor: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[batch, pos, n_heads * d_head]`` viewed as ``[batch, pos, n_heads, d_head]``."""
    return tensor.view(*tensor.shape[:-1], n_heads, tensor.shape[-1] // n_heads)
