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
difference.

The folder's marker, ``.workbench-experiment``, is a journal: a header line, then one JSON line per file
the workbench wrote (its path, size and SHA-256), per file it deleted, and per temporary file it is about
to create. It is appended to (and synced) as each shard, the manifest, the summary and the report are
written, and rewritten compactly at the end of a run. The rules (:class:`Folder`):

- a file is replaced or deleted only when the marker lists it and its SHA-256 is still the one written;
  anything else is refused in one line naming the file (``UserFileError``), before any work;
- nothing is deleted by a name list or a pattern: ``--force`` deletes the files the marker lists;
- nothing is written or deleted through a symlink (``shards/`` as a link is refused);
- a temporary file is ``.wb-tmp-<random>`` in the folder it is renamed into, created exclusively after the
  marker names it, and only the names the marker holds are ever removed;
- a listed shard whose bytes changed is damaged: it is set aside as ``<id>.parquet.damaged`` (kept) and
  computed again; a changed manifest, plan or results file is refused as ``ExperimentDataError``;
- a full disk while writing is ``DiskFullError``, the temporary file removed and the folder resumable.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workbench.errors import DiskFullError, ExperimentDataError, ExperimentError, UserFileError
from workbench.experiments.spec import canonical_json

FORMAT = "workbench-experiment/1"
MANIFEST, PLAN, RESULTS, SUMMARY, REPORT, BAD_ROWS, FOREST_PNG = (
    "manifest.json",
    "plan.json",
    "results.parquet",
    "summary.json",
    "report.html",
    "bad_rows.json",
    "forest.png",
)
SHARDS = "shards"
MARKER = ".workbench-experiment"
MARK_KEY = "workbench_experiment"
MARKER_FORMAT = 2
DATA = (MANIFEST, PLAN, RESULTS)  # read back by a run: a change is damage (ExperimentDataError)
WRITTEN_BY_RUN = (SUMMARY, REPORT, BAD_ROWS)  # rewritten by a run: a change is the user's (UserFileError)
SHARD_NAME = re.compile(r"^[0-9a-f]{16}\.parquet$")
TMP_PREFIX = ".wb-tmp-"
METADATA_KEY = b"workbench.manifest"
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


# ----- the folder and its marker -----------------------------------------------------------------------------


def check_out_dir(out: str | Path, force: bool = False) -> bool:
    """Refuse, before the model loads, a folder the workbench may not write. Returns whether ``out`` already
    holds an experiment (to resume, or to start over with ``--force``).

    An experiment's folder grows shard by shard and is resumed in place, so it is not swapped in whole
    like the other outputs (:mod:`workbench.outputs`): it must be new, empty, or an experiment folder whose
    files the run would rewrite are the ones the workbench wrote (and, with ``force``, every file it would
    delete)."""
    from workbench.outputs import require_writable

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExperimentError(f"{out} is a file: --out names a folder for the experiment's results.")
    require_writable(out, str(out), what="Experiment folder ", fix="choose another --out")
    if not out.exists():
        return False
    if (out / MARKER).is_symlink() or (out / MARKER).exists():
        Folder(out).preflight(force)
        return True
    entries = sorted(p.name for p in out.iterdir())
    if entries:
        raise UserFileError(
            f"{out} holds files the workbench did not write ({', '.join(entries[:3])}"
            f"{', …' if len(entries) > 3 else ''}): choose a new or empty --out folder."
        )
    return False


def claim(out: str | Path) -> Folder:
    """Mark ``out`` as an experiment folder (before anything else is written into it); returns it."""
    out = Path(out)
    with disk_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        marker = out / MARKER
        if not (marker.exists() or marker.is_symlink()):
            try:
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
            except FileExistsError:
                pass  # another run claimed it first
            else:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(_header_line())
                    fh.flush()
                    os.fsync(fh.fileno())
                _sync_dir(out)
    return Folder(out)


def _header_line() -> str:
    from workbench import __version__

    return json.dumps({MARK_KEY: MARKER_FORMAT, "written_by": f"workbench {__version__}"}) + "\n"


