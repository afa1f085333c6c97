"""A fuzz suite for the CLI: bad inputs and faults, as a careless or unlucky user would produce them.

Every case runs ``python -m workbench …`` in its own sandbox (a few at a time) that already holds a
user's files (a thesis, a data folder, an HTML and a JSON file of their own, a read-only folder, an
unreadable file, a symlink loop) and an earlier workbench output. For every case: no traceback, at
most one error line, an exit code ≠ 0 where the input is bad, and every pre-existing file and folder
byte-identical afterwards (checksums before and after). The CLI runs without root's power to ignore
file permissions, so read-only and unreadable really are.

Property-based cases (hypothesis) call the CLI's ``main`` in process, for speed, with generated
option values.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.outputs import PROBE, output_folder

from .conftest import Run, cli_env, leftovers, permissions_apply, snapshot, workbench

BAD, ANY = "bad", "any"  # a bad input must fail; an odd one may succeed, but never with a traceback


@dataclass
class Case:
    args: list[str]
    expect: str = BAD
    says: str = ""  # text the error line must contain
    env: dict[str, str] = field(default_factory=dict)
    gpu: bool = False  # only meaningful without a GPU


T = "tiny-qwen2"
CASES = {
    # --- outputs: never over a user's file, never where it cannot be written -------------------------------
    "study --out a file": Case(
        ["study", "random-number", "-m", T, "--out", "thesis.tex"], says="is a file, not a folder"
    ),
    "study --out a user's folder": Case(
        ["study", "random-number", "-m", T, "--out", "data"], says="which the workbench did not write"
    ),
    "study --out a probe output": Case(
        ["study", "random-number", "-m", T, "--out", "prev"], says="holds a workbench probe output"
    ),
    "study --out .": Case(["study", "random-number", "-m", T, "--out", "."], says="is the current folder"),
    "study --out ..": Case(
        ["study", "random-number", "-m", T, "--out", ".."], says="is a folder above the current one"
    ),
    "study --out ~": Case(["study", "random-number", "-m", T, "--out", "~"], says="is your home folder"),
    "study --out ''": Case(["study", "random-number", "-m", T, "--out", ""], says="is the current folder"),
    "study --out read-only": Case(["study", "random-number", "-m", T, "--out", "ro/report"], says="is not writable"),
    "study --out below a file": Case(
        ["study", "random-number", "-m", T, "--out", "thesis.tex/report"], says="is not a folder"
    ),
    "study --out a symlink loop": Case(
        ["study", "random-number", "-m", T, "--out", "loop"], says="leads back to itself"
    ),
    "probe --out a user's folder": Case(
        ["probe", "logit_lens", "-m", T, "--out", "data"], says="which the workbench did not write"
    ),
    "probe --out read-only": Case(["probe", "logit_lens", "-m", T, "--out", "ro/probe"], says="is not writable"),
    "probe --out a read-only folder of the user's": Case(
        ["probe", "logit_lens", "-m", T, "--out", "ro"], says="holds kept.txt"
    ),
    "probe --out a file": Case(["probe", "logit_lens", "-m", T, "--out", "mine.html"], says="is a file, not a folder"),
    "explore --out a user's folder": Case(
        ["sample", "explore", "-m", T, "--out", "data"], says="which the workbench did not write"
    ),
    "audit --out a probe output": Case(
        ["sample", "audit", "-m", T, "--out", "prev"], says="holds a workbench probe output"
    ),
    "anomalous --out a file": Case(
        ["sample", "anomalous", "-m", T, "--out", "thesis.tex"], says="is a file, not a folder"
    ),
    "sweep --out a user's html": Case(
        ["sweep", "blocks", "--model", T, "--out", "mine.html"], says="exists and was not written by the workbench"
    ),
    "sweep --out a user's json": Case(
        ["sweep", "blocks", "--model", T, "--out", "mine.json"], says="exists and was not written by the workbench"
    ),
    "sweep --out a user's pdf": Case(
        ["sweep", "blocks", "--model", T, "--out", "mine.pdf"], says="cannot carry the workbench's mark"
    ),
    "sweep --out a folder": Case(["sweep", "blocks", "--model", T, "--out", "data"], says="Unknown figure format"),
    "sweep --out .txt": Case(["sweep", "blocks", "--model", T, "--out", "x.txt"], says="Unknown figure format '.txt'"),
    "sweep --out read-only": Case(["sweep", "mask", "--model", T, "--out", "ro/x.html"], says="is not writable"),
    "report of a user's folder": Case(["report", "data"], says="which the workbench did not write"),
    "report of a probe output": Case(["report", "prev"], says="holds a workbench probe output"),
    "report of a missing folder": Case(["report", "nowhere", "--out", "new"], says="No file at"),
    "report of a user's json": Case(["report", "mine.json", "--out", "new"], says="not a saved random-number study"),
    "report of a non-UTF-8 file": Case(["report", "latin1.txt", "--out", "new"], says="is not valid JSON"),
    # --- models, devices, dtypes ---------------------------------------------------------------------------
    "model ''": Case(["models", "info", ""], says="holds neither a config.json nor exactly one .gguf"),
    "model: a missing gguf": Case(["models", "info", "missing.gguf"], says="No model file or folder"),
    "model: random bytes as gguf": Case(["models", "info", "random.gguf"], says="is not a valid GGUF file"),
    "model: an empty gguf": Case(["models", "info", "empty.gguf"], says="is not a valid GGUF file"),
    "model: a text file": Case(["models", "info", "thesis.tex"], says="is a file but not a .gguf"),
    "model: a user's folder": Case(["models", "info", "data"], says="holds neither a config.json"),
    "model: an unknown name": Case(["probe", "logit_lens", "-m", "gpt-17"], says="Unknown model spec"),
    "model: a hub id offline": Case(
        ["models", "info", "nobody/nothing"], says="is not in the local Hugging Face cache", env={"HF_HUB_OFFLINE": "1"}
    ),
    "device tpu": Case(["models", "info", T, "--device", "tpu"], says="Unknown device 'tpu'"),
    "device cuda": Case(["models", "info", T, "--device", "cuda"], says="asks for a GPU", gpu=True),
    "device cuda:-1": Case(["models", "info", T, "--device", "cuda:-1"], says="Unknown device"),
    "device ''": Case(["models", "info", T, "--device", ""], expect=ANY),
    "device 'CPU '": Case(["models", "info", T, "--device", "CPU "], expect=ANY),
    "dtype float64": Case(["models", "info", T, "--dtype", "float64"], says="Unknown dtype 'float64'"),
    "dtype ''": Case(["models", "info", T, "--dtype", ""], says="Unknown dtype ''"),
    # --- numbers: odd, huge, negative, of the wrong type ------------------------------------------------------
    "top -1": Case(["sample", "next", "-m", T, "--top", "-1"], says="--top is -1: pass a whole number ≥ 1."),
    "top 0": Case(["sample", "next", "-m", T, "--top", "0"], says="--top is 0: pass a whole number ≥ 1."),
    "top huge": Case(["sample", "next", "-m", T, "--top", "1000000000000"], expect=ANY),
    "top as a float": Case(["sample", "next", "-m", T, "--top", "1e3"], says="Invalid value for '--top'"),
    "top as words": Case(["sample", "next", "-m", T, "--top", "ten"], says="Invalid value for '--top'"),
    "top empty": Case(["sample", "next", "-m", T, "--top", ""], says="Invalid value for '--top'"),
    "anomalous top -5": Case(
        ["sample", "anomalous", "-m", T, "--top", "-5"], says="--top is -5: pass a whole number ≥ 1."
    ),
    "block 99": Case(
        ["study", "random-number", "-m", T, "--block", "99", "--out", "r"], says="Block 99 does not exist"
    ),
    "block -100": Case(
        ["study", "random-number", "-m", T, "--block", "-100", "--out", "r"], says="Block -100 does not exist"
    ),
    "block huge": Case(
        ["study", "random-number", "-m", T, "--block", "99999999999999999999", "--out", "r"], says="does not exist"
    ),
    "block as text": Case(
        ["study", "random-number", "-m", T, "--block", "six", "--out", "r"], says="Invalid value for '--block'"
    ),
    "patch blocks as text": Case(
        ["study", "random-number", "-m", T, "--patch-blocks", "a,b", "--out", "r"],
        says="is not a comma list of block numbers",
    ),
    "patch blocks out of range": Case(
        ["study", "random-number", "-m", T, "--patch-blocks", "1,40", "--out", "r"], says="Block 40 does not exist"
    ),
    "mask from 50": Case(
        ["study", "random-number", "-m", T, "--mask-from", "50", "--out", "r"], says="Block 50 does not exist"
    ),
    "bound not in the prompt": Case(
        ["study", "random-number", "-m", T, "--bound", "7", "--out", "r"], says="cannot be located"
    ),
    "readout 999": Case(["probe", "logit_lens", "-m", T, "--readout", "999"], says="Readout position 999"),
    "readout -999": Case(["probe", "logit_lens", "-m", T, "--readout", "-999"], says="Readout position -999"),
    "a target of several tokens": Case(["probe", "logit_lens", "-m", T, "--targets", "not one token"], says="token"),
    "an unknown probe": Case(["probe", "no_such_probe", "-m", T], says="Unknown probe 'no_such_probe'"),
    "an unknown option": Case(["probe", "logit_lens", "-m", T, "-o", "nope=1"], says="has no option 'nope'"),
    "patch without a source": Case(["probe", "patch", "-m", T], says="needs a source prompt"),
    "an option without =": Case(["probe", "logit_lens", "-m", T, "-o", "k"], says="is not key=value"),
    "an unknown command": Case(["frobnicate"], says="No such command"),
    "an unknown flag": Case(["study", "random-number", "--fast"], says="No such option: --fast"),
    # --- the -o parser (from each probe's field types) and unified validation -----------------------------
    "-o blocks=[1,": Case(["probe", "block_replacement", "-m", T, "-o", "blocks=[1,"], says="not a JSON list"),
    "-o blocks=abc": Case(
        ["probe", "block_replacement", "-m", T, "-o", "blocks=abc"], says="'abc' is not a whole number"
    ),
    "-o blocks=1.5": Case(
        ["probe", "block_replacement", "-m", T, "-o", "blocks=1.5"], says="'1.5' is not a whole number"
    ),
    "-o blocks= (empty)": Case(["probe", "block_replacement", "-m", T, "-o", "blocks="], says="block list is empty"),
    "-o blocks=99": Case(["probe", "block_replacement", "-m", T, "-o", "blocks=99"], says="Block 99 does not exist"),
    "-o k=100000": Case(["probe", "logit_lens", "-m", T, "-o", "k=100000"], says="vocabulary size"),
    "-o k=-1": Case(["probe", "logit_lens", "-m", T, "-o", "k=-1"], says="whole number from 1"),
    "-o heads=9 (a kv head)": Case(
        [
            "probe",
            "patch",
            "-m",
            T,
            "-o",
            "site=k",
            "-o",
            "heads=9",
            "-o",
            "source=I'm generating a random number between [0, 5]. The number is ",
        ],
        says="key/value heads 0–1",
    ),
    "-o keys=zebra": Case(
        ["probe", "attention_mask", "-m", T, "-o", "keys=zebra"], says="'zebra' is not in the prompt"
    ),
    "mask without keys": Case(["probe", "attention_mask", "-m", T], says="needs the keys"),
    # --- files: unreadable, not UTF-8, empty, binary, a folder ----------------------------------------------
    "prompts: not UTF-8": Case(
        ["study", "random-number", "-m", T, "--prompts", "latin1.txt", "--out", "r"], says="is not UTF-8 text"
    ),
    "prompts: random bytes": Case(
        ["study", "random-number", "-m", T, "--prompts", "random.gguf", "--out", "r"], says="is not UTF-8 text"
    ),
    "prompts: empty": Case(
        ["study", "random-number", "-m", T, "--prompts", "empty.gguf", "--out", "r"], says="holds no prompt"
    ),
    "prompts: unreadable": Case(
        ["study", "random-number", "-m", T, "--prompts", "secret.txt", "--out", "r"], says="is not readable"
    ),
    "prompts: a folder": Case(
        ["study", "random-number", "-m", T, "--prompts", "data", "--out", "r"], says="does not exist"
    ),
    "bigram: a missing corpus": Case(["sample", "next", "-m", "bigram:missing.txt"], says="No corpus file"),
    "bigram: a non-UTF-8 corpus": Case(["sample", "next", "-m", "bigram:latin1.txt", "--prompt", "naïve"], expect=ANY),
}


def make_sandbox(root: Path) -> Path:
    """A working folder with a user's files and an earlier workbench output in it."""
    root.mkdir(parents=True)
    (root / "home").mkdir()
    (root / "thesis.tex").write_text("\\documentclass{article}\n")
    (root / "data" / "raw").mkdir(parents=True)
    (root / "data" / "raw" / "x.csv").write_text("a,b\n1,2\n")
    (root / "mine.html").write_text("<html><head></head><body>my notes</body></html>")
    (root / "mine.json").write_text('{"mine": true}')
    (root / "mine.pdf").write_bytes(b"%PDF-1.4 mine")
    (root / "latin1.txt").write_bytes("# prompts\nnaïve number: \n".encode("latin-1"))
    (root / "random.gguf").write_bytes(os.urandom(4096))
    (root / "empty.gguf").write_bytes(b"")
    (root / "secret.txt").write_text("a prompt\n")
    (root / "secret.txt").chmod(0o000)
    (root / "ro").mkdir()
    (root / "ro" / "kept.txt").write_text("kept\n")
    (root / "ro").chmod(0o555)
    (root / "loop").symlink_to("loop")
    with output_folder(root / "prev", PROBE) as tmp:
        (tmp / "logit_lens.json").write_text("{}")
    return root


