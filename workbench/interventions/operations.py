"""Operations: what an intervention does to the activations it selects. A registry, so a plugin adds one.

An operation is a small frozen dataclass (its fields are its parameters, so it serialises and prints),
with two methods:

- ``prepare(prep)``: work before the edited pass (run the source prompt, average a dataset); what it
  returns reaches ``apply`` as ``edit.state``. It may narrow ``prep.positions`` (a mask that would leave a
  query with no visible key) and note why.
- ``apply(values, edit)``: the new values of the selected activations. ``values`` is laid out positions
  first, then heads (when the site has them), then the site's remaining axes (``d``, or ``key`` for
  attention scores); ``edit`` says where (block, prompt, positions, heads) and carries the state.

The same description runs through TransformerLens hooks (``run``, ``generate``, beam search, the naive
sweep path) and through the fast sweep engine: operations never see which.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from workbench.errors import InterventionError
from workbench.plugins import load_entry_points, unknown

ENTRY_POINT_GROUP = "workbench.operations"
_OPERATIONS: dict[str, type[Operation]] = {}
_PLUGIN_ERRORS: dict[str, str] = {}


@dataclass(frozen=True)
class Operation(ABC):
    """Base of every operation. Subclasses are frozen dataclasses with a ``name`` and ``apply``."""

    name: ClassVar[str] = ""
    sites: ClassVar[tuple[str, ...] | None] = None  # the sites it can edit; None: every site but "block"
    # With no positions named, does the edit also cover tokens a generation appends? Not for an operation
    # whose state is aligned to the prompt's positions (a source prompt's activations).
    extends_to_new_positions: ClassVar[bool] = True

    def prepare(self, prep) -> Any:
        """Work before the edited pass; the result is ``edit.state`` in :meth:`apply` (default: none)."""
        return None

    @abstractmethod
    def apply(self, values: torch.Tensor, edit) -> torch.Tensor:
        """New values for the selected activations (same shape as ``values``)."""

    def first_position(self, positions: list[int], state, prompt: int) -> int | None:
        """The earliest position whose computation this edit changes (None: none); the fast engine
        recomputes a row from there. Default: the first selected position."""
        return min(positions) if positions else None

    def accepts(self, site: str) -> bool:
        allowed = self.sites if self.sites is not None else tuple(s for s in _all_sites() if s != "block")
        return site in allowed

    def describe(self) -> str:
        """A few words for titles and reports, e.g. ``patched from '… [0, 5] …'``."""
        params = ", ".join(f"{f.name}={_short(getattr(self, f.name))}" for f in dataclasses.fields(self))
        return f"{self.name}({params})" if params else self.name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **{f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}}


def _all_sites() -> tuple[str, ...]:
    from workbench.interventions.sites import site_names

    return tuple(site_names())


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def finite_number(value: Any, what: str, example: str) -> float:
    """``value`` as a float when it is a finite real number; otherwise the InterventionError that names it.

    NaN or ±inf in a parameter would make every number downstream NaN (or inf − inf), so it is refused
    where the parameter is given, not discovered in the results."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if hasattr(value, "dtype") and hasattr(value, "item") and getattr(value, "shape", None) == ():
        value = value.item()  # a numpy scalar
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InterventionError(f"{what} {_short(value)} is not a number: pass e.g. {example}.")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        number = math.inf
    if not math.isfinite(number):
        raise InterventionError(
            f"{what} is {_short(value)}, not a finite number: it would make the edited numbers meaningless "
            f"(NaN or infinite); pass a finite value, e.g. {example}."
        )
    return number


