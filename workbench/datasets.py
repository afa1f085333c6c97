"""Datasets of prompts: one row per item, read from JSONL, CSV or Parquet, or generated from a template.

A row has a ``prompt`` (required), optionally a ``source`` prompt for patching (the same number of
tokens), ``targets`` (single tokens a metric reports on), an ``id`` (a hash of the row when absent), and
any other columns, which travel with the item to the results and fill ``{name}`` templates of
interventions and metrics (``positions=["{bound}"]``, ``Patch(source="{source}")``, ``prob:{bound}``).

Rows that cannot run are never dropped silently: :func:`check_items` names each by its id and the reason
(empty prompt, a source that does not align, a target that is not one token, a template field the row
lacks, text a template locates that is not in the prompt), and the caller either stops or — when asked
to skip bad rows — says how many it skipped.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import DatasetError, WorkbenchError

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
KNOWN_COLUMNS = ("id", "prompt", "source", "targets")
# Columns of the results table: a dataset column with one of these names could not be carried through.
RESERVED_COLUMNS = ("item", "item_index", "condition", "grid", "block", "head", "position", "metric", "value", "noop")
ID_LENGTH = 12


@dataclass(frozen=True)
class Item:
    """One row of a dataset. ``fields`` holds every column (``prompt`` and ``source`` too), the values
    ``{name}`` templates are filled from; ``row`` is its 0-based row number in the file."""

    id: str
    prompt: str
    source: str | None = None
    targets: tuple[str, ...] | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    row: int = 0

    def extras(self) -> dict[str, Any]:
        """The columns beyond id/prompt/source/targets: what the results carry through."""
        return {k: v for k, v in self.fields.items() if k not in KNOWN_COLUMNS}


@dataclass(frozen=True)
class BadRow:
    """A row that cannot run, and why (one line, naming the fix where there is one)."""

    id: str
    row: int
    reason: str

    def __str__(self) -> str:
        return f"row {self.row + 1} (id {self.id}): {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "row": self.row + 1, "reason": self.reason}


@dataclass
class Dataset:
    """Items in file order, the rows that failed to parse (``bad``), and a hash of the content.

    ``sha256`` hashes the rows themselves (canonical JSON, in order), so the same rows in JSONL, CSV or
    Parquet — or from the same template — hash alike, and any edited row changes it."""

    items: list[Item]
    name: str
    sha256: str
    columns: list[str]  # the extra columns, in first-seen order
    bad: list[BadRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def __getitem__(self, index: int) -> Item:
        return self.items[index]

    def without(self, bad: Iterable[BadRow], report: bool = True) -> Dataset:
        """The dataset less the rows in ``bad``, dropped by row number (a duplicate id drops only the later
        row, never the good first one). With ``report`` each skipped row is listed on stderr with its reason."""
        bad = list(bad)
        drop = {b.row for b in bad}
        if report:
            for line in skipped_rows_lines(bad):
                print(line, file=sys.stderr)
        return dataclasses.replace(self, items=[it for it in self.items if it.row not in drop], bad=[])

    def to_records(self) -> list[dict[str, Any]]:
        """Every item as a plain row: id first, then the file's own columns."""
        return [{"id": it.id, **it.fields} for it in self.items]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rows": len(self.items) + len(self.bad),
            "sha256": self.sha256,
            "columns": ["id", "prompt", *(c for c in ("source", "targets") if self._has(c)), *self.columns],
        }

    def _has(self, column: str) -> bool:
        return any(column in it.fields for it in self.items)


# ----- reading ------------------------------------------------------------------------------------------