def run_case(case: Case, sandbox: Path) -> tuple[Run, dict, dict]:
    before = snapshot(sandbox)
    env = cli_env(HOME=str(sandbox / "home"), **case.env)
    run = workbench(*case.args, cwd=sandbox, env=env, permissions=True)
    return run, before, snapshot(sandbox)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, tuple[Run, dict, dict, Path]]:
    """Every case, four at a time, each in its own sandbox."""
    root = tmp_path_factory.mktemp("fuzz")
    sandboxes = {name: make_sandbox(root / f"case{i}") for i, name in enumerate(CASES)}
    with ThreadPoolExecutor(4) as pool:
        futures = {name: pool.submit(run_case, CASES[name], sandboxes[name]) for name in CASES}
        done = {name: (*future.result(), sandboxes[name]) for name, future in futures.items()}
    for sandbox in sandboxes.values():  # let pytest clean up
        (sandbox / "ro").chmod(0o755)
        (sandbox / "secret.txt").chmod(0o644)
    return done


def params():
    for name, case in CASES.items():
        marks = []
        if case.gpu:
            marks.append(pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"))
        yield pytest.param(name, marks=marks, id=name)


pytestmark = pytest.mark.skipif(not permissions_apply(), reason="needs file permissions to apply to the CLI")


def test_the_suite_is_large_enough():
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", params())
def test_a_bad_input_is_one_line_and_changes_nothing(results, name):
    case = CASES[name]
    run, before, after, sandbox = results[name]
    output = run.stdout + run.stderr
    assert "Traceback" not in output, run.stderr
    assert not any(line.startswith("internal error:") for line in run.stderr.splitlines()), run.stderr
    assert after == before, "a pre-existing file or folder changed"
    assert leftovers(sandbox) == [] and not (sandbox / "r").exists() and not (sandbox / "new").exists()
    if case.expect == BAD:
        assert run.returncode != 0, f"exit 0 for a bad input:\n{output}"
        assert len(run.error_lines) == 1, run.stderr
        assert case.says in run.error_lines[0], run.error_lines[0]
    else:
        assert run.returncode == 0 or len(run.error_lines) == 1, run.stderr


# --- property-based: generated option values, the CLI's main() in process -----------------------------------


def main_in_process(args: list[str]) -> tuple[int, str, str]:
    """Run ``workbench ARGS`` in this process: (exit code, stdout, stderr); signal handlers restored."""
    from workbench.cli import main

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    return code, out.getvalue(), err.getvalue()


def assert_clean_ending(code: int, err: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith(("error:", "internal error:"))]
    assert "Traceback" not in err and not any(line.startswith("internal error:") for line in lines), err
    assert (code == 0 and not lines) or (code != 0 and len(lines) == 1), (code, err)


FUZZ = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(top=st.one_of(st.integers(-(10**6), 10**6), st.sampled_from([0, 1, -1, 2**31, 2**63 - 1, -(2**63)])))
def test_any_top_count(top):
    code, _, err = main_in_process(["sample", "next", "--model", T, "--top", str(top)])
    assert_clean_ending(code, err)
    assert (code == 0) == (top >= 1)


@FUZZ
@given(
    device=st.one_of(
        st.sampled_from(
            [
                "cpu",
                "CPU",
                "cuda",
                "cuda:0",
                "cuda:7",
                "mps",
                "meta",
                "xla",
                "cpu:1",
                "cpu:0",
                "auto",
                "",
                " ",
                "gpu",
                "cuda:x",
                "cuda:-1",
                ":0",
            ]
        ),
        st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
    )
)
def test_any_device_text(device):
    code, out, err = main_in_process(["models", "info", T, "--device", device, "--json"])
    assert_clean_ending(code, err)
    if code == 0:
        assert '"device": "' in out


@FUZZ
@given(
    path=st.one_of(
        st.sampled_from(
            [
                ".",
                "..",
                "./",
                "~",
                "~/",
                "/",
                "data",
                "data/",
                "data/raw",
                "thesis.tex",
                "ro",
                "ro/x",
                "loop",
                "prev",
                "new",
                "new/deeper/still",
                "a b",
                "ünïcode",
                "-",
                "--",
                ".hidden",
            ]
        ),
        st.text(
            alphabet=st.characters(whitelist_categories=("Ll", "Lu", "Nd", "Zs", "Po"), blacklist_characters="\x00"),
            min_size=1,
            max_size=16,
        ),
    )
)
def test_any_out_path_leaves_the_users_files(tmp_path_factory, monkeypatch, path):
    sandbox = make_sandbox(tmp_path_factory.mktemp("prop") / "s")
    try:
        monkeypatch.chdir(sandbox)
        monkeypatch.setenv("HOME", str(sandbox / "home"))
        before = snapshot(sandbox)
        code, _, err = main_in_process(["probe", "logit_lens", "--model", T, "--no-static", "--out", path])
        assert_clean_ending(code, err)
        after = snapshot(sandbox)
        target = Path(os.path.realpath(Path(path).expanduser()))
        # Only the target changed (or folders created to hold it); a file that existed was replaced only
        # when it belonged to the earlier workbench output.
        for changed in (Path(p) for p in set(before) | set(after) if before.get(p) != after.get(p)):
            inside = changed == target or target in changed.parents
            assert inside or (str(changed) not in before and changed in target.parents), changed
            if inside and before.get(str(changed), ("absent",))[0] == "file":
                assert target == sandbox / "prev", changed
        assert leftovers(sandbox) == []
    finally:
        (sandbox / "ro").chmod(0o755)
        (sandbox / "secret.txt").chmod(0o644)


@FUZZ
@given(prompt=st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40))
def test_any_prompt_text(prompt):
    code, _, err = main_in_process(["probe", "logit_lens", "--model", T, "--prompt", prompt, "-o", "positions=@-1"])
    assert_clean_ending(code, err)


