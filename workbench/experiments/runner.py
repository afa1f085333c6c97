"""How an experiment's work is cut into shards and how one shard is computed.

A *shard* is a set of items of the same token length and a set of conditions. It runs as ONE batched
forward: the items' clean rows, then one block of rows per condition (the interventions compiled onto
their rows with :func:`~workbench.interventions.compile_hooks`), so every condition's effect is
measured against the clean run of the same batch. Grouping by token length (rather than padding) keeps
every position rule exact — ``-1`` is each prompt's last token, text positions and patch sources align —
and a grouped batch equals each prompt run alone (``tests/experiments/test_runner.py``).

Shards are sized from the memory budget once, when the plan is made, and the plan is saved with the
results, so a resumed run recomputes exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import torch
from jaxtyping import Float

from workbench.datasets import Dataset, Item
from workbench.errors import ExperimentError
from workbench.experiments.spec import Condition, Experiment
from workbench.interventions import Binding, Resolved, compile_hooks, resolve
from workbench.memory import require_within_budget, rows_per_batch
from workbench.metrics import Metric, resolve_metric
from workbench.tokens import resolve_readout, to_tokens

MAX_SHARD_ITEMS = 64
CPU_TOKENS_PER_BATCH = 8192  # beyond this a CPU forward gains nothing from a bigger batch
TARGETS_METRIC = "targets"


@dataclass(frozen=True)
class Shard:
    """Items (indices into the dataset) × conditions (indices into the condition list), one forward."""

    id: str
    items: tuple[int, ...]
    conditions: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "items": list(self.items), "conditions": list(self.conditions)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Shard:
        return cls(data["id"], tuple(data["items"]), tuple(data["conditions"]))


@dataclass
class Work:
    """Everything a worker needs to compute any shard: the model, the items, the conditions, the metrics."""

    model: Any
    experiment: Experiment
    dataset: Dataset
    conditions: list[Condition]
    extras: dict[str, pa.DataType]
    metric_cache: dict[Any, Metric] = field(default_factory=dict)

    @classmethod
    def build(cls, model, experiment: Experiment, dataset: Dataset) -> Work:
        conditions = experiment.all_conditions(model.facts)
        for metric in experiment.metrics:  # a misspelt metric fails here, before any forward pass
            if "{" not in metric and metric != TARGETS_METRIC:
                resolve_metric(model, metric)
        return cls(model, experiment, dataset, conditions, extras_schema(dataset))

    @property
    def schema(self) -> pa.Schema:
        return results_schema(self.extras)


def results_schema(extras: dict[str, pa.DataType]) -> pa.Schema:
    """The long-format results table: one row per (item, condition, metric), the grid cell's coordinates,
    whether the condition changed nothing for that item, and the dataset's own columns."""
    return pa.schema(
        [
            ("item", pa.string()),
            ("item_index", pa.int64()),
            ("condition", pa.string()),
            ("grid", pa.string()),
            ("block", pa.int64()),
            ("head", pa.int64()),
            ("position", pa.string()),
            ("metric", pa.string()),
            ("value", pa.float64()),
            ("noop", pa.bool_()),
            *extras.items(),
        ]
    )


def extras_schema(dataset: Dataset) -> dict[str, pa.DataType]:
    """One Arrow type per carried column, decided over the whole dataset so every shard agrees."""
    out = {}
    for column in dataset.columns:
        values = [it.fields.get(column) for it in dataset.items if it.fields.get(column) is not None]
        kinds = {type(v) for v in values}
        if kinds <= {bool} and kinds:
            out[column] = pa.bool_()
        elif kinds <= {int} and kinds:
            out[column] = pa.int64()
        elif kinds <= {int, float} and kinds:
            out[column] = pa.float64()
        else:
            out[column] = pa.string()
    return out


def _extra_value(value: Any, kind: pa.DataType) -> Any:
    if value is None:
        return None
    if kind == pa.string() and not isinstance(value, str):
        return json.dumps(value, ensure_ascii=False, sort_keys=True) if isinstance(value, (list, dict)) else str(value)
    return value


# ----- the plan -------------------------------------------------------------------------------------------