def nonfinite_parameter(op: Operation) -> str | None:
    """The first parameter of any operation (a plugin's too) holding NaN or ±inf, as ``name=value``; else None."""

    def bad(value: Any) -> bool:
        if isinstance(value, float):
            return not math.isfinite(value)
        if isinstance(value, torch.Tensor):
            return bool(value.is_floating_point() and not torch.isfinite(value).all())
        if isinstance(value, (tuple, list)):
            return any(bad(v) for v in value)
        if isinstance(value, dict):
            return any(bad(v) for v in value.values())
        return False

    for f in dataclasses.fields(op):
        value = getattr(op, f.name)
        if bad(value):
            return f"{f.name}={_short(value)}"
    return None


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def register_operation(cls: type) -> type:
    """Class decorator: make an :class:`Operation` subclass available by its ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, Operation)):
        raise InterventionError(f"{cls!r} is not an Operation subclass: subclass workbench.interventions.Operation.")
    if not cls.name:
        raise InterventionError(f"{cls.__name__} has no `name`: set a class attribute such as name = 'steer'.")
    if not dataclasses.is_dataclass(cls):
        raise InterventionError(
            f"{cls.__name__} must be a frozen dataclass (decorate it with @dataclass(frozen=True))."
        )
    _OPERATIONS[cls.name] = cls
    return cls


def _load_plugins() -> None:
    load_entry_points(ENTRY_POINT_GROUP, _OPERATIONS, _PLUGIN_ERRORS, register_operation, "operation")


def available_operations() -> dict[str, type[Operation]]:
    """Every registered operation by name: built-ins first, then installed plugins."""
    _load_plugins()
    return dict(_OPERATIONS)


def operation_plugin_errors() -> dict[str, str]:
    _load_plugins()
    return dict(_PLUGIN_ERRORS)


def get_operation(name: str) -> type[Operation]:
    operations = available_operations()
    if name not in operations:
        raise InterventionError(unknown("operation", name, operations, _PLUGIN_ERRORS))
    return operations[name]


def operation_from(spec: Operation | str | dict) -> Operation:
    """An operation from an instance, a registered name (no parameters) or a dict ``{"name": …, params}``."""
    if isinstance(spec, Operation):
        return require_finite(spec)
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise InterventionError(
            f"{spec!r} is not an operation: pass an Operation, a name such as 'zero', "
            "or a dict like {'name': 'scale', 'factor': 0.5}."
        )
    params = {k: v for k, v in spec.items() if k != "name"}
    cls = get_operation(spec["name"])
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    if unknown := sorted(set(params) - fields):
        raise InterventionError(
            f"Operation {cls.name!r} has no parameter {', '.join(unknown)}: "
            f"its parameters are {', '.join(sorted(fields)) or 'none'}."
        )
    try:
        op = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})
    except TypeError as exc:
        raise InterventionError(f"Operation {cls.name!r}: {exc}.") from None
    return require_finite(op)


def require_finite(op: Operation) -> Operation:
    """``op`` unless one of its parameters is NaN or ±inf (checked for every operation, plugins included)."""
    where = nonfinite_parameter(op)
    if where is not None:
        raise InterventionError(
            f"Operation {op.name!r} has the non-finite parameter {where}: NaN or infinite parameters make the "
            "edited numbers meaningless; pass finite values."
        )
    return op


# ----- the built-in operations ----------------------------------------------------------------------------


@register_operation
@dataclass(frozen=True)
class Patch(Operation):
    """Take the activations from a source prompt (one for all prompts, or one per prompt) of the same
    token length: the run sees the source's values at the selected sites."""

    source: str | tuple[str, ...] = ""
    name: ClassVar[str] = "patch"
    extends_to_new_positions: ClassVar[bool] = False

    def __post_init__(self) -> None:
        sources = (self.source,) if isinstance(self.source, str) else tuple(self.source)
        if not sources or any(not isinstance(s, str) or not s for s in sources):
            raise InterventionError(
                "Patching needs a source prompt: pass source='…' (the prompt whose activations "
                "are copied in), or one source per prompt."
            )

    def sources(self, n_prompts: int) -> list[str]:
        sources = [self.source] * n_prompts if isinstance(self.source, str) else list(self.source)
        if len(sources) != n_prompts:
            raise InterventionError(
                f"{len(sources)} source prompts for {n_prompts} prompts: pass one source, or exactly one per prompt."
            )
        return sources

    def prepare(self, prep) -> dict:
        from workbench.tokens import align_prompts

        sources = [prep.text(source, i, "Source") for i, source in enumerate(self.sources(len(prep.prompts)))]
        rows = [
            align_prompts(prep.model, prompt, source)[1][0]
            for prompt, source in zip(prep.prompts, sources, strict=True)
        ]
        source_tokens = torch.stack(rows).to(prep.tokens.device)
        differ = prep.tokens != source_tokens
        first = [int(d.nonzero()[0]) if d.any() else prep.n_positions for d in differ]
        return {"acts": prep.capture(source_tokens), "first_difference": first}

    def first_position(self, positions: list[int], state, prompt: int) -> int | None:
        # Before the first token where prompt and source differ, their activations are identical: a no-op.
        changed = [q for q in positions if q >= state["first_difference"][prompt]]
        return min(changed) if changed else None

    def apply(self, values: torch.Tensor, edit) -> torch.Tensor:
        return edit.select(edit.state["acts"][edit.key][edit.prompt])

    def describe(self) -> str:
        source = self.source if isinstance(self.source, str) else f"{len(self.source)} source prompts"
        return f"patched from {_short(source, 60)}"


