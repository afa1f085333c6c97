"""The CLI: `workbench experiment run` writes the folder, `summarize` rebuilds summary.json from
results.parquet alone — byte for byte — and every figure carries the manifest's hash (metadata and a
visible footnote); bad input ends in one line with the package's exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from workbench.cli import main
from workbench.errors import DatasetError, ExperimentError
from workbench.experiments import read_results, summarize
from workbench.experiments.report import PNG_KEY, figures, png_text

from .helpers import rows
from .test_resume import SPEC, make_spec

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, capsys) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_run_then_summarize_rebuilds_summary_identically(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORKBENCH_MEMORY_BUDGET", "4M")
    spec = make_spec(tmp_path / "spec")
    out = tmp_path / "out"
    code, stdout, stderr = cli("experiment", "run", str(spec), "--out", str(out), capsys=capsys)
    assert code == 0, stderr
    assert "shards computed, 0 reused" in stdout and "results:" in stdout
    names = {p.name for p in out.iterdir()}
    assert {"manifest.json", "plan.json", "results.parquet", "summary.json", "report.html", "shards"} <= names
    before = (out / "summary.json").read_bytes()
    table, manifest = read_results(out)
    assert manifest["sha256"] == json.loads((out / "manifest.json").read_text())["sha256"]
    assert set(table.column_names) >= {"item", "condition", "metric", "value", "block", "head", "bound"}
    summary = json.loads(before)
    assert summary["manifest_sha256"] == manifest["sha256"]
    assert len(summary["grids"]["heads"]["metrics"]["kl"]) == 4 * 4  # tiny-qwen2: 4 blocks × 4 heads

    (out / "summary.json").unlink()
    (out / "report.html").unlink()
    (out / "shards").rename(tmp_path / "elsewhere")  # summarize needs results.parquet only
    code, stdout, stderr = cli("experiment", "summarize", str(out), capsys=capsys)
    assert code == 0, stderr
    assert (out / "summary.json").read_bytes() == before
    page = (out / "report.html").read_text()
    assert manifest["sha256"] in page and manifest["sha256"][:16] in page

    for name, fig in figures(summary).items():
        assert fig.layout.meta["workbench_manifest_sha256"] == manifest["sha256"], name
        assert any(manifest["sha256"][:16] in (a.text or "") for a in fig.layout.annotations), name


@pytest.mark.browser
def test_the_forest_png_carries_the_manifest_hash(tmp_path, tiny_qwen2):
    from workbench.export import find_browser

    if find_browser() is None:
        pytest.skip("no Chromium")
    from workbench.experiments import run_experiment

    spec = make_spec(tmp_path / "spec", SPEC.split("[grids.heads]")[0])
    result = run_experiment(spec, tmp_path / "out", model=tiny_qwen2)
    summarize(tmp_path / "out", png=True)
    data = (tmp_path / "out" / "forest.png").read_bytes()
    assert png_text(data)[PNG_KEY] == result.manifest["sha256"]


def test_errors_are_one_line_with_the_package_exit_code(tmp_path, capsys):
    spec = make_spec(tmp_path / "spec")
    bad = tmp_path / "bad.toml"
    bad.write_text(SPEC.replace("metrics =", "metricz ="))
    code, _, err = cli("experiment", "run", str(bad), "--out", str(tmp_path / "o"), capsys=capsys)
    assert code == ExperimentError.exit_code and err.count("\n") == 1 and "Unknown key 'metricz'" in err
    bad.write_text(SPEC + "\n[broken")
    code, _, err = cli("experiment", "run", str(bad), "--out", str(tmp_path / "o"), capsys=capsys)
    assert code == ExperimentError.exit_code and "is not valid TOML" in err
    (tmp_path / "spec" / "rows.jsonl").write_bytes(b"\xff\xfe")
    code, _, err = cli("experiment", "run", str(spec), "--out", str(tmp_path / "o"), capsys=capsys)
    assert code == DatasetError.exit_code and "is not UTF-8 text" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing written before the checks pass
    code, _, err = cli("experiment", "summarize", str(tmp_path / "nowhere"), capsys=capsys)
    assert code == ExperimentError.exit_code and "No results at" in err
    code, _, err = cli("experiment", "run", str(spec), "--out", str(tmp_path / "o"), "--workers", "2", capsys=capsys)
    assert code == ExperimentError.exit_code and "apply to --executor ray" in err


def test_skip_bad_rows_says_how_many_it_skipped(tmp_path, capsys):
    data = rows(bounds=("9", "8")) + [{"id": "broken", "prompt": "", "bound": "9"}]
    spec = make_spec(tmp_path / "spec", SPEC.split("[grids.heads]")[0], data)
    code, _, err = cli("experiment", "run", str(spec), "--out", str(tmp_path / "o"), capsys=capsys)
    assert code == DatasetError.exit_code and "1 bad row: row 9 (id broken): empty prompt" in err
    code, out, err = cli("experiment", "run", str(spec), "--out", str(tmp_path / "o"), "--skip-bad-rows", capsys=capsys)
    assert code == 0, err
    assert "skipped 1 bad row" in out
    assert json.loads((tmp_path / "o" / "bad_rows.json").read_text())[0]["id"] == "broken"
    assert pq.read_table(tmp_path / "o" / "results.parquet").column("item").to_pylist().count("broken") == 0


def test_help_lists_the_options():
    done = subprocess.run(
        [sys.executable, "-m", "workbench", "experiment", "run", "--help"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0
    for option in (
        "--out",
        "--executor",
        "--workers",
        "--address",
        "--skip-bad-rows",
        "--force",
        "--device-map",
        "--n-devices",
        "--max-memory",
    ):
        assert option in done.stdout
