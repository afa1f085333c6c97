"""The ``workbench sample`` commands and ``study randomness`` end to end on the tiny model."""

import json

import pytest
import typer
from typer.testing import CliRunner

from workbench.cli import main
from workbench.cli.sampling import register_randomness


def run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return exit_info.value.code or 0, out.out, out.err


def test_audit_json_and_out_folder(tmp_path, capsys):
    code, out, _ = run(
        [
            "sample",
            "audit",
            "--model",
            "tiny-qwen2",
            "--samples",
            "300",
            "-s",
            "t=1",
            "-s",
            "greedy",
            "--json",
            "--out",
            str(tmp_path),
            "--no-png",
        ],
        capsys,
    )
    assert code == 0
    data = json.loads(out)
    assert [s["label"] for s in data["samplers"]] == ["t=1", "greedy"]
    assert sum(data["secrets"]["counts"]) == 300
    for s in data["samplers"]:
        assert s["n_valid"] + s["failed"] == 300
    assert json.loads((tmp_path / "results.json").read_text())["values"] == list(range(10))
    assert (tmp_path / "randomness.html").stat().st_size > 1000


def test_study_randomness_is_registered_on_a_given_group(tmp_path):
    study = typer.Typer()
    register_randomness(study)

    @study.command("other")
    def other():  # a second command so that Typer keeps the group level
        pass

    result = CliRunner().invoke(study, ["randomness", "--model", "tiny-llama", "--samples", "50", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["samples"] == 50


def test_bigram_model_spec(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("=7;=7;=3;")
    code, out, _ = run(
        ["sample", "audit", "--model", f"bigram:{corpus}", "--prompt", "=", "--samples", "90", "--json"], capsys
    )
    data = json.loads(out)
    assert code == 0 and data["model_exact"][7] == pytest.approx(2 / 3)
    code, out, _ = run(
        ["sample", "generate", "--model", f"bigram:{corpus}", "--prompt", "=", "--max-new-tokens", "2"], capsys
    )
    assert out.strip() == "[0] =7;"


def test_next_generate_beam_explore_anomalous(tmp_path, capsys):
    code, out, _ = run(["sample", "next", "-m", "tiny-qwen2", "-s", "t=0.5,top_k=3", "--json"], capsys)
    top = json.loads(out)["samplers"][0]["top"]
    assert code == 0 and len(top) == 3 and sum(t["prob"] for t in top) == pytest.approx(1.0, abs=1e-5)
    code, out, _ = run(
        ["sample", "generate", "-m", "tiny-qwen2", "--identity-block", "1", "--max-new-tokens", "3", "--json"], capsys
    )
    assert code == 0 and json.loads(out)["interventions"] == [
        {"site": "block", "op": {"name": "identity"}, "blocks": [1]}
    ]
    code, out, _ = run(["sample", "beam", "-m", "tiny-qwen2", "-k", "2", "--max-new-tokens", "3", "--json"], capsys)
    assert code == 0 and len(json.loads(out)["beams"]) == 2
    code, out, _ = run(
        ["sample", "explore", "-m", "tiny-qwen2", "--steps", "5", "--out", str(tmp_path), "--json"], capsys
    )
    assert code == 0 and json.loads(out)["temperatures"] == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert (tmp_path / "temperature.html").is_file()
    code, out, _ = run(["sample", "anomalous", "-m", "tiny-qwen2", "--max-new-tokens", "2", "--json"], capsys)
    assert code == 0 and json.loads(out)["temperature"] == -0.001


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sample", "next", "-m", "tiny-qwen2", "-s", "top_p=2"], "top-p is 2"),
        (["sample", "next", "-m", "tiny-qwen2", "-s", "t=nan"], "NaN"),
        (["sample", "audit", "-m", "tiny-qwen2", "--low", "5", "--high", "1"], "range"),
        (["sample", "generate", "-m", "tiny-qwen2", "--identity-block", "9"], "Block 9 does not exist"),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(argv, message, capsys):
    code, out, err = run(argv, capsys)
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv, message, exit_code",
    [
        (["next", "--top", "-1"], "--top is -1: pass a whole number ≥ 1", 10),
        (["next", "--top", "0"], "--top is 0", 10),
        (["next", "--draws", "-2"], "--draws is -2: pass a whole number ≥ 0", 10),
        (["next", "--draws", "1000000000"], "more than the memory budget", 11),
        (["next", "--seed", "-5"], "--seed is -5: pass a whole number from 0", 10),
        (["next", "-s", "t=inf,top_p=0"], "top-p is 0", 10),
        (["audit", "--samples", "0"], "--samples is 0: pass a whole number ≥ 1", 10),
        (["audit", "--samples", "-7"], "--samples is -7", 10),
        (["audit", "--low", "-1"], "--low is -1: pass a whole number ≥ 0", 10),
        (["audit", "--low", "5", "--high", "1"], "--low 5 --high 1 is empty: pass --high ≥ --low", 10),
        (["audit", "--batch-size", "0"], "--batch-size is 0", 10),
        (["audit", "--max-contexts", "0"], "--max-contexts is 0", 10),
        (["audit", "--method", "magic"], "--method is 'magic'", 10),
        (["audit", "--high", "99", "--max-contexts", "50"], "needs at least 101 forward rows", 11),
        (["audit", "--high", "10000000000000000000"], "needs at least 10,000,000,000,000,000,002 forward rows", 11),
        (["audit", "-s", "t=nan"], "Temperature is NaN", 10),
        (["audit", "-s", "t=1", "-s", "t=1", "--seed", str(2**63 - 1)], "--seed is 9223372036854775807", 10),
        (["explore", "--steps", "0"], "--steps is 0: pass a whole number ≥ 1", 10),
        (["explore", "--from", "nan"], "--from is nan: pass a finite temperature", 10),
        (["explore", "--to", "inf"], "--to is inf", 10),
        (["explore", "--from", "2", "--to", "-2"], "--from 2 is above --to -2", 10),
        (["explore", "--steps", "100000000"], "more than the memory budget", 11),
        (["beam", "--width", "0"], "--width is 0: pass a whole number ≥ 1", 10),
        (["beam", "--width", "100000000"], "more than the memory budget", 11),
        (["beam", "--max-new-tokens", "0"], "--max-new-tokens is 0", 10),
        (["beam", "--length-penalty", "inf"], "--length-penalty is inf: pass a finite number", 10),
        (["beam", "--early-stopping", "sometimes"], "--early-stopping is 'sometimes': pass true, false", 10),
        (
            ["beam", "-k", "2", "--num-return-sequences", "3"],
            "--num-return-sequences is 3: pass a whole number from 1 to 2",
            10,
        ),
        (["beam", "--max-new-tokens", "300"], "context of 256 tokens", 10),
        (["generate", "--max-new-tokens", "-3"], "--max-new-tokens is -3: pass a whole number ≥ 1", 10),
        (["generate", "--n", "0"], "--n is 0", 10),
        (["generate", "--batch-size", "-1"], "--batch-size is -1", 10),
        (["generate", "--n", "100000000", "--max-new-tokens", "200"], "more than the memory budget", 11),
        (["generate", "-s", "t=0.5,top_k=-3"], "top-k is -3", 10),
        (["anomalous", "--top", "-1"], "--top is -1: pass a whole number ≥ 1", 10),
        (["anomalous", "-t", "0.5"], "--temperature is 0.5: the finder samples at a negative temperature", 10),
        (["anomalous", "-t", "-inf"], "--temperature is -inf", 10),
        (["anomalous", "--samples", "0"], "--samples is 0", 10),
        (["anomalous", "--max-new-tokens", "0"], "--max-new-tokens is 0", 10),
    ],
)
def test_every_numeric_option_is_checked_in_one_line(argv, message, exit_code, capsys):
    code, out, err = run(["sample", *argv, "--model", "tiny-qwen2"], capsys)
    assert code == exit_code, err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["next", "--top", "-1"], "--top is -1"),
        (["audit", "--samples", "0"], "--samples is 0"),
        (["explore", "--steps", "0"], "--steps is 0"),
        (["beam", "--width", "0"], "--width is 0"),
    ],
)
def test_bad_options_as_a_user_types_them(argv, message):
    """``python -m workbench sample ...`` in a fresh process: one line on stderr, exit code 10, before any
    model loads."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "workbench", "sample", *argv, "--model", "no-such-model"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 10 and result.stdout == ""  # 10: SamplingError, not 2: the model spec was never read
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
