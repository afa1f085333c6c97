"""Results: the numbers a probe produced, with named dimensions, figures, Jupyter display and export.

A :class:`Named` array is a tensor plus a name and a label list per dimension (``layer``, ``head``,
``query``, ``key``, ``position``, ``token`` ...), so a table or a figure never guesses what an axis is.
A :class:`Result` is a plain bag of named arrays with a few domain helpers; each probe subclasses it
only to draw its own figure.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from workbench.errors import ExportError, ResultError


@dataclass
class Named:
    """A tensor (or array of strings) with named dimensions and labelled coordinates."""

    values: Any
    dims: tuple[str, ...]
    coords: dict[str, list] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.values, torch.Tensor):
            self.values = self.values.detach().to("cpu")
            if self.values.is_floating_point():
                self.values = self.values.float()
        else:
            self.values = np.asarray(self.values)
        self.dims = tuple(self.dims)
        if len(self.dims) != self.values.ndim:
            raise ResultError(
                f"{len(self.dims)} dims {self.dims} for an array of shape {tuple(self.values.shape)}: "
                "give one name per axis."
            )
        for i, dim in enumerate(self.dims):
            labels = self.coords.get(dim)
            if labels is None:
                self.coords[dim] = list(range(self.values.shape[i]))
            elif len(labels) != self.values.shape[i]:
                raise ResultError(
                    f"dim {dim!r} has {self.values.shape[i]} entries but {len(labels)} labels: "
                    "give one label per entry."
                )

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    @property
    def is_numeric(self) -> bool:
        return isinstance(self.values, torch.Tensor) or np.issubdtype(self.values.dtype, np.number)

    def numpy(self) -> np.ndarray:
        return self.values.numpy() if isinstance(self.values, torch.Tensor) else self.values

    def index(self, dim: str, label: Any) -> int:
        """Position of ``label`` along ``dim``; an int that is not a label is taken as a position."""
        labels = self.coords[dim]
        if label in labels:
            return labels.index(label)
        if isinstance(label, int) and -len(labels) <= label < len(labels):
            return label % len(labels)
        raise ResultError(f"{label!r} is not on the {dim!r} axis; it has {labels[:8]}{'…' if len(labels) > 8 else ''}.")

    def sel(self, **selection: Any) -> Named:
        """Select one entry of some dimensions by label (or position), dropping those dimensions."""
        values, dims, coords = self.values, list(self.dims), dict(self.coords)
        for dim, label in selection.items():
            if dim not in dims:
                raise ResultError(f"{dim!r} is not a dimension of this array; it has {tuple(dims)}.")
            axis = dims.index(dim)
            i = self.index(dim, label)
            values = values[(slice(None),) * axis + (i,)]
            dims.pop(axis)
            coords.pop(dim)
        return Named(values, tuple(dims), coords)

    def to_dataframe(self, name: str = "value"):
        """Long format: one row per entry, one column per dimension plus ``name``."""
        import pandas as pd

        arr = self.numpy()
        grids = np.meshgrid(*[np.arange(n) for n in arr.shape], indexing="ij")
        columns = {
            dim: np.asarray(self.coords[dim], dtype=object)[g.ravel()] for dim, g in zip(self.dims, grids, strict=True)
        }
        columns[name] = arr.ravel()
        return pd.DataFrame(columns)

    def to_xarray(self, name: str | None = None):
        """An ``xarray.DataArray`` with the same dims, each labelled by this array's coordinates (needs the
        ``xarray`` extra). String arrays stay strings; ``name`` names the variable."""
        xr = _xarray()
        coords = {dim: np.asarray(self.coords[dim], dtype=_label_dtype(self.coords[dim])) for dim in self.dims}
        return xr.DataArray(self.numpy(), dims=self.dims, coords=coords, name=name)

    def to_dict(self) -> dict[str, Any]:
        """Dims, coords, dtype, shape and values, exact (see :mod:`workbench.serialization`)."""
        from workbench.serialization import named_to_dict

        return named_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Named:
        from workbench.serialization import named_from_dict

        return named_from_dict(data)


class LazyArrays(dict):
    """A result's named arrays, computed the first time anything reads them: a probe whose arrays are costly (the
    logit lens unembeds every layer and position) hands over the work instead of its output, so ``run`` builds
    results that cost nothing until a table, a figure or the file asks."""

    def __init__(self, compute: Callable[[], dict[str, Named]] | None = None) -> None:
        super().__init__()
        self._compute = compute

    def _fill(self) -> None:
        compute, self._compute = self._compute, None
        if compute is not None:
            super().update(compute())

    @property
    def computed(self) -> bool:
        return self._compute is None

    def __getitem__(self, key):
        self._fill()
        return super().__getitem__(key)

    def __setitem__(self, key, value) -> None:
        self._fill()
        super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        self._fill()
        super().__delitem__(key)

    def __contains__(self, key) -> bool:
        self._fill()
        return super().__contains__(key)

    def __iter__(self):
        self._fill()
        return super().__iter__()

    def __len__(self) -> int:
        self._fill()
        return super().__len__()

    def __eq__(self, other) -> bool:
        self._fill()
        return super().__eq__(other)

    __hash__ = None

    def __repr__(self) -> str:
        self._fill()
        return super().__repr__()

    def __reduce__(self):
        self._fill()
        return (dict, (dict(self),))

    def keys(self):
        self._fill()
        return super().keys()

    def values(self):
        self._fill()
        return super().values()

    def items(self):
        self._fill()
        return super().items()

    def get(self, key, default=None):
        self._fill()
        return super().get(key, default)

    def pop(self, key, *default):
        self._fill()
        return super().pop(key, *default)

    def setdefault(self, key, default=None):
        self._fill()
        return super().setdefault(key, default)

    def update(self, *args, **kwargs) -> None:
        self._fill()
        super().update(*args, **kwargs)

    def copy(self) -> dict:
        self._fill()
        return dict(self)


def to_jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return to_jsonable(float(value))
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.tolist())
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def _label_dtype(labels: list) -> type | None:
    """Labels of one Python type keep a numpy dtype (ints, floats, strings); a mix stays ``object``."""
    kinds = {type(label) for label in labels}
    return None if len(kinds) == 1 and kinds <= {int, float, str, bool} else object


def _xarray():
    try:
        import xarray
    except ImportError:
        raise ExportError("to_xarray() needs xarray, an optional extra: pip install 'workbench[xarray]'.") from None
    return xarray


NOTEBOOK_PLOTLYJS = "inline"
"""How the HTML fallback of a displayed result loads plotly.js: ``"inline"`` (each output carries its own
copy, ≈4.8 MB, so a saved notebook renders anywhere, offline, whichever outputs were cleared) or ``"cdn"``
(a script from cdn.plot.ly: light, but the reader needs the network). JupyterLab, Notebook 7 and VS Code
draw the Plotly mimetype instead and never use the fallback."""


def notebook_bundle(fig, caption: str, text: str) -> dict[str, Any]:
    """A Jupyter display bundle for ``fig``: Plotly's own ``application/vnd.plotly.v1+json`` (JupyterLab,
    Notebook 7 and VS Code draw it, live or saved), an HTML fallback that needs no other output (nbconvert,
    nbviewer, the classic Notebook), and ``text``. ``caption`` heads the HTML."""
    import plotly.io as pio

    if NOTEBOOK_PLOTLYJS not in ("inline", "cdn"):
        raise ExportError(f"NOTEBOOK_PLOTLYJS is {NOTEBOOK_PLOTLYJS!r}: set it to 'inline' or 'cdn'.")
    bundle = dict(pio.renderers["plotly_mimetype"].to_mimebundle(fig.to_dict()))
    div = pio.to_html(fig, full_html=False, include_plotlyjs=True if NOTEBOOK_PLOTLYJS == "inline" else "cdn")
    bundle["text/html"] = f"<div><p>{caption}</p>{div}</div>"
    bundle["text/plain"] = text
    return bundle


@dataclass
class Result:
    """What one probe returns: named arrays, metadata, and (for observers of an intervened run) a baseline.

    A probe fills ``arrays`` and ``meta``; :func:`workbench.run.run` fills ``probe``, ``model``,
    ``prompts`` and ``tokens`` and the observers' clean ``baseline``."""

    probe: str = ""
    model: str = ""
    prompts: list[str] = field(default_factory=list)
    tokens: list[list[str]] = field(default_factory=list)
    arrays: dict[str, Named] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    baseline: Result | None = None

    kind: ClassVar[str] = "result"

    def __getitem__(self, name: str) -> Named:
        try:
            return self.arrays[name]
        except KeyError:
            raise ResultError(f"{self.probe} has no array {name!r}; it has {sorted(self.arrays)}.") from None

    def figure(self, **options: Any):
        """The probe's main Plotly figure; subclasses draw their own."""
        from workbench import plots

        name, array = next(((n, a) for n, a in self.arrays.items() if a.is_numeric), (None, None))
        if array is None:
            raise ResultError(f"{self.probe} has no numeric array to draw.")
        return plots.auto(array, title=f"{self.probe}: {name}")

    def figures(self) -> dict[str, Any]:
        """Every figure worth exporting, by a file-name-safe key."""
        return {"main": self.figure()}

    def summary(self) -> str:
        return f"{self.probe} on {self.model}: arrays {', '.join(f'{k}{list(v.dims)}' for k, v in self.arrays.items())}"

    def to_dataframe(self, name: str | None = None):
        """One array in long format (the first numeric one by default)."""
        if name is None:
            name = next(n for n, a in self.arrays.items() if a.is_numeric)
        return self[name].to_dataframe(name)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data with the class, dtypes, NaN/inf and baseline: :meth:`from_dict` rebuilds it."""
        from workbench.serialization import result_to_dict

        return result_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        """The result :meth:`to_dict` described, of its saved class (a Result subclass)."""
        from workbench.serialization import result_from_dict

        return result_from_dict(data)

    def save(self, path: str | Path, **figure_options: Any) -> Path:
        """Write by suffix: ``.json`` the data (:func:`load_result` reads it back); ``.html``/``.png``/
        ``.svg``/``.pdf`` the main figure. Never overwrites a file the workbench did not write."""
        from workbench.export import check_figure_path, write_figure
        from workbench.outputs import write_file
        from workbench.serialization import dumps

        path = Path(path)
        check_figure_path(path)
        if path.suffix.lower() == ".json":
            return write_file(path, dumps("result", self.to_dict()))
        return write_figure(self.figure(**figure_options), path)

    def compare(self, other: Result) -> Comparison:
        """Element-wise ``self − other`` for every numeric array both results share with the same shape."""
        if type(other) is not type(self):
            raise ResultError(f"Cannot compare a {type(self).__name__} with a {type(other).__name__}.")
        deltas = {}
        for name, array in self.arrays.items():
            theirs = other.arrays.get(name)
            if array.is_numeric and theirs is not None and theirs.is_numeric and theirs.shape == array.shape:
                deltas[name] = Named(torch.as_tensor(array.numpy() - theirs.numpy()), array.dims, dict(array.coords))
        if not deltas:
            raise ResultError(f"The two {self.probe} results share no numeric array of the same shape.")
        return Comparison(
            probe=f"{self.probe} (delta)",
            model=self.model,
            prompts=self.prompts,
            tokens=self.tokens,
            arrays=deltas,
            meta={"minuend": self.meta, "subtrahend": other.meta},
        )

    def to_xarray(self):
        """Every array in one ``xarray.Dataset`` (needs the ``xarray`` extra), with the same dims and labels.

        A dimension keeps its name when every array that has it agrees on its labels; otherwise each of those
        arrays gets its own, named ``<array>.<dim>``. ``attrs`` hold ``probe`` and ``model`` and, as JSON text
        (so ``to_netcdf`` can write them), ``prompts``, ``tokens`` and ``meta``. The baseline is not included:
        ``result.baseline.to_xarray()``.
        """
        xr = _xarray()
        labels: dict[str, list] = {}
        conflicting = set()
        for array in self.arrays.values():
            for dim in array.dims:
                if labels.setdefault(dim, array.coords[dim]) != array.coords[dim]:
                    conflicting.add(dim)
        variables = {}
        for name, array in self.arrays.items():
            variable = array.to_xarray(name)
            variables[name] = variable.rename({d: f"{name}.{d}" for d in array.dims if d in conflicting})
        attrs = {
            "probe": self.probe,
            "model": self.model,
            "prompts": json.dumps(self.prompts),
            "tokens": json.dumps(self.tokens),
            "meta": json.dumps(to_jsonable(self.meta)),
        }
        return xr.Dataset(variables, attrs=attrs)

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs) -> dict[str, Any]:
        """Jupyter display: the main figure through Plotly's mimetype, with a self-sufficient HTML fallback."""
        caption = f"<b>{type(self).__name__}</b>: {html.escape(self.summary())}"
        return notebook_bundle(self.figure(), caption, repr(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.summary()})"