def bytes_per_row(facts, n_tokens: int, last_logits_only: bool = False) -> int:
    """Memory one batch row of ``n_tokens`` takes in a forward: the logits (and their softmax) of every
    position unless only the last is unembedded, the residual stream, the MLP and the attention scores of
    the block being computed."""
    itemsize = 2 if facts.dtype in ("bfloat16", "float16") else 4
    logits = 2 * facts.d_vocab * 4 * (1 if last_logits_only else n_tokens)
    return logits + n_tokens * (16 * facts.d_model + 3 * facts.n_heads * n_tokens) * itemsize


def plan_shards(model, work: Work, key: str) -> list[Shard]:
    """Items grouped by token length (first-seen order), cut so each shard's forward fits the memory
    budget: as many items as fit with every condition, or one item with as many conditions as fit."""
    lengths: dict[int, list[int]] = defaultdict(list)
    for index, item in enumerate(work.dataset.items):
        lengths[int(to_tokens(model, item.prompt).shape[-1])].append(index)
    conditions = list(range(1, len(work.conditions)))  # 0 is the clean run: every forward has its rows
    cap_items = work.experiment.shard_items or MAX_SHARD_ITEMS
    shards = []
    for n_tokens, members in lengths.items():
        per_row = bytes_per_row(
            model.facts, n_tokens, work.experiment.readout in (-1, n_tokens - 1) and keeps_last_logits(model)
        )
        require_within_budget(
            2 * per_row,
            f"One prompt of {n_tokens} tokens with one condition",
            "shorten the prompts, use a smaller model, or raise WORKBENCH_MEMORY_BUDGET",
            model.device,
        )
        cap = None if model.device.type == "cuda" else max(2, CPU_TOKENS_PER_BATCH // n_tokens)
        rows = rows_per_batch(per_row, model.device, cap=cap)
        items_per_shard = max(1, min(cap_items, rows // (1 + len(conditions))))
        per_chunk = max(1, rows // items_per_shard - 1)
        chunks = [conditions[i : i + per_chunk] for i in range(0, len(conditions), per_chunk)] or [[]]
        chunks[0] = [0] + chunks[0]
        for begin in range(0, len(members), items_per_shard):
            items = tuple(members[begin : begin + items_per_shard])
            for chunk in chunks:
                shards.append(Shard(shard_id(key, work, items, chunk), items, tuple(chunk)))
    return shards


def shard_id(key: str, work: Work, items: Sequence[int], conditions: Sequence[int]) -> str:
    """The work a shard does, named by (manifest, items, conditions): the same work gets the same id."""
    text = "\n".join(
        [
            key,
            ",".join(work.dataset.items[i].id for i in items),
            "\x1f".join(work.conditions[c].name for c in conditions),
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----- one shard ------------------------------------------------------------------------------------------


@torch.no_grad()
def compute_shard(work: Work, shard: Shard) -> pa.Table:
    """The results rows of one shard: one forward of its clean rows and one row block per condition."""
    model, experiment = work.model, work.experiment
    torch.manual_seed(experiment.seed)
    items = [work.dataset.items[i] for i in shard.items]
    prompts = [item.prompt for item in items]
    fields = [dict(item.fields) for item in items]
    tokens = to_tokens(model, prompts)
    n = len(items)
    readout = resolve_readout(tokens.shape[-1], experiment.readout)
    edited = [c for c in shard.conditions if not work.conditions[c].is_clean]
    resolved: list[Resolved] = []
    rows: list[list[tuple[int, int]] | int] = []  # Binding's rows: (batch row, prompt) pairs per intervention
    noop: dict[tuple[int, int], bool] = {}  # (condition, prompt) -> no intervention of it changes anything
    captures: dict[Any, Any] = {}
    for block, index in enumerate(edited, start=1):
        condition = work.conditions[index]
        these = [resolve(iv, model, prompts, tokens, fields, captures) for iv in condition.interventions]
        for item in these:
            resolved.append(item)
            rows.append([(block * n + p, p) for p in range(n)])
        for p in range(n):
            noop[index, p] = all(r.op.first_position(r.positions[p], r.state, p) is None for r in these)
    hooks = compile_hooks(resolved, Binding(rows)) if resolved else []
    batch = tokens.repeat(1 + len(edited), 1)
    with model.bridge.hooks(fwd_hooks=hooks):
        logits = readout_logits(model, batch, readout)
    clean = logits[:n]
    blocks = {c: (logits[b * n : (b + 1) * n] if b else clean) for b, c in enumerate(edited, start=1)}
    if 0 in shard.conditions:
        blocks = {0: clean, **blocks}
    values = {c: metric_values(work, items, block, clean) for c, block in blocks.items()}
    return _table(work, shard, items, values, noop)


def readout_logits(model, tokens: torch.Tensor, readout: int) -> Float[torch.Tensor, "batch vocab"]:
    """The logits at the readout position only: the model unembeds just the last position when it can
    (transformers' ``logits_to_keep``), which saves the ``[batch, pos, vocab]`` tensor."""
    if readout == tokens.shape[-1] - 1 and keeps_last_logits(model):
        return model.bridge(tokens, logits_to_keep=1)[:, -1].float()
    return model.bridge(tokens)[:, readout].float()


def keeps_last_logits(model) -> bool:
    forward = type(model.bridge.original_model).forward
    return "logits_to_keep" in inspect.signature(forward).parameters


def metric_values(
    work: Work, items: list[Item], logits: Float[torch.Tensor, "item vocab"], clean: Float[torch.Tensor, "item vocab"]
) -> dict[str, list[float]]:
    """Each metric of the experiment for each item's row (``{field}`` metrics filled per item)."""
    out = {}
    for spec in work.experiment.metrics:
        per_item: list[str | tuple[str, ...]]  # a metric spec, or the item's targets
        if spec == TARGETS_METRIC:
            per_item = [_targets_metric(work, item) for item in items]
        elif "{" in spec:
            from workbench.interventions.intervention import fill

            per_item = [fill(spec, item.fields, "Metric") for item in items]
        else:
            per_item = [spec] * len(items)
        result = torch.empty(len(items), dtype=torch.float64)
        groups: dict[Any, list[int]] = defaultdict(list)
        for i, metric in enumerate(per_item):
            groups[metric].append(i)
        for metric, rows in groups.items():
            resolved = _metric(work, metric)
            index = torch.tensor(rows, device=logits.device)
            result[rows] = resolved(logits[index], clean[index]).double().cpu()
        out[spec] = result.tolist()
    return out


def _targets_metric(work: Work, item: Item) -> tuple[str, ...]:
    targets = item.targets or work.experiment.targets
    if not targets:
        raise ExperimentError(
            f"Metric 'targets' needs a targets column or targets = [...] in the spec; row {item.row + 1} "
            f"(id {item.id}) has neither."
        )
    return tuple(targets)


def _metric(work: Work, spec: str | tuple[str, ...]) -> Metric:
    """A resolved metric, once per worker. Metrics that compare with the clean run (``kl``) receive each
    row's own clean logits, ``[rows, vocab]``."""
    if spec not in work.metric_cache:
        if isinstance(spec, tuple):
            from workbench.metrics import token_prob

            work.metric_cache[spec] = token_prob(work.model, list(spec))
        else:
            work.metric_cache[spec] = resolve_metric(work.model, spec)
    return work.metric_cache[spec]


def _table(work: Work, shard: Shard, items: list[Item], values: dict[int, dict[str, list[float]]], noop) -> pa.Table:
    columns: dict[str, list] = defaultdict(list)
    for p, item in enumerate(items):
        extras = item.extras()
        for c in sorted(values):
            condition = work.conditions[c]
            for metric in work.experiment.metrics:
                columns["item"].append(item.id)
                columns["item_index"].append(shard.items[p])
                columns["condition"].append(condition.name)
                columns["grid"].append(condition.grid)
                columns["block"].append(condition.block)
                columns["head"].append(condition.head)
                columns["position"].append(condition.position)
                columns["metric"].append(metric)
                columns["value"].append(values[c][metric][p])
                columns["noop"].append(bool(noop.get((c, p), False)))
                for name, kind in work.extras.items():
                    columns[name].append(_extra_value(extras.get(name), kind))
    schema = work.schema
    return pa.table(
        {name: pa.array(columns[name], type=schema.field(name).type) for name in schema.names}, schema=schema
    )
