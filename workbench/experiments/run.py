"""Run an experiment end to end: check everything, plan the shards, compute what is missing, summarize.

Order matters for the user: the output folder and the dataset are checked before the model loads, the
rows before any forward pass, the manifest before any shard; a killed run is finished by running the
same command again, which computes only the shards that are missing.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from workbench import stats
from workbench.datasets import BadRow, bad_rows_message, check_items
from workbench.errors import DatasetError, ExperimentDataError, ExperimentError
from workbench.experiments import storage
from workbench.experiments.executors import LocalExecutor, RayExecutor, make_executor
from workbench.experiments.runner import TARGETS_METRIC, Shard, Work, plan_shards
from workbench.experiments.spec import Experiment, ModelOptions
from workbench.experiments.summary import dataset_effects, summarize_table

Progress = Callable[[int, int, str], None]


@dataclass
class ExperimentRun:
    """A finished experiment: the long-format results, the manifest, the summary, and what this call did."""

    results: pa.Table
    manifest: dict[str, Any]
    summary: dict[str, Any]
    out: Path | None = None
    skipped: list[BadRow] = field(default_factory=list)
    computed: int = 0
    reused: int = 0

    def frame(self):
        """The results as a pandas DataFrame (one row per item, condition and metric)."""
        return self.results.to_pandas()

    def effects(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{condition: {metric: {mean, ci_low, ci_high, n, p_value}}}`` of the named conditions."""
        return dataset_effects(self.summary)

    def figure(self, name: str = "forest"):
        """``forest``, or ``<grid>/<metric>``: a Plotly figure stamped with the manifest's hash."""
        from workbench.experiments.report import figures

        found = figures(self.summary)
        if name not in found:
            raise ExperimentError(f"No figure {name!r}: this experiment has {', '.join(found) or 'none'}.")
        return found[name]


def run_experiment(
    experiment: Experiment | str | Path,
    out: str | Path | None = None,
    *,
    model=None,
    executor: str | LocalExecutor | RayExecutor = "local",
    workers: int | None = None,
    address: str | None = None,
    skip_bad_rows: bool = False,
    force: bool = False,
    progress: Progress | None = None,
    report: bool = True,
) -> ExperimentRun:
    """Run ``experiment`` (an :class:`Experiment` or a TOML spec path) and return its results and summary.

    With ``out`` every shard is saved as it finishes (a rerun resumes) and the folder gets
    results.parquet, manifest.json, summary.json and report.html; without it everything stays in
    memory. ``model`` reuses a loaded model (its spec must be the experiment's). ``force`` deletes what
    the workbench wrote in ``out`` first; ``skip_bad_rows`` runs the good rows when some are bad.
    """
    experiment = experiment if isinstance(experiment, Experiment) else Experiment.from_toml(experiment)
    step = progress or (lambda done, total, text: None)
    out = Path(out) if out is not None else None
    existing = storage.check_out_dir(out, force) if out is not None else False
    runner = executor if not isinstance(executor, str) else make_executor(executor, workers, address)
    dataset = experiment.load_dataset()
    old = storage.Folder(out).read_manifest() if out is not None and existing and not force else None
    if out is not None and old is not None:  # the cheap half of the identity, before the model loads
        early = {"analysis": experiment.analysis(), "dataset": {"sha256": dataset.sha256}}
        storage.refuse_if_different(
            out, {"analysis": old["analysis"], "dataset": {"sha256": old["dataset"]["sha256"]}}, early
        )
    step(0, 0, "loading the model")
    if model is None:
        options = experiment.model
        assert isinstance(options, ModelOptions), "Experiment.__post_init__ stores the model as ModelOptions"
        if isinstance(runner, RayExecutor):  # the driver only tokenizes and fingerprints: the CPU will do
            options = dataclasses.replace(options, device="cpu", device_map=None, n_devices=None, max_memory=None)
        model = options.load()
    step(0, 0, "checking the rows")
    bad = check_items(model, dataset, experiment.templates(), experiment.metrics, experiment.targets)
    if bad and not skip_bad_rows:
        raise DatasetError(bad_rows_message(bad))
    good = dataset.without(bad)
    if not good.items:
        raise DatasetError(f"Every row of {dataset.name} is bad ({bad_rows_message(bad)}).")
    work = Work.build(model, experiment, good)
    require_summary_budget(experiment, len(good.items), len(work.conditions))  # before the first shard
    try:
        device = str(model.device)
        if isinstance(runner, RayExecutor):
            step(0, 0, "starting Ray workers")
            device = _check_workers(runner.start(experiment, good), model)
        manifest = storage.build_manifest(experiment, dataset, model, device, [b.id for b in bad])
        manifest["metric_labels"] = metric_labels(work)
        if out is None:
            computed = _compute(None, model, work, manifest, runner, step)
            summary = summarize_table(computed.table, manifest)
        else:
            with storage.claim(out).exclusive() as folder:
                folder.preflight(force)  # again, now that no other run can write: the user may have edited since
                old = None if force else folder.read_manifest()
                if force:
                    folder.clear()
                elif old is not None:
                    storage.refuse_if_different(out, storage.identity_of(old), storage.identity_of(manifest))
                    manifest["created"] = old.get("created", manifest["created"])
                folder.remove_partial()
                folder.write_json(storage.MANIFEST, manifest)
                if bad:
                    folder.write_json(storage.BAD_ROWS, [b.to_dict() for b in bad])
                computed = _compute(folder, model, work, manifest, runner, step)
                step(computed.computed + computed.reused, computed.computed + computed.reused, "summarizing")
                summary = summarize_table(computed.table, manifest)
                _write_summary(folder, summary, manifest, report)
                folder.compact()
    finally:
        if isinstance(runner, RayExecutor):
            runner.shutdown()
    return ExperimentRun(
        computed.table, manifest, summary, out, bad, computed=computed.computed, reused=computed.reused
    )