@FUZZ
@given(
    low=st.floats(allow_nan=True, allow_infinity=True, width=32),
    high=st.floats(allow_nan=True, allow_infinity=True, width=32),
    steps=st.integers(-5, 60),
)
def test_any_temperature_range(low, high, steps):
    code, _, err = main_in_process(
        ["sample", "explore", "--model", T, "--from", repr(low), "--to", repr(high), "--steps", str(steps), "--json"]
    )
    assert_clean_ending(code, err)


# ===== Trust (rows, lens files, intervention numbers, saved classes, model names): one case per class =========
# Each bad input below reached an "internal error", a silent wrong answer or another process's code before;
# each now ends in one error line with its own exit code, the sandbox byte-identical.

TRUST_CASES = {
    # rows never vanish: a CSV quote left open is an error naming its line (not 4 rows of 12 with exit 0)
    "trust: a CSV quote left open": (
        Case(["experiment", "run", "open_quote.toml", "--out", "r"], says="open_quote.csv line 6: a quoted cell"),
        17,
    ),
    "trust: an integer beyond 64 bits": (
        Case(["experiment", "run", "huge.toml", "--out", "r"], says="beyond 64 bits"),
        17,
    ),
    # lens files verify themselves: a flipped bit, a tampered header
    "trust: a lens with a flipped bit": (
        Case(["probe", "tuned_lens", "-m", T, "-o", "lens=flipped.lens"], says="do not match the SHA-256"),
        16,
    ),
    "trust: a lens with a tampered header": (
        Case(["lens", "info", "tampered.lens"], says="damaged lens header"),
        16,
    ),
    # interventions refuse meaningless numbers
    "trust: a NaN scale factor": (
        Case(
            [
                "probe",
                "intervention",
                "-m",
                T,
                "-o",
                'edits=[{"site": "resid_pre", "op": {"name": "scale", "factor": NaN}}]',
            ],
            says="Scale factor is nan, not a finite number",
        ),
        12,
    ),
    # a saved class never makes the workbench import a module (workbench.__main__ runs the CLI)
    "trust: a report naming workbench.__main__": (
        Case(["report", "rep", "--out", "copy"], says="workbench.__main__:X is not a result class of this workbench"),
        9,
    ),
    # the model is what the user pointed at: an alias of TransformerLens is no spec of the workbench's
    "trust: a TransformerLens alias as a model spec": (
        Case(["models", "info", "gpt2-small"], says="Unknown model spec 'gpt2-small'"),
        2,
    ),
}


