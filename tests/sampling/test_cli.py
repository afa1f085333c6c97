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
        ["sample", "audit", "--model", "tiny-qwen2", "--samples", "300", "-s", "t=1", "-s", "greedy",
         "--json", "--out", str(tmp_path), "--no-png"],
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
    code, out, _ = run(["sample", "audit", "--model", f"bigram:{corpus}", "--prompt", "=", "--samples", "90", "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["model_exact"][7] == pytest.approx(2 / 3)
    code, out, _ = run(["sample", "generate", "--model", f"bigram:{corpus}", "--prompt", "=", "--max-new-tokens", "2"], capsys)
    assert out.strip() == "[0] =7;"


def test_next_generate_beam_explore_anomalous(tmp_path, capsys):
    code, out, _ = run(["sample", "next", "-m", "tiny-qwen2", "-s", "t=0.5,top_k=3", "--json"], capsys)
    top = json.loads(out)["samplers"][0]["top"]
    assert code == 0 and len(top) == 3 and sum(t["prob"] for t in top) == pytest.approx(1.0, abs=1e-5)
    code, out, _ = run(["sample", "generate", "-m", "tiny-qwen2", "--identity-block", "1", "--max-new-tokens", "3", "--json"], capsys)
    assert code == 0 and json.loads(out)["hooks"] == ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]
    code, out, _ = run(["sample", "beam", "-m", "tiny-qwen2", "-k", "2", "--max-new-tokens", "3", "--json"], capsys)
    assert code == 0 and len(json.loads(out)["beams"]) == 2
    code, out, _ = run(["sample", "explore", "-m", "tiny-qwen2", "--steps", "5", "--out", str(tmp_path), "--json"], capsys)
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
