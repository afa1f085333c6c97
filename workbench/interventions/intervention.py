"""An intervention as data: where (site, blocks, positions, heads) and what (an operation).

``Intervention`` is frozen and serialisable (``to_dict``/``from_dict``, TOML- and JSON-friendly), so the
same description is printed in a figure title, stored in a results file, swept over a grid, and
compiled to hooks or to fast-engine cells. :func:`resolve` checks it against a model and prompts (one
rule per kind of input: :func:`workbench.layers.resolve_blocks`, :func:`~workbench.layers.resolve_heads`,
:func:`workbench.tokens.resolve_positions`) and runs the operation's ``prepare``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from workbench.errors import InterventionError
from workbench.interventions.operations import Operation, operation_from
from workbench.interventions.sites import Site, expand_site, head_kind
from workbench.layers import format_blocks, resolve_blocks, resolve_heads
from workbench.tokens import resolve_positions


def _tuple(value, what: str):
    if value is None:
        return None
    if isinstance(value, (str, int)):
        return (value,)
    if isinstance(value, range):
        return tuple(value)
    if isinstance(value, Iterable):
        return tuple(value)
    raise InterventionError(f"{what} {value!r} is neither a value nor a list of values.")


@dataclass(frozen=True)
class Intervention:
    """One edit of the forward pass. ``None`` for ``blocks``/``positions``/``heads`` means all of them.

    - ``site``: a name of the site table (:mod:`workbench.interventions.sites`), e.g. ``resid_pre``,
      ``kv``, ``attn_scores``, ``block``;
    - ``op``: an :class:`~workbench.interventions.operations.Operation`, a registered name, or a dict;
    - ``blocks``: block indices (from 0; negative count from the end);
    - ``positions``: token positions (negative from the end) or token text located in each prompt
      (query positions for attention scores);
    - ``heads``: query heads, or key/value heads for ``k``/``v``/``kv``.
    """

    # The fields take what a user writes (one value or any iterable); __post_init__ stores an Operation and
    # tuples, which is what every reader of an Intervention gets.
    site: str
    op: Operation | str | dict
    blocks: int | Iterable[int] | None = None
    positions: int | str | Sequence[int | str] | None = None
    heads: int | Iterable[int] | None = None

    def __post_init__(self) -> None:
        op = operation_from(self.op)
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "blocks", _tuple(self.blocks, "blocks"))
        object.__setattr__(self, "positions", _tuple(self.positions, "positions"))
        object.__setattr__(self, "heads", _tuple(self.heads, "heads"))
        sites = expand_site(self.site)
        for site in sites:
            if not op.accepts(site.name) and not op.accepts(self.site):
                allowed = ", ".join(op.sites or ())
                raise InterventionError(
                    f"Operation {op.name!r} cannot edit site {self.site!r}"
                    + (f": it edits {allowed}." if allowed else ".")
                )
        if self.heads is not None and head_kind(self.site) is None:
            raise InterventionError(
                f"heads= only applies to sites with a head axis (q, k, v, kv, z, attn_scores, "
                f"pattern), not {self.site!r}."
            )
        if self.positions is not None and not all(site.has_positions for site in sites):
            raise InterventionError(f"Site {self.site!r} has no position axis: leave positions out.")

    @property
    def operation(self) -> Operation:
        """``op`` as stored: __post_init__ turns a name or a dict into the Operation."""
        op = self.op
        assert isinstance(op, Operation), "Intervention.__post_init__ stores op as an Operation"
        return op

    def describe(self) -> str:
        where = [f"{self.site}"]
        blocks, positions, heads = self.blocks, self.positions, self.heads
        # __post_init__ stores blocks, positions and heads as tuples (or None)
        assert all(v is None or isinstance(v, tuple) for v in (blocks, positions, heads)), "stored as tuples"
        if isinstance(blocks, tuple):
            where.append(
                f"block{'s' if len(blocks) > 1 else ''} {format_blocks(blocks)}"
                if all(isinstance(b, int) and b >= 0 for b in blocks)
                else f"blocks {list(blocks)}"
            )
        else:
            where.append("every block")
        if isinstance(positions, tuple):
            where.append(f"positions {list(positions)}")
        if isinstance(heads, tuple):
            where.append(f"heads {list(heads)}")
        return f"{' '.join(where[:1])} {self.operation.describe()} at {', '.join(where[1:])}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"site": self.site, "op": self.operation.to_dict()}
        for key in ("blocks", "positions", "heads"):
            if getattr(self, key) is not None:
                out[key] = list(getattr(self, key))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Intervention:
        if not isinstance(data, dict) or "site" not in data or "op" not in data:
            raise InterventionError(
                f"{data!r} is not an intervention: it needs 'site' and 'op' (and optionally "
                "'blocks', 'positions', 'heads')."
            )
        unknown = sorted(set(data) - {"site", "op", "blocks", "positions", "heads"})
        if unknown:
            raise InterventionError(
                f"Intervention has unknown field(s) {', '.join(unknown)}: use site, op, blocks, positions, heads."
            )
        return cls(**data)


@dataclass
class Resolved:
    """An intervention checked against a model and prompts, with its operation's prepared state."""

    intervention: Intervention
    sites: tuple[Site, ...]
    blocks: list[int]
    positions: list[list[int]]  # per prompt, absolute
    heads: list[int] | None
    state: Any = None
    notes: list[str] = field(default_factory=list)
    every_position: bool = False  # the edit covers every position, also ones a generation appends

    @property
    def op(self) -> Operation:
        return self.intervention.operation

    def first_position(self) -> int | None:
        """The earliest position whose computation the edit changes in any prompt (None: it changes
        nothing); the fast engine recomputes from there, reusing the clean run before it."""
        candidates = [self.op.first_position(p, self.state, i) for i, p in enumerate(self.positions)]
        firsts = [f for f in candidates if f is not None]
        return min(firsts) if firsts else None

    def is_noop(self) -> bool:
        return not any(self.positions)


