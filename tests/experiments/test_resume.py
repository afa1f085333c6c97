"""Resume: a run killed with SIGKILL keeps every finished shard; the same command finishes the rest without
recomputing them, and its results.parquet equals an uninterrupted run's row for row. A changed spec or
dataset is refused with one line naming the difference; --force starts over and deletes only what the
workbench wrote; a folder of other files is never written into."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from workbench.errors import ExperimentError
from workbench.experiments import run_experiment
from workbench.experiments.storage import MARKER, SHARDS, TMP_PREFIX

from .helpers import rows

ROOT = Path(__file__).resolve().parents[2]
SPEC = """
name = "resume test"
metrics = ["kl", "digits_above:{source_bound}"]
shard_items = 1

[model]
spec = "tiny-qwen2"
device = "cpu"

[dataset]
path = "rows.jsonl"

[conditions]
identity = [{ site = "block", op = "identity", blocks = [2] }]
patch = [{ site = "kv", op = { name = "patch", source = "{source}" }, blocks = [0, 1], positions = ["{bound}"] }]

[grids.heads]
over = ["block", "head"]
template = { site = "z", op = { name = "scale", factor = 0.0 }, positions = ["{bound}"] }

[stats]
resamples = 999
"""

SMALL = SPEC.split("[grids.heads]")[0] + "[stats]\nresamples = 999\n"  # no grid: a quick run


def make_spec(folder: Path, spec: str = SPEC, data=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rows.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in (data or rows(bounds=("9", "8", "7", "6"))))
    )
    (folder / "spec.toml").write_text(spec)
    return folder / "spec.toml"


def env() -> dict[str, str]:
    # A small budget: a few rows per forward, so the run is many shards (~150) and a kill lands mid-run.
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WORKBENCH_MEMORY_BUDGET": "300K"}


def command(spec: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "workbench", "experiment", "run", str(spec), "--out", str(out), *extra]


def shards(out: Path) -> dict[str, tuple[int, int]]:
    folder = out / SHARDS
    return (
        {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("*.parquet")} if folder.is_dir() else {}
    )


def test_killed_then_resumed_equals_uninterrupted(tmp_path):
    spec = make_spec(tmp_path / "spec")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run(command(spec, whole), env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    total = len(json.loads((whole / "plan.json").read_text())["shards"])
    assert total > 40

    child = subprocess.Popen(command(spec, killed), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while len(shards(killed)) < 3 and child.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    kept = shards(killed)
    assert 3 <= len(kept) < total, f"the kill landed after {len(kept)} of {total} shards"
    assert not (killed / "results.parquet").exists()
    for name in kept:  # every shard on disk is whole
        assert pq.read_table(killed / SHARDS / name).num_rows > 0

    resumed = subprocess.run(command(spec, killed), env=env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{total - len(kept)} shards computed, {len(kept)} reused" in resumed.stdout
    after = shards(killed)
    assert all(after[name] == stamp for name, stamp in kept.items())  # finished shards were not recomputed
    assert len(after) == total and not list((killed / SHARDS).glob(f"{TMP_PREFIX}*"))

    a, b = pq.read_table(whole / "results.parquet"), pq.read_table(killed / "results.parquet")
    assert a.schema.equals(b.schema, check_metadata=False)
    assert a.to_pandas().equals(b.to_pandas())  # row for row, value for value (bitwise)
    keys = a.select(["item", "condition", "metric"]).to_pandas()
    assert not keys.duplicated().any()
    assert (
        json.loads((whole / "manifest.json").read_text())["sha256"]
        == json.loads((killed / "manifest.json").read_text())["sha256"]
    )
    assert (whole / "summary.json").read_text() == (killed / "summary.json").read_text()


def test_a_changed_spec_or_dataset_is_refused_naming_the_difference(tmp_path, tiny_qwen2):
    spec = make_spec(tmp_path / "spec", SMALL)
    out = tmp_path / "out"
    first = run_experiment(spec, out, model=tiny_qwen2)
    assert first.computed > 0 and first.reused == 0
    again = run_experiment(spec, out, model=tiny_qwen2)
    assert again.computed == 0 and again.reused == first.computed
    (tmp_path / "spec" / "spec.toml").write_text(SMALL.replace('"kl", ', ""))
    with pytest.raises(
        ExperimentError,
        match=r"holds results of a different experiment \(analysis\.metrics: "
        r"\[\"kl\", \"digits_above:\{source_bound\}\"\] → "
        r"\[\"digits_above:\{source_bound\}\"\]\).*--force",
    ) as info:
        run_experiment(spec, out)  # refused before a model is even loaded
    assert "\n" not in str(info.value)
    (tmp_path / "spec" / "spec.toml").write_text(SMALL)
    data = rows(bounds=("9", "8", "7", "6"))
    data[5]["bound"] = "7"
    (tmp_path / "spec" / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    with pytest.raises(ExperimentError, match=r"dataset\.sha256"):
        run_experiment(spec, out, model=tiny_qwen2)


def test_force_deletes_only_what_the_workbench_wrote(tmp_path, tiny_qwen2):
    spec = make_spec(tmp_path / "spec", SMALL)
    out = tmp_path / "out"
    run_experiment(spec, out, model=tiny_qwen2)
    (out / "notes.md").write_text("mine")
    (out / SHARDS / "keep.txt").write_text("mine too")
    (tmp_path / "spec" / "spec.toml").write_text(SMALL.replace('"kl", ', ""))
    redone = run_experiment(spec, out, model=tiny_qwen2, force=True)
    assert redone.reused == 0
    assert (out / "notes.md").read_text() == "mine" and (out / SHARDS / "keep.txt").read_text() == "mine too"
    assert redone.manifest["analysis"]["metrics"] == ["digits_above:{source_bound}"]
    assert len(list((out / SHARDS).glob("*.parquet"))) == redone.computed  # the old shards are gone


def test_a_folder_the_workbench_did_not_write_is_refused(tmp_path, tiny_qwen2):
    spec = make_spec(tmp_path / "spec", SMALL)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("do not touch")
    for force in (False, True):
        with pytest.raises(ExperimentError, match=r"holds files the workbench did not write \(thesis\.tex\)"):
            run_experiment(spec, foreign, model=tiny_qwen2, force=force)
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ExperimentError, match="is a file"):
        run_experiment(spec, a_file, model=tiny_qwen2)
    assert not (foreign / MARKER).exists()
