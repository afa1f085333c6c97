"""From resolved interventions to TransformerLens hooks: the one place selection and writing are coded.

A forward pass may carry several copies of each prompt (``run(..., separate=True)`` puts each
intervention on its own rows; the fast sweep engine batches many edited copies). A
:class:`Binding` says which batch rows carry which intervention (and which prompt each row is), and
``offset`` says which position the live tensor starts at (the fast engine recomputes only a suffix of
the prompt; a full forward has offset 0). The hooks then select the edited slice of each row with the
site's layout, hand it to the operation, and write the result back.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from workbench.interventions.intervention import Resolved
from workbench.interventions.sites import Site

Hook = tuple[str, Callable]


def _scores(site: Site) -> bool:
    return site.layout[1] == "head"  # [batch, head, pos, key]


def select(row: torch.Tensor, site: Site, positions: Sequence[int], heads: Sequence[int] | None) -> torch.Tensor:
    """The slice of one row (laid out like ``site`` without the batch axis) at ``positions`` (indices into
    the row) and ``heads``, arranged positions first, then heads, then the rest."""
    pos = torch.as_tensor(list(positions), dtype=torch.long, device=row.device)
    if _scores(site):
        x = row if heads is None else row[torch.as_tensor(list(heads), device=row.device)]
        return x[:, pos].transpose(0, 1)
    x = row[pos]
    return x if heads is None else x[:, torch.as_tensor(list(heads), device=row.device)]


def assign(
    row: torch.Tensor, site: Site, positions: Sequence[int], heads: Sequence[int] | None, values: torch.Tensor
) -> None:
    """Write ``values`` (as :func:`select` returns them) back into ``row`` in place."""
    pos = torch.as_tensor(list(positions), dtype=torch.long, device=row.device)
    values = values.to(device=row.device, dtype=row.dtype)  # a split model's blocks sit on different devices
    if _scores(site):
        values = values.transpose(0, 1)  # [head, pos, key]
        if heads is None:
            row[:, pos] = values
        else:
            h = torch.as_tensor(list(heads), dtype=torch.long, device=row.device)
            row[h[:, None], pos[None, :]] = values
    elif heads is None:
        row[pos] = values
    else:
        h = torch.as_tensor(list(heads), dtype=torch.long, device=row.device)
        row[pos[:, None], h[None, :]] = values


@dataclass
class Edit:
    """Where one operation applies in one row; what :meth:`Operation.apply` receives."""

    site: Site
    block: int
    prompt: int
    positions: list[int]  # absolute positions edited in this row (all ≥ offset)
    heads: list[int] | None
    state: Any
    offset: int = 0
    input: torch.Tensor | None = None  # the block's input at the same selection (site "block")

    @property
    def key(self) -> tuple[str, int]:
        """Key of this site and block in states captured by ``Preparation.capture``."""
        return (self.site.name, self.block)

    def select(self, full_row: torch.Tensor) -> torch.Tensor:
        """This edit's selection of an aligned full-length row (e.g. the source prompt's activation)."""
        return select(full_row, self.site, self.positions, self.heads)


@dataclass
class Binding:
    """Which batch rows carry which intervention: ``rows[i]`` lists ``(batch_row, prompt_index)`` pairs
    for the i-th resolved intervention, or is a single prompt index meaning *every row of the batch*
    carries that prompt (generation, whose batch shrinks as rows stop). :meth:`joint` puts every
    intervention on every prompt's row."""

    rows: list[list[tuple[int, int]] | int]

    @classmethod
    def joint(cls, n_interventions: int, n_prompts: int) -> Binding:
        return cls([[(p, p) for p in range(n_prompts)] for _ in range(n_interventions)])

    @classmethod
    def every_row(cls, n_interventions: int, prompt: int = 0) -> Binding:
        return cls([prompt] * n_interventions)


def compile_hooks(resolved: Sequence[Resolved], binding: Binding | None = None, offset: int = 0) -> list[Hook]:
    """TransformerLens ``(hook_name, fn)`` pairs applying ``resolved`` in order (their joint effect where
    they share rows). With ``binding=None`` every intervention edits every prompt's row."""
    if binding is None:
        binding = Binding.joint(len(resolved), len(resolved[0].positions) if resolved else 0)
    actions: dict[str, list[Callable]] = defaultdict(list)
    for index, item in enumerate(resolved):
        rows = binding.rows[index]
        if not isinstance(rows, int) and not any(_positions_exist(item, prompt) for _, prompt in rows):
            continue
        for site in item.sites:
            for block in item.blocks:
                _add_actions(actions, item, site, block, rows, offset)
    return [(name, _hook(fns)) for name, fns in actions.items()]


def _positions_exist(item: Resolved, prompt: int) -> bool:
    return item.every_position or bool(item.positions[prompt])


def _hook(fns: list[Callable]) -> Callable:
    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        for fn in fns:
            act = fn(act)
        return act

    return hook


def _pairs(rows, act: torch.Tensor) -> list[tuple[int, int]]:
    return [(row, rows) for row in range(act.shape[0])] if isinstance(rows, int) else rows


def _positions(item: Resolved, site: Site, prompt: int, act: torch.Tensor, offset: int) -> list[int]:
    """The absolute positions edited in a row whose live tensor starts at ``offset``: the resolved ones
    from ``offset`` on, or, for an edit of every position (``item.every_position``), every live one —
    generated tokens included."""
    if item.every_position:
        axis = 2 if site.layout[1] == "head" else 1
        return list(range(offset, offset + act.shape[axis]))
    return [p for p in item.positions[prompt] if p >= offset]


def _add_actions(actions, item: Resolved, site: Site, block: int, rows, offset: int) -> None:
    """Register what one (intervention, site, block) does at each hook point it needs."""

    def apply_op(act: torch.Tensor, inputs: dict | None = None, base: dict | None = None) -> torch.Tensor:
        """Edit ``act`` row by row; ``inputs`` gives the block's input (identity), ``base`` a tensor the
        site's value is ``act + base`` of (resid_mid written through attn_out)."""
        act = act.clone()
        for row, prompt in _pairs(rows, act):
            positions = _positions(item, site, prompt, act, offset)
            if not positions:
                continue
            edit = Edit(site, block, prompt, positions, item.heads, item.state, offset)
            live = [p - offset for p in positions]
            if inputs is not None:
                edit.input = select(inputs[row], site, live, edit.heads)
            values = select(act[row], site, live, edit.heads)
            shift = select(base[row], site, live, edit.heads) if base is not None else None
            new = item.op.apply(values if shift is None else values + shift, edit)
            assign(act[row], site, live, edit.heads, new if shift is None else new - shift)
        return act

    if site.write == "hook":
        actions[site.hook_name(block)].append(apply_op)
        return
    stored: dict[int, torch.Tensor] = {}

    def keep_input(resid: torch.Tensor) -> torch.Tensor:
        stored.clear()
        stored.update({row: resid[row] for row, _ in _pairs(rows, resid)})
        return resid

    actions[f"blocks.{block}.hook_resid_pre"].append(keep_input)
    if site.write == "block_output":
        actions[site.hook_name(block)].append(lambda out: apply_op(out, stored))
        return

    # resid_mid = resid_pre + attn_out: the skip connection passes no hook point, so the edit is written
    # into attn_out as (edited resid_mid − resid_pre), at the edited positions only.
    actions[f"blocks.{block}.hook_attn_out"].append(lambda attn_out: apply_op(attn_out, base=stored))
