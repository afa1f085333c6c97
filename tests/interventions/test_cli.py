"""The CLI parses every probe's options from the probe's own field types, lists them with ``--help``, and
ends every error of each domain with one line, its exit code and no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from workbench.cli.options import parse_options, probe_options
from workbench.errors import (
    InterventionError,
    LayerError,
    ProbeError,
    SweepError,
    TokenError,
)
from workbench.probes import AttentionMask, BlockReplacement, LogitLens, Probe


@dataclass
class TextProbe(Probe):
    """A plugin-like probe whose options are text, a float, a flag and a list of text."""

    label: str = "x"
    scale: float = 1.0
    loud: bool = False
    words: list[str] = field(default_factory=list)
    name: ClassVar[str] = "text_probe"


def test_text_fields_keep_text_and_typed_fields_parse():
    assert parse_options(TextProbe, "text_probe", ["label=5", "scale=2", "loud=yes", "words=5,6"]) == {
        "label": "5",
        "scale": 2.0,
        "loud": True,
        "words": ["5", "6"],
    }
    assert parse_options(TextProbe, "text_probe", ['words=["a, b", "c"]']) == {"words": ["a, b", "c"]}
    assert parse_options(AttentionMask, "attention_mask", ["keys=9", "blocks=1,2", "queries=3"]) == {
        "keys": "9",
        "blocks": [1, 2],
        "queries": [3],
    }
    assert parse_options(AttentionMask, "attention_mask", ["keys=9,@12", "heads=none"]) == {
        "keys": ["9", 12],
        "heads": None,
    }
    assert parse_options(BlockReplacement, "block_replacement", ["blocks=-1", "mode=zero_mlp"]) == {
        "blocks": -1,
        "mode": "zero_mlp",
    }
    assert parse_options(BlockReplacement, "block_replacement", ["blocks="]) == {"blocks": []}
    assert parse_options(LogitLens, "logit_lens", ["k=3", "positions=[0, -1]"]) == {"k": 3, "positions": [0, -1]}
    assert set(probe_options(TextProbe)) == {"label", "scale", "loud", "words"}


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("blocks=abc", "'abc' is not a whole number"),
        ("blocks=1.5", "'1.5' is not a whole number"),
        ("blocks=[1,", "not a JSON list"),
        ('blocks=["a"]', "is not int"),
        ("mode", "not key=value"),
        ("depth=3", "has no option 'depth'"),
    ],
)
def test_bad_options_name_the_option_and_the_fix(option, message):
    with pytest.raises(ProbeError, match=message):
        parse_options(BlockReplacement, "block_replacement", [option])
    with pytest.raises(ProbeError, match="twice"):
        parse_options(BlockReplacement, "block_replacement", ["mode=identity", "mode=zero_mlp"])
    with pytest.raises(ProbeError, match="not a finite number"):
        parse_options(TextProbe, "text_probe", ["scale=nan"])


def workbench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-m", "workbench", *args], capture_output=True, text=True, env=env, timeout=300
    )


CASES = [
    (LayerError, ["probe", "block_replacement", "--model", "tiny-qwen2", "-o", "blocks=99"], "Block 99 does not exist"),
    (LayerError, ["probe", "block_replacement", "--model", "tiny-qwen2", "-o", "blocks="], "block list is empty"),
    (
        LayerError,
        [
            "probe",
            "patch",
            "--model",
            "tiny-qwen2",
            "-o",
            "site=k",
            "-o",
            "heads=2",
            "-o",
            "source=I'm generating a random number between [0, 5]. The number is ",
        ],
        "key/value heads 0–1",
    ),
    (
        TokenError,
        ["probe", "attention_mask", "--model", "tiny-qwen2", "-o", "keys=zebra"],
        "'zebra' is not in the prompt",
    ),
    (TokenError, ["probe", "logit_lens", "--model", "tiny-qwen2", "--readout", "99"], "Readout position 99"),
    (ProbeError, ["probe", "block_replacement", "--model", "tiny-qwen2", "-o", "blocks=abc"], "not a whole number"),
    (ProbeError, ["probe", "logit_lens", "--model", "tiny-qwen2", "-o", "k=100000"], "vocabulary size"),
    (ProbeError, ["probe", "attention_mask", "--model", "tiny-qwen2"], "needs the keys"),
    (SweepError, ["sweep", "patch", "--model", "tiny-qwen2", "--site", "resid"], "Unknown sweep site 'resid'"),
    (SweepError, ["sweep", "intervention", "--model", "tiny-qwen2", "--template", "{oops"], "--template is not JSON"),
    (
        InterventionError,
        ["sweep", "intervention", "--model", "tiny-qwen2", "--template", '{"site": "resid_pre", "op": "mask"}'],
        "cannot edit site 'resid_pre'",
    ),
    (
        InterventionError,
        ["probe", "intervention", "--model", "tiny-qwen2", "-o", 'edits=[{"site": "z", "op": {"name": "nudge"}}]'],
        "Unknown operation 'nudge'",
    ),
]


def test_every_error_domain_ends_the_cli_with_one_line():
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = list(pool.map(lambda case: workbench(*case[1]), CASES))
    for (error, args, message), done in zip(CASES, runs, strict=True):
        assert done.returncode == error.exit_code, (args, done.stderr)
        assert "Traceback" not in done.stderr, args
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, done.stderr)


def test_probe_help_lists_the_probes_own_options():
    shown = workbench("probe", "attention_mask", "--help")
    assert shown.returncode == 0, shown.stderr
    for option, kind in (("keys", "list[str | int] | str | int | None"), ("blocks", "list[int] | int | None")):
        assert option in shown.stdout and kind in shown.stdout
    general = workbench("probe", "--help")
    assert general.returncode == 0 and "--option" in general.stdout


def test_an_intervention_runs_from_the_cli():
    edits = json.dumps([{"site": "block", "op": "identity", "blocks": [1]}])
    done = workbench("probe", "intervention", "--model", "tiny-qwen2", "-o", f"edits={edits}", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["meta"]["edits"] == [{"site": "block", "op": {"name": "identity"}, "blocks": [1]}]
    assert result["arrays"]["kl"]["values"][0] > 0