@dataclass
class _Computed:
    table: pa.Table
    computed: int
    reused: int


ROW_BYTES = 600  # one results row held at once: Arrow, the summary's pandas frame and its pivots


def require_summary_budget(experiment: Experiment, n_items: int, n_conditions: int) -> None:
    """Refuse, before the first shard, a run whose results table cannot be held in memory (half the available
    RAM: the table is summarized whole) or whose statistics cannot fit the memory budget one cell at a time."""
    from workbench.errors import BudgetError
    from workbench.memory import available_ram, format_bytes

    rows = n_items * n_conditions * len(experiment.metrics)
    need, limit = rows * ROW_BYTES, available_ram() // 2
    if need > limit:
        raise BudgetError(
            f"The results table ({n_items} items × {n_conditions} conditions × {len(experiment.metrics)} metrics = "
            f"{rows} rows) needs about {format_bytes(need)}, more than half the available memory "
            f"({format_bytes(limit)}): use fewer items, conditions, grid cells or metrics."
        )
    stats.require_stats_budget(n_items, experiment.resamples)


def _compute(
    folder: storage.Folder | None, model, work: Work, manifest: dict[str, Any], runner, step: Progress
) -> _Computed:
    """Plan the shards (or reuse the saved plan), compute the missing ones, and gather every row."""
    plan = _plan(folder, model, work, manifest)
    shards = [Shard.from_dict(s) for s in plan["shards"]]
    done: set[str] = set()
    if folder is not None:
        done, damaged = folder.finished_shards([s.id for s in shards])
        for rel, aside in damaged:
            print(
                f"warning: {rel} was damaged (its SHA-256 changed): its bytes are kept as {aside.name}, "
                "and the shard is computed again.",
                file=sys.stderr,
            )
    todo = [s for s in shards if s.id not in done]
    tables: dict[str, pa.Table] = {}
    finished = len(done)
    step(finished, len(shards), "computing shards")

    def finish(shard: Shard, table: pa.Table) -> None:
        nonlocal finished
        if folder is not None:
            folder.write_table(storage.shard_rel(shard.id), table)
        else:
            tables[shard.id] = table
        finished += 1
        step(finished, len(shards), "computing shards")

    runner.run(work, todo, finish)
    step(finished, len(shards), "writing results")
    if folder is not None:
        table = storage.consolidate(folder, plan, manifest)
    else:
        table = storage.order_rows(
            pa.concat_tables([tables[s.id] for s in shards]), plan["conditions"], manifest["analysis"]["metrics"]
        )
        table = storage.with_manifest(table, manifest)
    return _Computed(table, len(todo), len(done))