def load_dataset(path: str | Path) -> Dataset:
    """Read a JSONL (one JSON object per line), CSV (a header row) or Parquet file of prompts."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"No dataset at {path}: check the path (relative paths start at {Path.cwd()}).")
    if not path.is_file():
        raise DatasetError(f"{path} is a folder, not a dataset file: pass a .jsonl, .csv or .parquet file.")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DatasetError(f"{path.name} is not a dataset format the workbench reads: use .jsonl, .csv or .parquet.")
    if kind == "parquet":
        records = _read_parquet(path)
    else:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise DatasetError(
                f"{path.name} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}): save it as UTF-8."
            ) from None
        records = _read_jsonl(text, path.name) if kind == "jsonl" else _read_csv(text, path.name)
    return from_records(records, name=path.name)


def _read_jsonl(text: str, name: str) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"{name} line {number} is not JSON ({exc.msg} at column {exc.colno}): write one JSON object per line."
            ) from None
        except ValueError:  # an integer of more digits than Python converts (4300)
            raise DatasetError(
                f"{name} line {number} holds an integer too long to read: write it as text (in quotes)."
            ) from None
        if not isinstance(record, dict):
            raise DatasetError(
                f"{name} line {number} is a JSON {type(record).__name__}, not an object: "
                'write one object per line, e.g. {"prompt": "..."}.'
            )
        records.append(record)
    return records


def _read_csv(text: str, name: str) -> list[dict[str, Any]]:
    """Strict CSV: a quote left open is an error naming its line, and every line is accounted for (the
    header, a row, a blank line, or a line inside a quoted cell); a quoted cell that swallowed lines shaped
    like rows (a quote opened by mistake) is refused rather than read as one long cell."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records: list[tuple[int, int, list[str]]] = []  # (first line, last line, cells)
    start = 1
    try:
        for cells in reader:
            if cells:  # a blank line reads as [] and is skipped
                records.append((start, reader.line_num, cells))
            start = reader.line_num + 1
    except csv.Error as exc:
        if "end of data" in str(exc) or reader.line_num > start:
            raise DatasetError(
                f"{name} line {start}: a quoted cell opened there is never closed ({exc}): "
                'close the quote, or write a quote inside a quoted cell as "".'
            ) from None
        raise DatasetError(
            f"{name} line {reader.line_num} is not valid CSV ({exc}): quote cells that contain commas or quotes."
        ) from None
    if not records:
        return []
    (_, _, header), body = records[0], records[1:]
    if len(header) > 1:
        for first, last, cells in body:
            swallowed = [line for cell in cells for line in cell.splitlines()[1:] if _looks_like_row(line, header)]
            # With two columns one line of prose with a comma looks like a row: two such lines are needed.
            if len(swallowed) >= (1 if len(header) > 2 else 2):
                raise DatasetError(
                    f"{name} line {first}: a quoted cell runs to line {last} and holds {len(swallowed)} line(s) "
                    f"shaped like rows ({swallowed[0][:40]!r}): a quote is probably left open on line {first}; "
                    "close it (if the line breaks belong to the text, write the dataset as JSONL)."
                )
    rows: list[dict[str, Any]] = []
    for first, _, cells in body:
        if len(cells) > len(header):
            raise DatasetError(f"{name} line {first} has more cells than the header: quote cells that contain commas.")
        rows.append(dict(itertools.zip_longest(header, cells)))
    # CSV has only text: a targets cell may hold a JSON list; every other cell stays text.
    for row in rows:
        if isinstance(row.get("targets"), str) and row["targets"].startswith("["):
            with contextlib.suppress(json.JSONDecodeError):
                row["targets"] = json.loads(row["targets"])
    return rows


def _looks_like_row(line: str, header: list[str]) -> bool:
    """Whether one line inside a quoted cell parses as a whole row of ``header``'s width."""
    try:
        cells = next(csv.reader([line], strict=True), [])
    except csv.Error:
        return "," in line and line.count(",") >= len(header) - 1
    return len(cells) == len(header)


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    except WorkbenchError:
        raise
    except Exception as exc:  # pyarrow raises several types on a file that is not Parquet
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetError(f"{path.name} is not a readable Parquet file ({first}): write it again.") from None


