"""``workbench models`` run as a user runs it: a subprocess, so a traceback could not hide.

Every run gets its own ``WORKBENCH_CACHE``. The subprocess runs start together (a few at a time) in
one module fixture, since each pays the torch import; runs that only check output (GGUF cache,
``--no-cache``, ``--json``) go through Typer's in-process runner instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from workbench.errors import GGUFError, ModelNotFoundError, ModelSpecError, OfflineError
from workbench.tiny import TINY_SPECS

from .gguf_writer import write_header_only_gguf


@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def run_cli(args: list[str], cache: Path, **env: str) -> Run:
    environment = os.environ | {"WORKBENCH_CACHE": str(cache), "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"} | env
    done = subprocess.run(
        [sys.executable, "-m", "workbench", *args], capture_output=True, text=True, env=environment, timeout=300
    )
    return Run(args, done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_gguf_dir) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cli-files")
    corrupt = folder / "x.gguf"
    corrupt.write_bytes(b"garbage bytes, not a GGUF")
    return {
        "folder": folder,
        "corrupt": corrupt,
        "foo": write_header_only_gguf(folder / "foo.gguf", arch="foo"),
        "tiny": tiny_gguf_dir / "tiny-llama.gguf",
    }


ERRORS = {
    # name: (arguments, extra environment, expected error type, text the message must contain)
    "missing path": (["/no/such/model.gguf"], {}, ModelNotFoundError, "No model file or folder at /no/such/model.gguf"),
    "corrupt gguf": (["{corrupt}"], {}, GGUFError, "x.gguf is not a valid GGUF file"),
    "unsupported architecture": (
        ["{foo}"],
        {},
        GGUFError,
        "architecture 'foo', which transformers cannot de-quantize; supported: ",
    ),
    "unknown spec": (["not-a-model"], {}, ModelSpecError, "Unknown model spec 'not-a-model'"),
    "hub id offline": (
        ["Qwen/Qwen2.5-0.5B-Instruct"],
        {"HF_HUB_OFFLINE": "1", "HF_HOME": "{folder}/empty-hf-home"},
        OfflineError,
        "Qwen/Qwen2.5-0.5B-Instruct is not in the local Hugging Face cache",
    ),
    "unknown dtype": (["tiny-qwen2", "--dtype", "float64"], {}, ModelSpecError, "Unknown dtype 'float64'"),
}


@pytest.fixture(scope="module")
def runs(files, tmp_path_factory) -> dict[str, tuple[Run, Path]]:
    """Every error run of this module, three at a time, keyed by name, with its cache folder."""
    jobs = {}
    for name, (args, env, _, _) in ERRORS.items():
        jobs[name] = (
            ["models", "info", *(a.format(**files) for a in args)],
            {k: v.format(**files) for k, v in env.items()},
        )
    caches = {name: tmp_path_factory.mktemp("cli-cache") for name in jobs}
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(run_cli, args, caches[name], **env) for name, (args, env) in jobs.items()}
        return {name: (future.result(), caches[name]) for name, future in futures.items()}


@pytest.mark.parametrize("name", list(ERRORS))
def test_errors_are_one_line_without_a_traceback(runs, name):
    run, cache = runs[name]
    _, _, error_type, text = ERRORS[name]
    output = run.stdout + run.stderr
    assert run.returncode == error_type.exit_code != 0, output
    assert "Traceback" not in output
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert text in lines[0]
    assert not (cache / "gguf").exists()


def test_unsupported_architecture_names_the_supported_ones(runs):
    message = runs["unsupported architecture"][0].stderr
    supported = message.split("supported: ")[1].split(".")[0].split(", ")
    assert {"llama", "qwen2", "mistral"} <= set(supported)


def invoke(args: list[str]):
    """Run the CLI in process (Typer's runner); the result has ``exit_code`` and ``stdout``."""
    from typer.testing import CliRunner

    from workbench.cli import _register, app

    _register()
    return CliRunner().invoke(app, args)


def test_models_list_shows_the_short_names(workbench_cache):
    result = invoke(["models", "list"])
    assert result.exit_code == 0, result.output
    rows = [line.split("│")[1].strip() for line in result.stdout.splitlines() if line.startswith("│")]
    assert [row for row in rows if row] == ["smollm2", *TINY_SPECS]
    assert "Cached GGUF conversions in" in result.stdout


def test_models_info_on_a_gguf_fills_the_cache(files, workbench_cache, from_pretrained_calls):
    result = invoke(["models", "info", str(files["tiny"]), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert (facts["name"], facts["architecture"], facts["source"]) == ("tiny-llama", "llama", f"gguf:{files['tiny']}")
    assert (facts["n_layers"], facts["n_heads"], facts["n_kv_heads"], facts["head_to_group"]) == (
        3,
        6,
        3,
        [0, 0, 1, 1, 2, 2],
    )
    converted = [folder for folder in (workbench_cache / "gguf").iterdir() if (folder / "done.json").is_file()]
    assert len(converted) == 1

    listed = invoke(["models", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    listing = json.loads(listed.stdout)
    assert listing["cache"] == str(workbench_cache)
    assert listing["cached"] == [{"path": str(converted[0]), "source": str(files["tiny"])}]
    assert list(listing["short_names"]) == ["smollm2", *TINY_SPECS]

    from_pretrained_calls.clear()
    again = invoke(["models", "info", str(files["tiny"]), "--json"])
    assert json.loads(again.stdout) == facts
    assert [path for path, _ in from_pretrained_calls] == [str(converted[0])]  # served from the cache


def test_no_cache_converts_again_and_writes_nothing(files, workbench_cache, from_pretrained_calls):
    result = invoke(["models", "info", str(files["tiny"]), "--json", "--no-cache"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_layers"] == 3
    assert [kwargs.get("gguf_file") for _, kwargs in from_pretrained_calls] == ["tiny-llama.gguf"]
    assert not workbench_cache.exists()


def test_models_info_table(workbench_cache):
    result = invoke(["models", "info", "tiny-qwen2"])
    assert result.exit_code == 0, result.output
    rows = dict(line.strip("│ ").split("│")[:2] for line in result.stdout.splitlines() if line.startswith("│"))
    rows = {key.strip(): value.strip() for key, value in rows.items()}
    assert (rows["n_layers"], rows["n_heads"], rows["n_kv_heads"], rows["head_to_group"]) == (
        "4",
        "4",
        "2",
        "[0, 0, 1, 1]",
    )


@pytest.mark.real
def test_models_info_smollm2_json(smollm2_converted):
    cache = smollm2_converted[0]  # the session's SmolLM2 conversion: this run must not convert again
    run = run_cli(["models", "info", "smollm2", "--json"], cache)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    facts = json.loads(run.stdout)
    assert {key: facts[key] for key in ("name", "n_layers", "n_heads", "n_kv_heads", "d_model", "d_vocab")} == {
        "name": "SmolLM2-135M-Instruct",
        "n_layers": 30,
        "n_heads": 9,
        "n_kv_heads": 3,
        "d_model": 576,
        "d_vocab": 49152,
    }
    assert facts["head_to_group"] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert facts["prepend_bos"] is True
    assert len([f for f in (cache / "gguf").iterdir() if (f / "done.json").is_file()]) == 1
