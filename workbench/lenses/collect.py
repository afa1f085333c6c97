"""Residual streams of every layer over token rows, read with the bridge's hooks, in memory-bounded batches.

Layer ``0`` is the embeddings (``blocks.0.hook_resid_pre``) and layer ``i + 1`` the residual leaving block
``i`` (``blocks.i.hook_resid_post``): the rows of the logit lens without ``final``. The forward stops after
the last block (``stop_at_layer``), so no batch pays for the unembedding of every position.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from workbench.memory import require_within_budget, rows_per_batch


def resid_hook_names(n_layers: int) -> list[str]:
    """Hook points of the residual rows, in layer order."""
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(n_layers)]


def bytes_per_row(model, n_positions: int) -> int:
    """Memory one token row costs in a collection batch: its saved residuals plus the forward's activations."""
    f = model.facts
    saved = 4 * (f.n_layers + 1) * n_positions * f.d_model
    forward = 4 * n_positions * (12 * f.d_model + n_positions * f.n_heads)
    return saved + forward


@torch.no_grad()
def residual_stack(model, tokens: Int[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "layer batch pos d_model"]:
    """One forward pass; every residual row of every token, as float32."""
    names = resid_hook_names(model.facts.n_layers)
    saved: list[torch.Tensor | None] = [None] * len(names)

    def keep(index: int):
        def hook(resid: Float[torch.Tensor, "batch pos d_model"], hook) -> None:
            saved[index] = resid.detach().float().clone()

        return hook

    with model.bridge.hooks(fwd_hooks=[(name, keep(i)) for i, name in enumerate(names)]):
        model.bridge(tokens.to(model.device), stop_at_layer=model.facts.n_layers)
    return torch.stack(saved)  # type: ignore[arg-type]


def residual_batches(
    model,
    rows: Int[torch.Tensor, "row pos"],
    *,
    skip_first: bool = True,
    batch_rows: int | None = None,
    extra_bytes_per_token: int = 0,
    progress: bool = False,
    desc: str = "residuals",
) -> Iterator[Float[torch.Tensor, "layer token d_model"]]:
    """Residuals of ``rows`` a batch at a time, tokens flattened; ``skip_first`` drops each row's position 0.

    ``extra_bytes_per_token`` is what the consumer adds per token (e.g. float64 copies), for the batch size.
    The first position of a row has seen only itself (and is the attention sink with BOS-prepending
    models, its residual norm orders of magnitude above the others): a lens fitted on it would spend its
    least-squares budget on one atypical token per row.
    """
    if rows.shape[0] == 0:
        return
    per_row = bytes_per_row(model, rows.shape[1]) + extra_bytes_per_token * rows.shape[1]
    require_within_budget(per_row, f"One corpus row of {rows.shape[1]} tokens", "use shorter rows", model.device)
    size = batch_rows or rows_per_batch(per_row, model.device)
    start = 1 if skip_first else 0
    with tqdm(total=rows.shape[0], desc=desc, unit="row", disable=not progress, leave=False) as bar:
        for begin in range(0, rows.shape[0], size):
            batch = rows[begin : begin + size]
            stack = residual_stack(model, batch)[:, :, start:]
            yield stack.reshape(stack.shape[0], -1, stack.shape[-1])
            bar.update(batch.shape[0])


def collect_residuals(
    model,
    rows: Int[torch.Tensor, "row pos"],
    *,
    skip_first: bool = True,
    progress: bool = False,
    desc: str = "residuals",
) -> Float[torch.Tensor, "layer token d_model"]:
    """Every residual row of every token of ``rows``, kept in memory (refused when over the budget)."""
    f = model.facts
    n_tokens = rows.shape[0] * (rows.shape[1] - int(skip_first))
    require_within_budget(
        4 * (f.n_layers + 1) * n_tokens * f.d_model,
        f"Residuals of {n_tokens} tokens",
        "fit on fewer tokens (--tokens)",
        "cpu",
    )
    parts = [
        stack.to("cpu") for stack in residual_batches(model, rows, skip_first=skip_first, progress=progress, desc=desc)
    ]
    if not parts:
        return torch.zeros(f.n_layers + 1, 0, f.d_model)
    return torch.cat(parts, dim=1)
