"""The random-number study's headline effects over a dataset of paraphrases × bounds, not one prompt.

The study's conclusion ("the 'random' number follows the prompt's surface") is a claim about many
prompts. :func:`dataset_effects` measures its three headline interventions on every row of a dataset
(the bundled one: :data:`BUNDLED`, 14 paraphrases × the bounds 9, 8, 7, 6, each with a source whose bound
is 4 lower and of the same token length) and reports each as a mean over the rows with its interval:

- ``identity_block``: the study's block (21 on SmolLM2) replaced by the identity;
- ``mask_bound``: attention to the bound masked from the study's block (13) on;
- ``patch_bound``: the keys and values at the bound patched from the source in the study's blocks (6, 14).

Metrics: ``digits_above:{source_bound}`` (the probability of the digits above each row's source bound —
patching should lower it), ``prob:{bound}`` (the bound itself) and ``kl`` (how much the whole next-token
distribution moved). The return value is ``results.json``'s ``dataset_effects`` section.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workbench import interventions as iv
from workbench.datasets import Dataset, load_dataset
from workbench.layers import resolve_blocks

BUNDLED = Path(__file__).parent / "data" / "random_number_prompts.jsonl"
METRICS = ("digits_above:{source_bound}", "prob:{bound}", "kl")


def headline_conditions(
    model,
    *,
    block: int | None = None,
    patch_blocks: Sequence[int] | None = None,
    mask_blocks: Sequence[int] | None = None,
) -> dict[str, list[iv.Intervention]]:
    """The three headline interventions as ``{field}`` templates (one description serves every row);
    blocks default to the study's (21; 6, 14; 13 on), scaled to the model's depth."""
    from workbench.studies.random_number import scale_block  # the study's own rule; imported late (no cycle)

    n = model.facts.n_layers
    block = resolve_blocks(model.facts, block)[0] if block is not None else scale_block(21, n)
    patch = (
        resolve_blocks(model.facts, patch_blocks)
        if patch_blocks is not None
        else sorted({scale_block(b, n) for b in (6, 14)})
    )
    mask = resolve_blocks(model.facts, mask_blocks) if mask_blocks is not None else list(range(scale_block(13, n), n))
    return {
        "identity_block": [iv.identity(block)],
        "mask_bound": [iv.mask_keys("{bound}", blocks=mask)],
        "patch_bound": [iv.patch("kv", "{source}", blocks=patch, positions="{bound}")],
    }


def load_study_dataset(dataset: Dataset | str | Path | None) -> Dataset:
    """``dataset`` as a :class:`Dataset`: ``None`` or ``"bundled"`` is :data:`BUNDLED`; a path is read (and
    refused in one line when missing or unreadable)."""
    if isinstance(dataset, Dataset):
        return dataset
    if dataset is None or str(dataset) == "bundled":
        return load_dataset(BUNDLED)
    return load_dataset(dataset)


def run_dataset_effects(
    model,
    dataset: Dataset | str | Path | None = None,
    *,
    block: int | None = None,
    patch_blocks: Sequence[int] | None = None,
    mask_blocks: Sequence[int] | None = None,
    metrics: Sequence[str] = METRICS,
    confidence: float = 0.95,
    resamples: int = 9999,
    seed: int = 0,
    skip_bad_rows: bool = False,
    out: str | Path | None = None,
):
    """The headline experiment over ``dataset`` (the bundled one by default; rows need ``prompt``,
    ``source``, ``bound`` and ``source_bound``): an :class:`~workbench.experiments.ExperimentRun` whose
    ``effects()`` is ``results.json``'s section and whose ``summary`` draws the forest plot.
    ``out`` keeps the whole experiment (results.parquet, summary, report) in that folder."""
    from workbench.experiments import Experiment, run_experiment

    dataset = load_study_dataset(dataset)
    experiment = Experiment(
        dataset=dataset,
        conditions=headline_conditions(model, block=block, patch_blocks=patch_blocks, mask_blocks=mask_blocks),
        metrics=list(metrics),
        model=model.facts.name,
        name="random-number study: headline effects over a dataset",
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )
    return run_experiment(experiment, out, model=model, skip_bad_rows=skip_bad_rows)


def dataset_effects(
    model, dataset: Dataset | str | Path | None = None, **options: Any
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{condition: {metric: {mean, ci_low, ci_high, n, p_value}}}``: each headline effect (condition −
    clean, per row) as a mean over ``dataset`` with its bootstrap interval and paired test (options as
    :func:`run_dataset_effects`)."""
    return run_dataset_effects(model, dataset, **options).effects()