def _plan(folder: storage.Folder | None, model, work: Work, manifest: dict[str, Any]) -> dict[str, Any]:
    """The saved plan when it belongs to this manifest, else a new one (saved before any shard runs)."""
    plan = folder.read_plan() if folder is not None else None
    if plan is not None and plan["manifest_sha256"] == manifest["sha256"]:
        if plan["items"] != [item.id for item in work.dataset.items] or plan["conditions"] != [
            c.name for c in work.conditions
        ]:
            raise ExperimentDataError(
                f"{folder.out / storage.PLAN if folder else storage.PLAN} does not match its manifest (other items "
                "or conditions): move it away and run again (finished shards are kept)."
            )
        return plan
    shards = plan_shards(model, work, manifest["sha256"])
    plan = {
        "manifest_sha256": manifest["sha256"],
        "conditions": [c.name for c in work.conditions],
        "items": [item.id for item in work.dataset.items],
        "shards": [s.to_dict() for s in shards],
    }
    if folder is not None:
        folder.write_json(storage.PLAN, plan)
    return plan


def _check_workers(infos, model) -> str:
    from workbench.provenance import model_fingerprint

    devices = sorted({info.device for info in infos})
    prints = {info.fingerprint for info in infos}
    if len(devices) > 1:
        raise ExperimentError(
            f"Ray workers run on different kinds of device ({', '.join(devices)}): their numbers "
            "would differ in the last digits. Give every worker the same kind of device."
        )
    if prints != {model_fingerprint(model)["sha256"]}:
        raise ExperimentError(
            "A Ray worker loaded different weights than this process: make the model spec point at "
            "the same files on every node."
        )
    return devices[0]


def metric_labels(work: Work) -> dict[str, str]:
    """What each metric name means, for figure titles (``digits_above:5`` → ``p(digit > 5)``)."""
    from workbench.metrics import resolve_metric

    out = {}
    for spec in work.experiment.metrics:
        if spec == TARGETS_METRIC:
            out[spec] = "p(targets)"
        elif "{" in spec:
            out[spec] = template_label(spec)
        else:
            out[spec] = resolve_metric(work.model, spec).name
    return out


def template_label(spec: str) -> str:
    """A readable name for a metric whose argument is a row's field: ``digits_above:{source_bound}`` →
    ``p(digit > source_bound)``."""
    kind, _, arg = spec.partition(":")
    arg = arg.replace("{", "").replace("}", "")
    forms = {
        "digits_above": f"p(digit > {arg})",
        "prob": f"p({arg})",
        "rank": f"rank({arg})",
        "logit_diff": "logit({}) − logit({})".format(*(arg.split(",") + [""])[:2]),
    }
    return forms.get(kind.strip(), spec)


def _write_summary(folder: storage.Folder, summary: dict[str, Any], manifest: dict[str, Any], report: bool) -> None:
    from workbench.experiments.report import render_html

    folder.write_json(storage.SUMMARY, summary)
    if report:
        folder.write_bytes(storage.REPORT, render_html(summary, manifest).encode())


def summarize(out: str | Path, *, report: bool = True, png: bool = False) -> dict[str, Any]:
    """Rebuild ``summary.json`` and ``report.html`` (and, with ``png``, ``forest.png``) from
    ``results.parquet`` alone: no model is loaded. A file there the workbench did not write (or that
    changed since) is never replaced: refused, naming it, before anything is written."""
    out = Path(out)
    out = out.parent if out.is_file() else out
    table, manifest = storage.read_results(out)
    if not ((out / storage.MARKER).exists() or (out / storage.MARKER).is_symlink()):
        raise ExperimentError(
            f"{out} is not a folder `workbench experiment run` wrote: summarize writes summary.json "
            "and report.html beside results.parquet only in such a folder."
        )
    with storage.Folder(out).exclusive() as folder:
        folder.require_replaceable(storage.RESULTS)  # the numbers must be the ones the run wrote
        for rel in (storage.SUMMARY, storage.REPORT, *((storage.FOREST_PNG,) if png else ())):
            folder.require_replaceable(rel)
        summary = summarize_results(table, manifest, out / storage.RESULTS)
        _write_summary(folder, summary, manifest, report)
        if png and summary["conditions"]:
            from workbench.experiments.report import forest_plot, write_png

            write_png(forest_plot(summary), out / storage.FOREST_PNG, manifest["sha256"])
        folder.compact()
    return summary


def summarize_results(table: pa.Table, manifest: dict[str, Any], path: Path) -> dict[str, Any]:
    """:func:`summarize_table`, with a results file that does not hold what its manifest describes refused
    in one line (it was edited, or written by something else)."""
    from workbench.errors import WorkbenchError

    try:
        return summarize_table(table, manifest)
    except WorkbenchError:
        raise
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise ExperimentDataError(
            f"{path} does not hold what its manifest describes ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}): move it away and run `workbench experiment run` "
            "again to rebuild it from the shards."
        ) from None