def make_trust_sandbox(root: Path) -> Path:
    """The usual sandbox plus the Trust cases' files, built with the workbench's own writers then damaged."""
    import json

    from workbench.lenses import Lens
    from workbench.models import load_model
    from workbench.outputs import json_mark
    from workbench.results import Named, Result
    from workbench.serialization import result_to_dict

    sandbox = make_sandbox(root)
    lines = ["id,prompt"] + [f"r{i},The number {i} is " for i in range(12)]
    lines[5] = 'r4,"The number 4 is '
    (sandbox / "open_quote.csv").write_text("\n".join(lines) + "\n")
    (sandbox / "huge.jsonl").write_text('{"prompt": "a", "n": 18446744073709551616}\n')
    for name, data in (("open_quote", "open_quote.csv"), ("huge", "huge.jsonl")):
        (sandbox / f"{name}.toml").write_text(
            f'metrics = ["kl"]\n[model]\nspec = "{T}"\n[dataset]\npath = "{data}"\n[conditions]\nclean = []\n'
        )
    lens = Lens.identity(load_model(T))
    lens.bias[0, 0] = 0.5
    for name in ("flipped", "tampered"):
        lens.save(sandbox / f"{name}.lens")
    raw = bytearray((sandbox / "flipped.lens").read_bytes())
    raw[-1] ^= 0x01  # the last byte of the tensor data (safetensors keeps the JSON header first)
    (sandbox / "flipped.lens").write_bytes(bytes(raw))
    text = (sandbox / "tampered.lens").read_bytes()
    # The header is JSON inside the safetensors JSON (its quotes escaped); the same length keeps the file valid.
    edited = text.replace(b'\\"method\\": \\"identity\\"', b'\\"method\\": 123456789012')
    assert edited != text
    (sandbox / "tampered.lens").write_bytes(edited)
    result = Result(probe="x", model="m", prompts=["p"], tokens=[["p"]], arrays={"x": Named(torch.ones(2), ("i",))})
    (sandbox / "rep").mkdir()
    hostile = result_to_dict(result) | {"class": "workbench.__main__:X"}
    body = json_mark("random-number study") | {"probe_results": {"x": hostile}}
    (sandbox / "rep" / "results.json").write_text(json.dumps(body))
    return sandbox


