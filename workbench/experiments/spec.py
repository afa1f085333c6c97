"""What an experiment is: a model, a dataset of prompts, named conditions, metrics, a readout and a seed.

Written as a TOML file (the schema is in ``docs/experiments.md``) or built in Python::

    from workbench import interventions as iv
    from workbench.experiments import Experiment, Grid

    experiment = Experiment(
        dataset="prompts.jsonl",                     # or a Dataset, or a list of row dicts
        conditions={"identity_21": iv.identity(21),
                    "mask_bound": iv.mask_keys("{bound}", blocks=range(13, 30)),
                    "patch_bound": iv.patch("kv", "{source}", blocks=[6, 14], positions="{bound}")},
        grids=[Grid("patch_by_block", iv.patch("kv", "{source}", positions="{bound}"), over=("block",))],
        metrics=["digits_above:{source_bound}", "kl"],
    )

A condition is a list of :class:`~workbench.interventions.Intervention` applied together (their joint
effect), or an empty list for the clean run; ``{field}`` templates are filled from each row. A grid is
one intervention template swept cell by cell over blocks (× heads × positions): each cell is a
condition of its own, and the statistics correct for the number of cells.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from workbench.datasets import Dataset, from_records, from_template, load_dataset
from workbench.errors import ExperimentError, InterventionError, WorkbenchError
from workbench.interventions import Intervention
from workbench.interventions.operations import Mean, Patch
from workbench.interventions.sites import head_kind

CLEAN = "clean"
MAX_RESAMPLES = 1_000_000  # Monte Carlo error of a p-value near 0.05 at 10^6 resamples: ±0.0002; 9999 give ±0.002
MAX_TEMPLATE_ROWS = 100_000  # a template grid is for controlled sweeps; more rows belong in a file (path = ...)
GRID_AXES = ("block", "head", "position")
TOP_LEVEL = (
    "name",
    "metrics",
    "readout",
    "seed",
    "targets",
    "model",
    "dataset",
    "conditions",
    "grids",
    "stats",
    "shard_items",
)


@dataclass(frozen=True)
class ModelOptions:
    """How the model is loaded: its spec, dtype, device, or a placement over several devices."""

    spec: str = "smollm2"
    dtype: str = "float32"
    device: str | None = None
    device_map: str | dict[str, Any] | None = None
    n_devices: int | None = None
    max_memory: dict[Any, Any] | None = None

    def __post_init__(self) -> None:
        ModelOptions.check(self)

    @staticmethod
    def check(self: Any) -> None:
        """The fields' types (also run on a TOML table before it is turned into ModelOptions)."""
        for key, example in (("spec", '"smollm2"'), ("dtype", '"float32"'), ("device", '"cpu"')):
            _expect(getattr(self, key), (str,), f"[model] {key}", example, optional=key != "spec")
        if self.device_map is not None and not isinstance(self.device_map, (str, Mapping)):
            raise ExperimentError(
                f'[model] device_map = {_show(self.device_map)} must be "auto", "balanced", "sequential" or a table.'
            )
        if self.n_devices is not None and (isinstance(self.n_devices, bool) or not isinstance(self.n_devices, int)):
            raise ExperimentError(f"[model] n_devices = {_show(self.n_devices)} must be a whole number.")
        if self.max_memory is not None and not isinstance(self.max_memory, Mapping):
            raise ExperimentError(
                f'[model] max_memory = {_show(self.max_memory)} must be a table, e.g. {{ 0 = "20GiB", cpu = "60GiB" }}.'
            )

    def load(self):
        from workbench.models import load_model

        return load_model(
            self.spec,
            device=self.device,
            dtype=self.dtype,
            device_map=self.device_map,
            n_devices=self.n_devices,
            max_memory=self.max_memory,
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class DatasetSource:
    """Where the rows come from: a file (``path``, relative to the spec file) or a template with a grid
    (a dict of lists) or a list of value rows."""

    path: str | None = None
    template: str | None = None
    grid: dict[str, list[Any]] | None = None
    values: list[dict[str, Any]] | None = None
    source: str | None = None
    targets: list[str] | str | None = None
    base: str | None = None  # the spec file's folder

    def __post_init__(self) -> None:
        DatasetSource.check(self)

    @staticmethod
    def check(self: Any) -> None:
        """The fields' types and how they combine (also run on a TOML table before it becomes a DatasetSource)."""
        _expect(self.path, (str,), "[dataset] path", '"rows.jsonl"', optional=True)
        _expect(self.template, (str,), "[dataset] template", '"Pick a number from 0 to {bound}: "', optional=True)
        _expect(self.source, (str,), "[dataset] source", '"{source_prompt}"', optional=True)
        _expect_texts(self.targets, "[dataset] targets", optional=True)
        if self.grid is not None:
            if not isinstance(self.grid, Mapping) or not self.grid:
                raise ExperimentError(
                    f"[dataset] grid = {_show(self.grid)} must be a table of lists, e.g. grid = {{ bound = [9, 8] }}."
                )
            for key, value in self.grid.items():
                if not isinstance(value, (list, tuple, str, int, float)) or isinstance(value, bool):
                    raise ExperimentError(
                        f"[dataset] grid.{key} = {_show(value)} must be a list of values, e.g. [9, 8, 7]."
                    )
            count = 1
            for value in self.grid.values():
                count *= len(value) if isinstance(value, (list, tuple)) else 1
            if count > MAX_TEMPLATE_ROWS:
                sizes = " × ".join(str(len(v) if isinstance(v, (list, tuple)) else 1) for v in self.grid.values())
                raise ExperimentError(
                    f"[dataset] grid expands to {count:,} rows ({sizes}), more than {MAX_TEMPLATE_ROWS:,}: shorten "
                    'its lists, or write the rows to a file and use path = "rows.jsonl".'
                )
        if self.values is not None and (
            not isinstance(self.values, (list, tuple)) or not all(isinstance(v, Mapping) for v in self.values)
        ):
            raise ExperimentError(
                f"[dataset] values = {_show(self.values)} must be a list of tables, e.g. values = [{{ bound = 9 }}]."
            )
        if self.values is not None and len(self.values) > MAX_TEMPLATE_ROWS:
            raise ExperimentError(
                f"[dataset] values holds {len(self.values):,} rows, more than {MAX_TEMPLATE_ROWS:,}: write the rows "
                'to a file and use path = "rows.jsonl".'
            )
        if (self.path is None) == (self.template is None):
            raise ExperimentError(
                '[dataset] needs either path = "rows.jsonl" or template = "... {field} ..." '
                "(with grid = {...} or values = [...]), not both and not neither."
            )
        if self.template is not None and (self.grid is None) == (self.values is None):
            raise ExperimentError(
                "A template dataset needs grid = { field = [values] } or values = [{...}, ...] (one of them)."
            )
        if self.path is not None and any(v is not None for v in (self.grid, self.values, self.source, self.targets)):
            raise ExperimentError(
                "[dataset] path = ... takes its rows from the file: leave out grid, values, source "
                "and targets (write them as columns)."
            )

    def resolved_path(self) -> Path | None:
        if self.path is None:
            return None
        path = Path(self.path).expanduser()
        return path if path.is_absolute() or self.base is None else Path(self.base) / path

    def load(self) -> Dataset:
        path = self.resolved_path()
        if path is not None:
            return load_dataset(path)
        rows = self.grid if self.grid is not None else self.values
        # __post_init__ refuses a source with neither path nor template, or a template with neither grid nor values
        assert self.template is not None and rows is not None, "checked in DatasetSource.__post_init__"
        return from_template(self.template, rows, source=self.source, targets=self.targets)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "base"}
        if self.path is not None:
            out["path"] = str(self.resolved_path())
        return out


