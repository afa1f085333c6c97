"""What one cell of a sweep does, independent of how it runs (fast engine or one hooked forward).

A sweep is a list of these specs plus the coordinates of its grid; :mod:`workbench.sweeps.engine`
and :mod:`workbench.sweeps.naive` each turn a spec into an edited run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

HEAD_SITES = ("z", "q", "k", "v")
RESID_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
PATCH_SITES = RESID_SITES + HEAD_SITES
REPLACE_MODES = ("identity", "zero_attn", "zero_mlp", "mean_attn", "mean_mlp")


@dataclass(frozen=True)
class PatchSpec:
    """``site`` of ``block`` at ``positions`` (and ``heads``) taken from the source prompt."""

    site: str
    block: int
    positions: tuple[int, ...]
    heads: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ReplaceSpec:
    """Block replacement of one block (modes as :class:`workbench.probes.BlockReplacement`)."""

    mode: str
    block: int


@dataclass(frozen=True)
class MaskSpec:
    """Scores from ``queries`` to ``keys`` set to −∞ in ``blocks`` (every head)."""

    blocks: tuple[int, ...]
    keys: tuple[int, ...]
    queries: tuple[int, ...]

    def matrix(self, n: int, device) -> torch.Tensor:
        """``[query, key]`` booleans, True where the score is masked."""
        mask = torch.zeros(n, n, dtype=torch.bool, device=device)
        mask[torch.tensor(self.queries, device=device)[:, None], torch.tensor(self.keys, device=device)[None]] = True
        return mask


def visible_queries(n: int, keys: tuple[int, ...]) -> tuple[int, ...]:
    """Queries that keep at least one visible key once ``keys`` are masked (softmax needs one)."""
    return tuple(q for q in range(n) if not set(range(q + 1)) <= set(keys))


def first_difference(tokens: torch.Tensor, source: torch.Tensor) -> int:
    """First position where two aligned prompts differ; before it their activations are identical."""
    differ = (tokens != source.to(tokens.device)).any(0).nonzero().flatten()
    return int(differ[0]) if len(differ) else int(tokens.shape[-1])
