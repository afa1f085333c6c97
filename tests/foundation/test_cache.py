"""The model cache verifies what it wrote and repairs a damaged entry by itself.

Each entry's done.json records every file's size, mtime and SHA-256 (plus the SHA-256 of its first and
last MiB). These tests damage entries the ways disks and people do (truncation, overwritten bytes, a
deleted file, unreadable or missing metadata) and check by behaviour that the next load says so in
one line, re-converts the GGUF (transformers' de-quantizer runs again) and returns the same logits.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from workbench.cache import DONE, ENDS, entry_problem
from workbench.errors import ExportError
from workbench.models import cached_models, gguf_cache_dir, load_model

from .conftest import PROMPT


def gguf_loads(calls) -> list[str]:
    return [kwargs["gguf_file"] for _, kwargs in calls if "gguf_file" in kwargs]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def converted(tiny_llama_gguf, workbench_cache, from_pretrained_calls, tiny_llama):
    """A fresh cache entry of the tiny-llama GGUF: ``(entry, gguf, reference logits)``."""
    model = load_model(tiny_llama_gguf)
    entry = gguf_cache_dir(tiny_llama_gguf, torch.float32)
    from_pretrained_calls.clear()
    return entry, tiny_llama_gguf, model.logits(tiny_llama.to_tokens(PROMPT))


def test_done_json_records_every_file(converted):
    entry, gguf, _ = converted
    done = json.loads((entry / DONE).read_text())
    assert done["source"] == str(gguf)
    files = sorted(p.name for p in entry.iterdir() if p.name != DONE)
    assert sorted(done["files"]) == files and "model.safetensors" in files and "config.json" in files
    for name, record in done["files"].items():
        path = entry / name
        data = path.read_bytes()
        assert record["size"] == len(data) and record["sha256"] == hashlib.sha256(data).hexdigest()
        ends = data[:ENDS] + (data[max(ENDS, len(data) - ENDS) :] if len(data) > ENDS else b"")
        assert record["ends_sha256"] == hashlib.sha256(ends).hexdigest()
        assert record["mtime_ns"] == path.stat().st_mtime_ns
    assert entry_problem(entry) is None


def _keep_mtime(path, change):
    stat = path.stat()
    change(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    # name: (what to do to the entry, what the warning must say)
    "truncated weights": (
        lambda e: os.truncate(e / "model.safetensors", (e / "model.safetensors").stat().st_size // 2),
        "model.safetensors has",
    ),
    "empty weights": (lambda e: (e / "model.safetensors").write_bytes(b""), "model.safetensors has 0 bytes"),
    "weights header overwritten, mtime kept": (
        lambda e: _keep_mtime(e / "model.safetensors", lambda p: _flip(p, 10)),
        "the first or last MiB of model.safetensors changed",
    ),
    "config deleted": (lambda e: (e / "config.json").unlink(), "config.json is missing"),
    "config garbled, same size": (
        lambda e: (e / "config.json").write_text("x" * (e / "config.json").stat().st_size),
        "config.json",
    ),
    "tokenizer truncated": (lambda e: os.truncate(e / "tokenizer.json", 10), "tokenizer.json has 10 bytes"),
    "metadata unreadable": (lambda e: (e / DONE).write_text("{not json"), "done.json is missing or unreadable"),
    "metadata missing": (lambda e: (e / DONE).unlink(), "done.json is missing or unreadable"),
    "metadata lists nothing": (
        lambda e: (e / DONE).write_text('{"source": "x", "files": {}}'),
        "done.json lists no files",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_entry_is_rebuilt_with_one_warning(converted, from_pretrained_calls, capfd, tiny_llama, damage):
    entry, gguf, logits = converted
    change, said = DAMAGE[damage]
    change(entry)
    assert entry_problem(entry) is not None
    capfd.readouterr()

    model = load_model(gguf)
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "is damaged" in warnings[0] and said in warnings[0] and "rebuilding it" in warnings[0]
    assert gguf_loads(from_pretrained_calls) == [gguf.name]  # converted again from the GGUF
    assert torch.equal(model.logits(tiny_llama.to_tokens(PROMPT)), logits)
    assert entry_problem(entry) is None

    from_pretrained_calls.clear()
    load_model(gguf)  # and the repaired entry serves the next load
    assert gguf_loads(from_pretrained_calls) == []
    assert "warning:" not in capfd.readouterr().err


def test_a_file_rewritten_in_the_middle_is_caught_by_the_full_hash(
    tiny_llama_gguf, workbench_cache, monkeypatch, from_pretrained_calls, capfd
):
    """Beyond the hashed ends, a rewrite changes the mtime, which triggers the full SHA-256."""
    import workbench.cache

    monkeypatch.setattr(workbench.cache, "ENDS", 64)  # the tiny model's files are smaller than 2 MiB
    load_model(tiny_llama_gguf)
    entry = gguf_cache_dir(tiny_llama_gguf, torch.float32)
    weights = entry / "model.safetensors"
    _flip(weights, weights.stat().st_size // 2)
    assert entry_problem(entry) == "model.safetensors changed since it was written: its SHA-256 differs"
    from_pretrained_calls.clear()
    capfd.readouterr()
    load_model(tiny_llama_gguf)
    assert gguf_loads(from_pretrained_calls) == [tiny_llama_gguf.name]
    assert "its SHA-256 differs); rebuilding it." in capfd.readouterr().err


def test_an_entry_from_before_hashes_loads_and_gets_them(converted, from_pretrained_calls):
    entry, gguf, _ = converted
    (entry / DONE).write_text(json.dumps({"source": str(gguf)}))  # what earlier versions wrote
    assert entry_problem(entry) is None
    load_model(gguf)
    assert gguf_loads(from_pretrained_calls) == []
    assert set(json.loads((entry / DONE).read_text())["files"]) >= {"model.safetensors", "config.json"}


def test_a_copied_cache_verifies_by_hash_without_converting(
    converted, from_pretrained_calls, workbench_cache, tmp_path, monkeypatch
):
    entry, gguf, _ = converted
    copy = tmp_path / "copied-cache"
    shutil.copytree(workbench_cache, copy)  # new mtimes, same bytes
    monkeypatch.setenv("WORKBENCH_CACHE", str(copy))
    copied = gguf_cache_dir(gguf, torch.float32)
    assert entry_problem(copied) is None
    load_model(gguf)
    assert gguf_loads(from_pretrained_calls) == []
    record = json.loads((copied / DONE).read_text())["files"]["model.safetensors"]
    assert record["mtime_ns"] == (copied / "model.safetensors").stat().st_mtime_ns  # cheap again next time


def test_a_cache_that_is_a_file_fails_before_converting(tiny_llama_gguf, tmp_path, monkeypatch, from_pretrained_calls):
    blocker = tmp_path / "cache-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("WORKBENCH_CACHE", str(blocker))
    with pytest.raises(
        ExportError,
        match=r"The model cache \(WORKBENCH_CACHE\) .* cannot be created: .* is not a folder; set WORKBENCH_CACHE",
    ):
        load_model(tiny_llama_gguf)
    assert gguf_loads(from_pretrained_calls) == [] and blocker.read_text() == "not a folder"
    model = load_model(tiny_llama_gguf, cache=False)  # the fix the message names
    assert model.facts.n_layers == 3


def test_cached_models_lists_an_unreadable_entry_instead_of_failing(converted):
    entry, gguf, _ = converted
    (entry / DONE).write_text("\x00garbage")
    assert cached_models() == [{"path": str(entry), "source": "? (unreadable done.json: rebuilt on next load)"}]


def test_two_processes_converting_at_once_leave_one_good_entry(tiny_llama_gguf, workbench_cache):
    env = os.environ | {"WORKBENCH_CACHE": str(workbench_cache), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "workbench", "models", "info", str(tiny_llama_gguf), "--json"]
    with ThreadPoolExecutor(2) as pool:
        runs = list(
            pool.map(lambda _: subprocess.run(command, capture_output=True, text=True, env=env, timeout=300), range(2))
        )
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["n_layers"] == 3
    entries = [p for p in (workbench_cache / "gguf").iterdir()]
    assert len(entries) == 1 and entry_problem(entries[0]) is None  # no temporary folder left beside it


@pytest.mark.real
def test_a_truncated_smollm2_cache_repairs_itself_from_the_cli(smollm2_converted, tmp_path):
    """The issue's case: truncate the cached model.safetensors; `models info smollm2` warns, rebuilds, works."""
    from workbench.models import smollm2_gguf_path

    cache, _, _ = smollm2_converted
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    env = os.environ | {"WORKBENCH_CACHE": str(copy), "OMP_NUM_THREADS": "1"}
    entry = copy / "gguf" / gguf_cache_dir(smollm2_gguf_path(), torch.float32).name
    weights = entry / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 4096)

    run = subprocess.run(
        [sys.executable, "-m", "workbench", "models", "info", "smollm2", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    warnings = [line for line in run.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "model.safetensors has" in warnings[0] and "rebuilding it" in warnings[0]
    assert json.loads(run.stdout)["n_layers"] == 30
    assert entry_problem(entry) is None
    assert sha256(weights) == sha256(cache / "gguf" / entry.name / "model.safetensors")
