"""Experiments over datasets of prompts: per-item effects with intervals, resumable runs with provenance.

An :class:`Experiment` names a model, a dataset, conditions (lists of interventions), metrics, a
readout and a seed (TOML or Python). :func:`run_experiment` measures every item under the clean run and
every condition — batched by token length, one forward per shard, in this process or on Ray actors —
writes ``results.parquet`` (long format) with a ``manifest.json``, and summarizes the effects with
bootstrap intervals, paired tests and Benjamini–Hochberg correction (:mod:`workbench.stats`).
"""

from workbench.experiments.executors import LocalExecutor, RayExecutor
from workbench.experiments.run import ExperimentRun, run_experiment, summarize
from workbench.experiments.spec import Condition, DatasetSource, Experiment, Grid, ModelOptions
from workbench.experiments.storage import read_results
from workbench.experiments.summary import dataset_effects, summarize_table

__all__ = [
    "Experiment",
    "Grid",
    "Condition",
    "ModelOptions",
    "DatasetSource",
    "run_experiment",
    "summarize",
    "ExperimentRun",
    "read_results",
    "summarize_table",
    "dataset_effects",
    "LocalExecutor",
    "RayExecutor",
]