@dataclass(frozen=True)
class Condition:
    """One named edit of every item: its interventions (joint), and the grid cell it is when swept."""

    name: str
    interventions: tuple[Intervention, ...]
    grid: str | None = None
    block: int | None = None
    head: int | None = None
    position: str | None = None

    @property
    def is_clean(self) -> bool:
        return not self.interventions

    def cell(self) -> dict[str, Any]:
        return {"grid": self.grid, "block": self.block, "head": self.head, "position": self.position}


@dataclass(frozen=True)
class Grid:
    """An intervention template swept cell by cell over ``over`` (block, head and/or position, in that
    order). Unswept axes keep the template's selection; ``blocks``/``heads`` default to all of them,
    ``positions`` (needed to sweep positions) are indices or ``{field}`` text."""

    # Typed as accepted (a TOML table, a list, one value); __post_init__ stores the Intervention and tuples.
    name: str
    template: Intervention | Mapping[str, Any]
    over: Sequence[str] | str = ("block",)
    blocks: Sequence[int] | int | None = None
    heads: Sequence[int] | int | None = None
    positions: Sequence[int | str] | int | str | None = None

    def __post_init__(self) -> None:
        Grid.check(self)
        self._store()

    @staticmethod
    def check(self: Any) -> None:
        """The fields' types (also run on a TOML table before it becomes a Grid)."""
        if not isinstance(self.name, str) or not self.name or "[" in self.name:
            raise ExperimentError(f"Grid name {_show(self.name)}: use a non-empty name without brackets.")
        if not isinstance(self.template, (Intervention, Mapping)):
            raise ExperimentError(
                f"[grids.{self.name}] template = {_show(self.template)} must be a table, e.g. "
                'template = { site = "z", op = "zero" }.'
            )
        if not isinstance(self.over, str) and not (
            isinstance(self.over, (list, tuple)) and all(isinstance(a, str) for a in self.over)
        ):
            raise ExperimentError(f'[grids.{self.name}] over = {_show(self.over)} must be a list such as ["block"].')
        for key in ("blocks", "heads"):
            value = getattr(self, key)
            if value is not None and not _ints(value):
                raise ExperimentError(
                    f"[grids.{self.name}] {key} = {_show(value)} must be a whole number or a list of them."
                )
        positions = self.positions
        if positions is not None and not (
            _ints(positions)
            or isinstance(positions, str)
            or (isinstance(positions, (list, tuple)) and all(_int_or_text(p) for p in positions))
        ):
            raise ExperimentError(
                f'[grids.{self.name}] positions = {_show(positions)} must list indices or "{{field}}" text.'
            )

    def _store(self) -> None:
        template = self.template if isinstance(self.template, Intervention) else _intervention(self.template, self.name)
        object.__setattr__(self, "template", template)
        over = (self.over,) if isinstance(self.over, str) else tuple(self.over)
        object.__setattr__(self, "over", over)
        for key in ("blocks", "heads", "positions"):
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, tuple(value) if not isinstance(value, (int, str)) else (value,))
        if not over or set(over) - set(GRID_AXES) or len(set(over)) != len(over):
            raise ExperimentError(
                f"Grid {self.name!r}: over = {list(over)} must name block, head and/or position, each once."
            )
        if "head" in over and head_kind(template.site) is None:
            raise ExperimentError(f"Grid {self.name!r}: site {template.site!r} has no heads to sweep over.")
        if "position" in over and self.positions is None:
            raise ExperimentError(
                f'Grid {self.name!r} sweeps positions: list them, e.g. positions = ["{{bound}}", -1] '
                "(rows differ in length, so there is no 'every position')."
            )

    @property
    def _template(self) -> Intervention:
        template = self.template
        assert isinstance(template, Intervention), "Grid.__post_init__ stores the template as an Intervention"
        return template

    def cells(self, facts) -> list[Condition]:
        from workbench.layers import resolve_blocks, resolve_heads

        template = self._template
        blocks = resolve_blocks(facts, self.blocks if self.blocks is not None else template.blocks)
        axes: dict[str, list] = {"block": blocks}
        if "head" in self.over:
            kind = head_kind(template.site)
            assert kind is not None, "Grid.__post_init__ refuses to sweep heads at a site without them"
            axes["head"] = resolve_heads(facts, self.heads if self.heads is not None else template.heads, kind)
        if "position" in self.over:
            positions = self.positions
            assert isinstance(positions, tuple), "Grid.__post_init__ stores positions, needed to sweep them, as a tuple"
            axes["position"] = list(positions)
        cells: list[dict[str, Any]] = [{}]
        for axis in self.over:
            cells = [{**cell, axis: value} for cell in cells for value in axes[axis]]
        out = []
        for cell in cells:
            where: dict[str, Any] = {}
            where["blocks"] = (cell["block"],) if "block" in cell else tuple(blocks)
            if "head" in cell:
                where["heads"] = (cell["head"],)
            elif self.heads is not None:
                where["heads"] = self.heads
            if "position" in cell:
                where["positions"] = (cell["position"],)
            elif self.positions is not None:
                where["positions"] = self.positions
            label = ",".join(f"{axis}={cell[axis]}" for axis in self.over)
            out.append(
                Condition(
                    f"{self.name}[{label}]",
                    (dataclasses.replace(template, **where),),
                    grid=self.name,
                    block=cell.get("block"),
                    head=cell.get("head"),
                    position=None if "position" not in cell else str(cell["position"]),
                )
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"template": self._template.to_dict(), "over": list(self.over)}
        for key in ("blocks", "heads", "positions"):
            if getattr(self, key) is not None:
                out[key] = list(getattr(self, key))
        return out


