"""The study's two optional sections: a fitted lens beside the logit lens (``--lens``/``--fit-lens``) and the
headline effects over a dataset of prompts (``--dataset``), from the API and the CLI, and what they refuse."""

from __future__ import annotations

import json

import numpy as np
import pytest

from workbench.cli import main
from workbench.lenses import fit_lens
from workbench.probes import BlockReplacement
from workbench.run import run
from workbench.studies.dataset_effects import load_study_dataset
from workbench.studies.random_number import SWEEP_PROMPTS, StudyOptions, run_study
from workbench.studies.report import load_study, write_report
from workbench.tokens import digit_token_ids

from .test_random_number import assert_same_study


@pytest.fixture(scope="module")
def tiny_lens(tiny_qwen2):
    return fit_lens(tiny_qwen2, None, method="linear", tokens=1024, seed=0)


@pytest.fixture(scope="module")
def extras_study(tiny_qwen2, tiny_lens, tmp_path_factory):
    options = StudyOptions(sweep_prompts=list(SWEEP_PROMPTS[:2]), lens=tiny_lens, dataset="bundled", resamples=999)
    study = run_study(tiny_qwen2, options)
    out = tmp_path_factory.mktemp("extras") / "report"
    write_report(study, out, static=False)
    return study, out


def test_dataset_effects_equal_a_loop_of_runs(tiny_qwen2, extras_study):
    """identity_block on p(digit > source bound): the mean over rows of (edited − clean), each row run alone."""
    study, _ = extras_study
    cell = study.record["dataset_effects"]["identity_block"]["digits_above:{source_bound}"]
    dataset = load_study_dataset("bundled")
    ids = digit_token_ids(tiny_qwen2)
    effects = []
    for item in dataset.items:
        above = [ids[d] for d in range(int(item.fields["source_bound"]) + 1, 10)]
        both = run(tiny_qwen2, item.prompt, BlockReplacement(blocks=[study.plan.block]))
        clean, edited = (both.probs(phase)[0, above].sum().item() for phase in (list(both.logits)[0], None))
        effects.append(edited - clean)
    assert cell["n"] == len(dataset.items) == 56
    assert cell["mean"] == pytest.approx(np.mean(effects), abs=1e-6)
    assert cell["ci_low"] <= cell["mean"] <= cell["ci_high"]
    assert set(study.record["dataset_effects"]) == {"identity_block", "mask_bound", "patch_bound"}
    for metrics in study.record["dataset_effects"].values():
        for c in metrics.values():
            assert set(c) == {"mean", "ci_low", "ci_high", "n", "p_value"}


def test_lens_check_reads_the_fitted_lens(tiny_qwen2, tiny_lens, extras_study):
    study, _ = extras_study
    check = study.record["lens_check"]
    result = study.results["tuned_lens"]
    assert check["layers"][0] == "embeddings" and len(check["layers"]) == tiny_qwen2.facts.n_layers + 1
    # the last block's row is exact under both lenses; the fitted lens reads the layers below it with lower KL
    assert check["kl"]["logit lens"][-1] == pytest.approx(0, abs=1e-5)
    assert np.mean(check["kl"]["linear lens"]) < np.mean(check["kl"]["logit lens"])
    assert check["verdict"] in study.record["headline"]
    assert check["survives"] in (True, False, None)
    np.testing.assert_allclose(check["kl"]["linear lens"], result["kl_to_final"].sel(prompt=0).numpy()[:-1, 0], atol=0)
    keys = [f.key for f in study.figures]
    assert keys[keys.index("lens_check") :] == [
        "lens_check",
        "digit_lens",
        "dataset_effects",
        "writers_heads",
        "writers_blocks",
        "writers_paths",
        "writers_dataset",
    ]


def test_a_study_with_both_sections_reloads_exactly(extras_study):
    study, out = extras_study
    assert_same_study(study, load_study(out))
    html = (out / "report.html").read_text()
    assert "Does a better lens agree?" in html and "Headline effects over the dataset" in html
    saved = json.loads((out / "results.json").read_text())
    assert saved["dataset_effects"] == study.record["dataset_effects"]


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return exit_info.value.code or 0, out.out, out.err


def test_cli_refuses_bad_extras_before_any_work(tmp_path, tiny_lens, tiny_llama, capsys):
    out = tmp_path / "report"
    base = ["study", "random-number", "-m", "tiny-qwen2", "--out", str(out), "--no-static"]
    code, _, err = run_cli(base + ["--lens", str(tmp_path / "missing.lens")], capsys)
    assert code == 16 and err.count("\n") == 1
    other = tmp_path / "llama.lens"
    fit_lens(tiny_llama, None, method="linear", tokens=512, seed=0).save(other)
    code, _, err = run_cli(base + ["--lens", str(other)], capsys)
    assert code == 16 and "fitted on tiny-llama" in err and err.count("\n") == 1
    code, _, err = run_cli(base + ["--dataset", str(tmp_path / "missing.jsonl")], capsys)
    assert code == 17 and err.count("\n") == 1
    code, _, err = run_cli(base + ["--lens", str(other), "--fit-lens"], capsys)
    assert code != 0 and "not both" in err
    assert not out.exists()


def test_cli_study_with_a_dataset_and_a_lens(tmp_path, tiny_lens, capsys):
    lens = tmp_path / "qwen.lens"
    tiny_lens.save(lens)
    out = tmp_path / "report"
    code, stdout, err = run_cli(
        [
            "study",
            "random-number",
            "-m",
            "tiny-qwen2",
            "--out",
            str(out),
            "--no-static",
            "--lens",
            str(lens),
            "--dataset",
            "bundled",
            "--resamples",
            "499",
        ],
        capsys,
    )
    assert code == 0, err
    record = json.loads((out / "results.json").read_text())
    assert set(record["dataset_effects"]) == {"identity_block", "mask_bound", "patch_bound"}
    assert "Over 56 prompts" in stdout and "under the linear lens" in stdout
    assert (out / "figures" / "lens_check.html").exists() and (out / "figures" / "dataset_effects.html").exists()
