"""Where the workbench writes: never over a file it did not write, never half-written.

Every command and API call that writes goes through this module.

- A *folder* output (a study report, a probe's figures, a sampling result) is written into a temporary
  sibling and swapped into place at the end (:func:`output_folder`). The folder it replaces must be
  new, empty, or carry the workbench's marker (``.workbench-output.json``) for the same kind of output.
  The marker is written last and lists every file with its size and SHA-256, so a half-written folder
  is never taken for a finished one, and a folder holding anything the marker does not list (a file
  the user added or edited) is refused, naming it.
- A *single file* (``sweep.html``, ``result.json``, ``figure.png``) is written the same way
  (:func:`write_file`) and overwrites only a file carrying the workbench's mark inside it: a
  ``<meta name="generator">`` tag in HTML, a ``"workbench_output"`` key in JSON, a comment in SVG, a
  ``tEXt`` chunk in PNG. Formats that cannot carry a mark (PDF, JPEG, WebP) never overwrite anything.
- Every path is checked (:func:`check_folder`, :func:`check_file`) before the model loads, so a bad
  ``--out`` fails in a second instead of after the work.

Failures and SIGINT/SIGTERM remove the temporary copy and leave the previous output as it was;
writers to the same folder take turns through an ``flock`` on the parent folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from workbench.errors import ExportError

# The kinds of folder output; a folder's marker names one, and only that kind may replace it.
STUDY = "random-number study"
PROBE = "probe"
AUDIT = "randomness audit"
ANOMALOUS = "anomalous tokens"
EXPLORER = "temperature explorer"

MARKER = ".workbench-output.json"
MARK_KEY = "workbench_output"
HTML_MARK = '<meta name="generator" content="workbench">'
SVG_MARK = "<!-- generator: workbench -->"
PNG_MARK_KEYWORD = b"workbench"
MARKABLE = (".html", ".htm", ".json", ".svg", ".png")
_JSON_MARKED = re.compile(rb'^\s*\{\s*"workbench_output"\s*:')


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived while the CLI (or a write) was running; unwinding cleans up."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise_interrupted(signum, _frame):
    raise Interrupted(signum)


def interrupt_on_signals(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
    """Turn ``signals`` into :class:`Interrupted` for the rest of the process (the CLI calls this)."""
    for signum in signals:
        signal.signal(signum, _raise_interrupted)


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While writing, let SIGTERM unwind like Ctrl-C (so the temporary copy is removed), unless the
    program already handles SIGTERM itself."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    if main and previous == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        if main and previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM for the few system calls that swap an output in, so no swap is half done."""
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder`` itself: writers into the same parent folder take turns."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def umask() -> int:
    """The process's umask, read without changing it where Linux says it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temporary_sibling(target: Path) -> Path:
    """A new hidden folder next to ``target`` (same file system, so the final rename is atomic), with
    the mode a plain ``mkdir`` would give it (``tempfile.mkdtemp`` makes 0700 folders)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


# --- checks --------------------------------------------------------------------------------------


def resolve(path: str | os.PathLike) -> Path:
    """The absolute target, ``~`` expanded and symlinks followed (a link to a folder writes into it)."""
    target = Path(os.path.realpath(Path(path).expanduser()))
    if target.is_symlink():  # realpath stops at a link it cannot follow
        raise ExportError(
            f"Output path {path} is a symlink that leads back to itself: remove it or choose another path."
        )
    return target


def _refuse_special(target: Path, shown: str) -> None:
    cwd = Path.cwd().resolve()
    home = Path.home().resolve()
    if target == cwd or target in cwd.parents:
        what = "the current folder" if target == cwd else "a folder above the current one"
    elif target == home:
        what = "your home folder"
    else:
        return
    raise ExportError(
        f"Output folder {shown} is {what}; the workbench replaces its output folder as a whole, so name a new "
        f"subfolder instead, e.g. {os.path.join(shown, 'report')}."
    )


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and not path.is_symlink():
        path = path.parent
    return path