@dataclass(frozen=True)
class Experiment:
    """A whole experiment; see the module docstring. ``metrics`` are names of
    :func:`workbench.metrics.resolve_metric` (``kl``, ``prob:9``, ``digits_above:5``, ``logit_diff:9,5``,
    ``rank:9``), ``{field}`` templates of them (``prob:{bound}``), or ``targets`` (the probability of each
    row's ``targets`` column, else of ``targets`` here). ``readout`` is the position read (the last by
    default); ``seed`` seeds torch for every shard and the bootstrap; ``confidence``, ``resamples`` and
    ``alpha`` shape the statistics."""

    dataset: Any
    conditions: Mapping[str, Any] | Sequence[Any] = field(default_factory=dict)  # stored as Condition tuples
    grids: Sequence[Grid] = ()
    metrics: Sequence[str] = ("kl",)
    readout: int = -1
    seed: int = 0
    targets: Sequence[str] | None = None
    model: ModelOptions | str = field(default_factory=ModelOptions)
    name: str = "experiment"
    confidence: float = 0.95
    resamples: int = 9999
    alpha: float = 0.05
    shard_items: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ExperimentError(f'name = {_show(self.name)} must be text, e.g. name = "bound patching".')
        for key in ("confidence", "alpha"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ExperimentError(
                    f"{key} = {_show(value)} must be a number between 0 and 1, e.g. "
                    f"{'0.95' if key == 'confidence' else '0.05'}."
                )
        if self.targets is not None:
            _expect_texts(self.targets, "targets")
        if not isinstance(self.grids, (list, tuple)) or not all(isinstance(g, (Grid, Mapping)) for g in self.grids):
            raise ExperimentError(f"grids = {_show(self.grids)}: give a list of Grid (in TOML, [grids.NAME] tables).")
        model = ModelOptions(spec=self.model) if isinstance(self.model, str) else self.model
        if not isinstance(model, ModelOptions):
            raise ExperimentError(f"model = {self.model!r}: pass a spec such as 'smollm2' or a ModelOptions.")
        object.__setattr__(self, "model", model)
        dataset = self.dataset
        if isinstance(dataset, (str, Path)):
            dataset = DatasetSource(path=str(dataset))
        elif isinstance(dataset, list):
            dataset = from_records(dataset)
        if not isinstance(dataset, (Dataset, DatasetSource)):
            raise ExperimentError("dataset must be a path, a Dataset, a DatasetSource or a list of row dicts.")
        object.__setattr__(self, "dataset", dataset)
        conditions = _conditions(self.conditions)
        object.__setattr__(self, "conditions", conditions)
        grids = tuple(g if isinstance(g, Grid) else Grid(**g) for g in self.grids)
        names = [c.name for c in conditions] + [g.name for g in grids]
        if len(set(names)) != len(names):
            duplicate = next(n for n in names if names.count(n) > 1)
            raise ExperimentError(f"Two conditions or grids are named {duplicate!r}: give each its own name.")
        for grid in grids:
            _check_dataset_ready(grid.name, grid._template)
        object.__setattr__(self, "grids", grids)
        metrics = (self.metrics,) if isinstance(self.metrics, str) else tuple(self.metrics)
        if not metrics or not all(isinstance(m, str) and m for m in metrics):
            raise ExperimentError(f'metrics = {list(metrics)!r}: name at least one, e.g. ["kl", "digits_above:5"].')
        if len(set(metrics)) != len(metrics):
            raise ExperimentError(f"metrics = {list(metrics)!r} names one metric twice.")
        object.__setattr__(self, "metrics", metrics)
        if self.targets is not None:
            object.__setattr__(
                self, "targets", (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
            )
        for key, kind in (("readout", int), ("seed", int), ("resamples", int)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ExperimentError(f"{key} = {value!r} must be a whole number.")
        if not 0 < self.confidence < 1:
            raise ExperimentError(f"confidence = {self.confidence!r} must lie between 0 and 1, e.g. 0.95.")
        if not 0 < self.alpha < 1:
            raise ExperimentError(f"alpha = {self.alpha!r} must lie between 0 and 1, e.g. 0.05.")
        if self.resamples < 100:
            raise ExperimentError(f"resamples = {self.resamples} is too few for a bootstrap: use at least 1000.")
        if self.resamples > MAX_RESAMPLES:
            from workbench.memory import format_bytes

            raise ExperimentError(
                f"resamples = {self.resamples} is more than {MAX_RESAMPLES:,}: each cell's statistics would hold "
                f"about {format_bytes(24 * self.resamples)} of resampled means and draw {self.resamples:,} × items "
                "values twice; 9999 (the default) gives p-values to about ±0.002."
            )
        if self.shard_items is not None and (
            isinstance(self.shard_items, bool) or not isinstance(self.shard_items, int) or self.shard_items < 1
        ):
            raise ExperimentError(f"shard_items = {self.shard_items!r} must be a whole number ≥ 1.")

    # ----- the parts a run needs ------------------------------------------------------------------------
    @property
    def _stored_conditions(self) -> tuple[Condition, ...]:
        conditions = self.conditions
        assert isinstance(conditions, tuple), "Experiment.__post_init__ stores the conditions as Condition tuples"
        return conditions

    @property
    def _model_options(self) -> ModelOptions:
        model = self.model
        assert isinstance(model, ModelOptions), "Experiment.__post_init__ stores the model as ModelOptions"
        return model

    @property
    def clean_name(self) -> str:
        return next((c.name for c in self._stored_conditions if c.is_clean), CLEAN)

    def all_conditions(self, facts) -> list[Condition]:
        """The clean condition first, then the named conditions, then every grid cell."""
        named = [c for c in self._stored_conditions if not c.is_clean]
        return [Condition(self.clean_name, ())] + named + [cell for grid in self.grids for cell in grid.cells(facts)]

    def templates(self) -> list[Intervention]:
        """Every intervention as written (grid templates included), for checking rows before the run."""
        return [iv for c in self._stored_conditions for iv in c.interventions] + [g._template for g in self.grids]

    def load_dataset(self) -> Dataset:
        return self.dataset if isinstance(self.dataset, Dataset) else self.dataset.load()

    # ----- serialisation ----------------------------------------------------------------------------------
    def analysis(self) -> dict[str, Any]:
        """What decides the numbers in results.parquet (model and dataset are identified separately)."""
        return {
            "metrics": list(self.metrics),
            "readout": self.readout,
            "seed": self.seed,
            "targets": list(self.targets) if self.targets is not None else None,
            "clean": self.clean_name,
            "conditions": {
                c.name: [iv.to_dict() for iv in c.interventions] for c in self._stored_conditions if not c.is_clean
            },
            "grids": {g.name: g.to_dict() for g in self.grids},
        }

    def stats_options(self) -> dict[str, Any]:
        return {"confidence": self.confidence, "resamples": self.resamples, "alpha": self.alpha, "seed": self.seed}

    def to_dict(self) -> dict[str, Any]:
        dataset = self.dataset.to_dict() if isinstance(self.dataset, DatasetSource) else {"records": self.dataset.name}
        return {
            "name": self.name,
            "model": self._model_options.to_dict(),
            "dataset": dataset,
            **self.analysis(),
            "stats": {k: v for k, v in self.stats_options().items() if k != "seed"},
            "shard_items": self.shard_items,
        }

    def with_model(self, **changes: Any) -> Experiment:
        """The same experiment with model options replaced (the CLI's --model, --device, --device-map)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, model=dataclasses.replace(self._model_options, **changes)) if changes else self

    @classmethod
    def from_toml(cls, path: str | Path) -> Experiment:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ExperimentError(f"No experiment spec at {path}: pass a .toml file (see docs/experiments.md).")
        try:
            data = tomllib.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            raise ExperimentError(f"{path.name} is not UTF-8 text: save it as UTF-8.") from None
        except tomllib.TOMLDecodeError as exc:
            raise ExperimentError(f"{path.name} is not valid TOML ({exc}).") from None
        return cls.from_dict(data, base=path.parent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: str | Path | None = None) -> Experiment:
        unknown = sorted(set(data) - set(TOP_LEVEL))
        if unknown:
            raise ExperimentError(f"Unknown key {unknown[0]!r} in the experiment spec: use {', '.join(TOP_LEVEL)}.")
        if "dataset" not in data:
            raise ExperimentError('The experiment spec has no [dataset]: add path = "rows.jsonl" or a template.')
        for key, kinds, example in (
            ("name", (str,), 'name = "bound patching"'),
            ("metrics", (str, list), 'metrics = ["kl", "digits_above:5"]'),
            ("readout", (int,), "readout = -1"),
            ("seed", (int,), "seed = 0"),
            ("targets", (str, list), 'targets = ["9"]'),
            ("model", (str, Mapping), '[model] with spec = "smollm2"'),
            ("dataset", (Mapping,), '[dataset] with path = "rows.jsonl"'),
            ("conditions", (Mapping,), "[conditions] with name = [{ site = ..., op = ... }]"),
            ("grids", (Mapping,), "[grids.NAME] tables (not [[grids]])"),
            ("stats", (Mapping,), "[stats] with confidence, resamples, alpha"),
            ("shard_items", (int,), "shard_items = 8"),
        ):
            value = data.get(key)
            if key in data and (
                isinstance(value, bool)
                or not isinstance(value, kinds)
                or (
                    key in ("metrics", "targets")
                    and isinstance(value, list)
                    and not all(isinstance(v, str) for v in value)
                )
            ):
                raise ExperimentError(f"{key} = {_show(value)} is of the wrong type: write {example}.")
        model = data.get("model", {})
        if isinstance(model, str):
            model = {"spec": model}
        ModelOptions.check(_fields_of(ModelOptions, _max_memory(model)))
        DatasetSource.check(_fields_of(DatasetSource, data["dataset"]))
        try:
            model = ModelOptions(**_max_memory(model))
        except TypeError as exc:
            raise ExperimentError(
                f"[model]: {exc}; its keys are spec, dtype, device, device_map, n_devices, max_memory."
            ) from None
        try:
            dataset = DatasetSource(**data["dataset"], base=str(base) if base is not None else None)
        except TypeError as exc:
            raise ExperimentError(
                f"[dataset]: {exc}; its keys are path, or template with grid or values (and source, targets)."
            ) from None
        stats = dict(data.get("stats", {}))
        for key, kind in (
            ("confidence", "a number such as 0.95"),
            ("resamples", "a whole number such as 9999"),
            ("alpha", "a number such as 0.05"),
        ):
            value = stats.get(key)
            wrong = value is not None and (
                isinstance(value, bool) or not isinstance(value, int if key == "resamples" else (int, float))
            )
            if wrong:
                raise ExperimentError(f"[stats] {key} = {_show(value)} must be {kind}.")
        unknown = sorted(set(stats) - {"confidence", "resamples", "alpha"})
        if unknown:
            raise ExperimentError(f"Unknown key {unknown[0]!r} in [stats]: use confidence, resamples, alpha.")
        grids = []
        for name, grid in (data.get("grids") or {}).items():
            if not isinstance(grid, Mapping) or "template" not in grid or not isinstance(grid["template"], Mapping):
                raise ExperimentError(f"[grids.{name}] needs a template = {{ site = ..., op = ... }} and over = [...].")
            unknown = sorted(set(grid) - {"template", "over", "blocks", "heads", "positions"})
            if unknown:
                raise ExperimentError(
                    f"Unknown key {unknown[0]!r} in [grids.{name}]: use template, over, blocks, heads, positions."
                )
            Grid.check(_fields_of(Grid, {"name": name, **grid}))
            grids.append(Grid(name=name, **grid))
        options = {k: data[k] for k in ("name", "metrics", "readout", "seed", "targets", "shard_items") if k in data}
        return cls(dataset=dataset, conditions=data.get("conditions", {}), grids=grids, model=model, **options, **stats)


def _max_memory(model: Mapping[str, Any]) -> dict[str, Any]:
    """TOML keys are text; accelerate names GPUs by integer (``max_memory = { 0 = "20GiB", cpu = "60GiB" }``)."""
    model = dict(model)
    if isinstance(model.get("max_memory"), Mapping):
        model["max_memory"] = {int(k) if str(k).isdigit() else k: v for k, v in model["max_memory"].items()}
    return model


def _intervention(value: Any, where: str) -> Intervention:
    if isinstance(value, Intervention):
        return value
    if not isinstance(value, Mapping):
        raise ExperimentError(
            f'Condition {where!r}: {_show(value)} is not an intervention: write {{ site = "z", op = "zero" }}.'
        )
    try:
        return Intervention.from_dict(dict(value))
    except InterventionError as exc:  # keeps its own exit code (12), as from the API and the CLI
        raise InterventionError(f"Condition {where!r}: {exc}") from None
    except WorkbenchError as exc:
        raise ExperimentError(f"Condition {where!r}: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # a field of the wrong type deeper down
        raise ExperimentError(f"Condition {where!r}: {_show(dict(value))} is malformed ({exc}).") from None


def _fields_of(cls: type, values: Mapping[str, Any]) -> Any:
    """``values`` over ``cls``'s defaults, as attributes: what ``cls(**values)`` would hold, for its ``check``."""
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else None for f in dataclasses.fields(cls)}
    return SimpleNamespace(**{**defaults, **values})


def _show(value: Any, width: int = 60) -> str:
    """A value as the spec wrote it, cut to ``width`` (for one-line errors)."""
    text = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _expect(value: Any, kinds: tuple[type, ...], where: str, example: str, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ExperimentError(f"{where} = {_show(value)} is of the wrong type: write e.g. {example}.")


def _expect_texts(value: Any, where: str, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, str) or (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)):
        return
    raise ExperimentError(f'{where} = {_show(value)} must be text or a list of texts, e.g. ["9", "8"].')


def _ints(value: Any) -> bool:
    def one(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    return one(value) or (isinstance(value, (list, tuple, range)) and all(one(v) for v in value))


def _int_or_text(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _conditions(conditions: Any) -> tuple[Condition, ...]:
    if isinstance(conditions, (list, tuple)) and all(isinstance(c, Condition) for c in conditions):
        out = tuple(conditions)
    else:
        if not isinstance(conditions, Mapping):
            raise ExperimentError("conditions must map names to lists of interventions (an empty list: the clean run).")
        built: list[Condition] = []
        for name, value in conditions.items():
            if not isinstance(name, str) or not name or "[" in name:
                raise ExperimentError(f"Condition name {name!r}: use a non-empty name without brackets.")
            if value is not None and not isinstance(value, (Intervention, Mapping, list, tuple)):
                raise ExperimentError(
                    f"Condition {name!r} = {_show(value)}: give a list of interventions, e.g. "
                    '[{ site = "z", op = "zero", blocks = [3] }] (an empty list: the clean run).'
                )
            items = [] if value is None else [value] if isinstance(value, (Intervention, Mapping)) else list(value)
            built.append(Condition(name, tuple(_intervention(v, name) for v in items)))
        out = tuple(built)
    cleans = [c.name for c in out if c.is_clean]
    if len(cleans) > 1:
        raise ExperimentError(f"Conditions {cleans} are all empty (the clean run): keep one, it names the clean run.")
    for condition in out:
        for intervention in condition.interventions:
            _check_dataset_ready(condition.name, intervention)
    return out


def _check_dataset_ready(name: str, intervention: Intervention) -> None:
    """Edits whose meaning would depend on how rows are batched are refused."""
    op = intervention.op
    if isinstance(op, Mean) and not op.prompts:
        raise ExperimentError(
            f"Condition {name!r}: mean-ablation over 'the run's prompts' would average over whichever "
            "rows share a batch; give Mean(prompts=[...]) a fixed list of prompts."
        )
    if isinstance(op, Patch) and not isinstance(op.source, str):
        raise ExperimentError(
            f"Condition {name!r}: a list of patch sources pairs them with a batch's prompts; write "
            'source = "{source}" (the row\'s own source column) or one fixed prompt.'
        )


def canonical_json(value: Any) -> str:
    """The one JSON text of a value that every hash in the workbench's experiments is taken over."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
