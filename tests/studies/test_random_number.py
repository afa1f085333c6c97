"""The study's numbers equal what the probes return when called directly, bad options write nothing, and a
written study reloads exactly (``workbench report`` redraws it without the model)."""

import json
import re
import shutil
import subprocess
import sys

import pytest
import torch

from workbench.errors import LayerError, TokenError, WorkbenchError
from workbench.probes import ActivationPatch, AttentionMask, BlockReplacement, LogitLens
from workbench.run import run
from workbench.studies.random_number import STUDY_PROMPT, SWEEP_PROMPTS, StudyOptions, plan_study, run_study
from workbench.studies.report import load_study, write_report
from workbench.tokens import DIGITS, digit_token_ids, to_tokens

SOURCE = STUDY_PROMPT.replace("[0, 9]", "[0, 5]")


@pytest.mark.real
def test_results_json_has_the_required_record(smollm2_study):
    _, out = smollm2_study
    record = json.loads((out / "results.json").read_text())
    assert record["model"]["n_layers"] == 30 and record["model"]["name"] == "SmolLM2-135M-Instruct"
    assert record["prompt"] == STUDY_PROMPT
    assert record["tokens"][0] == "<|im_start|>" and record["tokens"][-1] == " "
    assert set(record["distributions"]) == {
        "clean",
        "identity_block_21",
        "mask_9_from_13",
        "patch_6_14",
        "patch_6_14_and_21_on",
        "patch_and_mask",
    }
    for dist in record["distributions"].values():
        assert list(dist) == list(DIGITS)
        assert all(0 <= p <= 1 for p in dist.values())
    assert [row["layer"] for row in record["logit_lens"]][:2] == ["embeddings", "after block 0"]
    assert record["logit_lens"][-1]["layer"] == "final" and len(record["logit_lens"]) == 32
    assert all(len(row["top"]) == 10 for row in record["logit_lens"])
    assert len(record["prompt_sweep"]) >= 10
    assert all(len(r["top5"]) == 5 and 0 <= r["entropy_bits"] <= 3.33 for r in record["prompt_sweep"])


@pytest.mark.real
def test_clean_distribution_is_the_models_own_softmax(smollm2, smollm2_study):
    _, out = smollm2_study
    record = json.loads((out / "results.json").read_text())
    with torch.no_grad():
        hf = smollm2.bridge.original_model
        probs = hf(to_tokens(smollm2, STUDY_PROMPT)).logits[0, -1].float().softmax(-1)
    ids = digit_token_ids(smollm2)
    for d, i in zip(DIGITS, ids, strict=True):
        assert record["distributions"]["clean"][d] == pytest.approx(float(probs[i]), abs=1e-5)


@pytest.mark.real
def test_intervention_numbers_equal_the_probes_called_directly(smollm2, smollm2_study):
    _, out = smollm2_study
    d = json.loads((out / "results.json").read_text())["distributions"]
    direct = {
        "identity_block_21": run(smollm2, STUDY_PROMPT, BlockReplacement(blocks=[21]), targets=DIGITS)[
            "block_replacement"
        ],
        "mask_9_from_13": run(
            smollm2, STUDY_PROMPT, AttentionMask(keys="9", blocks=list(range(13, 30))), targets=DIGITS
        )["attention_mask"],
        "patch_6_14": run(
            smollm2, STUDY_PROMPT, ActivationPatch(source=SOURCE, blocks=[6, 14], positions="9"), targets=DIGITS
        )["patch"],
        "patch_6_14_and_21_on": run(
            smollm2,
            STUDY_PROMPT,
            ActivationPatch(source=SOURCE, blocks=[6, 14, *range(21, 30)], positions="9"),
            targets=DIGITS,
        )["patch"],
    }
    both = run(
        smollm2,
        STUDY_PROMPT,
        [
            ActivationPatch(source=SOURCE, blocks=[6, 14], positions="9"),
            AttentionMask(keys="9", blocks=list(range(13, 30))),
        ],
        targets=DIGITS,
    )
    direct["patch_and_mask"] = both["patch"]
    for key, result in direct.items():
        assert list(result.distribution()) == list(DIGITS), key  # the study reports the ten digits, in digit order
        for digit, p in result.distribution().items():
            assert d[key][digit] == pytest.approx(p, abs=1e-6), (key, digit)
    lens = run(smollm2, STUDY_PROMPT, LogitLens())["logit_lens"]
    record = json.loads((out / "results.json").read_text())
    for row in record["logit_lens"]:
        expected = lens.top_k(row["layer"])
        assert [t for t, _ in row["top"]] == [t for t, _ in expected]
        assert [p for _, p in row["top"]] == pytest.approx([p for _, p in expected], abs=1e-6)


