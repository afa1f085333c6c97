"""The experiment folder's trust rules: its marker lists every file with its SHA-256; a file it does not
list, or that changed since, is never replaced or deleted (one line naming it, the user's bytes
identical); nothing is deleted by a name list or a pattern or through a symlink; temporary files are
the workbench's own; a damaged shard is redone; damaged manifest, plan or results files and a full disk
are one line of their own type."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workbench.cli import main
from workbench.errors import DiskFullError, ExperimentDataError, ExperimentError, UserFileError
from workbench.experiments import read_results, run_experiment, summarize
from workbench.experiments.storage import MARKER, SHARDS, TMP_PREFIX, Folder

from .test_resume import SMALL, make_spec


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: a link's target, or a file's bytes' SHA-256 (folders by name)."""
    out: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir",)
        else:
            out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def marker_records(out: Path) -> list[dict]:
    lines = (out / MARKER).read_text().splitlines()
    return [json.loads(line) for line in lines[1:] if line.strip()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_qwen2) -> tuple[Path, Path]:
    """(spec, folder) of one finished run, to copy."""
    root = tmp_path_factory.mktemp("finished")
    spec = make_spec(root / "spec", SMALL)
    run_experiment(spec, root / "out", model=tiny_qwen2)
    return spec, root / "out"


@pytest.fixture
def copy(finished, tmp_path) -> tuple[Path, Path]:
    spec, out = finished
    shutil.copytree(out, tmp_path / "out", symlinks=True)
    return spec, tmp_path / "out"


def cli(*args: str, capsys) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- the marker ---------------------------------------------------------------------------------------


def test_the_marker_lists_every_file_with_its_sha256(finished):
    _, out = finished
    header = json.loads((out / MARKER).read_text().splitlines()[0])
    assert header["workbench_experiment"] == 2
    listed = {r["file"]: r for r in marker_records(out) if "file" in r}  # compacted: one line per file
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != MARKER}
    assert set(listed) == on_disk
    assert {"manifest.json", "plan.json", "results.parquet", "summary.json", "report.html"} <= on_disk
    for rel, record in listed.items():  # the reference: hashlib over the file's bytes
        data = (out / rel).read_bytes()
        assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["size"] == len(data)
    assert not [p for p in out.rglob(f"{TMP_PREFIX}*")]