@contextlib.contextmanager
def disk_errors(path: Path) -> Iterator[None]:
    """A full disk (or quota) while writing under ``path`` becomes one line that says how to go on."""
    try:
        yield
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise DiskFullError(
                f"No space left on the disk writing {path} ({exc.strerror}): free some space and run the same "
                "command again (finished shards are kept)."
            ) from None
        raise


def file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class Folder:
    """An experiment folder and its marker: what the workbench wrote there, and the only way it writes,
    deletes or sets aside a file in it (see the module docstring for the rules)."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.marker = self.out / MARKER
        self.files: dict[str, dict[str, Any]] = {}
        self.tmps: list[str] = []
        self.empty = False
        self._load()

    # --- reading the marker ---------------------------------------------------------------------------
    def _load(self) -> None:
        if self.marker.is_symlink() or not self.marker.is_file():
            raise UserFileError(
                f"{self.marker} is not the workbench's marker (a symlink or not a file): move it away or use "
                "another --out (nothing was changed)."
            )
        self.empty = self.marker.stat().st_size == 0  # killed between creating the marker and its first line
        if self.empty:
            self.files, self.tmps = {}, []
            return
        try:
            lines = self.marker.read_bytes().decode("utf-8").split("\n")
            header = json.loads(lines[0])
            version = header[MARK_KEY] if isinstance(header, dict) else None
        except (OSError, UnicodeDecodeError, ValueError, KeyError):
            version = None
        if version != MARKER_FORMAT:
            raise ExperimentDataError(
                f"{self.marker} lists no files (written by an older workbench, or damaged), so the workbench "
                "cannot tell its files from yours there: use a new --out (nothing was changed)."
            )
        files: dict[str, dict[str, Any]] = {}
        tmps: list[str] = []
        for line in lines[1:]:
            try:
                record = json.loads(line) if line.strip() else None
            except ValueError:
                record = None  # a line cut off by a kill: losing a record only makes the workbench more careful
            if not isinstance(record, dict):
                continue
            if isinstance(record.get("file"), str) and isinstance(record.get("sha256"), str):
                # Every content written since the last deletion counts as ours: a run killed between listing
                # a new version and renaming it into place leaves the previous version, also the workbench's.
                known = files.get(record["file"], {}).get("known", {})
                known = {**known, record["sha256"]: record.get("size")}
                files[record["file"]] = {"sha256": record["sha256"], "size": record.get("size"), "known": known}
            elif isinstance(record.get("deleted"), str):
                files.pop(record["deleted"], None)
            elif isinstance(record.get("tmp"), str):
                tmps.append(record["tmp"])
        self.files, self.tmps = files, tmps

    def reload(self) -> None:
        self._load()

    def _append(self, record: dict[str, Any]) -> None:
        line = ("\n" + json.dumps(record, ensure_ascii=False) + "\n").encode()  # "\n" first: after a cut-off line
        if self.empty:
            line, self.empty = _header_line().encode() + line, False
        with disk_errors(self.marker):
            fd = os.open(self.marker, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)

    # --- what may be touched ---------------------------------------------------------------------------
    def _inside(self, rel: str, create: bool = False) -> Path:
        """``out/rel``, refused when a folder on the way is a symlink or not a folder (writes and deletions
        never leave the experiment folder)."""
        parts = Path(rel).parts
        folder = self.out
        for part in parts[:-1]:
            folder = folder / part
            if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                raise UserFileError(
                    f"{folder} is a symlink or a file, not a folder: the workbench writes and deletes only inside "
                    f"{self.out}; replace it with a folder or use another --out (nothing was changed)."
                )
            if create and not folder.exists():
                with disk_errors(folder):
                    folder.mkdir()
        return self.out / rel

    def state(self, rel: str) -> str:
        """``absent``, ``ours`` (listed, same bytes), ``changed`` (listed, other bytes) or ``foreign``."""
        path = self._inside(rel)
        if not (path.exists() or path.is_symlink()):
            return "absent"
        record = self.files.get(rel)
        if record is None or path.is_symlink() or not path.is_file():
            return "foreign"
        known = record.get("known") or {record["sha256"]: record.get("size")}
        if path.stat().st_size not in known.values():
            return "changed"
        digest = file_sha256(path)
        if digest not in known:
            return "changed"
        if digest != record["sha256"]:  # an earlier version of ours: list it as the current one
            self.files[rel] = {"sha256": digest, "size": known[digest], "known": known}
        return "ours"

    def require_replaceable(self, rel: str) -> None:
        """Refuse (one line, naming the file) to replace or delete ``rel`` unless it is absent or ours."""
        state = self.state(rel)
        if state == "foreign":
            raise UserFileError(
                f"{self.out} holds {rel}, which the workbench did not write: move it away or use another --out "
                "(nothing was changed)."
            )
        if state == "changed":
            kind = ExperimentDataError if rel in DATA else UserFileError
            fix = (
                "restore it or move it away, then run again (finished shards are kept)"
                if rel in DATA
                else "move it away (it is yours now) and run again"
            )
            raise kind(
                f"{self.out / rel} changed since the workbench wrote it (its SHA-256 is not the one in "
                f"{MARKER}): {fix}; nothing was changed."
            )

    def preflight(self, force: bool = False) -> None:
        """Everything a run would rewrite (or, with ``force``, delete) checked before any work."""
        self._inside(f"{SHARDS}/x")
        for rel in (*DATA, *WRITTEN_BY_RUN):
            self.require_replaceable(rel)
        if force:
            for rel in sorted(self.files):
                if not rel.startswith(f"{SHARDS}/"):  # a changed shard is set aside, not refused
                    self.require_replaceable(rel)

    # --- writing, deleting, setting aside -------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> Path:
        """Write ``data`` at ``rel``: to a temporary file the marker names first, synced, listed with its
        SHA-256, then renamed into place (a killed run leaves the old file or the new one, never half)."""
        path = self._inside(rel, create=True)
        self.require_replaceable(rel)
        tmp_rel = (Path(rel).parent / f"{TMP_PREFIX}{secrets.token_hex(8)}").as_posix()
        self._append({"tmp": tmp_rel})
        self.tmps.append(tmp_rel)
        tmp = self.out / tmp_rel
        with disk_errors(path):
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)  # the umask applies
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                record = {"file": rel, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                self._append(record)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        self.files[rel] = {"sha256": record["sha256"], "size": record["size"], "known": {record["sha256"]: len(data)}}
        _sync_dir(path.parent)
        return path

    def write_json(self, rel: str, value: Any) -> Path:
        text = json.dumps(value, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
        return self.write_bytes(rel, text.encode())

    def write_table(self, rel: str, table: pa.Table) -> Path:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        return self.write_bytes(rel, sink.getvalue().to_pybytes())

    def delete(self, rel: str) -> bool:
        """Delete ``rel`` if it is ours (refused otherwise); False when it was not there."""
        path = self._inside(rel)
        self.require_replaceable(rel)
        if not path.exists():
            return False
        self._append({"deleted": rel})
        path.unlink()
        self.files.pop(rel, None)
        return True

    def set_aside(self, rel: str) -> Path:
        """Keep a damaged file's bytes under a new name (``.damaged``, ``.damaged-2``, …) that the workbench
        never deletes, so ``rel`` can be written again."""
        path = self._inside(rel)
        for k in range(1, 1000):
            aside = path.with_name(path.name + (".damaged" if k == 1 else f".damaged-{k}"))
            try:
                os.link(path, aside, follow_symlinks=False)  # fails when the name is taken: nothing is overwritten
            except FileExistsError:
                continue
            break
        else:
            raise UserFileError(f"{path} is damaged and 999 damaged copies are kept beside it: remove some.")
        self._append({"deleted": rel})
        path.unlink()
        self.files.pop(rel, None)
        return aside

    def remove_partial(self) -> list[Path]:
        """Delete the temporary files a killed run left: only the names the marker holds, never a link."""
        removed = []
        for rel in self.tmps:
            try:
                path = self._inside(rel)
            except UserFileError:
                continue
            if path.is_file() and not path.is_symlink():
                path.unlink()
                removed.append(path)
        return removed

    def compact(self) -> None:
        """Rewrite the marker as the header and one line per file still there (atomically)."""
        self._load()  # another Folder of this process may have appended (summarize's forest.png)
        lines = [_header_line()]
        for rel in sorted(self.files):
            if self.state(rel) == "ours":
                record = {"file": rel, "sha256": self.files[rel]["sha256"], "size": self.files[rel]["size"]}
                lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        tmp_rel = f"{TMP_PREFIX}{secrets.token_hex(8)}"
        self._append({"tmp": tmp_rel})
        tmp = self.out / tmp_rel
        with disk_errors(self.marker):
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write("".join(lines))
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.marker)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        _sync_dir(self.out)
        self._load()

    def clear(self) -> list[Path]:
        """``--force``: delete every file the marker lists (a damaged shard is set aside) and nothing else."""
        self.remove_partial()
        removed = []
        for rel in sorted(self.files):
            state = self.state(rel)
            if state == "changed" and rel.startswith(f"{SHARDS}/"):
                self.set_aside(rel)
            elif state == "ours":
                self.delete(rel)
                removed.append(self.out / rel)
            elif state != "absent":
                self.require_replaceable(rel)  # raises: preflight let it through, the user changed it since
        return removed

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[Folder]:
        """One writer at a time per folder (an ``flock`` on the folder itself): a second run is refused."""
        fd = os.open(self.out, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ExperimentError(
                    f"Another run is writing {self.out} right now: wait for it, or use another --out."
                ) from None
            self.reload()  # what the previous writer left
            yield self
        finally:
            os.close(fd)  # closing releases the lock

    # --- reading back ------------------------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any] | None:
        if self.state(MANIFEST) == "absent":
            return None
        self.require_replaceable(MANIFEST)
        return read_manifest(self.out)

    def read_plan(self) -> dict[str, Any] | None:
        if self.state(PLAN) == "absent":
            return None
        self.require_replaceable(PLAN)
        path = self.out / PLAN
        try:
            plan = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            plan = None
        if not _valid_plan(plan):
            raise ExperimentDataError(
                f"{path} is not a plan the workbench wrote: move it away and run again (finished shards are kept)."
            )
        return plan

    def finished_shards(self, ids: list[str]) -> tuple[set[str], list[tuple[str, Path]]]:
        """The planned shards whose file is the one written (hashed in full); a changed one is set aside and
        listed as damaged (it is computed again)."""
        done: set[str] = set()
        damaged: list[tuple[str, Path]] = []  # (the shard, where its damaged bytes were kept)
        for shard_id in ids:
            rel = f"{SHARDS}/{shard_id}.parquet"
            state = self.state(rel)
            if state == "ours":
                done.add(shard_id)
            elif state == "changed":
                damaged.append((rel, self.set_aside(rel)))
            elif state == "foreign":
                self.require_replaceable(rel)  # raises, naming it
        return done, damaged


def _valid_plan(plan: Any) -> bool:
    if not isinstance(plan, dict) or not isinstance(plan.get("manifest_sha256"), str):
        return False
    conditions, items, shards = plan.get("conditions"), plan.get("items"), plan.get("shards")
    if not (isinstance(conditions, list) and isinstance(items, list) and isinstance(shards, list)):
        return False
    for shard in shards:
        if (
            not isinstance(shard, dict)
            or not isinstance(shard.get("id"), str)
            or not re.fullmatch(r"[0-9a-f]{16}", shard["id"])
        ):
            return False
        for key, count in (("items", len(items)), ("conditions", len(conditions))):
            values = shard.get(key)
            if not isinstance(values, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v < count for v in values
            ):
                return False
    return True


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
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        manifest = None
    if isinstance(manifest, dict) and "format" in manifest and manifest.get("format") != FORMAT:
        raise ExperimentDataError(
            f"{path} was written by another version of the workbench ({manifest.get('format')!r}): "
            "use another --out (nothing was changed)."
        )
    if problem := manifest_problem(manifest):
        raise ExperimentDataError(
            f"{path} is not a manifest the workbench wrote ({problem}): move it away and run again "
            "(finished shards are kept), or use another --out."
        )
    return manifest


def manifest_problem(manifest: Any) -> str | None:
    """What is wrong with a manifest read back (None when it has every field a run and a summary read)."""
    if not isinstance(manifest, dict):
        return "not a JSON object"
    checks: list[tuple[str, Any, type | tuple[type, ...]]] = [
        ("format", manifest.get("format"), str),
        ("sha256", manifest.get("sha256"), str),
        ("analysis", manifest.get("analysis"), dict),
        ("model", manifest.get("model"), dict),
        ("stats", manifest.get("stats"), dict),
        ("dataset", manifest.get("dataset"), dict),
    ]
    for key, value, kind in checks:
        if not isinstance(value, kind):
            return f"{key} is missing or of the wrong type"
    analysis, stats, model = manifest["analysis"], manifest["stats"], manifest["model"]
    metrics = analysis.get("metrics")
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
        return "analysis.metrics is not a list of names"
    if not isinstance(analysis.get("clean"), str):
        return "analysis.clean is not a name"
    if not isinstance(model.get("name"), str) or not isinstance(manifest["dataset"].get("sha256"), str):
        return "model.name or dataset.sha256 is missing"
    for key, kind in (("confidence", float), ("alpha", float), ("resamples", int), ("seed", int)):
        value = stats.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
            return f"stats.{key} is missing or not a number"
    if not (0 < stats["confidence"] < 1 and 0 < stats["alpha"] < 1 and stats["resamples"] >= 1):
        return "stats are out of range"
    name = manifest.get("name")
    if name is not None and not isinstance(name, str):
        return "name is not text"
    return None


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


def shard_rel(shard_id: str) -> str:
    return f"{SHARDS}/{shard_id}.parquet"


def shard_path(out: Path, shard_id: str) -> Path:
    return Path(out) / shard_rel(shard_id)


def consolidate(folder: Folder, plan: dict[str, Any], manifest: dict[str, Any]) -> pa.Table:
    """Every shard's rows in one table — sorted by item, condition (plan order) and metric, checked for
    duplicates — written atomically as results.parquet with the manifest in its metadata."""
    tables = []
    for shard in plan["shards"]:
        path = shard_path(folder.out, shard["id"])
        try:
            tables.append(pq.read_table(path))
        except Exception as exc:  # noqa: BLE001 — pyarrow raises several types
            raise ExperimentDataError(
                f"{path} cannot be read ({_first_line(exc)}): run the same command again to compute it again."
            ) from None
    try:
        table = pa.concat_tables(tables)
    except pa.ArrowInvalid as exc:
        raise ExperimentDataError(
            f"The shards in {folder.out / SHARDS} do not share one schema ({_first_line(exc)}): use another --out."
        ) from None
    table = order_rows(table, plan["conditions"], manifest["analysis"]["metrics"])
    table = with_manifest(table, manifest)
    folder.write_table(RESULTS, table)
    return table


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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


RESULT_COLUMNS = {
    "item_index": pa.types.is_integer,
    "condition": pa.types.is_string,
    "grid": pa.types.is_string,
    "block": pa.types.is_integer,
    "head": pa.types.is_integer,
    "position": pa.types.is_string,
    "metric": pa.types.is_string,
    "value": pa.types.is_floating,
    "noop": pa.types.is_boolean,
}


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
    fix = "run `workbench experiment run` again to rebuild it (move this copy away first)"
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 — pyarrow raises several types
        raise ExperimentDataError(f"{path} is not a readable results file ({_first_line(exc)}): {fix}.") from None
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ExperimentDataError(
            f"{path} carries no workbench manifest: it was not written by `workbench experiment run`; {fix}."
        )
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        manifest = None
    if problem := manifest_problem(manifest):
        raise ExperimentDataError(f"{path} carries a damaged manifest ({problem}): {fix}.")
    for name, is_kind in RESULT_COLUMNS.items():
        if name not in table.column_names or not (
            is_kind(table.schema.field(name).type) or pa.types.is_null(table.schema.field(name).type)
        ):
            raise ExperimentDataError(f"{path} has no {name} column of the right type: {fix}.")
    conditions = set(pc.unique(table["condition"]).to_pylist())
    metrics = set(pc.unique(table["metric"]).to_pylist())
    if manifest["analysis"]["clean"] not in conditions or not set(manifest["analysis"]["metrics"]) <= metrics:
        raise ExperimentDataError(f"{path} lacks the clean run or a metric its manifest names: {fix}.")
    return table, manifest