@pytest.fixture(scope="module")
def trust_results(tmp_path_factory) -> dict[str, tuple[Run, dict, dict, Path]]:
    root = tmp_path_factory.mktemp("fuzz-trust")
    sandboxes = {name: make_trust_sandbox(root / f"case{i}") for i, name in enumerate(TRUST_CASES)}
    with ThreadPoolExecutor(4) as pool:
        futures = {name: pool.submit(run_case, TRUST_CASES[name][0], sandboxes[name]) for name in TRUST_CASES}
        done = {name: (*future.result(), sandboxes[name]) for name, future in futures.items()}
    for sandbox in sandboxes.values():
        (sandbox / "ro").chmod(0o755)
        (sandbox / "secret.txt").chmod(0o644)
    return done


@pytest.mark.parametrize("name", list(TRUST_CASES))
def test_trust_bad_inputs_are_one_line_with_their_exit_code(trust_results, name):
    case, code = TRUST_CASES[name]
    run, before, after, sandbox = trust_results[name]
    assert "Traceback" not in run.stdout + run.stderr, run.stderr
    assert not any(line.startswith("internal error:") for line in run.stderr.splitlines()), run.stderr
    assert after == before, "a pre-existing file or folder changed"
    assert leftovers(sandbox) == [] and not (sandbox / "r").exists() and not (sandbox / "copy").exists()
    assert run.returncode == code, run.stderr
    assert len(run.error_lines) == 1 and case.says in run.error_lines[0], run.stderr
    assert "alias" not in run.stderr