@pytest.mark.real
def test_report_folder_layout(smollm2_study):
    study, out = smollm2_study
    assert (out / "report.html").stat().st_size > 1_000_000  # plotly.js is inlined: readable offline
    html = (out / "report.html").read_text()
    external = re.findall(r"<script[^>]*\bsrc=", html)
    assert external == [], "report.html must not load scripts from the network"
    for fig in study.figures:
        assert (out / "figures" / f"{fig.key}.html").is_file()
        assert f"fig-{fig.key}" in html
    keys = {f.key for f in study.figures}
    assert {
        "distributions",
        "lens_digits",
        "identity",
        "identity_sweep",
        "attention_sink",
        "attention_block_21",
        "interventions",
        "prompt_sweep",
    } <= keys


def test_defaults_scale_on_a_shallow_model_and_say_so(tiny_qwen2):
    plan = plan_study(tiny_qwen2, StudyOptions())
    assert plan.block == 3 and plan.mask_blocks == [2, 3] and plan.patch_blocks == [1, 2]
    assert any("scaled" in note for note in plan.notes)
    assert plan.source_prompt == SOURCE


def test_bad_options_fail_before_any_forward(tiny_qwen2, tmp_path):
    with pytest.raises(LayerError, match="Block 99 does not exist"):
        plan_study(tiny_qwen2, StudyOptions(block=99))
    with pytest.raises(TokenError, match="bound '7' cannot be located"):
        plan_study(tiny_qwen2, StudyOptions(bound="7"))
    with pytest.raises(WorkbenchError, match="does not exist"):
        plan_study(tiny_qwen2, StudyOptions(prompts_file=tmp_path / "missing.txt"))


def test_a_failing_report_writes_nothing(tiny_qwen2, tmp_path, monkeypatch):
    study = run_study(tiny_qwen2, StudyOptions(sweep_prompts=[STUDY_PROMPT]))
    out = tmp_path / "report"

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("workbench.studies.report.render_html", broken)
    with pytest.raises(RuntimeError):
        write_report(study, out, static=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--block", "99"], "Block 99 does not exist"),
        (["--bound", "7"], "cannot be located"),
        (["--prompts", "no-such-file.txt"], "does not exist"),
    ],
)
def test_cli_bad_option_is_one_line_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "report"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "workbench",
            "study",
            "random-number",
            "--model",
            "tiny-qwen2",
            "--out",
            str(out),
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]
    assert not out.exists()


