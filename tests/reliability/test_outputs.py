"""Output folders and files: never over what the workbench did not write, never half-written.

The issue's reproduction is the first test: a folder holding a user's thesis and data survives a
study pointed at it, byte for byte. The rest checks each rule of :mod:`workbench.outputs` by behaviour.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from workbench.errors import ExportError
from workbench.outputs import (
    MARKER,
    PROBE,
    STUDY,
    check_file,
    check_folder,
    is_marked,
    output_folder,
    read_marker,
    write_file,
)

from .conftest import cli_env, leftovers, needs_permissions, snapshot, user_folder, workbench


def write_output(path: Path, files: dict[str, str], kind: str = PROBE) -> None:
    with output_folder(path, kind) as tmp:
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)


# --- the issue's reproduction ----------------------------------------------------------------------


def test_the_issue_reproduction_keeps_every_user_file(tmp_path):
    folder = user_folder(tmp_path / "d")
    before = snapshot(folder)
    run = workbench(
        "study", "random-number", "--model", "tiny-qwen2", "--out", str(folder), "--no-static", cwd=tmp_path
    )
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    assert run.error_lines == [
        f"error: Output folder {folder} holds results.json, which the workbench did not write: "
        "choose a new or empty folder (nothing was changed)."
    ]
    assert snapshot(folder) == before
    assert (folder / "thesis.tex").read_text() == "keep\n" and (folder / "sub" / "data.csv").read_text() == "x\n"
    assert leftovers(tmp_path) == []


def test_the_same_folder_through_the_api(tmp_path):
    folder = user_folder(tmp_path / "d")
    before = snapshot(folder)
    with pytest.raises(ExportError, match="holds results.json, which the workbench did not write"):
        write_output(folder, {"results.json": "{}"}, STUDY)
    assert snapshot(folder) == before and leftovers(tmp_path) == []


# --- what may be replaced ---------------------------------------------------------------------------


def test_new_empty_and_own_folders_are_written_and_replaced(tmp_path):
    target = tmp_path / "out"
    write_output(target, {"a.json": "1", "figures/b.html": "<html>"})
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == [
        MARKER,
        "a.json",
        "figures",
        "figures/b.html",
    ]
    marker = read_marker(target)
    assert marker["kind"] == PROBE and sorted(marker["files"]) == ["a.json", "figures/b.html"]
    assert marker["files"]["a.json"]["size"] == 1

    write_output(target, {"c.json": "2"})  # an earlier output of the same kind is replaced as a whole
    assert sorted(p.name for p in target.iterdir()) == [MARKER, "c.json"]

    empty = tmp_path / "empty"
    empty.mkdir()
    write_output(empty, {"x.json": "3"})
    assert (empty / "x.json").read_text() == "3"
    assert leftovers(tmp_path) == []


def test_marker_is_written_last(tmp_path, monkeypatch):
    """A folder whose writing stopped before the marker is never taken for a finished output."""
    import workbench.outputs as outputs

    def broken_marker(folder, kind):
        raise OSError("disk full")

    monkeypatch.setattr(outputs, "write_marker", broken_marker)
    with pytest.raises(OSError):
        write_output(tmp_path / "out", {"a.json": "1"})
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("change", ["added file", "added folder", "edited file", "replaced by a link", "other kind"])
def test_own_folder_with_something_foreign_is_refused_naming_it(tmp_path, change):
    target = tmp_path / "out"
    write_output(target, {"a.json": "1", "figures/b.html": "<html>"})
    if change == "added file":
        (target / "figures" / "notes.txt").write_text("mine")
        named = "figures/notes.txt"
    elif change == "added folder":
        (target / "drafts").mkdir()
        named = "drafts/"
    elif change == "edited file":
        (target / "a.json").write_text("2")  # same size, new content and mtime
        named = "a.json"
    elif change == "replaced by a link":
        (target / "a.json").unlink()
        (target / "a.json").symlink_to(tmp_path)
        named = "a.json"
    else:
        named = "a workbench probe output, not a random-number study output"
    before = snapshot(target)
    with pytest.raises(ExportError, match=named):
        write_output(target, {"new.json": "x"}, STUDY if change == "other kind" else PROBE)
    assert snapshot(target) == before and leftovers(tmp_path) == []


def test_a_copied_own_folder_is_verified_by_hash(tmp_path):
    import shutil

    write_output(tmp_path / "out", {"a.json": "1"})
    shutil.copytree(tmp_path / "out", tmp_path / "copy")  # new mtimes, same content
    write_output(tmp_path / "copy", {"b.json": "2"})
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == [MARKER, "b.json"]


def test_unreadable_marker_is_not_ours(tmp_path):
    target = tmp_path / "out"
    write_output(target, {"a.json": "1"})
    (target / MARKER).write_text("{not json")
    with pytest.raises(ExportError, match="holds .workbench-output.json|holds a.json"):
        write_output(target, {"b.json": "2"})


@pytest.mark.parametrize("where", [".", "..", "~"])
def test_the_current_parent_and_home_folders_are_refused(tmp_path, monkeypatch, where):
    (tmp_path / "work").mkdir()
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "work" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    expected = {".": "is the current folder", "..": "is a folder above the current one", "~": "is your home folder"}
    with pytest.raises(ExportError, match=expected[where] + r"; the workbench replaces its output folder as a whole"):
        write_output(where, {"a.json": "1"})
    monkeypatch.chdir(tmp_path)  # home is refused from anywhere
    with pytest.raises(ExportError, match="is your home folder"):
        check_folder("~", PROBE)
    assert snapshot(tmp_path) == before


def test_a_symlink_writes_into_the_folder_it_points_to(tmp_path):
    real = tmp_path / "real"
    write_output(real, {"a.json": "1"})
    link = tmp_path / "link"
    link.symlink_to(real)
    write_output(link, {"b.json": "2"})
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert sorted(p.name for p in real.iterdir()) == [MARKER, "b.json"]
    assert leftovers(tmp_path) == []


def test_a_file_where_a_folder_is_expected(tmp_path):
    (tmp_path / "out").write_text("mine")
    with pytest.raises(ExportError, match="is a file, not a folder"):
        check_folder(tmp_path / "out", PROBE)
    with pytest.raises(ExportError, match="cannot be created: .*/out is not a folder"):
        check_folder(tmp_path / "out" / "sub", PROBE)
    assert (tmp_path / "out").read_text() == "mine"


def test_new_folders_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_output(tmp_path / "a" / "b" / "out", {"f/x.json": "1"})
    finally:
        os.umask(old)
    for folder in (
        tmp_path / "a",
        tmp_path / "a" / "b",
        tmp_path / "a" / "b" / "out",
        tmp_path / "a" / "b" / "out" / "f",
    ):
        assert folder.stat().st_mode & 0o777 == 0o750, folder
    assert (tmp_path / "a" / "b" / "out" / "f" / "x.json").stat().st_mode & 0o777 == 0o640


def test_a_failure_while_writing_leaves_the_previous_output(tmp_path):
    target = tmp_path / "out"
    write_output(target, {"a.json": "old"})
    before = snapshot(target)
    with pytest.raises(RuntimeError), output_folder(target, PROBE) as tmp:
        (tmp / "a.json").write_text("half")
        raise RuntimeError("the renderer crashed")
    assert snapshot(target) == before and leftovers(tmp_path) == []


def test_concurrent_writers_leave_one_complete_output(tmp_path):
    """Eight threads write different outputs to one folder at once: the result is exactly one of them."""
    target = tmp_path / "out"
    errors = []
    start = threading.Barrier(8)

    def writer(i):
        try:
            start.wait()
            with output_folder(target, PROBE) as tmp:
                for j in range(20):
                    (tmp / f"part{j}.txt").write_text(f"writer {i} part {j}\n")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    texts = {(target / f"part{j}.txt").read_text() for j in range(20)}
    owners = {text.split()[1] for text in texts}
    assert len(owners) == 1 and len(texts) == 20
    assert sorted(read_marker(target)["files"]) == sorted(f"part{j}.txt" for j in range(20))
    assert leftovers(tmp_path) == []


SLOW_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from workbench.outputs import output_folder
    with output_folder(sys.argv[1], "probe") as tmp:
        (tmp / "a.json").write_text("new")
        print("writing", flush=True)
        time.sleep(60)
""")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_writing_removes_the_temporary_copy(tmp_path, signum):
    target = tmp_path / "out"
    write_output(target, {"a.json": "old"})
    before = snapshot(target)
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    assert child.stdout.readline() == "writing\n"
    assert len(leftovers(tmp_path)) == 1  # the temporary sibling exists while writing
    child.send_signal(signum)
    child.wait(timeout=60)
    assert child.returncode != 0
    assert snapshot(target) == before and leftovers(tmp_path) == []


