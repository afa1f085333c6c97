"""The site table: every place an intervention can read or edit, written once.

A *site* names an activation of a decoder block by what it is (``resid_pre``, ``k``, ``attn_scores``…),
maps it to the TransformerLens hook point that carries it on the bridge, and states its tensor layout,
so selection by position and head is written once for every operation. Layout axes:

- ``batch``: one row per prompt (or per edited copy of a prompt);
- ``pos``: token positions (query positions for attention scores and patterns);
- ``key``: key positions of attention scores and patterns (never selected by ``positions``);
- ``head``: query heads, or key/value heads for ``k``/``v`` (grouped-query attention has fewer);
- ``d``: the feature axis (``d_model`` or ``d_head``).
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.errors import InterventionError


@dataclass(frozen=True)
class Site:
    """One editable activation: where it is read (``hook``), how it is laid out, which heads index it."""

    name: str
    hook: str
    layout: tuple[str, ...]
    heads: str | None = None  # "query" or "kv": what the head axis counts
    write: str = "hook"  # "hook": edited where read; "via_attn_out": resid_mid; "block_output": the whole block
    description: str = ""

    def hook_name(self, block: int) -> str:
        return self.hook.format(block=block)

    @property
    def has_positions(self) -> bool:
        return "pos" in self.layout


_RESID = ("batch", "pos", "d")
_HEADS = ("batch", "pos", "head", "d")
_SCORES = ("batch", "head", "pos", "key")

SITES: dict[str, Site] = {
    s.name: s
    for s in (
        Site("resid_pre", "blocks.{block}.hook_resid_pre", _RESID, description="residual stream entering the block"),
        Site(
            "resid_mid",
            "blocks.{block}.hook_resid_mid",
            _RESID,
            write="via_attn_out",
            description="residual stream between attention and MLP (written through attn_out)",
        ),
        Site("resid_post", "blocks.{block}.hook_resid_post", _RESID, description="residual stream leaving the block"),
        Site("attn_out", "blocks.{block}.hook_attn_out", _RESID, description="what attention adds to the residual"),
        Site("mlp_out", "blocks.{block}.hook_mlp_out", _RESID, description="what the MLP adds to the residual"),
        Site("q", "blocks.{block}.attn.hook_q", _HEADS, heads="query", description="queries per query head"),
        Site("k", "blocks.{block}.attn.hook_k", _HEADS, heads="kv", description="keys per key/value head"),
        Site("v", "blocks.{block}.attn.hook_v", _HEADS, heads="kv", description="values per key/value head"),
        Site(
            "z",
            "blocks.{block}.attn.hook_z",
            _HEADS,
            heads="query",
            description="attention output per query head, before the output projection",
        ),
        Site(
            "attn_scores",
            "blocks.{block}.attn.hook_attn_scores",
            _SCORES,
            heads="query",
            description="pre-softmax attention scores (after the causal mask)",
        ),
        Site(
            "pattern",
            "blocks.{block}.attn.hook_pattern",
            _SCORES,
            heads="query",
            description="post-softmax attention weights",
        ),
        Site(
            "attn_proj_out",
            "blocks.{block}.attn.o.hook_out",
            _RESID,
            description="the attention's output projection, before any post-attention norm (Gemma 2/3, OLMo 2)",
        ),
        Site(
            "mlp_hidden",
            "blocks.{block}.mlp.hook_post",
            ("batch", "pos", "neuron"),
            description="the MLP's hidden activations (one per neuron), the input of its output projection",
        ),
        Site(
            "mlp_proj_out",
            "blocks.{block}.mlp.out.hook_out",
            _RESID,
            description="the MLP's output projection, before any post-MLP norm (Gemma 2/3, OLMo 2)",
        ),
        Site(
            "attn_result",
            "blocks.{block}.attn.hook_result",
            _HEADS,
            heads="query",
            description="each query head's own write into the residual stream (needs use_attn_result)",
        ),
        Site(
            "q_input",
            "blocks.{block}.attn.hook_q_input",
            _HEADS,
            heads="query",
            description="each query head's copy of its input (needs use_split_qkv_input)",
        ),
        Site(
            "k_input",
            "blocks.{block}.attn.hook_k_input",
            _HEADS,
            heads="kv",
            description="each key/value head's copy of its key input (needs use_split_qkv_input)",
        ),
        Site(
            "v_input",
            "blocks.{block}.attn.hook_v_input",
            _HEADS,
            heads="kv",
            description="each key/value head's copy of its value input (needs use_split_qkv_input)",
        ),
        Site(
            "mlp_in",
            "blocks.{block}.hook_mlp_in",
            _RESID,
            description="the MLP's copy of its input (needs use_hook_mlp_in)",
        ),
        Site(
            "block",
            "blocks.{block}.hook_resid_post",
            _RESID,
            write="block_output",
            description="the whole block: its output, with its input at hand (for identity)",
        ),
    )
}
# Names that stand for several sites edited together.
COMPOSITE: dict[str, tuple[str, ...]] = {"kv": ("k", "v")}


def site_names() -> list[str]:
    return [*SITES, *COMPOSITE]


def expand_site(name: str) -> tuple[Site, ...]:
    """The sites a name stands for (``kv`` → ``k``, ``v``), or a clear error for an unknown name."""
    if name in COMPOSITE:
        return tuple(SITES[part] for part in COMPOSITE[name])
    if name not in SITES:
        raise InterventionError(f"Unknown site {name!r}: use one of {', '.join(site_names())}.")
    return (SITES[name],)


def head_kind(name: str) -> str | None:
    """``query``/``kv`` for a site (or composite) with a head axis, ``None`` otherwise."""
    kinds = {site.heads for site in expand_site(name)}
    return kinds.pop() if len(kinds) == 1 else None