@pytest.mark.real
def test_cli_block_99_on_the_30_block_model(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "workbench",
            "study",
            "random-number",
            "--model",
            "smollm2",
            "--block",
            "99",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "Block 99 does not exist: SmolLM2-135M-Instruct has blocks 0–29" in proc.stderr
    assert not out.exists()


@pytest.mark.browser
def test_cli_writes_html_png_and_svg_figures(tmp_path):
    out = tmp_path / "report"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# odd prompts\nI'm generating a random number between [0, 99]. The number is \n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "workbench",
            "study",
            "random-number",
            "--model",
            "tiny-qwen2",
            "--out",
            str(out),
            "--prompts",
            str(prompts),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "results.json").read_text())
    assert record["prompt_sweep"][-1]["prompt"] == "I'm generating a random number between [0, 99]. The number is "
    assert set(record["distributions"]) == {
        "clean",
        "identity_block_3",
        "mask_9_from_2",
        "patch_1_2",
        "patch_1_2_and_3_on",
        "patch_and_mask",
    }
    for suffix in ("html", "png", "svg"):
        files = list((out / "figures").glob(f"*.{suffix}"))
        assert len(files) >= 10, suffix
    assert (out / "figures" / "distributions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- a saved study reloads exactly, and `workbench report` redraws it without the model -------------------


def assert_same_study(study, loaded):
    from tests.reliability.test_roundtrip import assert_same_result, assert_same_value

    assert_same_value(study.record, loaded.record, "record")
    assert list(study.results) == list(loaded.results)
    for name in study.results:
        assert_same_result(study.results[name], loaded.results[name], name)
    assert [(f.key, f.title, f.caption, f.section) for f in study.figures] == [
        (f.key, f.title, f.caption, f.section) for f in loaded.figures
    ]
    for fig, again in zip(study.figures, loaded.figures, strict=True):
        assert fig.figure.to_json() == again.figure.to_json(), fig.key
    assert loaded.plan == study.plan


@pytest.fixture(scope="module")
def tiny_study(tiny_qwen2, tmp_path_factory):
    prompts = tmp_path_factory.mktemp("prompts") / "extra.txt"
    prompts.write_text("I'm generating a random number between [0, 99]. The number is \n")
    study = run_study(tiny_qwen2, StudyOptions(sweep_prompts=SWEEP_PROMPTS[:4], prompts_file=prompts))
    out = tmp_path_factory.mktemp("tiny-study") / "report"
    write_report(study, out, static=False)
    return study, out


def test_a_written_study_reloads_exactly(tiny_study):
    study, out = tiny_study
    assert_same_study(study, load_study(out))
    assert_same_study(study, load_study(out / "results.json"))


def test_results_json_keeps_the_plain_record_readable(tiny_study):
    study, out = tiny_study
    data = json.loads((out / "results.json").read_text())
    assert data["workbench_output"]["kind"] == "random-number study"
    assert data["distributions"] == study.record["distributions"]  # plain JSON, no tags in the numbers
    assert set(data["probe_results"]) == set(study.results)


REDRAW_WITHOUT_A_MODEL = """
import sys
import workbench.models

def no_model(*args, **kwargs):
    raise AssertionError("workbench report must not load a model")

workbench.models.load_model = no_model
workbench.models._boot = no_model
from workbench.cli import main
main(sys.argv[1:])
"""


def test_workbench_report_redraws_without_the_model(tiny_study, tmp_path):
    from workbench.outputs import read_marker

    study, out = tiny_study
    copy = tmp_path / "report"
    shutil.copytree(out, copy)
    results_before = (copy / "results.json").read_bytes()
    (copy / "report.html").write_text("stale")  # a changed file the marker no longer vouches for …
    proc = subprocess.run(
        [sys.executable, "-c", REDRAW_WITHOUT_A_MODEL, "report", str(copy), "--no-static"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert (
        proc.returncode != 0
        and "report.html, which the workbench did not write (or which changed since)" in proc.stderr
    )
    shutil.copyfile(out / "report.html", copy / "report.html")  # … restored: the folder is ours again
    shutil.rmtree(copy / "figures")
    proc = subprocess.run(
        [sys.executable, "-c", REDRAW_WITHOUT_A_MODEL, "report", str(copy), "--no-static"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"{len(study.figures)} figures redrawn" in proc.stdout
    assert (copy / "results.json").read_bytes() == results_before  # the same bytes: encoding is deterministic
    names = sorted(p.name for p in (copy / "figures").iterdir())
    scripts = [n for n in names if n.startswith("plotly-") and n.endswith(".min.js")]
    assert len(scripts) == 1  # the figures share one plotly.js beside them
    assert sorted(set(names) - set(scripts)) == sorted(f"{f.key}.html" for f in study.figures)
    assert sorted(read_marker(copy)["files"]) == sorted(read_marker(out)["files"])
    assert_same_study(study, load_study(copy))
    html_text = (copy / "report.html").read_text()
    for fig in study.figures:
        assert f"fig-{fig.key}" in html_text


def test_workbench_report_refuses_what_is_not_a_study(tmp_path):
    from tests.reliability.conftest import snapshot, user_folder, workbench

    folder = user_folder(tmp_path / "d")
    before = snapshot(folder)
    run = workbench("report", str(folder))
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert run.error_lines == [
        f"error: Output folder {folder} holds results.json, which the workbench did not write: "
        "choose a new or empty folder (nothing was changed)."
    ]
    run = workbench("report", str(folder), "--out", str(tmp_path / "new"))
    assert run.error_lines == [
        f"error: {folder / 'results.json'} is not written by this version of the workbench, "
        "not a saved random-number study: pass a file written by the matching save."
    ]
    assert snapshot(folder) == before and not (tmp_path / "new").exists()


@pytest.mark.real
def test_the_smollm2_study_reloads_exactly(smollm2_study):
    study, out = smollm2_study
    assert_same_study(study, load_study(out))