def from_records(records: Iterable[Mapping[str, Any]], name: str = "records") -> Dataset:
    """A dataset from rows (dicts): the Python way to build one. Rows that cannot be items are kept in
    ``dataset.bad`` with their reason; a file-level problem (no ``prompt`` column) raises."""
    records = [dict(r) for r in records]
    if not records:
        raise DatasetError(f"{name} holds no rows: write at least one item with a prompt.")
    if not any("prompt" in r for r in records):
        found = sorted({k for r in records for k in r})
        raise DatasetError(
            f"{name} has no 'prompt' column (its columns: {', '.join(map(str, found)) or 'none'}): "
            "name the column of prompts 'prompt'."
        )
    reserved = sorted({k for r in records for k in r} & set(RESERVED_COLUMNS))
    if reserved:
        raise DatasetError(f"{name} has a column named {reserved[0]!r}, a name the results table uses: rename it.")
    items: list[Item] = []
    bad: list[BadRow] = []
    seen: dict[str, int] = {}  # row id -> index of its first row
    columns: dict[str, None] = {}
    for index, record in enumerate(records):
        record = {str(k): _plain(v) for k, v in record.items()}
        _refuse_huge_integers(record, index, name)
        item_id = _row_id(record)
        if item_id in seen:
            bad.append(
                BadRow(
                    item_id,
                    index,
                    f"same id as row {seen[item_id] + 1}: give every row its own id "
                    "(identical rows get the same derived id; remove the duplicate)",
                )
            )
            continue
        seen[item_id] = index
        problem = _row_problem(record)
        if problem:
            bad.append(BadRow(item_id, index, problem))
            continue
        fields = {k: v for k, v in record.items() if k != "id"}
        targets = record.get("targets")
        if isinstance(targets, str):
            targets = [targets]
        items.append(
            Item(
                id=item_id,
                prompt=record["prompt"],
                source=record.get("source") or None,
                targets=tuple(targets) if targets else None,
                fields=fields,
                row=index,
            )
        )
        for key in fields:
            if key not in KNOWN_COLUMNS:
                columns.setdefault(key)
    digest = hashlib.sha256()
    for record in records:
        digest.update(_canonical({str(k): _plain(v) for k, v in record.items()}).encode() + b"\n")
    return Dataset(items=items, name=name, sha256=digest.hexdigest(), columns=list(columns), bad=bad)


INT64 = (-(2**63), 2**63 - 1)


def _refuse_huge_integers(record: Mapping[str, Any], index: int, name: str) -> None:
    """An integer beyond 64 bits cannot reach the results table (Parquet): refused at load, by row and column."""

    def huge(value: Any) -> bool:
        if isinstance(value, list):
            return any(huge(v) for v in value)
        if isinstance(value, dict):
            return any(huge(v) for v in value.values())
        return isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]

    for key, value in record.items():
        if huge(value):
            # str() of an int over 4300 digits raises: such a one is only said to be long
            small = isinstance(value, int) and value.bit_length() < 10_000
            what = f"a {len(str(abs(value)))}-digit integer" if small else "an integer"
            raise DatasetError(
                f"{name} row {index + 1}, column {key!r}: {what} beyond 64 bits, which the results table cannot "
                "hold: write it as text (in quotes) or as a smaller number."
            )


def _row_problem(record: dict[str, Any]) -> str | None:
    prompt = record.get("prompt")
    if prompt is None or (isinstance(prompt, float) and math.isnan(prompt)):
        return "no prompt: write the prompt's text"
    if not isinstance(prompt, str):
        return f"the prompt is a {type(prompt).__name__}, not text"
    if not prompt:
        return "empty prompt: write the prompt's text"
    source = record.get("source")
    if source is not None and not isinstance(source, str):
        return f"the source is a {type(source).__name__}, not text"
    targets = record.get("targets")
    if (
        targets is not None
        and not isinstance(targets, str)
        and not (isinstance(targets, list) and all(isinstance(t, str) and t for t in targets))
    ):
        return "targets must be a text or a list of texts (each one token)"
    return None