def load_result(path: str | Path) -> Result:
    """Read back what :meth:`Result.save` wrote as ``.json``: the same class, arrays (dtypes, NaN/inf,
    strings), labels, metadata and baseline."""
    from workbench.serialization import read_json, result_from_dict

    return result_from_dict(read_json(path, "result"))


def save_run(run, path: str | Path) -> Path:
    """Write a whole :class:`~workbench.run.RunResult` (every result, the logits of each pass, the
    prompts, tokens, readout and targets, the model's facts) to a ``.json`` file; :func:`load_run`
    reads it back without the model."""
    from workbench.export import check_figure_path
    from workbench.outputs import write_file
    from workbench.serialization import dumps, encode

    path = Path(path)
    check_figure_path(path, formats=(".json",))
    ctx = run.context
    body = {
        "results": {name: result.to_dict() for name, result in run.results.items()},
        "logits": {phase: encode(logits) for phase, logits in run.logits.items()},
        "context": {
            "facts": ctx.facts.to_dict(),
            "prompts": ctx.prompts,
            "tokens": encode(ctx.tokens),
            "str_tokens": ctx.str_tokens,
            "readout": ctx.readout,
            "target_ids": ctx.target_ids,
            "target_labels": ctx.target_labels,
            "phase": ctx.phase,
        },
    }
    return write_file(path, dumps("run", body))