def require_writable(folder: Path, shown: str, what: str = "", fix: str = "choose a writable folder") -> None:
    """Refuse a folder that cannot take a new file (checked by creating an unnamed one, not guessed)."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise ExportError(f"{what}{shown} cannot be created: {existing} is not a folder; {fix}.")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise ExportError(f"{what}{shown} is not writable ({exc.strerror} in {existing}): {fix}.") from None


def check_folder(path: str | os.PathLike, kind: str) -> Path:
    """Refuse, before any work, a folder the workbench may not replace; return the resolved target.

    Allowed: a new path, an empty folder, or a folder whose marker says it holds a ``kind`` output
    and which holds nothing else. Nothing is created or changed here.
    """
    shown = str(path)
    target = resolve(path)
    _refuse_special(target, shown)
    if target.exists():
        if not target.is_dir():
            raise ExportError(f"Output folder {shown} is a file, not a folder: choose a new or empty folder.")
        _require_replaceable(target, kind, shown)
        require_writable(target, shown, what="Output folder ")
    require_writable(target.parent, shown, what="Output folder ")
    return target


def _require_replaceable(folder: Path, kind: str, shown: str) -> None:
    entries = sorted(folder.iterdir())
    if not entries:
        return
    marker = folder / MARKER
    listed = read_marker(folder)
    if listed is None:
        foreign = next((e for e in entries if e.name != MARKER), marker)
        raise ExportError(
            f"Output folder {shown} holds {foreign.name}, which the workbench did not write: choose a new or empty "
            "folder (nothing was changed)."
        )
    if listed["kind"] != kind:
        raise ExportError(
            f"Output folder {shown} holds a workbench {listed['kind']} output, not a {kind} output: choose another "
            "folder (nothing was changed)."
        )
    if unlisted := _first_unlisted(folder, listed["files"]):
        raise ExportError(
            f"Output folder {shown} holds {unlisted}, which the workbench did not write (or which changed since): "
            "move it away or choose another folder (nothing was changed)."
        )


def read_marker(folder: Path) -> dict[str, Any] | None:
    """``{"kind", "files"}`` of a folder the workbench wrote, or None (no marker, or not readable as one)."""
    marker = folder / MARKER
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
        kind, files = data[MARK_KEY]["kind"], data["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(kind, str) or not isinstance(files, dict):
        return None
    return {"kind": kind, "files": files}


def _first_unlisted(folder: Path, files: dict[str, dict]) -> str | None:
    """The first entry under ``folder`` (sorted) that the marker does not list as written unchanged."""
    parents = {p for name in files for p in Path(name).parents}
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        base = Path(root).relative_to(folder)
        for name in sorted(dirs):
            rel = base / name
            if (folder / rel).is_symlink() or rel not in parents:
                return f"{rel}/"
        for name in sorted(names):
            rel = base / name
            if rel == Path(MARKER):
                continue
            record = files.get(rel.as_posix())
            if record is None or not _unchanged(folder / rel, record):
                return str(rel)
    return None


def _unchanged(path: Path, record: dict) -> bool:
    """Same size and mtime as recorded, or (when copied or touched) the same SHA-256."""
    if path.is_symlink() or not path.is_file():
        return False
    stat = path.stat()
    if stat.st_size != record.get("size"):
        return False
    return stat.st_mtime_ns == record.get("mtime_ns") or file_sha256(path) == record.get("sha256")


def file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _mark_json(kind: str) -> dict[str, Any]:
    from workbench import __version__

    return {"kind": kind, "version": 1, "written_by": f"workbench {__version__}"}


def write_marker(folder: Path, kind: str) -> None:
    """List every file under ``folder`` with size, mtime and SHA-256; written last, atomically."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if rel == MARKER or path.is_symlink():
                continue
            stat = path.stat()
            files[rel] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_sha256(path)}
    data = json.dumps({MARK_KEY: _mark_json(kind), "files": files}, indent=1)
    partial = folder / (MARKER + ".partial")
    partial.write_text(data, encoding="utf-8")
    os.replace(partial, folder / MARKER)


# --- folders -------------------------------------------------------------------------------------


@contextlib.contextmanager
def output_folder(path: str | os.PathLike, kind: str) -> Iterator[Path]:
    """Write a ``kind`` output folder: yields an empty temporary folder; on success it becomes ``path``.

    Refused before anything is written when ``path`` may not be replaced (see :func:`check_folder`).
    On an exception, Ctrl-C or SIGTERM the temporary folder is removed and ``path`` is left as it was.
    """
    parent = resolve(path).parent
    if parent.is_dir():
        with locked(parent):  # not while another writer swaps its folder in (its marker and files would disagree)
            target = check_folder(path, kind)
    else:
        target = check_folder(path, kind)
    with _sigterm_unwinds():
        tmp = temporary_sibling(target)
        try:
            yield tmp
            write_marker(tmp, kind)
            with locked(target.parent), _signals_deferred():
                check_folder(path, kind)  # again: another writer or the user may have changed it meanwhile
                swap_in(tmp, target)
                shutil.rmtree(tmp, ignore_errors=True)  # the previous output, now at tmp
        except BaseException:
            with _signals_deferred():
                shutil.rmtree(tmp, ignore_errors=True)
            raise


def swap_in(new: Path, target: Path) -> None:
    """Put folder ``new`` at ``target``; the previous ``target`` (if any) ends up at ``new``.

    An atomic exchange where the kernel offers one (``renameat2``), otherwise two renames.
    """
    if not target.exists():
        os.rename(new, target)
        return
    if _exchange(new, target):
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.rename(target, aside / "previous")
    os.rename(new, target)
    os.rename(aside / "previous", new)
    aside.rmdir()


def _exchange(a: Path, b: Path) -> bool:
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


_LIBC: ctypes.CDLL | bool | None = None  # False: no libc to load


