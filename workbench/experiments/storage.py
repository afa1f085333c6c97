"""An experiment's folder: the manifest, the plan, the shards, ``results.parquet``, and what may be deleted.

- ``manifest.json``: what produced the numbers — the analysis (conditions, metrics, readout, seed), the
  dataset's hash, the model's fingerprint (file SHA-256, or the weights' hash; the hub revision when it
  has one), dtype, device, and the library versions. Its ``sha256`` (over those fields only) is printed
  on every figure and summary made from the results.
- ``plan.json``: the shards, fixed when the run starts, so a resumed run repeats the same batches.
- ``shards/<id>.parquet``: one finished shard each, written to a temporary name, synced and renamed,
  so a killed run leaves whole shards or none (a shard's id names its work: manifest, items, conditions).
- ``results.parquet``: every shard's rows, sorted, written the same way at the end; the manifest rides
  in its schema metadata so ``workbench experiment summarize`` needs nothing else.

A folder is reused only when its manifest matches; otherwise the run is refused with the first
difference. ``--force`` starts over and deletes only the files listed here (never another file).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workbench.errors import ExperimentError
from workbench.experiments.spec import canonical_json
from workbench.outputs import umask

FORMAT = "workbench-experiment/1"
MANIFEST, PLAN, RESULTS, SUMMARY, REPORT, BAD_ROWS = (
    "manifest.json",
    "plan.json",
    "results.parquet",
    "summary.json",
    "report.html",
    "bad_rows.json",
)
SHARDS = "shards"
MARKER = ".workbench-experiment"
FIGURES = ("forest.png", "forest.html")
WRITTEN = (MANIFEST, PLAN, RESULTS, SUMMARY, REPORT, BAD_ROWS, MARKER, *FIGURES)
SHARD_NAME = re.compile(r"^[0-9a-f]{16}\.parquet$")
TMP_NAME = re.compile(r"^\.tmp-.*")
METADATA_KEY = b"workbench.manifest"


# ----- output folder safety (the lead swaps this section for workbench/outputs.py) -------------------------


def check_out_dir(out: str | Path) -> bool:
    """Refuse, before the model loads, a folder the workbench may not write. Returns whether ``out`` already
    holds an experiment (to resume, or to start over with ``--force``).

    An experiment's folder grows shard by shard and is resumed in place, so it is not swapped in whole
    like the other outputs (:mod:`workbench.outputs`): it must be new, empty, or an experiment folder."""
    from workbench.outputs import require_writable

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExperimentError(f"{out} is a file: --out names a folder for the experiment's results.")
    require_writable(out, str(out), what="Experiment folder ", fix="choose another --out")
    if not out.exists():
        return False
    if (out / MARKER).is_file():
        return True
    entries = sorted(p.name for p in out.iterdir())
    if entries:
        raise ExperimentError(
            f"{out} holds files the workbench did not write ({', '.join(entries[:3])}"
            f"{', …' if len(entries) > 3 else ''}): choose a new or empty --out folder."
        )
    return False


def clear(out: str | Path) -> list[Path]:
    """Delete what the workbench wrote in ``out`` (for ``--force``) and nothing else; returns what it deleted.
    The marker stays: the folder is still the workbench's."""
    out = Path(out)
    if not (out / MARKER).is_file():
        return []
    removed = []
    for name in WRITTEN:
        path = out / name
        if path.is_file() and name != MARKER:
            path.unlink()
            removed.append(path)
    shards = out / SHARDS
    if shards.is_dir():
        for path in shards.iterdir():
            if path.is_file() and (SHARD_NAME.match(path.name) or TMP_NAME.match(path.name)):
                path.unlink()
                removed.append(path)
        with contextlib.suppress(OSError):
            shards.rmdir()  # only when nothing else is left in it
    removed += remove_partial(out)
    return removed


def remove_partial(out: str | Path) -> list[Path]:
    """Delete the temporary files a killed run left (a shard or results file cut off mid-write)."""
    out = Path(out)
    removed = []
    for folder in (out, out / SHARDS):
        if folder.is_dir():
            for path in folder.iterdir():
                if path.is_file() and TMP_NAME.match(path.name):
                    path.unlink()
                    removed.append(path)
    return removed


