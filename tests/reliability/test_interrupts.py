"""Ctrl-C and SIGTERM during a study, and several writers at once: the earlier output is never damaged.

A study is interrupted at two chosen moments (while measuring, and while the new report is being
written next to the old one) by a wrapper that pauses there and says so; the signal then arrives at a
known point. Afterwards the earlier report is byte-identical and no temporary folder is left.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

from workbench.outputs import read_marker
from workbench.studies.random_number import SWEEP_PROMPTS, StudyOptions, run_study
from workbench.studies.report import write_report

from .conftest import cli_env, leftovers, snapshot, workbench

PAUSE = textwrap.dedent("""
    import sys, time
    import {module} as target

    original = target.{function}

    def paused(*args, **kwargs):
        print("PAUSED", flush=True)
        time.sleep(120)
        return original(*args, **kwargs)

    target.{function} = paused
    from workbench.cli import main
    main(sys.argv[1:])
""")

MOMENTS = {
    "measuring": ("workbench.studies.random_number", "prompt_sweep"),
    "writing the report": ("workbench.studies.report", "render_html"),
}


@pytest.fixture(scope="module")
def earlier_report(tiny_qwen2, tmp_path_factory):
    out = tmp_path_factory.mktemp("earlier") / "report"
    write_report(run_study(tiny_qwen2, StudyOptions(sweep_prompts=SWEEP_PROMPTS[:2])), out, static=False)
    return out


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_a_signal_during_a_study_leaves_the_earlier_report(earlier_report, tmp_path, signum, moment):
    report = tmp_path / "report"
    shutil.copytree(earlier_report, report)
    before = snapshot(tmp_path)
    module, function = MOMENTS[moment]
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PAUSE.format(module=module, function=function),
            "study",
            "random-number",
            "--model",
            "tiny-qwen2",
            "--out",
            str(report),
            "--no-static",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=tmp_path,
    )
    while (line := child.stdout.readline()) and "PAUSED" not in line:
        pass
    assert "PAUSED" in line, child.stderr.read()
    if moment == "writing the report":
        assert len(leftovers(tmp_path)) == 1  # the new report is being written beside the old one
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 128 + signum
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("interrupted")]
    assert lines == [
        f"interrupted by {signal.Signals(signum).name}: stopped before the end; no half-written output "
        "was left and earlier outputs are as they were."
    ]
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


def test_writers_to_one_folder_at_once_leave_one_complete_output(tmp_path):
    out = tmp_path / "probe"
    with ThreadPoolExecutor(3) as pool:
        runs = list(
            pool.map(
                lambda i: workbench(
                    "probe",
                    "logit_lens",
                    "--model",
                    "tiny-qwen2",
                    "--no-static",
                    "--prompt",
                    f"Writer {i} says",
                    "--out",
                    str(out),
                    cwd=tmp_path,
                ),
                range(3),
            )
        )
    for run in runs:
        assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    marker = read_marker(out)
    on_disk = sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != ".workbench-output.json"
    )
    assert sorted(marker["files"]) == on_disk
    prompts = json.loads((out / "logit_lens.json").read_text())["prompts"]
    assert prompts in ([f"Writer {i} says"] for i in range(3))  # one writer's output, whole
    assert leftovers(tmp_path) == []
    # And the folder is still the workbench's: the next run replaces it.
    again = workbench("probe", "logit_lens", "--model", "tiny-qwen2", "--no-static", "--out", str(out), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
