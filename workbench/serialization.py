"""Exact JSON for results, runs and study records: what :meth:`~workbench.results.Result.save` writes,
:func:`load_result` reads.

Plain JSON stays plain (numbers, strings, lists, string-keyed dicts), so a saved file is easy to read
anywhere; what JSON cannot say is tagged with a ``"__workbench__"`` key and restored on load: NaN and
±inf, tuples, dicts with non-string keys, numpy scalars, tensors and arrays (dtype, shape, tensor or
ndarray), :class:`~workbench.results.Named` arrays and whole results (with their class, which must
be a :class:`~workbench.results.Result` subclass). Arrays are nested lists, NaN/inf written as
``null`` with their positions kept beside them, or, above :data:`INLINE_LIMIT` entries, base64 of the
little-endian bytes (exact and about a fifth of the size).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.errors import ExportError

TAG = "__workbench__"
INLINE_LIMIT = 1 << 16
RESULT_FIELDS = ("probe", "model", "prompts", "tokens", "arrays", "meta", "baseline")


# --- values --------------------------------------------------------------------------------------


def encode(value: Any) -> Any:
    """A JSON-ready copy of ``value`` that :func:`decode` turns back into an equal value of the same types."""
    from workbench.results import Named, Result

    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int) and not isinstance(value, np.integer):
        return value
    if isinstance(value, float) and not isinstance(value, np.floating):
        return value if math.isfinite(value) else {TAG: "float", "value": str(value)}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, tuple):
        return {TAG: "tuple", "items": [encode(v) for v in value]}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and TAG not in value:
            return {k: encode(v) for k, v in value.items()}
        return {TAG: "dict", "items": [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, np.generic):
        return {TAG: "scalar", "dtype": value.dtype.str, "value": encode(value.item())}
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return {TAG: "array", **encode_array(value)}
    if isinstance(value, Named):
        return {TAG: "named", **named_to_dict(value)}
    if isinstance(value, Result):
        return {TAG: "result", **result_to_dict(value)}
    # Anything else (a path, a dtype, a user object) is kept as its text.
    return {TAG: "text", "type": type(value).__qualname__, "value": str(value)}


def decode(value: Any) -> Any:
    """The inverse of :func:`encode`."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    tag = value.get(TAG)
    if tag is None:
        return {k: decode(v) for k, v in value.items()}
    if tag == "float":
        return float(value["value"])
    if tag == "tuple":
        return tuple(decode(v) for v in value["items"])
    if tag == "dict":
        return {_hashable(decode(k)): decode(v) for k, v in value["items"]}
    if tag == "scalar":
        return np.dtype(value["dtype"]).type(decode(value["value"]))
    if tag == "array":
        return decode_array(value)
    if tag == "named":
        return named_from_dict(value)
    if tag == "result":
        return result_from_dict(value)
    if tag == "text":
        return value["value"]
    raise ExportError(f"Unknown saved type {tag!r}: the file was written by a newer workbench; upgrade it.")


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


# --- arrays --------------------------------------------------------------------------------------