def test_the_marker_grows_as_each_shard_is_written(tmp_path, tiny_qwen2, monkeypatch):
    """Killed after a few shards, the marker already lists each of them (so a resume trusts them)."""
    spec = make_spec(tmp_path / "spec", SMALL)
    out = tmp_path / "out"
    written = []
    real = Folder.write_bytes

    def write_then_die(self, rel, data):
        path = real(self, rel, data)
        written.append(rel)
        if rel.startswith(SHARDS) and len([w for w in written if w.startswith(SHARDS)]) == 3:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(Folder, "write_bytes", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(spec, out, model=tiny_qwen2)
    monkeypatch.undo()
    listed = {r["file"] for r in marker_records(out) if "file" in r}
    shards = {f"{SHARDS}/{p.name}" for p in (out / SHARDS).iterdir()}
    assert len(shards) == 3 and shards <= listed
    again = run_experiment(spec, out, model=tiny_qwen2)
    assert again.reused == 3


# --- user files are never replaced or deleted ------------------------------------------------------------


@pytest.mark.parametrize("name", ["report.html", "summary.json"])
def test_summarize_and_rerun_refuse_an_edited_report_or_summary(copy, name, tiny_qwen2):
    spec, out = copy
    (out / name).write_bytes((out / name).read_bytes() + b"\n<!-- my notes -->\n")
    before = snapshot(out)
    with pytest.raises(UserFileError, match=rf"{name} changed since the workbench wrote it") as info:
        summarize(out)
    assert "\n" not in str(info.value)
    with pytest.raises(UserFileError, match=rf"{name} changed since"):
        run_experiment(spec, out)  # no model given: refused before one would load
    with pytest.raises(UserFileError, match=rf"{name} changed since"):
        run_experiment(spec, out, model=tiny_qwen2, force=True)
    assert snapshot(out) == before


def test_a_users_file_with_a_name_the_workbench_writes_is_refused(copy, tiny_qwen2):
    spec, out = copy
    (out / "report.html").unlink()
    Folder(out).compact()  # the marker forgets a file that is gone: as if the workbench never wrote one here
    (out / "report.html").write_text("<html>mine, never written by the workbench</html>")
    before = snapshot(out)
    with pytest.raises(UserFileError, match=r"holds report\.html, which the workbench did not write"):
        summarize(out)
    assert snapshot(out) == before


def test_force_keeps_a_users_forest_html_and_other_files(copy, tiny_qwen2):
    spec, out = copy
    (out / "forest.html").write_text("<html>my own figure</html>")
    (out / "notes.md").write_text("mine")
    (out / SHARDS / "keep.parquet").write_bytes(b"mine too")
    (out / ".tmp-draft").write_text("a user's file that merely looks temporary")
    (out / SHARDS / ".tmp-x").write_text("so is this")
    users = {k: v for k, v in snapshot(out).items() if k.endswith(("forest.html", "notes.md", "keep.parquet", "x"))}
    users[".tmp-draft"] = snapshot(out)[".tmp-draft"]
    redone = run_experiment(spec, out, model=tiny_qwen2, force=True)
    assert redone.reused == 0 and redone.computed > 0
    after = snapshot(out)
    assert all(after[k] == v for k, v in users.items())


def test_a_rerun_removes_only_its_own_temporary_files(copy, tiny_qwen2):
    spec, out = copy
    folder = Folder(out)
    ours = f"{SHARDS}/{TMP_PREFIX}0123456789abcdef"
    folder._append({"tmp": ours})  # what a run killed mid-write leaves: the name in the marker, then the file
    (out / ours).write_bytes(b"half a shard")
    (out / f"{TMP_PREFIX}fedcba9876543210").write_text("same pattern, but the marker never named it")
    (out / ".tmp-results").write_text("the old pattern: a user's file")
    again = run_experiment(spec, out, model=tiny_qwen2)
    assert again.computed == 0
    assert not (out / ours).exists()
    assert (out / f"{TMP_PREFIX}fedcba9876543210").read_text() == "same pattern, but the marker never named it"
    assert (out / ".tmp-results").read_text() == "the old pattern: a user's file"


@pytest.mark.parametrize("force", [False, True])
def test_a_symlinked_shards_folder_is_refused_and_its_target_untouched(copy, tmp_path, force, tiny_qwen2):
    spec, out = copy
    outside = tmp_path / "elsewhere"
    shutil.move(out / SHARDS, outside)
    (outside / "precious.parquet").write_bytes(b"not the workbench's")
    (out / SHARDS).symlink_to(outside, target_is_directory=True)
    before, before_outside = snapshot(out), snapshot(outside)
    with pytest.raises(UserFileError, match=r"shards is a symlink or a file, not a folder"):
        run_experiment(spec, out, model=tiny_qwen2, force=force)
    assert snapshot(out) == before and snapshot(outside) == before_outside


def test_an_older_marker_that_lists_nothing_is_refused(copy, tiny_qwen2):
    spec, out = copy
    (out / MARKER).write_text("workbench experiment folder: these files were written by `workbench experiment run`\n")
    before = snapshot(out)
    for force in (False, True):
        with pytest.raises(ExperimentDataError, match=r"lists no files .*use a new --out"):
            run_experiment(spec, out, model=tiny_qwen2, force=force)
    assert snapshot(out) == before


def test_summarize_replaces_what_it_wrote(copy):
    _, out = copy
    before = (out / "summary.json").read_bytes()
    summarize(out)
    summarize(out)  # its own files, listed again after each write
    assert (out / "summary.json").read_bytes() == before


# --- damage ---------------------------------------------------------------------------------------------


def test_a_shard_damaged_in_the_middle_is_redone_without_force(copy, finished, tiny_qwen2, capsys):
    spec, out = copy
    victim = sorted((out / SHARDS).glob("*.parquet"))[1]
    data = bytearray(victim.read_bytes())
    data[16:24] = b"\x00garbage"  # in the first column's pages: same size, the footer intact
    victim.write_bytes(bytes(data))
    pq.read_metadata(victim)
    again = run_experiment(spec, out, model=tiny_qwen2)
    assert again.computed == 1 and again.reused > 0
    assert f"shards/{victim.name} was damaged" in capsys.readouterr().err
    assert (victim.parent / (victim.name + ".damaged")).read_bytes() == bytes(data)  # kept, not deleted
    a = pq.read_table(finished[1] / "results.parquet").to_pandas()
    b = pq.read_table(out / "results.parquet").to_pandas()
    assert a.equals(b)  # the same numbers, bit for bit (the same forward on the same CPU)


def test_a_tampered_manifest_is_one_line_naming_it(copy, tiny_qwen2):
    spec, out = copy
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["analysis"]["seed"] = 7
    (out / "manifest.json").write_text(json.dumps(manifest))
    before = snapshot(out)
    with pytest.raises(ExperimentDataError, match=r"manifest\.json changed since .*restore it or move it away"):
        run_experiment(spec, out, model=tiny_qwen2)
    with pytest.raises(ExperimentDataError, match=r"manifest\.json changed since"):
        run_experiment(spec, out, model=tiny_qwen2, force=True)  # --force deletes only unchanged files
    assert snapshot(out) == before
    (out / "manifest.json").unlink()  # the fix the message names: move it away, run again
    again = run_experiment(spec, out, model=tiny_qwen2)
    assert again.computed == 0


def test_a_tampered_plan_is_one_line_naming_it(copy, tiny_qwen2):
    spec, out = copy
    plan = json.loads((out / "plan.json").read_text())
    plan["shards"][0]["items"] = [10**6]
    (out / "plan.json").write_text(json.dumps(plan))
    before = snapshot(out)
    with pytest.raises(ExperimentDataError, match=r"plan\.json changed since"):
        run_experiment(spec, out, model=tiny_qwen2)
    assert snapshot(out) == before
    # Even when the marker is made to agree, a plan pointing past the items is refused (not an IndexError).
    folder = Folder(out)
    folder._append(
        {
            "file": "plan.json",
            "sha256": hashlib.sha256((out / "plan.json").read_bytes()).hexdigest(),
            "size": (out / "plan.json").stat().st_size,
        }
    )
    with pytest.raises(ExperimentDataError, match=r"plan\.json is not a plan the workbench wrote"):
        run_experiment(spec, out, model=tiny_qwen2)


def test_a_tampered_results_file_is_one_line_naming_it(copy, capsys):
    _, out = copy
    results = out / "results.parquet"
    table = pq.read_table(results)
    pq.write_table(
        table.set_column(table.column_names.index("value"), "value", pa.array([0.0] * table.num_rows)), results
    )
    before = snapshot(out)
    with pytest.raises(ExperimentDataError, match=r"results\.parquet changed since"):
        summarize(out)
    code, _, err = cli("experiment", "summarize", str(out), capsys=capsys)
    assert code == ExperimentDataError.exit_code and err.count("\n") == 1 and "results.parquet" in err
    assert snapshot(out) == before


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda t: t.replace_schema_metadata({b"workbench.manifest": b"{not json"}), "carries a damaged manifest"),
        (lambda t: t.replace_schema_metadata(None), "carries no workbench manifest"),
        (lambda t: t.drop_columns(["value"]), "has no value column"),
        (lambda t: t.filter(pa.compute.not_equal(t["condition"], "clean")), "lacks the clean run"),
    ],
)
def test_a_results_file_that_is_not_ours_is_one_line(finished, tmp_path, damage, says):
    table = pq.read_table(finished[1] / "results.parquet")
    path = tmp_path / "results.parquet"
    pq.write_table(damage(table), path)
    with pytest.raises(ExperimentDataError, match=says):
        read_results(path)
    (tmp_path / "noise.parquet").write_bytes(os.urandom(600))
    with pytest.raises(ExperimentDataError, match="is not a readable results file"):
        read_results(tmp_path / "noise.parquet")