def _plain(value: Any) -> Any:
    """Values as JSON has them: numpy scalars to Python, NaN from an empty Parquet/CSV cell to None."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        with contextlib.suppress(TypeError, ValueError):
            value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _canonical(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def _row_id(record: dict[str, Any]) -> str:
    if record.get("id") not in (None, ""):
        return str(record["id"])
    return hashlib.sha256(_canonical(record).encode()).hexdigest()[:ID_LENGTH]


# ----- templates ----------------------------------------------------------------------------------------


def from_template(
    template: str,
    values: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]],
    *,
    source: str | None = None,
    targets: Sequence[str] | str | None = None,
    name: str = "template",
) -> Dataset:
    """Prompts from a ``template`` with ``{fields}``: ``values`` is a grid (a dict of lists: every
    combination, in order) or a list of rows (dicts). ``source`` and ``targets`` may be templates too;
    every field becomes a column, so interventions can name it (``positions=["{bound}"]``)."""
    if isinstance(values, Mapping):
        keys = list(values)
        lists = [list(v) if isinstance(v, (list, tuple)) else [v] for v in values.values()]
        if any(not v for v in lists):
            empty = keys[[i for i, v in enumerate(lists) if not v][0]]
            raise DatasetError(f"The template grid's field {empty!r} has no values: give it at least one.")
        rows = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*lists)]
    else:
        rows = [dict(r) for r in values]
        if not all(isinstance(r, dict) for r in rows):
            raise DatasetError("Template values must be a grid (a dict of lists) or a list of rows (dicts).")
    records = []
    for row in rows:
        record = dict(row)
        record["prompt"] = _fill_template(template, row, "prompt")
        if source is not None:
            record["source"] = _fill_template(source, row, "source")
        if targets is not None:
            record["targets"] = [
                _fill_template(t, row, "target") for t in ([targets] if isinstance(targets, str) else targets)
            ]
        records.append(record)
    return from_records(records, name=name)


def _fill_template(text: str, row: Mapping[str, Any], what: str) -> str:
    from workbench.errors import InterventionError
    from workbench.interventions.intervention import fill

    try:
        return fill(text, row, f"The {what} template")
    except InterventionError as exc:
        raise DatasetError(str(exc)) from None


# ----- checking rows against a model --------------------------------------------------------------------


def check_items(
    model,
    dataset: Dataset,
    interventions: Sequence[Any] = (),
    metrics: Sequence[str] = (),
    targets: Sequence[str] | None = None,
) -> list[BadRow]:
    """Every row that cannot run on ``model`` with these interventions and metrics, with the reason.

    Tokenizer-only checks, before any forward pass: the prompt fits the context; the source has the
    prompt's token length; each target is one token; every ``{field}`` the interventions and metrics
    name is a column of the row; text they locate in the prompt is there. The rows that failed to
    parse (``dataset.bad``) come first."""
    from workbench.errors import TokenError
    from workbench.interventions.intervention import fill
    from workbench.metrics import resolve_metric
    from workbench.tokens import align_prompts, find_positions, single_token_id, to_tokens

    bad = list(dataset.bad)
    for item in dataset.items:
        try:
            to_tokens(model, item.prompt)
            if item.source:
                align_prompts(model, item.prompt, item.source)
            for target in item.targets or targets or ():
                single_token_id(model, target)
            for metric in metrics:
                if metric == "targets" and not (item.targets or targets):
                    raise DatasetError(
                        "the 'targets' metric needs this row's targets (a targets column) or "
                        "targets = [...] in the spec"
                    )
                if "{" in metric:
                    resolve_metric(model, fill(metric, item.fields, "Metric"))
            for intervention in interventions:
                _check_intervention(model, item, intervention, fill, find_positions, align_prompts)
        except WorkbenchError as exc:
            reason = str(exc)
            if isinstance(exc, TokenError) and item.source and "do not align" in reason:
                reason = f"source and prompt do not align: {reason}"
            bad.append(BadRow(item.id, item.row, reason))
    return sorted(bad, key=lambda b: b.row)


def _check_intervention(model, item: Item, intervention, fill, find_positions, align_prompts) -> None:
    """The parts of an intervention a row's fields decide: filled templates, located text, an aligned source."""
    from workbench.interventions.operations import MaskKeys, Patch

    op = intervention.op
    texts = [p for p in intervention.positions or () if isinstance(p, str)]
    if isinstance(op, MaskKeys):
        texts += [k for k in op.keys if isinstance(k, str)]
    for text in texts:
        find_positions(model, item.prompt, fill(text, item.fields, "Position"))
    if isinstance(op, Patch):
        for source in [op.source] if isinstance(op.source, str) else []:
            align_prompts(model, item.prompt, fill(source, item.fields, "Source"))
    for f in dataclasses.fields(op):  # a plugin operation's text parameters may name fields too
        value = getattr(op, f.name)
        for text in value if isinstance(value, tuple) else (value,):
            if isinstance(text, str) and "{" in text:
                fill(text, item.fields, f"{op.name}.{f.name}")


def skipped_rows_lines(bad: Sequence[BadRow]) -> list[str]:
    """One line per skipped row, naming it (row number and id) and why it cannot run."""
    return [f"warning: skipped {b}" for b in sorted(bad, key=lambda b: b.row)]


def bad_rows_message(bad: Sequence[BadRow], shown: int = 3) -> str:
    """One line: how many rows are bad, the first few with their reasons, and the two ways on."""
    listed = "; ".join(str(b) for b in bad[:shown])
    more = f"; and {len(bad) - shown} more" if len(bad) > shown else ""
    return (
        f"{len(bad)} bad row{'s' if len(bad) != 1 else ''}: {listed}{more}. "
        "Fix them, or pass --skip-bad-rows (skip_bad_rows=True) to run the others."
    )
