"""Each input that used to end in a raw traceback now ends in one line that names the fix.

The CLI runs as a user runs it (a subprocess). The last guard (an unexpected exception becomes
``internal error: …``) is tested separately: it is a safety net, and every case above it must be
caught at its cause with its own message.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from workbench.errors import DeviceError, ExportError, SamplingError, WorkbenchError

from .conftest import cli_env, needs_permissions, snapshot, workbench

DEVICE, EXPORT, SAMPLING, USAGE = DeviceError.exit_code, ExportError.exit_code, SamplingError.exit_code, 2

CASES = {
    # name: (arguments, exit code, text of the one error line)
    "device tpu": (
        ["models", "info", "tiny-qwen2", "--device", "tpu"],
        DEVICE,
        "error: Unknown device 'tpu': use cpu, cuda (an NVIDIA GPU), cuda:N or mps (Apple), or leave --device out",
    ),
    "device cuda:99": (
        ["probe", "logit_lens", "--model", "tiny-qwen2", "--device", "cuda:99"],
        DEVICE,
        "error: --device cuda:99",
    ),
    "device meta": (
        ["study", "random-number", "--model", "tiny-qwen2", "--device", "meta", "--out", "{tmp}/r"],
        DEVICE,
        "error: Unknown device 'meta'",
    ),
    "probe --out an existing file": (
        ["probe", "logit_lens", "--model", "tiny-qwen2", "--out", "{tmp}/notes.txt"],
        EXPORT,
        "error: Output folder {tmp}/notes.txt is a file, not a folder: choose a new or empty folder.",
    ),
    "study --out an existing file": (
        ["study", "random-number", "--model", "tiny-qwen2", "--out", "{tmp}/notes.txt"],
        EXPORT,
        "error: Output folder {tmp}/notes.txt is a file, not a folder",
    ),
    "sweep --out a folder": (
        ["sweep", "blocks", "--model", "tiny-qwen2", "--out", "{tmp}/folder.html"],
        EXPORT,
        "error: Output file {tmp}/folder.html is a folder, but a file",
    ),
    "sample next --top -1": (
        ["sample", "next", "--model", "tiny-qwen2", "--top", "-1"],
        SAMPLING,
        "error: --top is -1: pass a whole number ≥ 1.",
    ),
    "sample next --top 0": (
        ["sample", "next", "--model", "tiny-qwen2", "--top", "0"],
        SAMPLING,
        "error: --top is 0: pass a whole number ≥ 1.",
    ),
    "sample anomalous --top -5": (
        ["sample", "anomalous", "--model", "tiny-qwen2", "--top", "-5"],
        SAMPLING,
        "error: --top is -5: pass a whole number ≥ 1.",
    ),
    "a value of the wrong type": (
        ["sample", "next", "--model", "tiny-qwen2", "--top", "ten"],
        USAGE,
        "error: Invalid value for '--top'",
    ),
    "an unknown option": (
        ["probe", "logit_lens", "--no-such-option"],
        USAGE,
        "error: No such option: --no-such-option",
    ),
    "prompt file not UTF-8": (
        ["study", "random-number", "--model", "tiny-qwen2", "--prompts", "{tmp}/latin1.txt", "--out", "{tmp}/r2"],
        WorkbenchError.exit_code,
        "error: Prompt file {tmp}/latin1.txt is not UTF-8 text (byte 12): save it as UTF-8.",
    ),
}

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli-errors")
    (tmp / "notes.txt").write_text("mine\n")
    (tmp / "folder.html").mkdir()
    (tmp / "latin1.txt").write_bytes("# prompts\nnaïve number: ".encode("latin-1"))
    before = snapshot(tmp)
    with ThreadPoolExecutor(3) as pool:
        futures = {
            name: pool.submit(workbench, *(a.format(tmp=tmp) for a in args), cwd=tmp)
            for name, (args, _, _) in CASES.items()
        }
        done = {name: future.result() for name, future in futures.items()}
    assert snapshot(tmp) == before  # no case wrote, deleted or changed anything
    return tmp, done


@pytest.mark.parametrize("name", list(CASES))
def test_one_line_that_names_the_fix(runs, name):
    tmp, done = runs
    _, code, text = CASES[name]
    run = done[name]
    assert "Traceback" not in run.stderr + run.stdout, run.stderr
    assert run.returncode == code, run.stderr
    assert len(run.error_lines) == 1, run.stderr
    assert run.error_lines[0].startswith(text.format(tmp=tmp)), run.error_lines[0]


@needs_no_gpu
def test_device_cuda_without_a_gpu():
    run = workbench("models", "info", "tiny-qwen2", "--device", "cuda")
    assert run.returncode == DEVICE and "Traceback" not in run.stderr
    assert run.error_lines[0].startswith("error: --device cuda asks for a GPU, but ")
    assert "use --device cpu, or leave --device out for the best available." in run.error_lines[0]


@needs_permissions
def test_a_read_only_cache_fails_before_converting(tmp_path):
    from tests.foundation.conftest import write_tiny_gguf

    gguf = write_tiny_gguf(tmp_path / "tiny-llama.gguf", "tiny-llama")
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    run = workbench("models", "info", str(gguf), "--json", env=cli_env(WORKBENCH_CACHE=str(cache)), permissions=True)
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
    assert run.error_lines == [
        f"error: The model cache (WORKBENCH_CACHE) {cache} is not writable (Permission denied in {cache}): "
        "set WORKBENCH_CACHE to a writable folder, or pass --no-cache (cache=False) to convert in memory."
    ]
    assert "Converting" not in run.stderr  # refused before the de-quantizer ran
    fixed = workbench(
        "models", "info", str(gguf), "--json", "--no-cache", env=cli_env(WORKBENCH_CACHE=str(cache)), permissions=True
    )
    assert fixed.returncode == 0 and json.loads(fixed.stdout)["n_layers"] == 3


# --- the last guard ------------------------------------------------------------------------------------

BUGGY = textwrap.dedent("""
    import sys
    import workbench.models

    def load_model(*args, **kwargs):
        raise ZeroDivisionError("a bug\\nspread over two lines")

    workbench.models.load_model = load_model
    from workbench.cli import main
    main(sys.argv[1:])
""")


@pytest.mark.parametrize("debug", ["", "--debug", "WORKBENCH_DEBUG=1"])
def test_an_unexpected_exception_is_one_line_unless_debugging(debug):
    env = cli_env(WORKBENCH_DEBUG="1") if debug.startswith("WORKBENCH") else cli_env()
    args = (["--debug"] if debug == "--debug" else []) + ["models", "info", "tiny-qwen2"]
    run = subprocess.run([sys.executable, "-c", BUGGY, *args], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 1
    lines = [line for line in run.stderr.splitlines() if line.startswith("internal error:")]
    assert lines == [
        "internal error: ZeroDivisionError: a bug spread over two lines, rerun with `--debug` for the traceback."
    ]
    assert ("Traceback" in run.stderr) == bool(debug)


def test_exit_codes_are_unique_and_documented():
    """Each error type has its own exit code, and docs/reliability.md's table lists exactly these."""
    import inspect
    import re
    from pathlib import Path

    import workbench.errors as errors

    types = {
        c.__name__: c.exit_code
        for _, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, errors.WorkbenchError)
    }
    assert len(set(types.values())) == len(types), types
    page = (Path(__file__).parents[2] / "docs" / "reliability.md").read_text()
    documented = {name: int(code) for code, name in re.findall(r"^\| (\d+) \| `(\w+)` \|", page, re.M)}
    assert documented == types