@register_operation
@dataclass(frozen=True)
class Zero(Operation):
    """Set the selected activations to zero (zero-ablation)."""

    name: ClassVar[str] = "zero"

    def apply(self, values: torch.Tensor, edit) -> torch.Tensor:
        return torch.zeros_like(values)

    def describe(self) -> str:
        return "zeroed"


MEAN_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "q", "k", "v", "z", "kv")


@register_operation
@dataclass(frozen=True)
class Mean(Operation):
    """Replace the selected activations by their mean over every token of a dataset of prompts, or of
    the run's own prompts (``prompts`` empty): the clean activations, averaged over prompts and positions."""

    prompts: tuple[str, ...] = ()
    name: ClassVar[str] = "mean"
    sites: ClassVar[tuple[str, ...]] = MEAN_SITES

    def prepare(self, prep) -> dict:
        from workbench.tokens import to_tokens

        texts = list(self.prompts) or list(prep.prompts)
        if isinstance(self.prompts, str):
            raise InterventionError("Mean(prompts=...) takes a list of prompts, not one string.")
        sums: dict = {}
        count = 0
        for text in texts:  # prompts of any length: one forward each, summed over their tokens
            acts = prep.capture(to_tokens(prep.model, text))
            count += int(next(iter(acts.values())).shape[1])
            for key, act in acts.items():
                total = act[0].sum(0)
                sums[key] = total if key not in sums else sums[key] + total
        return {key: value / count for key, value in sums.items()}

    def apply(self, values: torch.Tensor, edit) -> torch.Tensor:
        mean = edit.state[edit.key]
        if edit.heads is not None:
            mean = mean[edit.heads]
        return mean.to(device=values.device, dtype=values.dtype).expand_as(values).clone()

    def describe(self) -> str:
        return f"mean-ablated over {len(self.prompts)} prompts" if self.prompts else "mean-ablated (over the run)"


@register_operation
@dataclass(frozen=True)
class Identity(Operation):
    """Skip: a whole block (``site="block"``: its output equals its input) or a sublayer (``attn_out`` /
    ``mlp_out``: it adds nothing to the residual stream)."""

    name: ClassVar[str] = "identity"
    sites: ClassVar[tuple[str, ...]] = ("block", "attn_out", "mlp_out")

    def apply(self, values: torch.Tensor, edit) -> torch.Tensor:
        return edit.input if edit.input is not None else torch.zeros_like(values)

    def describe(self) -> str:
        return "replaced by the identity"


def queries_with_visible_key(queries: list[int], keys: list[int]) -> list[int]:
    """The queries that keep at least one visible key once ``keys`` are masked (query q sees 0…q)."""
    masked = set(keys)
    return [q for q in queries if not set(range(q + 1)) <= masked]


