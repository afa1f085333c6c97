"""The model cache: GGUF files de-quantized once and kept as safetensors folders, verified on every load.

A cache entry is a Hugging Face folder under ``cache_root()/gguf`` keyed by the GGUF file (path, size,
mtime), the dtype asked for and the transformers version. It is written atomically (a temporary
sibling renamed into place) and its ``done.json``, written last, records each file's size, mtime and
SHA-256, plus the SHA-256 of its first and last MiB.

Verifying on load (:func:`entry_problem`) is cheap: sizes, then the head-and-tail hashes (2 MiB read
per file, a few milliseconds), and the full hash only for a file whose mtime differs from the record
(copied, restored or rewritten: hashing SmolLM2's 538 MB takes about a second, as long as loading it).
A truncated or extended file changes its size; an overwritten header or tail changes the end hashes;
a file replaced under the same size changes its mtime. A damaged entry (or an unreadable ``done.json``)
is rebuilt from the GGUF by the loader with a one-line warning on stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import torch

from workbench.errors import WorkbenchError

DONE = "done.json"
ENDS = 1 << 20  # bytes hashed at each end of a file on every load


def cache_root() -> Path:
    """Where de-quantized GGUF models are kept: ``$WORKBENCH_CACHE`` or ``~/.cache/workbench``."""
    if env := os.environ.get("WORKBENCH_CACHE"):
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "workbench"


def gguf_cache_dir(path: Path, dtype: torch.dtype) -> Path:
    """A cache folder keyed by the file's path, size, mtime, the dtype asked for and the transformers version."""
    stat = path.stat()
    import transformers

    # The transformers version is part of the key: its GGUF de-quantization has changed between releases.
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{dtype}|{transformers.__version__}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{path.stem}-{digest}"


def require_writable_cache(entry: Path) -> None:
    """Refuse, before a conversion starts, a cache that cannot take the result (names the fix)."""
    from workbench.outputs import require_writable

    require_writable(
        entry.parent,
        str(cache_root()),
        what="The model cache (WORKBENCH_CACHE) ",
        fix="set WORKBENCH_CACHE to a writable folder, or pass --no-cache (cache=False) to convert in memory",
    )


def file_record(path: Path) -> dict[str, object]:
    """Size, mtime, full SHA-256 and the SHA-256 of the first and last MiB of one file."""
    stat = path.stat()
    with open(path, "rb") as fh:
        full = hashlib.file_digest(fh, "sha256").hexdigest()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": full, "ends_sha256": ends_sha256(path)}


def ends_sha256(path: Path) -> str:
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        digest.update(fh.read(ENDS))
        if size > ENDS:
            fh.seek(max(ENDS, size - ENDS))
            digest.update(fh.read(ENDS))
    return digest.hexdigest()


def entry_files(folder: Path) -> dict[str, dict[str, object]]:
    return {p.name: file_record(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != DONE}


def read_done(entry: Path) -> dict | None:
    """The entry's ``done.json``, or None when it is missing or unreadable."""
    try:
        data = json.loads((entry / DONE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def entry_problem(entry: Path) -> str | None:
    """What is wrong with a cache entry, or None when it verifies; ``"missing"`` when there is none.

    An entry written before sizes and hashes were recorded passes here; the loader records them
    once it has loaded (:func:`record_hashes`).
    """
    if not entry.exists():
        return "missing"
    done = read_done(entry)
    if done is None:
        return f"{DONE} is missing or unreadable"
    files = done.get("files")
    if files is None:
        return None  # an older entry: verified by loading it
    if not isinstance(files, dict) or not files:
        return f"{DONE} lists no files"
    for name, record in files.items():
        path = entry / name
        try:
            stat = path.stat()
        except OSError:
            return f"{name} is missing"
        if stat.st_size != record.get("size"):
            return f"{name} has {stat.st_size} bytes, {record.get('size')} were written"
        if ends_sha256(path) != record.get("ends_sha256"):
            return f"the first or last MiB of {name} changed"
        if stat.st_mtime_ns != record.get("mtime_ns") and file_record(path)["sha256"] != record.get("sha256"):
            return f"{name} changed since it was written: its SHA-256 differs"
    return None


def record_hashes(entry: Path, source: Path) -> None:
    """Write ``done.json`` with every file's size and hashes (new entries, and older ones once loaded).

    Also refreshes recorded mtimes after a full-hash check, so the next load is cheap again. A cache
    that cannot be written keeps its older record.
    """
    data = json.dumps({"source": str(source), "files": entry_files(entry)}, indent=1)
    partial = entry / (DONE + ".partial")
    try:
        partial.write_text(data, encoding="utf-8")
        os.replace(partial, entry / DONE)
    except OSError:
        partial.unlink(missing_ok=True)


def needs_rehash(entry: Path) -> bool:
    """Whether ``done.json`` lacks hashes or records mtimes that changed (a verified copy)."""
    done = read_done(entry) or {}
    files = done.get("files")
    if not isinstance(files, dict):
        return True
    return any((entry / n).stat().st_mtime_ns != r.get("mtime_ns") for n, r in files.items())


def discard_entry(entry: Path, problem: str, source: Path) -> None:
    """Say (one line on stderr) that a damaged entry is rebuilt, and remove it."""
    print(
        f"warning: the cached conversion of {source.name} at {entry} is damaged ({problem}); rebuilding it.",
        file=sys.stderr,
    )
    shutil.rmtree(entry, ignore_errors=True)


def write_cache(hf_model, tokenizer, target: Path, source: Path) -> None:
    """Save the de-quantized model atomically: a half-written cache would load wrong weights later.

    Written into a temporary sibling, ``done.json`` (with every file's hashes) last, then renamed into
    place under a lock, so concurrent conversions of one model never mix their files.
    """
    from workbench.outputs import locked, swap_in, temporary_sibling

    hf_model.hf_quantizer = None
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    tmp = None
    try:
        tmp = temporary_sibling(target)
        hf_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        record_hashes(tmp, source)
        if read_done(tmp) is None:
            raise OSError("could not write done.json")
        with locked(target.parent):
            if entry_problem(target) is not None:  # another process may have finished first
                swap_in(tmp, target)
    except OSError as exc:
        raise WorkbenchError(
            f"Could not write the model cache at {target} ({exc}): set WORKBENCH_CACHE to a "
            "writable folder, or pass --no-cache."
        ) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def cached_models() -> list[dict[str, str]]:
    """De-quantized GGUF models in the cache, with the file each came from (``?`` when unreadable)."""
    rows = []
    for folder in sorted((cache_root() / "gguf").glob("*/")):
        if folder.name.startswith("."):
            continue  # a conversion in progress
        done = read_done(folder)
        if done is not None:
            rows.append({"path": str(folder), "source": str(done.get("source", "?"))})
        elif (folder / DONE).exists():
            rows.append({"path": str(folder), "source": "? (unreadable done.json: rebuilt on next load)"})
    return rows