def encode_array(array: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """``type``, ``dtype``, ``shape`` and the entries: nested ``values`` (non-finite as null, with their
    flat positions in ``nonfinite``) or, for large numeric arrays, base64 ``data``."""
    if isinstance(array, torch.Tensor):
        kind, dtype = "tensor", str(array.dtype).removeprefix("torch.")
        tensor = array.detach().cpu()
        numbers = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    else:
        kind, numbers = "ndarray", np.asarray(array)
        dtype = numbers.dtype.str if numbers.dtype.kind in "US" else str(numbers.dtype)
    if numbers.dtype.kind == "c":
        raise ExportError("Complex arrays cannot be saved as JSON: save their real and imaginary parts.")
    out: dict[str, Any] = {"type": kind, "dtype": dtype, "shape": list(numbers.shape)}
    if numbers.dtype.kind == "O":
        out["values"] = encode(numbers.tolist())
        return out
    if numbers.dtype.kind in "fiub" and numbers.size > INLINE_LIMIT:
        little = numbers.astype(numbers.dtype.newbyteorder("<"), copy=False)
        out["data"] = base64.b64encode(np.ascontiguousarray(little).tobytes()).decode("ascii")
        out["data_dtype"] = little.dtype.str
        return out
    if numbers.dtype.kind == "f":
        bad = ~np.isfinite(numbers)
        if bad.any():
            flat = numbers.ravel()
            where = np.flatnonzero(bad.ravel())
            out["nonfinite"] = {
                name: [int(i) for i in where if test(flat[i])]
                for name, test in (("nan", np.isnan), ("inf", lambda x: x > 0), ("-inf", lambda x: x < 0))
            }
            out["nonfinite"] = {k: v for k, v in out["nonfinite"].items() if v}
            numbers = np.where(bad, 0, numbers)
            values = numbers.tolist()
            _blank(values, where, numbers.shape)
            out["values"] = values
            return out
    out["values"] = numbers.tolist()
    return out


def _blank(values: list, flat_positions: np.ndarray, shape: tuple[int, ...]) -> None:
    """Write ``None`` at each flat position of a nested list (JSON's stand-in for NaN/inf)."""
    if not shape:
        return
    for i in flat_positions:
        index = np.unravel_index(int(i), shape)
        row = values
        for j in index[:-1]:
            row = row[j]
        row[index[-1]] = None


def decode_array(data: dict[str, Any]) -> torch.Tensor | np.ndarray:
    shape, dtype = tuple(data["shape"]), data["dtype"]
    if "data" in data:
        raw = np.frombuffer(base64.b64decode(data["data"]), dtype=np.dtype(data["data_dtype"]))
        numbers = raw.reshape(shape).astype(raw.dtype.newbyteorder("="))
    elif data["type"] == "ndarray" and np.dtype(dtype).kind == "O":
        numbers = np.empty(int(np.prod(shape)), dtype=object)
        for i, item in enumerate(_flatten(decode(data["values"]), len(shape), None)):
            numbers[i] = item
        numbers = numbers.reshape(shape)
    else:
        numbers = np.array(list(_flatten(data["values"], len(shape))), dtype=_numpy_dtype(data)).reshape(shape)
        nonfinite = data.get("nonfinite", {})
        if nonfinite:
            flat = numbers.reshape(-1)
            for name, positions in nonfinite.items():
                flat[positions] = float(name)
    if data["type"] == "tensor":
        tensor = torch.from_numpy(numbers if numbers.flags.c_contiguous else numbers.copy())
        return tensor.to(getattr(torch, dtype)) if dtype == "bfloat16" else tensor
    return numbers


def _numpy_dtype(data: dict[str, Any]) -> np.dtype:
    dtype = data["dtype"]
    if data["type"] == "tensor":
        if dtype == "bfloat16":  # numpy has no bfloat16: read as float32, converted back by the caller
            return np.dtype(np.float32)
        return np.dtype(torch.empty(0, dtype=getattr(torch, dtype)).numpy().dtype)
    return np.dtype(dtype)


def _flatten(values: Any, ndim: int, blank: Any = float("nan")):
    """The leaves of a nested list ``ndim`` deep; ``None`` (JSON's stand-in for NaN/inf) becomes ``blank``."""
    if ndim == 0:
        yield blank if values is None else values
        return
    for item in values:
        yield from _flatten(item, ndim - 1, blank)


# --- named arrays and results --------------------------------------------------------------------


def named_to_dict(array) -> dict[str, Any]:
    return {
        "dims": list(array.dims),
        "coords": {d: encode(list(c)) for d, c in array.coords.items()},
        **encode_array(array.values),
    }


def named_from_dict(data: dict[str, Any]):
    from workbench.results import Named

    return Named(decode_array(data), tuple(data["dims"]), {d: decode(c) for d, c in data["coords"].items()})


def result_to_dict(result) -> dict[str, Any]:
    """Everything in a :class:`~workbench.results.Result` (and any field a subclass adds), with its class."""
    cls = type(result)
    out = {
        "class": f"{cls.__module__}:{cls.__qualname__}",
        "probe": result.probe,
        "model": result.model,
        "prompts": encode(result.prompts),
        "tokens": encode(result.tokens),
        "meta": encode(result.meta),
        "arrays": {name: named_to_dict(array) for name, array in result.arrays.items()},
    }
    extra = {
        f.name: encode(getattr(result, f.name))
        for f in dataclasses.fields(result)
        if f.init and f.name not in RESULT_FIELDS
    }
    if extra:
        out["fields"] = extra
    if result.baseline is not None:
        out["baseline"] = result_to_dict(result.baseline)
    return out


def result_from_dict(data: dict[str, Any]):
    """Rebuild a result of the saved class; ``ExportError`` when the data is not a saved result."""
    if not isinstance(data, dict) or "class" not in data or "arrays" not in data:
        raise ExportError("This is not a saved workbench result (no class or arrays): save it with Result.save(…json).")
    cls = result_class(data["class"])
    baseline = data.get("baseline")
    return cls(
        probe=data["probe"],
        model=data["model"],
        prompts=decode(data["prompts"]),
        tokens=decode(data["tokens"]),
        arrays={name: named_from_dict(array) for name, array in data["arrays"].items()},
        meta=decode(data["meta"]),
        baseline=None if baseline is None else result_from_dict(baseline),
        **{k: decode(v) for k, v in data.get("fields", {}).items()},
    )


# The workbench's modules and packages (with every submodule) that define Result subclasses: imported — never a
# module named in a file — before a saved class is looked up. tests/reliability/test_roundtrip.py checks that
# every Result subclass in the package's source is reached from here.
BUILT_IN_RESULT_MODULES = (
    "workbench.results",
    "workbench.probes",
    "workbench.sweeps",
    "workbench.attribution",
    "workbench.features",
    "workbench.circuits",
)
RESULT_ENTRY_POINT_GROUP = "workbench.results"
_RESULT_CLASSES: dict[str, type] = {}  # "module:qualname" -> class
_RESULT_PLUGINS: dict[str, type] = {}  # entry-point name -> class
_RESULT_PLUGIN_ERRORS: dict[str, str] = {}
_LOADED: list[bool] = []  # non-empty once the built-in modules and the plugins were loaded


def class_key(cls: type) -> str:
    """How a saved result names its class: ``module:qualname``."""
    return f"{cls.__module__}:{cls.__qualname__}"


def register_result_class(cls: type) -> type:
    """Make a :class:`~workbench.results.Result` subclass loadable by :func:`load_result` (a class decorator).

    Every subclass the process has defined registers itself when results are loaded (the workbench's own,
    a notebook's, an installed plugin's); a plugin that defines result classes outside a probe module names
    one in the entry-point group ``workbench.results``. A name already taken by another class is refused."""
    from workbench.results import Result

    if not (isinstance(cls, type) and issubclass(cls, Result)):
        raise ExportError(f"{cls!r} is not a workbench Result subclass: subclass workbench.results.Result.")
    key = class_key(cls)
    if _RESULT_CLASSES.setdefault(key, cls) is not cls:
        raise ExportError(f"The result class name {key} is taken by another class: kept the original.")
    return cls


def result_classes() -> dict[str, type]:
    """Every result class a saved file may name: the workbench's own, then installed plugins' (probe and
    result entry points, loaded contained: a plugin that raises or exits at import is reported, not fatal),
    then every other subclass this process has defined (a notebook's)."""
    from workbench.plugins import load_entry_points
    from workbench.probes.registry import available_probes
    from workbench.results import Result

    if not _LOADED:
        for name in BUILT_IN_RESULT_MODULES:
            _import_built_in(name)
        _register_subclasses(Result)  # built-ins first: a plugin cannot take their names
        available_probes()  # loads probe plugins, contained (their modules define their results)
        load_entry_points(
            RESULT_ENTRY_POINT_GROUP, _RESULT_PLUGINS, _RESULT_PLUGIN_ERRORS, register_result_class, "result class"
        )
        _LOADED.append(True)
    _register_subclasses(Result)  # and any subclass defined since (a notebook's)
    return dict(_RESULT_CLASSES)


def _import_built_in(name: str) -> None:
    """Import one of the workbench's own modules, and a package's submodules (a broken one is skipped: its
    results then load as plain Results, with the warning)."""
    import importlib.util
    import pkgutil

    if importlib.util.find_spec(name) is None:
        return
    module = importlib.import_module(name)
    for sub in pkgutil.walk_packages(getattr(module, "__path__", []), prefix=f"{name}."):
        with contextlib.suppress(Exception):
            importlib.import_module(sub.name)


def result_plugin_errors() -> dict[str, str]:
    """Result-class plugins that failed to load, with why (one line each)."""
    result_classes()
    return dict(_RESULT_PLUGIN_ERRORS)


def _register_subclasses(root: type) -> None:
    stack = [root]
    while stack:
        cls = stack.pop()
        _RESULT_CLASSES.setdefault(class_key(cls), cls)
        stack.extend(cls.__subclasses__())


def result_class(spec: str) -> type:
    """The registered class a saved result names (``module:qualname``); only Result subclasses are accepted.

    The name is looked up in :func:`result_classes`, never imported: a saved file cannot make the workbench
    import a module (``workbench.__main__`` would run the CLI). A name in the workbench's own modules that is
    not registered is refused; any other name that is not registered loads as a plain
    :class:`~workbench.results.Result` with a one-line warning (saying which plugin failed, if one did), so the
    numbers still load; a name that is a loaded object other than a Result is refused.
    """
    from workbench.results import Result

    spec = str(spec)
    found = result_classes().get(spec)
    if found is not None:
        return found
    module_name, _, qualname = spec.partition(":")
    loaded: Any = sys.modules.get(module_name)
    for part in qualname.split(".") if loaded is not None else ():
        loaded = vars(loaded).get(part) if hasattr(loaded, "__dict__") else None  # no __getattr__, no import
    if loaded is not None and not (isinstance(loaded, type) and issubclass(loaded, Result)):
        raise ExportError(f"The saved class {spec} is not a workbench Result: this file is not a saved result.")
    if module_name == "workbench" or module_name.startswith("workbench."):
        raise ExportError(
            f"The saved class {spec} is not a result class of this workbench (the file was edited, or written by "
            "another version): re-save the result with this version."
        )
    failed = _failed_plugin(module_name)
    why = f" (the plugin {failed[0]!r} failed to load: {failed[1]})" if failed else ""
    print(f"warning: saved result class {spec} is not available{why}: loaded as a plain Result.", file=sys.stderr)
    return Result


def _failed_plugin(module_name: str) -> tuple[str, str] | None:
    """The plugin (entry-point name, error) whose module is ``module_name``, if it failed to load."""
    from importlib.metadata import entry_points

    from workbench.probes.registry import ENTRY_POINT_GROUP, plugin_errors

    groups = ((ENTRY_POINT_GROUP, plugin_errors()), (RESULT_ENTRY_POINT_GROUP, dict(_RESULT_PLUGIN_ERRORS)))
    for group, errors in groups:
        for ep in entry_points(group=group):
            module = ep.value.split(":")[0].strip()
            if ep.name in errors and (module_name == module or module_name.startswith(module + ".")):
                return ep.name, errors[ep.name]
    return None


# --- files ---------------------------------------------------------------------------------------


def read_json(path: str | Path, kind: str) -> dict[str, Any]:
    """A JSON file the workbench wrote as ``kind`` (``result``, ``run``, ``random-number study``)."""
    from workbench.outputs import MARK_KEY

    path = Path(path)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ExportError(f"No file at {path}: check the path.") from None
    except IsADirectoryError:
        raise ExportError(f"{path} is a folder: pass the JSON file inside it.") from None
    except OSError as exc:
        raise ExportError(f"Cannot read {path} ({exc.strerror}).") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ExportError(f"{path} is not valid JSON ({exc}): it is damaged or not a workbench file.") from None
    written = data.get(MARK_KEY, {}) if isinstance(data, dict) else {}
    if not isinstance(written, dict) or written.get("kind") != kind:
        what = (
            f"a workbench {written['kind']} file"
            if isinstance(written, dict) and written.get("kind")
            else "not written by this version of the workbench"
        )
        raise ExportError(f"{path} is {what}, not a saved {kind}: pass a file written by the matching save.")
    return data


def dumps(kind: str, body: dict[str, Any], indent: int | None = None) -> str:
    """``body`` as JSON with the workbench's mark for ``kind`` first (see :mod:`workbench.outputs`)."""
    from workbench.outputs import json_mark

    return json.dumps(json_mark(kind) | body, indent=indent, allow_nan=False)