@dataclass
class Preparation:
    """What an operation's ``prepare`` sees: the model, the prompts and the resolved selection."""

    model: Any
    prompts: list[str]
    tokens: torch.Tensor
    sites: tuple[Site, ...]
    blocks: list[int]
    positions: list[list[int]]
    heads: list[int] | None
    explicit_positions: bool
    notes: list[str]
    fields: list[Mapping[str, Any]] | None = None
    captures: dict | None = None  # shared by the resolves of one batch: one clean forward per source

    def text(self, value: str, prompt: int, what: str = "Text") -> str:
        """``value`` with ``{name}`` templates filled from prompt ``prompt``'s fields."""
        return fill(value, self.fields[prompt] if self.fields is not None else None, what)

    @property
    def n_positions(self) -> int:
        return int(self.tokens.shape[-1])

    @property
    def site_name(self) -> str:
        return "+".join(site.name for site in self.sites)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def width(self) -> int:
        """The size of the sites' last axis (``d_model``, or ``d_head`` for per-head sites)."""
        return (
            self.model.facts.d_head
            if self.sites[0].heads and self.sites[0].layout[-1] == "d"
            else self.model.facts.d_model
        )

    @torch.no_grad()
    def capture(self, tokens: torch.Tensor) -> dict[tuple[str, int], torch.Tensor]:
        """One clean forward of ``tokens``, keeping every (site, block) of this intervention. With a shared
        ``captures`` dict the forward keeps the sites at every block, once, for every intervention after."""
        if self.captures is not None:
            key = (tuple(tokens.shape), tokens.cpu().numpy().tobytes(), tuple(site.name for site in self.sites))
            if key not in self.captures:
                every = dataclasses.replace(self, blocks=list(range(self.model.facts.n_layers)), captures=None)
                self.captures[key] = every.capture(tokens)
            return {(site.name, b): self.captures[key][site.name, b] for site in self.sites for b in self.blocks}
        kept: dict[tuple[str, int], torch.Tensor] = {}

        def keep(key):
            def hook(act, hook):
                kept[key] = act.detach().clone()

            return hook

        hooks = [
            (site.hook_name(b) if site.write != "block_output" else f"blocks.{b}.hook_resid_post", keep((site.name, b)))
            for site in self.sites
            for b in self.blocks
        ]
        with self.model.bridge.hooks(fwd_hooks=hooks):
            self.model.bridge(tokens.to(self.model.device))
        return kept