@contextlib.contextmanager
def exclusive(out: str | Path):
    """One run at a time per folder: a second ``experiment run`` on the same folder is refused, not mixed in."""
    import fcntl

    fd = os.open(Path(out) / MARKER, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ExperimentError(
                f"Another run is writing {out} right now: wait for it, or use another --out."
            ) from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


def claim(out: str | Path) -> None:
    """Mark ``out`` as an experiment folder (before anything else is written into it)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MARKER).is_file():
        write_bytes(
            out / MARKER, b"workbench experiment folder: these files were written by `workbench experiment run`\n"
        )


# ----- atomic writes ------------------------------------------------------------------------------------


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, sync it, then rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp's 0600 would hide results from the user's group
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_dir(path.parent)
    return path


def write_json(path: Path, value: Any) -> Path:
    return write_bytes(path, (json.dumps(value, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode())


def write_table(path: Path, table: pa.Table) -> Path:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return write_bytes(path, sink.getvalue().to_pybytes())


def _sync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ----- the manifest ---------------------------------------------------------------------------------------


def identity(experiment, dataset, model, device: str, skipped: list[str]) -> dict[str, Any]:
    """The fields that decide results.parquet's numbers; the manifest's hash is taken over these."""
    from workbench.provenance import library_versions, model_fingerprint

    facts = model.facts
    config = getattr(model.bridge.original_model, "config", None)
    return {
        "analysis": experiment.analysis(),
        "dataset": {"sha256": dataset.sha256, "rows": len(dataset) + len(dataset.bad), "skipped_rows": sorted(skipped)},
        "model": {
            "name": facts.name,
            "architecture": facts.architecture,
            "fingerprint": model_fingerprint(model),
            "revision": getattr(config, "_commit_hash", None),
            "dtype": facts.dtype,
            "device": device,
        },
        "versions": library_versions(),
    }


def build_manifest(experiment, dataset, model, device: str, skipped: list[str]) -> dict[str, Any]:
    ident = identity(experiment, dataset, model, device, skipped)
    return {
        "format": FORMAT,
        "sha256": hash_identity(ident),
        **ident,
        "name": experiment.name,
        "dataset_source": dataset.describe(),
        "model_options": experiment.model.to_dict(),
        "model_facts": model.facts.to_dict(),
        "stats": experiment.stats_options(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def hash_identity(ident: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(ident).encode()).hexdigest()


def identity_of(manifest: dict[str, Any]) -> dict[str, Any]:
    return {key: manifest.get(key) for key in ("analysis", "dataset", "model", "versions")}


def read_manifest(out: Path) -> dict[str, Any] | None:
    path = Path(out) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ExperimentError(f"{path} is not a readable manifest: run with --force to start over.") from None
    if manifest.get("format") != FORMAT:
        raise ExperimentError(
            f"{path} was written by another version of the workbench ({manifest.get('format')!r}): "
            "use another --out, or --force to start over."
        )
    return manifest


def difference(old: Any, new: Any, path: str = "") -> str | None:
    """The first field where two manifests differ, as ``field: old → new`` (None when equal)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            found = difference(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    if old != new:
        return f"{path or 'value'}: {_short(old)} → {_short(new)}"
    return None


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def refuse_if_different(out: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    found = difference(old, new)
    if found:
        raise ExperimentError(
            f"{out} holds results of a different experiment ({found}): use another --out, or "
            "--force to start over (it deletes only the files the workbench wrote there)."
        )


# ----- shards and results -------------------------------------------------------------------------------


def shard_path(out: Path, shard_id: str) -> Path:
    return Path(out) / SHARDS / f"{shard_id}.parquet"


def finished_shards(out: Path, ids: list[str]) -> set[str]:
    """The planned shards whose file exists and reads back whole (anything else is computed again)."""
    done = set()
    for shard_id in ids:
        path = shard_path(out, shard_id)
        if path.is_file():
            try:
                pq.read_metadata(path)
                done.add(shard_id)
            except Exception:  # noqa: BLE001 — a damaged file of ours is simply redone
                pass
    return done


def write_shard(out: Path, shard_id: str, table: pa.Table) -> Path:
    (Path(out) / SHARDS).mkdir(exist_ok=True)
    return write_table(shard_path(out, shard_id), table)


def consolidate(out: Path, plan: dict[str, Any], manifest: dict[str, Any]) -> pa.Table:
    """Every shard's rows in one table — sorted by item, condition (plan order) and metric, checked for
    duplicates — written atomically as results.parquet with the manifest in its metadata."""
    tables = [pq.read_table(shard_path(out, s["id"])) for s in plan["shards"]]
    table = order_rows(pa.concat_tables(tables), plan["conditions"], manifest["analysis"]["metrics"])
    table = with_manifest(table, manifest)
    write_table(Path(out) / RESULTS, table)
    return table


def order_rows(table: pa.Table, conditions: list[str], metrics: list[str]) -> pa.Table:
    c_index = pc.index_in(table["condition"], value_set=pa.array(conditions))
    m_index = pc.index_in(table["metric"], value_set=pa.array(metrics))
    keyed = table.append_column("_c", c_index).append_column("_m", m_index)
    keyed = keyed.sort_by([("item_index", "ascending"), ("_c", "ascending"), ("_m", "ascending")])
    keys = pa.Table.from_arrays([keyed["item_index"], keyed["_c"], keyed["_m"]], names=["i", "c", "m"])
    if keys.group_by(["i", "c", "m"]).aggregate([]).num_rows != keys.num_rows:
        raise ExperimentError(
            "Two shards hold the same (item, condition, metric): the folder is damaged; run with --force to start over."
        )
    return keyed.drop_columns(["_c", "_m"])


def with_manifest(table: pa.Table, manifest: dict[str, Any]) -> pa.Table:
    metadata = dict(table.schema.metadata or {})
    metadata[METADATA_KEY] = json.dumps(manifest, ensure_ascii=False).encode()
    return table.replace_schema_metadata(metadata)


def read_results(path: str | Path) -> tuple[pa.Table, dict[str, Any]]:
    """``results.parquet`` (a file, or the experiment folder holding it) and the manifest it carries."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS
    if not path.is_file():
        raise ExperimentError(
            f"No results at {path}: run `workbench experiment run SPEC --out DIR` first (or it "
            "has not finished: run it again to finish)."
        )
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 — pyarrow raises several types
        raise ExperimentError(f"{path} is not a readable results file ({str(exc).splitlines()[0]}).") from None
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ExperimentError(
            f"{path} carries no workbench manifest: it was not written by `workbench experiment run`."
        )
    return table, json.loads(raw)