# --- a full disk ---------------------------------------------------------------------------------------


def test_a_full_disk_is_one_line_and_the_run_resumes(tmp_path, tiny_qwen2, monkeypatch, capsys):
    spec = make_spec(tmp_path / "spec", SMALL)
    out = tmp_path / "out"
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if f"/{SHARDS}/{TMP_PREFIX}" in path:
            calls.append(path)
            if len(calls) > 4:  # the disk fills up after four shards
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(DiskFullError, match=r"No space left on the disk writing .*run the same command again") as info:
        run_experiment(spec, out, model=tiny_qwen2)
    assert "\n" not in str(info.value)
    assert not list(out.rglob(f"{TMP_PREFIX}*"))  # the half-written shard is gone
    code, _, err = cli("experiment", "run", str(spec), "--out", str(tmp_path / "cli"), capsys=capsys)
    calls.clear()
    assert code == DiskFullError.exit_code and err.count("\n") == 1 and "No space left" in err, err
    monkeypatch.undo()
    again = run_experiment(spec, out, model=tiny_qwen2)
    assert again.reused == 4


# --- the same rules from the CLI ------------------------------------------------------------------------


def test_the_cli_refuses_an_edited_report_in_one_line(copy, capsys):
    spec, out = copy
    (out / "report.html").write_text("<html>my edits</html>")
    before = snapshot(out)
    for args in (("experiment", "summarize", str(out)), ("experiment", "run", str(spec), "--out", str(out))):
        code, _, err = cli(*args, capsys=capsys)
        assert code == UserFileError.exit_code and err.count("\n") == 1, err
        assert "report.html changed since the workbench wrote it" in err and "Traceback" not in err
    assert snapshot(out) == before


