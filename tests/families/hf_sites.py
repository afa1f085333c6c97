"""Where things live in each family's plain transformers model, for edits written with torch hooks.

This is the independent path of the matrix: no TransformerLens hook point and no workbench code is
on it. Families differ in three ways that matter here, each answered by one small function:

- the decoder layers (``model.layers``, ``transformer.h``, ``gpt_neox.layers``, ``model.decoder.layers``);
- the attention module of a layer and the module whose input is the MLP's input;
- where keys and values are in the output of the attention's projections (:func:`kv_columns`):
  ``separate`` k_proj/v_proj; ``q|k|v`` one fused projection laid out as all queries, then all keys,
  then all values (GPT-2's c_attn, Phi-3's qkv_proj, Falcon's multi-query query_key_value);
  ``per-head qkv`` one fused projection laid out head by head as (q, k, v) (GPT-NeoX, BLOOM).
"""

from __future__ import annotations

import contextlib

import torch

ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")


def hf_layers(hf) -> torch.nn.ModuleList:
    base = hf.base_model
    if hasattr(base, "decoder"):
        return base.decoder.layers
    return base.layers if hasattr(base, "layers") else base.h


def attention(layer) -> torch.nn.Module:
    return next(getattr(layer, name) for name in ATTENTION_NAMES if hasattr(layer, name))


def mlp_entry(layer) -> torch.nn.Module:
    """The module whose first input is what the MLP reads (OPT has no MLP module: its fc1)."""
    return layer.mlp if hasattr(layer, "mlp") else layer.fc1


def kv_columns(
    kv: str, layer, n_heads: int, n_kv: int, d_head: int, keys_before_norm: bool = False
) -> dict[str, tuple[torch.nn.Module, torch.Tensor]]:
    """``{"k": (module, columns), "v": …}``: ``module``'s output ``[..., columns]`` is ``[..., n_kv, d_head]``.

    Keys are read where each key head is itself: after OLMo 2's k_norm, which normalises all heads
    together (``keys_before_norm`` reads its k_proj instead)."""
    attn = attention(layer)
    heads = torch.arange(n_kv)[:, None]
    within = torch.arange(d_head)[None, :]
    if kv == "separate":
        cols = heads * d_head + within
        norm = getattr(attn, "k_norm", None)
        all_heads = norm is not None and norm.weight.numel() == n_kv * d_head
        keys = norm if all_heads and not keys_before_norm else attn.k_proj
        return {"k": (keys, cols), "v": (attn.v_proj, cols)}
    if kv == "q|k|v":
        fused = next(getattr(attn, n) for n in ("c_attn", "qkv_proj", "query_key_value") if hasattr(attn, n))
        q_width = n_heads * d_head
        k = q_width + heads * d_head + within
        return {"k": (fused, k), "v": (fused, k + n_kv * d_head)}
    if kv == "per-head qkv":
        k = heads * 3 * d_head + d_head + within
        return {"k": (attn.query_key_value, k), "v": (attn.query_key_value, k + d_head)}
    raise ValueError(f"unknown k/v layout {kv!r}")


def output_of(output):
    return output[0] if isinstance(output, tuple) else output


def with_output(output, new):
    return (new, *output[1:]) if isinstance(output, tuple) else new


def input_of(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


@contextlib.contextmanager
def forward_hooks(*registrations):
    """``(module, fn)`` forward hooks, or ``(module, fn, "pre")`` forward pre-hooks with kwargs; always removed."""
    handles = []
    try:
        for module, fn, *kind in registrations:
            if kind == ["pre"]:
                handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(fn, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def hf_logits(hf, tokens: torch.Tensor, *registrations, **kwargs) -> torch.Tensor:
    with forward_hooks(*registrations):
        return hf(tokens, **kwargs).logits


def identity_hook(module, args, kwargs, output):
    """Makes a decoder layer return its input: the block becomes the identity."""
    return with_output(output, input_of(args, kwargs))


def hf_identity_logits(hf, tokens: torch.Tensor, block: int) -> torch.Tensor:
    return hf_logits(hf, tokens, (hf_layers(hf)[block], identity_hook))


def hf_kv_patch_logits(
    hf,
    family,
    facts,
    target,
    source,
    blocks,
    positions,
    kv_heads=None,
    parts=("k", "v"),
    keys_before_norm: bool = False,
) -> torch.Tensor:
    """Keys and/or values (``parts``) of ``source`` at ``positions`` (and ``kv_heads``) written into
    ``target``'s run."""
    sites = []
    for b in blocks:
        columns = kv_columns(
            family.kv, hf_layers(hf)[b], facts.n_heads, facts.n_kv_heads, facts.d_head, keys_before_norm
        )
        sites += [(b, part, *columns[part]) for part in parts]
    captured = {}

    def capture(key, cols):
        def hook(module, args, kwargs, output):
            captured[key] = output_of(output)[..., cols].clone()

        return hook

    def write(key, cols):
        chosen = cols if kv_heads is None else cols[kv_heads]

        def hook(module, args, kwargs, output):
            out = output_of(output).clone()
            src = captured[key] if kv_heads is None else captured[key][..., kv_heads, :]
            for p in positions:
                out[:, p, chosen] = src[:, p]
            return with_output(output, out)

        return hook

    hf_logits(hf, source, *[(m, capture((b, part), cols)) for b, part, m, cols in sites])
    return hf_logits(hf, target, *[(m, write((b, part), cols)) for b, part, m, cols in sites])


def hf_resid_pre_patch_logits(hf, target, source, block: int, position: int) -> torch.Tensor:
    """The residual entering ``block`` at ``position`` taken from ``source``'s run."""
    saved = {}
    layer = hf_layers(hf)[block]

    def capture(module, args, kwargs):
        saved["resid"] = input_of(args, kwargs).clone()

    def write(module, args, kwargs):
        resid = input_of(args, kwargs).clone()
        resid[:, position] = saved["resid"][:, position]
        if args:
            return (resid, *args[1:]), kwargs
        return args, kwargs | {"hidden_states": resid}

    hf_logits(hf, source, (layer, capture, "pre"))
    return hf_logits(hf, target, (layer, write, "pre"))