@register_operation
@dataclass(frozen=True)
class MaskKeys(Operation):
    """Set the attention scores from the selected queries (``positions``) to ``keys`` to −∞ before the
    softmax, which renormalises over the keys left. Keys are token text (located in each prompt) or
    positions. A query that would keep no visible key has nothing to renormalise (softmax would spread
    over future positions), so it is refused: leave it out of the queries (see
    :func:`queries_with_visible_key`). Masking no key at all is allowed and is labelled a no-op."""

    keys: tuple[str | int, ...] = ()
    name: ClassVar[str] = "mask"
    sites: ClassVar[tuple[str, ...]] = ("attn_scores",)

    def __post_init__(self) -> None:
        keys = (self.keys,) if isinstance(self.keys, (str, int)) else tuple(self.keys)
        object.__setattr__(self, "keys", keys)

    def prepare(self, prep) -> dict:
        from workbench.tokens import resolve_positions

        n = prep.n_positions
        keys = [
            resolve_positions(
                prep.model, prompt, n, [prep.text(k, i, "Key") if isinstance(k, str) else k for k in self.keys]
            )
            if self.keys
            else []
            for i, prompt in enumerate(prep.prompts)
        ]
        for p, key_list in enumerate(keys):
            kept = queries_with_visible_key(prep.positions[p], key_list)
            if len(kept) < len(prep.positions[p]):
                q = min(set(prep.positions[p]) - set(kept))
                raise InterventionError(
                    f"Masking keys {key_list} leaves query position {q} with no visible key (it only sees "
                    f"positions 0–{q}), so softmax has nothing to renormalise: keep at least one, or pass "
                    f"positions (the queries) without {q}."
                )
            if not key_list:
                prep.note("no key is masked: the edited run is the clean one (a no-op)")
                prep.positions[p] = []
        return {"keys": keys}

    def first_position(self, positions: list[int], state, prompt: int) -> int | None:
        keys = state["keys"][prompt]
        seen = [q for q in positions if keys and q >= min(keys)]  # a query before every masked key sees none
        return min(seen) if seen else None

    def apply(self, values: torch.Tensor, edit) -> torch.Tensor:
        keys = edit.state["keys"][edit.prompt]
        out = values.clone()
        out[..., keys] = float("-inf")
        return out

    def describe(self) -> str:
        return f"attention to {', '.join(map(repr, self.keys))} masked" if self.keys else "no key masked (no-op)"


@register_operation
@dataclass(frozen=True)
class Scale(Operation):
    """Multiply the selected activations by ``factor`` (0 zero-ablates, 1 changes nothing)."""

    factor: float = 1.0
    name: ClassVar[str] = "scale"

    def __post_init__(self) -> None:
        object.__setattr__(self, "factor", finite_number(self.factor, "Scale factor", "factor=0.5"))

    def apply(self, values: torch.Tensor, edit) -> torch.Tensor:
        return values * self.factor

    def describe(self) -> str:
        return f"scaled by {self.factor:g}"


@register_operation
@dataclass(frozen=True)
class Add(Operation):
    """Add ``coefficient × vector`` to the selected activations (steering). ``vector`` matches the
    site's last axis: ``d_model`` for residual sites, ``d_head`` for per-head sites."""

    vector: Sequence[float] | torch.Tensor = ()  # stored as a tuple of floats by __post_init__
    coefficient: float = 1.0
    name: ClassVar[str] = "add"
    sites: ClassVar[tuple[str, ...]] = MEAN_SITES

    def __post_init__(self) -> None:
        vector = self.vector
        if isinstance(vector, torch.Tensor):
            vector = vector.detach().float().flatten().tolist()
        if isinstance(vector, (str, bytes)) or not isinstance(vector, Iterable):
            raise InterventionError(
                f"The steering vector {_short(vector)} is not a list of numbers: pass vector=[...] of the site's width."
            )
        vector = tuple(finite_number(v, f"Entry {i} of the steering vector", "0.5") for i, v in enumerate(vector))
        object.__setattr__(self, "vector", vector)
        if not vector:
            raise InterventionError("Adding needs a vector: pass vector=[...] of the site's width (d_model or d_head).")
        object.__setattr__(self, "coefficient", finite_number(self.coefficient, "The steering coefficient", "4.0"))

    def prepare(self, prep) -> torch.Tensor:
        width = prep.width()
        if len(self.vector) != width:
            raise InterventionError(
                f"The steering vector has {len(self.vector)} entries but site {prep.site_name!r} "
                f"of {prep.model.facts.name} is {width} wide: pass a vector of that width."
            )
        return torch.tensor(self.vector, device=prep.model.device)

    def apply(self, values: torch.Tensor, edit) -> torch.Tensor:
        return values + self.coefficient * edit.state.to(device=values.device, dtype=values.dtype)

    def describe(self) -> str:
        return f"{self.coefficient:g} × a {len(self.vector)}-d vector added"