# ===== Trust: experiment folders and specs (the experiments runner's block) ==================================
# Each reached an "internal error", a hang, a deleted or overwritten user file, or work thrown away before;
# each now ends in one error line with its own exit code, the sandbox (an earlier experiment folder
# included) byte-identical.

EXP_SPEC = f"""name = "fuzz"
metrics = ["kl"]
shard_items = 2

[model]
spec = "{T}"
device = "cpu"

[dataset]
path = "rows.jsonl"

[conditions]
zero = [{{ site = "z", op = "zero", blocks = [1] }}]

[stats]
resamples = 999
"""
EXPERIMENT_CASES = {
    "experiment: summarize over an edited report.html": (
        Case(["experiment", "summarize", "exp"], says="report.html changed since the workbench wrote it"),
        20,
    ),
    "experiment: --force over an edited summary.json": (
        Case(["experiment", "run", "exp.toml", "--out", "exp", "--force"], says="summary.json changed since"),
        20,
    ),
    "experiment: a symlinked shards folder": (
        Case(["experiment", "run", "exp.toml", "--out", "linked", "--force"], says="is a symlink or a file"),
        20,
    ),
    "experiment: a tampered manifest": (
        Case(["experiment", "run", "exp.toml", "--out", "exp"], says="manifest.json changed since"),
        19,
    ),
    "experiment: a tampered plan": (
        Case(["experiment", "run", "exp.toml", "--out", "exp"], says="plan.json changed since"),
        19,
    ),
    "experiment: a tampered results file": (
        Case(["experiment", "summarize", "exp"], says="exp/results.parquet is not a readable results file"),
        19,
    ),
    "experiment: an older marker that lists nothing": (
        Case(["experiment", "run", "exp.toml", "--out", "exp", "--force"], says="lists no files"),
        19,
    ),
    "experiment: name = 12345": (
        Case(["experiment", "run", "name.toml", "--out", "r"], says="name = 12345 is of the wrong type"),
        18,
    ),
    "experiment: confidence = 'high'": (
        Case(["experiment", "run", "confidence.toml", "--out", "r"], says="[stats] confidence = 'high' must be"),
        18,
    ),
    "experiment: [[grids]]": (
        Case(["experiment", "run", "grids.toml", "--out", "r"], says="(not [[grids]])"),
        18,
    ),
    "experiment: resamples = 30000000": (
        Case(["experiment", "run", "resamples.toml", "--out", "r"], says="is more than 1,000,000"),
        18,
    ),
    "experiment: a template grid of 10^6 rows": (
        Case(["experiment", "run", "million.toml", "--out", "r"], says="grid expands to 1,000,000 rows"),
        18,
    ),
    "experiment: --address of no Ray cluster": (
        Case(
            ["experiment", "run", "exp.toml", "--out", "r", "--executor", "ray", "--address", "127.0.0.1:1"],
            says="Cannot reach the Ray cluster at 127.0.0.1:1",
        ),
        22,
    ),
}