def _libc():
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _LIBC = False
    return _LIBC or object()


# --- single files --------------------------------------------------------------------------------


def check_file(path: str | os.PathLike, formats: tuple[str, ...] | None = None) -> Path:
    """Refuse, before any work, a file path the workbench may not write; return the resolved target.

    ``formats`` (suffixes such as ``.json``) restricts what is accepted. An existing file is replaced
    only when it carries the workbench's mark; nothing is created or changed here.
    """
    shown = str(path)
    target = resolve(path)
    suffix = target.suffix.lower()
    if formats is not None and suffix not in formats:
        raise ExportError(f"Unknown format {suffix or '(no suffix)'!r} for {shown}: use one of {', '.join(formats)}.")
    if target.is_dir():
        example = os.path.join(shown, "result" + (suffix or ".json"))
        raise ExportError(f"Output file {shown} is a folder, but a file such as {example} is expected.")
    if target.exists():
        if suffix not in MARKABLE:
            raise ExportError(
                f"Output file {shown} exists and {suffix} files cannot carry the workbench's mark, so it never "
                "overwrites one: choose a new name or remove the file yourself."
            )
        if not is_marked(target):
            raise ExportError(
                f"Output file {shown} exists and was not written by the workbench: choose a new name or remove it "
                "yourself (nothing was changed)."
            )
    require_writable(target.parent, shown, what="Output file ")
    return target


def write_file(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` with the workbench's mark, atomically (temporary sibling, then rename)."""
    shown = path
    target = check_file(path)
    payload = mark(data.encode("utf-8") if isinstance(data, str) else data, target.suffix.lower())
    with _sigterm_unwinds():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
            os.chmod(tmp, 0o666 & ~umask())
            with locked(target.parent), _signals_deferred():
                check_file(shown)
                os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return Path(path)


def mark(data: bytes, suffix: str) -> bytes:
    """``data`` with the workbench's mark for its format (unchanged if already marked or unmarkable)."""
    if suffix in (".html", ".htm"):
        if HTML_MARK.encode() in data[:4096]:
            return data
        head = data.find(b"<head>", 0, 4096)
        at = head + len(b"<head>") if head >= 0 else 0
        return data[:at] + HTML_MARK.encode() + data[at:]
    if suffix == ".svg":
        if SVG_MARK.encode() in data[:4096]:
            return data
        root = data.find(b"<svg")
        at = data.find(b">", root) + 1 if root >= 0 else 0  # just inside the root element
        return data[:at] + SVG_MARK.encode() + data[at:]
    if suffix == ".png":
        return data if _png_marked(data) else _png_with_text(data)
    if suffix == ".json":
        if _JSON_MARKED.match(data[:256]):
            return data
        value = json.loads(data)
        if not isinstance(value, dict):
            raise ExportError("Only a JSON object can carry the workbench's mark.")
        return json.dumps({MARK_KEY: _mark_json("file"), **value}).encode()
    return data


def json_mark(kind: str) -> dict[str, Any]:
    """The ``{"workbench_output": …}`` entry a JSON writer puts first in its object."""
    return {MARK_KEY: _mark_json(kind)}


def is_marked(path: Path) -> bool:
    """Whether the file carries the workbench's mark (it wrote the file and may replace it)."""
    suffix = path.suffix.lower()
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return False
    if suffix in (".html", ".htm"):
        return HTML_MARK.encode() in head[:4096]
    if suffix == ".svg":
        return SVG_MARK.encode() in head[:4096]
    if suffix == ".json":
        return bool(_JSON_MARKED.match(head[:256]))
    if suffix == ".png":
        return _png_marked(head)
    return False


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes, int]]:
    """(type, body, offset after the chunk) of each chunk, from the signature on; stops at what is cut off."""
    at = 8
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        end = at + 12 + length
        if end > len(data):
            return
        yield kind, data[at + 8 : at + 8 + length], end
        at = end


def _png_marked(data: bytes) -> bool:
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return False
    for kind, body, _ in _png_chunks(data):
        if kind == b"IDAT":
            return False
        if kind == b"tEXt" and body.split(b"\0", 1)[0] == PNG_MARK_KEYWORD:
            return True
    return False


def _png_with_text(data: bytes) -> bytes:
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ExportError("The renderer did not produce a PNG file: save as .html instead.")
    _, _, after_header = next(_png_chunks(data))  # IHDR comes first
    body = PNG_MARK_KEYWORD + b"\0" + b"written by workbench"
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    return data[:after_header] + chunk + data[after_header:]


def write_through(path: Path, write: Callable[[Path], None]) -> Path:
    """Write ``path`` by calling ``write(temporary)`` on a temporary sibling, then renaming it into place: never
    half-written, with the mode a new file gets under the umask (``mkstemp`` alone gives 0600). For formats a
    library writes itself (safetensors, ``torch.save``); the caller has checked that ``path`` may be replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