def test_a_foreign_folder_is_still_refused(tmp_path, tiny_qwen2):
    spec = make_spec(tmp_path / "spec", SMALL)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("do not touch")
    with pytest.raises(ExperimentError, match=r"holds files the workbench did not write"):
        run_experiment(spec, foreign, model=tiny_qwen2, force=True)
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]


# --- kills at the worst moments -----------------------------------------------------------------------------


def test_a_kill_between_listing_and_renaming_leaves_a_file_still_ours(copy):
    """A run killed after the marker lists a new summary.json but before the rename leaves the previous
    version: also written by the workbench, so it is still replaced (not refused as the user's)."""
    _, out = copy
    Folder(out)._append({"file": "summary.json", "sha256": "0" * 64, "size": 3})  # the new version, never renamed
    before = (out / "summary.json").read_bytes()
    summarize(out)
    assert (out / "summary.json").read_bytes() == before  # rebuilt: the same bytes, and listed again
    assert Folder(out).state("summary.json") == "ours"


def test_a_kill_right_after_creating_the_marker_leaves_a_usable_folder(tmp_path, tiny_qwen2):
    spec = make_spec(tmp_path / "spec", SMALL)
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_bytes(b"")  # created, its first line never written
    result = run_experiment(spec, out, model=tiny_qwen2)
    assert result.computed > 0
    assert json.loads((out / MARKER).read_text().splitlines()[0])["workbench_experiment"] == 2


def test_forest_png_is_listed_and_replaced_only_while_unchanged(copy, monkeypatch):
    """``summarize --png`` writes forest.png through the marker (rendering stubbed: no Chromium needed)."""
    import plotly.graph_objects as go

    import workbench.export

    png = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + b"\x00" * 13 + b"\x00\x00\x00\x00"
    monkeypatch.setattr(workbench.export, "_require_browser", lambda: None)
    monkeypatch.setattr(go.Figure, "to_image", lambda self, **kwargs: png)
    _, out = copy
    summarize(out, png=True)
    assert Folder(out).state("forest.png") == "ours"
    summarize(out, png=True)  # its own file: replaced
    (out / "forest.png").write_bytes(png + b"edited")
    before = snapshot(out)
    with pytest.raises(UserFileError, match=r"forest\.png changed since"):
        summarize(out, png=True)
    assert snapshot(out) == before