@pytest.fixture(scope="module")
def finished_experiment(tmp_path_factory) -> Path:
    """One finished experiment folder (written in process), copied into each sandbox before it is damaged."""
    import json

    from workbench.experiments import run_experiment

    root = tmp_path_factory.mktemp("fuzz-experiment")
    rows = [{"prompt": f"Pick a number from 0 to {b}: "} for b in range(4, 10)]
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "exp.toml").write_text(EXP_SPEC)
    run_experiment(root / "exp.toml", root / "exp")
    return root


def make_experiment_sandbox(root: Path, finished: Path, name: str) -> Path:
    import json
    import shutil

    sandbox = make_sandbox(root)
    shutil.copy(finished / "rows.jsonl", sandbox / "rows.jsonl")
    (sandbox / "exp.toml").write_text(EXP_SPEC)
    exp = sandbox / "exp"
    shutil.copytree(finished / "exp", exp)
    (sandbox / "name.toml").write_text(EXP_SPEC.replace('name = "fuzz"', "name = 12345"))
    (sandbox / "confidence.toml").write_text(EXP_SPEC + 'confidence = "high"\n')
    (sandbox / "resamples.toml").write_text(EXP_SPEC.replace("resamples = 999", "resamples = 30000000"))
    (sandbox / "grids.toml").write_text(EXP_SPEC + '\n[[grids]]\nover = ["block"]\n')
    numbers = ", ".join(str(i) for i in range(1000))
    (sandbox / "million.toml").write_text(
        EXP_SPEC.replace(
            'path = "rows.jsonl"', f'template = "{{a}} {{b}}"\ngrid = {{ a = [{numbers}], b = [{numbers}] }}'
        )
    )
    if "report.html" in name:
        (exp / "report.html").write_text("<html>my annotated report</html>")
    if "summary.json" in name:
        (exp / "summary.json").write_text('{"mine": true}\n')
    if "symlinked" in name:
        shutil.copytree(finished / "exp", sandbox / "linked")
        shutil.move(sandbox / "linked" / "shards", sandbox / "elsewhere")
        (sandbox / "linked" / "shards").symlink_to(sandbox / "elsewhere", target_is_directory=True)
    if "manifest" in name:
        manifest = json.loads((exp / "manifest.json").read_text())
        manifest["analysis"]["seed"] = 1
        (exp / "manifest.json").write_text(json.dumps(manifest))
    if "plan" in name:
        (exp / "plan.json").write_text('{"shards": "all of them"}')
    if "results" in name:
        data = bytearray((exp / "results.parquet").read_bytes())
        data[20] ^= 0xFF
        (exp / "results.parquet").write_bytes(bytes(data))
    if "older marker" in name:
        (exp / ".workbench-experiment").write_text("workbench experiment folder: these files were written by …\n")
    return sandbox


@pytest.fixture(scope="module")
def experiment_results(tmp_path_factory, finished_experiment) -> dict[str, tuple[Run, dict, dict, Path]]:
    root = tmp_path_factory.mktemp("fuzz-experiments")
    sandboxes = {
        name: make_experiment_sandbox(root / f"case{i}", finished_experiment, name)
        for i, name in enumerate(EXPERIMENT_CASES)
    }
    with ThreadPoolExecutor(4) as pool:
        futures = {name: pool.submit(run_case, EXPERIMENT_CASES[name][0], sandboxes[name]) for name in EXPERIMENT_CASES}
        done = {name: (*future.result(), sandboxes[name]) for name, future in futures.items()}
    for sandbox in sandboxes.values():
        (sandbox / "ro").chmod(0o755)
        (sandbox / "secret.txt").chmod(0o644)
    return done


@pytest.mark.parametrize("name", list(EXPERIMENT_CASES))
def test_experiment_bad_inputs_are_one_line_and_leave_every_file(experiment_results, name):
    case, code = EXPERIMENT_CASES[name]
    run, before, after, sandbox = experiment_results[name]
    assert "Traceback" not in run.stdout + run.stderr, run.stderr
    assert not any(line.startswith("internal error:") for line in run.stderr.splitlines()), run.stderr
    assert after == before, "a pre-existing file or folder changed"
    assert leftovers(sandbox) == [] and not (sandbox / "r").exists()
    assert run.returncode == code, run.stderr
    assert len(run.error_lines) == 1 and case.says in run.error_lines[0], run.stderr