def load_run(path: str | Path):
    """The :class:`~workbench.run.RunResult` :func:`save_run` wrote; its context carries the model's
    facts (``context.facts``) but no weights (``context.model.bridge`` is None)."""
    from workbench.models import Model, ModelFacts
    from workbench.probes.base import RunContext
    from workbench.run import RunResult
    from workbench.serialization import decode, read_json, result_from_dict

    data = read_json(path, "run")
    ctx = data["context"]
    facts = ModelFacts(
        **{
            **ctx["facts"],
            "head_to_group": tuple(ctx["facts"]["head_to_group"]),
            "devices": tuple(ctx["facts"].get("devices", ())),
        }
    )
    context = RunContext(
        model=Model(bridge=None, facts=facts),
        prompts=ctx["prompts"],
        tokens=decode(ctx["tokens"]),
        str_tokens=ctx["str_tokens"],
        readout=ctx["readout"],
        target_ids=ctx["target_ids"],
        target_labels=ctx["target_labels"],
        phase=ctx["phase"],
    )
    return RunResult(
        results={name: result_from_dict(r) for name, r in data["results"].items()},
        logits={phase: decode(v) for phase, v in data["logits"].items()},
        context=context,
    )


@dataclass(repr=False)
class Comparison(Result):
    """Before/after deltas of two results of the same probe; the figure shows the first delta."""

    kind: ClassVar[str] = "comparison"

    def figure(self, name: str | None = None, **options: Any):
        from workbench import plots

        name = name or next(iter(self.arrays))
        return plots.auto(self[name], title=f"{self.probe}: Δ {name}", diverging=True)