def fill(text: str, fields: Mapping[str, Any] | None, what: str) -> str:
    """``text`` with ``{name}`` replaced by the prompt's own field (a dataset column): a template such as
    ``positions=["{bound}"]`` or ``source="{source}"`` gives each prompt its own value."""
    if fields is None or "{" not in text:
        return text
    try:
        return text.format_map(dict(fields))
    except KeyError as exc:
        raise InterventionError(
            f"{what} {text!r} names the field {exc.args[0]!r}, which this prompt does not have: "
            f"its fields are {', '.join(sorted(map(str, fields))) or 'none'}."
        ) from None
    except (ValueError, IndexError) as exc:
        raise InterventionError(f"{what} {text!r} is not a valid template ({exc}): write fields as {{name}}.") from None


def resolve(
    intervention: Intervention,
    model,
    prompts: Sequence[str],
    tokens: torch.Tensor,
    fields: Sequence[Mapping[str, Any]] | None = None,
    captures: dict | None = None,
) -> Resolved:
    """Check ``intervention`` against ``model`` and ``prompts`` (tokenised as ``tokens``) and prepare it.

    ``fields`` (one mapping per prompt, e.g. the rows of a dataset) fill ``{name}`` templates in text
    positions, masked keys and patch sources, so one description serves prompts that differ.
    ``captures`` (a dict shared by several resolves) lets operations that run clean forwards (patch
    sources, mean-ablation prompts) run each once for all of them."""
    if fields is not None and len(fields) != len(prompts):
        raise InterventionError(f"{len(fields)} field rows for {len(prompts)} prompts: pass one per prompt.")
    if not isinstance(intervention, Intervention):
        raise InterventionError(
            f"{intervention!r} is not an Intervention: build one with Intervention(site=..., op=...)."
        )
    facts = model.facts
    sites = expand_site(intervention.site)
    _require_hooks(model, sites)
    if any(site.layout[1] == "head" for site in sites):  # attention scores and patterns
        model.require_editable_attention(f"Editing {intervention.site}")
    blocks = resolve_blocks(facts, intervention.blocks)
    kind = head_kind(intervention.site)
    if intervention.heads is not None:
        assert kind is not None, "Intervention.__post_init__ refuses heads= at a site without a head axis"
        heads = resolve_heads(facts, intervention.heads, kind)
    else:
        heads = None
    n = int(tokens.shape[-1])
    if all(site.has_positions for site in sites):
        positions = [
            resolve_positions(model, prompt, n, _filled(intervention.positions, fields, i, "Position"))
            for i, prompt in enumerate(prompts)
        ]
    else:
        positions = [list(range(n)) for _ in prompts]
    notes: list[str] = []
    prep = Preparation(
        model=model,
        prompts=list(prompts),
        tokens=tokens,
        sites=sites,
        blocks=blocks,
        positions=positions,
        heads=heads,
        explicit_positions=intervention.positions is not None,
        notes=notes,
        fields=list(fields) if fields is not None else None,
        captures=captures,
    )
    state = intervention.operation.prepare(prep)
    every = (
        intervention.positions is None
        and intervention.operation.extends_to_new_positions
        and prep.positions == [list(range(n)) for _ in prompts]
    )
    return Resolved(
        intervention=intervention,
        sites=sites,
        blocks=blocks,
        positions=prep.positions,
        heads=heads,
        state=state,
        notes=notes,
        every_position=every,
    )


def _filled(values, fields, index: int, what: str):
    if values is None or fields is None:
        return values
    return [fill(v, fields[index], what) if isinstance(v, str) else v for v in values]


def _require_hooks(model, sites: tuple[Site, ...]) -> None:
    """A site whose hook point this model's bridge lacks (e.g. resid_mid on parallel blocks) is refused."""
    names = model.bridge.hook_dict
    for site in sites:
        hooks = {site.hook_name(0)} | (
            {"blocks.0.hook_resid_pre", "blocks.0.hook_attn_out"} if site.write == "via_attn_out" else set()
        )
        if site.write == "block_output":
            hooks |= {"blocks.0.hook_resid_pre"}
        missing = sorted(h for h in hooks if h not in names)
        if missing:
            raise InterventionError(
                f"{model.facts.name} ({model.facts.architecture}) has no hook point {missing[0]}: "
                f"site {site.name!r} cannot be edited on this model."
            )
    if any(site.write == "via_attn_out" for site in sites) and getattr(model.facts, "parallel_blocks", False):
        raise InterventionError(
            f"{model.facts.name} runs attention and MLP in parallel: there is no resid_mid to "
            "edit; use resid_pre, attn_out or mlp_out."
        )
