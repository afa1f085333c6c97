"""``-o key=value`` options of any probe, built-in or plugin, parsed from the probe's dataclass field types.

The field's annotation decides: ``int``, ``float``, ``bool`` and ``str`` parse as such (a text field
keeps "5" as text), a list takes a comma list or JSON (``-o blocks=6,14``, ``-o 'keys=["9", 12]'``), an
empty value is an empty list, ``none`` is ``None`` where the field allows it. Where a field takes text
or a position (``keys``, ``positions``), an item is text unless written ``@N`` (position N).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any

from workbench.errors import ProbeError

NONE_WORDS = ("none", "null")


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One option of a probe: its name, annotation (as written in the class), default and parsed type."""

    name: str
    annotation: Any
    default: Any
    text: str  # the annotation as a user reads it

    def parse(self, raw: str, probe: str) -> Any:
        try:
            return _parse(raw, self.annotation)
        except _Bad as bad:
            raise ProbeError(
                f"Option {self.name}={raw!r} of probe {probe}: {bad} (the option is {self.text}). "
                f"Write e.g. {_example(self)}."
            ) from None


class _Bad(ValueError):
    pass


def probe_options(cls: type) -> dict[str, OptionSpec]:
    """The ``-o`` options of a probe class: its init fields with their types and defaults."""
    if not dataclasses.is_dataclass(cls):
        return {}
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 — a plugin's annotation that does not resolve is taken as text
        hints = {}
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        annotation = hints.get(f.name, str)
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        )
        out[f.name] = OptionSpec(f.name, annotation, default, _show(annotation))
    return out


def parse_options(cls: type, name: str, options: list[str]) -> dict[str, Any]:
    """``["blocks=6,14", "mode=identity"]`` → keyword arguments for ``cls``, checked against its fields."""
    specs = probe_options(cls)
    kwargs = {}
    for text in options:
        if "=" not in text:
            raise ProbeError(f"Probe option {text!r} is not key=value: write e.g. -o blocks=6,14.")
        key, raw = text.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in specs:
            raise ProbeError(
                f"Probe {name} has no option {key!r}: its options are {', '.join(sorted(specs)) or 'none'} "
                f"(see `workbench probe {name} --help`)."
            )
        if key in kwargs:
            raise ProbeError(f"Option {key} is given twice: give it once.")
        kwargs[key] = specs[key].parse(raw, name)
    return kwargs


def _members(annotation) -> list:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return list(typing.get_args(annotation))
    return [annotation]


def _parse(raw: str, annotation) -> Any:
    members = _members(annotation)
    text = raw.strip()
    if type(None) in members and text.lower() in NONE_WORDS:
        return None
    lists = [m for m in members if typing.get_origin(m) in (list, tuple) or m in (list, tuple)]
    scalars = [m for m in members if m not in lists and m is not type(None)]
    if lists and (text.startswith("[") or "," in text or text == "" or not scalars):
        item_type = (typing.get_args(lists[0]) or (Any,))[0]
        if text.startswith("["):
            return [_coerce(item, item_type) for item in _json(text, list, "list")]
        return [_parse_scalar(part, item_type) for part in raw.split(",") if text != ""]
    if not scalars:
        raise _Bad("not a value of this type")
    return _parse_scalar(raw, _union(scalars))


def _union(members: list):
    return members[0] if len(members) == 1 else typing.Union[tuple(members)]  # noqa: UP007


def _parse_scalar(raw: str, annotation) -> Any:
    """One value; text keeps its spaces (" [" and "[" are different tokens), numbers do not need them."""
    members = [m for m in _members(annotation) if m is not type(None)]
    text = raw.strip()
    if str in members and int in members:  # text or a position: "9" is the token 9, "@9" is position 9
        if text.startswith("@") and text[1:].lstrip("-").isdigit():
            return _int(text[1:])
        return raw
    if members == [Any] or annotation is Any:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return raw
    if str in members:
        return raw
    if bool in members:
        if text.lower() in ("true", "yes", "1", "on"):
            return True
        if text.lower() in ("false", "no", "0", "off"):
            return False
        if len(members) == 1:
            raise _Bad(f"{text!r} is not true or false")
    if int in members:
        try:
            return _int(text[1:] if text.startswith("@") else text)  # "@N": the position marker, harmless here
        except _Bad:
            if float not in members:
                raise
    if float in members:
        try:
            value = float(text)
        except ValueError:
            raise _Bad(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise _Bad(f"{text!r} is not a finite number")
        return value
    if dict in members or typing.get_origin(members[0]) is dict:
        return _json(text, dict, "object")
    return text


def _json(text: str, kind: type, name: str):
    """``text`` parsed as a JSON value of ``kind`` (a list or an object)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Bad(f"not a JSON {name} ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, kind):
        raise _Bad(f"not a JSON {name}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _Bad(f"{text!r} is not a whole number") from None


def _coerce(item: Any, annotation) -> Any:
    """A JSON list item checked against the list's item type (JSON already typed it)."""
    members = [m for m in _members(annotation) if m is not type(None)]
    if annotation is Any or Any in members:
        return item
    for kind in (bool, int, float, str):
        if kind in members and isinstance(item, kind) and not (kind is int and isinstance(item, bool)):
            return item
    if float in members and isinstance(item, int) and not isinstance(item, bool):
        return float(item)
    if (dict in members or any(typing.get_origin(m) is dict for m in members)) and isinstance(item, dict):
        return item
    raise _Bad(f"the item {item!r} is not {_show(annotation)}")


def _show(annotation) -> str:
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _example(spec: OptionSpec) -> str:
    members = _members(spec.annotation)
    if any(typing.get_origin(m) in (list, tuple) for m in members):
        return f"-o {spec.name}=1,2 or -o '{spec.name}=[1, 2]'"
    if bool in members:
        return f"-o {spec.name}=true"
    if int in members and str not in members:
        return f"-o {spec.name}=3"
    if float in members:
        return f"-o {spec.name}=0.5"
    return f"-o {spec.name}=text"


def describe_default(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "(required)"
    return json.dumps(value) if isinstance(value, (list, dict, str)) else repr(value)