# --- single files ---------------------------------------------------------------------------------


def tiny_png() -> bytes:
    """A valid 1×1 RGBA PNG, built by hand."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0\xff\0\0\xff"))
        + chunk(b"IEND", b"")
    )


PNG = tiny_png()


@pytest.mark.parametrize(
    "name, data",
    [
        ("x.html", b"<html><head></head><body>hi</body></html>"),
        ("x.json", b'{"a": 1}'),
        ("x.svg", b'<svg xmlns="http://www.w3.org/2000/svg"></svg>'),
        ("x.png", PNG),
    ],
)
def test_single_files_carry_a_mark_and_replace_only_marked_files(tmp_path, name, data):
    path = tmp_path / name
    write_file(path, data)
    assert is_marked(path)
    write_file(path, data)  # ours: replaced
    assert is_marked(path)
    if name == "x.png":  # the mark is a valid chunk: every CRC checks, IHDR first, IDAT untouched
        chunks = png_chunks(path.read_bytes())
        assert [kind for kind, _ in chunks] == [b"IHDR", b"tEXt", b"IDAT", b"IEND"]
        assert chunks[1][1] == b"workbench\0written by workbench"
        assert chunks[2] == png_chunks(data)[1]
    if name == "x.json":
        assert json.loads(path.read_text())["a"] == 1

    foreign = tmp_path / f"user-{name}"
    foreign.write_bytes(data)
    with pytest.raises(ExportError, match="exists and was not written by the workbench"):
        write_file(foreign, data)
    assert foreign.read_bytes() == data and leftovers(tmp_path) == []


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    import struct
    import zlib

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = [], 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        body = data[at + 8 : at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length : at + 12 + length])[0] == zlib.crc32(kind + body)
        chunks.append((kind, body))
        at += 12 + length
    return chunks


def test_unmarkable_formats_never_overwrite(tmp_path):
    path = tmp_path / "x.pdf"
    write_file(path, b"%PDF-1.4 new")
    assert path.read_bytes() == b"%PDF-1.4 new"
    with pytest.raises(ExportError, match="pdf files cannot carry the workbench's mark"):
        check_file(path)


def test_a_folder_where_a_file_is_expected(tmp_path):
    (tmp_path / "x.json").mkdir()
    with pytest.raises(ExportError, match="is a folder, but a file"):
        check_file(tmp_path / "x.json")


# --- read-only paths, checked before the model loads ---------------------------------------------


@needs_permissions
@pytest.mark.parametrize(
    "args",
    [
        ["study", "random-number", "--model", "/no/such/model.gguf", "--out", "{ro}/report"],
        ["probe", "logit_lens", "--model", "/no/such/model.gguf", "--out", "{ro}/probe"],
        ["sample", "explore", "--model", "/no/such/model.gguf", "--out", "{ro}/explore"],
        ["sweep", "blocks", "--model", "/no/such/model.gguf", "--out", "{ro}/sweep.html"],
    ],
)
def test_a_read_only_out_fails_before_the_model_loads(tmp_path, args):
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o555)
    run = workbench(*(a.format(ro=readonly) for a in args), permissions=True)
    # The bogus model would fail with "No model file or folder": it is never reached.
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
    assert len(run.error_lines) == 1 and "is not writable (Permission denied" in run.error_lines[0], run.stderr
    assert "No model file" not in run.stderr
    assert list(readonly.iterdir()) == []


# --- experiment folders: the same marker rule, kept as shards are written -------------------------------------


def test_experiment_folders_follow_the_same_marker_rule(tmp_path):
    """The issue's findings for experiment folders, from the CLI: summarize and reruns overwrote an edited
    report.html, --force deleted a user's forest.html, reruns deleted any .tmp-* file. Now the marker lists
    every file with its SHA-256 (the same hash outputs.py records), and only listed, unchanged files are
    replaced or deleted."""
    from workbench.experiments.storage import MARKER as EXPERIMENT_MARKER
    from workbench.experiments.storage import Folder
    from workbench.outputs import file_sha256

    (tmp_path / "rows.jsonl").write_text(
        "".join(json.dumps({"prompt": f"Pick a number from 0 to {b}: "}) + "\n" for b in range(4, 10))
    )
    (tmp_path / "spec.toml").write_text(
        'metrics = ["kl"]\n[model]\nspec = "tiny-qwen2"\ndevice = "cpu"\n[dataset]\npath = "rows.jsonl"\n'
        '[conditions]\nzero = [{ site = "z", op = "zero", blocks = [1] }]\n[stats]\nresamples = 999\n'
    )
    exp = tmp_path / "exp"
    first = workbench("experiment", "run", "spec.toml", "--out", "exp", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    listed = Folder(exp).files
    on_disk = {p.relative_to(exp).as_posix() for p in exp.rglob("*") if p.is_file() and p.name != EXPERIMENT_MARKER}
    assert set(listed) == on_disk
    assert all(listed[rel]["sha256"] == file_sha256(exp / rel) for rel in on_disk)

    (exp / "report.html").write_text("<html>my annotations</html>")
    before = snapshot(exp)
    for args in (["experiment", "summarize", "exp"], ["experiment", "run", "spec.toml", "--out", "exp"]):
        run = workbench(*args, cwd=tmp_path)
        assert run.returncode == 20 and "Traceback" not in run.stderr
        assert len(run.error_lines) == 1 and "report.html changed since the workbench wrote it" in run.error_lines[0]
        assert snapshot(exp) == before

    (exp / "report.html").rename(tmp_path / "my-report.html")  # the fix the message names
    (exp / "forest.html").write_text("<html>my own figure</html>")
    (exp / ".tmp-notes").write_text("mine")
    kept = {k: v for k, v in snapshot(exp).items() if k.endswith(("forest.html", ".tmp-notes"))}
    again = workbench("experiment", "run", "spec.toml", "--out", "exp", "--force", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert {k: v for k, v in snapshot(exp).items() if k.endswith(("forest.html", ".tmp-notes"))} == kept
    assert (tmp_path / "my-report.html").read_text() == "<html>my annotations</html>"