# ===== Features: SAE folders (the features block) ==============================================================
# An SAE folder that is missing, corrupt, of an unknown architecture or that does not fit the model ends in
# one FeatureError line (exit 29) before any work, the sandbox (every SAE folder in it) byte-identical.

FEATURE_CASES = {
    "sae is a file": (Case(["probe", "sae_features", "-m", T, "-o", "sae=mine.json"], says="no SAE folder"), 29),
    "sae is a user's folder": (Case(["probe", "sae_features", "-m", T, "-o", "sae=data"], says="no cfg.json"), 29),
    "sae missing": (Case(["probe", "sae_features", "-m", T, "-o", "sae=nowhere"], says="no SAE folder"), 29),
    "sae cfg not JSON": (Case(["probe", "sae_features", "-m", T, "-o", "sae=badjson"], says="not readable JSON"), 29),
    "sae weights damaged": (
        Case(["probe", "sae_features", "-m", T, "-o", "sae=badweights"], says="not a readable safetensors"),
        29,
    ),
    "sae gated": (Case(["probe", "sae_features", "-m", T, "-o", "sae=gated"], says="unknown SAE architecture"), 29),
    "sae too narrow": (Case(["probe", "sae_features", "-m", T, "-o", "sae=narrow"], says="32-wide"), 29),
    "sae past the last block": (Case(["probe", "sae_features", "-m", T, "-o", "sae=deep"], says="4 blocks"), 29),
    "sae weights NaN": (Case(["probe", "sae_features", "-m", T, "-o", "sae=nan"], says="NaN"), 29),
    "sae no option": (Case(["probe", "sae_features", "-m", T], says="sae=DIR"), 29),
    "sae k=0": (Case(["probe", "sae_features", "-m", T, "-o", "sae=good", "-o", "k=0"], says="k (top features"), 8),
}


def make_feature_sandbox(root: Path) -> Path:
    import json

    from safetensors.torch import save_file

    root = make_sandbox(root)

    def folder(name: str, d_in: int = 64, hook: str = "blocks.1.hook_resid_pre", arch: str = "standard") -> Path:
        g = torch.Generator().manual_seed(0)
        path = root / name
        path.mkdir()
        weights = {
            "W_enc": torch.randn(d_in, 32, generator=g),
            "W_dec": torch.randn(32, d_in, generator=g),
            "b_enc": torch.zeros(32),
            "b_dec": torch.zeros(d_in),
        }
        if name == "nan":
            weights["W_dec"][0, 0] = float("nan")
        save_file(weights, str(path / "sae_weights.safetensors"))
        cfg = {"d_in": d_in, "d_sae": 32, "architecture": arch, "metadata": {"hook_name": hook}}
        (path / "cfg.json").write_text(json.dumps(cfg))
        return path

    folder("good")
    folder("badjson")
    (root / "badjson" / "cfg.json").write_text("{not json")
    folder("badweights")
    (root / "badweights" / "sae_weights.safetensors").write_bytes(b"\x00" * 40)
    folder("gated", arch="gated")
    folder("narrow", d_in=32)
    folder("deep", hook="blocks.9.hook_resid_pre")
    folder("nan")
    return root


@pytest.fixture(scope="module")
def feature_results(tmp_path_factory) -> dict[str, tuple[Run, dict, dict, Path]]:
    root = tmp_path_factory.mktemp("fuzz-features")
    sandboxes = {name: make_feature_sandbox(root / f"case{i}") for i, name in enumerate(FEATURE_CASES)}
    with ThreadPoolExecutor(4) as pool:
        futures = {name: pool.submit(run_case, FEATURE_CASES[name][0], sandboxes[name]) for name in FEATURE_CASES}
        done = {name: (*future.result(), sandboxes[name]) for name, future in futures.items()}
    for sandbox in sandboxes.values():
        (sandbox / "ro").chmod(0o755)
        (sandbox / "secret.txt").chmod(0o644)
    return done


@pytest.mark.parametrize("name", list(FEATURE_CASES))
def test_feature_bad_inputs_are_one_line_with_their_exit_code(feature_results, name):
    case, code = FEATURE_CASES[name]
    run, before, after, sandbox = feature_results[name]
    assert "Traceback" not in run.stdout + run.stderr, run.stderr
    assert not any(line.startswith("internal error:") for line in run.stderr.splitlines()), run.stderr
    assert after == before, "a pre-existing file or folder changed"
    assert leftovers(sandbox) == []
    assert run.returncode == code, run.stderr
    assert len(run.error_lines) == 1 and case.says in run.error_lines[0], run.stderr
