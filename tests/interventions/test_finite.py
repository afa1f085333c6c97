"""Interventions refuse meaningless numbers: NaN or ±inf in an ``Add`` vector, its coefficient or a ``Scale``
factor is an InterventionError (exit 12) where the description is given — from Python, from the CLI's
``-o edits=…`` and ``--intervention`` JSON, and from a TOML experiment spec — never NaN results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from workbench_typecheck import unchecked

from workbench import interventions as iv
from workbench.errors import InterventionError
from workbench.experiments import Experiment
from workbench.interventions import Intervention, Operation, register_operation

NAN, INF = float("nan"), float("inf")
BAD_NUMBERS = [NAN, INF, -INF]


def vector(width: int, bad: float | None = None, at: int = 3) -> list[float]:
    values = [0.5] * width
    if bad is not None:
        values[at] = bad
    return values


@pytest.mark.parametrize("bad", BAD_NUMBERS, ids=["nan", "inf", "-inf"])
def test_the_python_api_refuses_non_finite_numbers(bad):
    with pytest.raises(InterventionError, match="Entry 3 of the steering vector is .*not a finite number"):
        iv.add("resid_pre", vector(8, bad), blocks=[0])
    with pytest.raises(InterventionError, match="Entry 3 of the steering vector"):
        iv.add("resid_pre", torch.tensor(vector(8, bad)), blocks=[0])
    with pytest.raises(InterventionError, match="Entry 3 of the steering vector"):
        unchecked(iv.Add)(np.array(vector(8, bad), dtype=np.float32))  # numpy: outside the annotation, still checked
    with pytest.raises(InterventionError, match="The steering coefficient is .*not a finite number"):
        iv.add("resid_pre", vector(8), blocks=[0], coefficient=bad)
    with pytest.raises(InterventionError, match="Scale factor is .*not a finite number"):
        iv.scale("resid_pre", bad, blocks=[0])
    with pytest.raises(InterventionError, match="Scale factor is .*not a finite number"):
        iv.Scale(bad)
    for op in ({"name": "scale", "factor": bad}, {"name": "add", "vector": vector(4), "coefficient": bad}):
        with pytest.raises(InterventionError, match="not a finite number"):
            Intervention.from_dict({"site": "resid_pre", "op": op})


def test_numbers_too_large_for_a_float_and_non_numbers_are_refused():
    # Wrongly typed values come from JSON and TOML; unchecked() skips the test session's own type checker.
    with pytest.raises(InterventionError, match="not a finite number"):
        unchecked(iv.Scale)(10**400)  # an int Python holds but a float cannot
    with pytest.raises(InterventionError, match="not a number"):
        unchecked(iv.Add)(["0.5", 1.0])
    with pytest.raises(InterventionError, match="not a list of numbers"):
        unchecked(iv.Add)(5)
    with pytest.raises(InterventionError, match="not a number"):
        unchecked(iv.Add)([1.0], coefficient="big")
    with pytest.raises(InterventionError, match="not a number"):
        unchecked(iv.Scale)(True)


def test_finite_numbers_still_steer_exactly(tiny_qwen2):
    width = tiny_qwen2.facts.d_model
    steer = iv.add("resid_pre", torch.full((width,), 0.25), blocks=[1], coefficient=2)
    assert steer.operation.vector == (0.25,) * width and steer.operation.coefficient == 2.0
    tokens = tiny_qwen2.to_tokens("Hello world")
    resolved = [iv.resolve(steer, tiny_qwen2, ["Hello world"], tokens)]
    with torch.no_grad(), tiny_qwen2.bridge.hooks(fwd_hooks=iv.compile_hooks(resolved)):
        edited = tiny_qwen2.bridge(tokens)

    def by_hand(resid, hook):
        return resid + 0.5  # 2 × 0.25 on every entry

    with torch.no_grad():
        expected = tiny_qwen2.bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_pre", by_hand)])
    assert torch.isfinite(edited).all() and torch.equal(edited, expected)


@register_operation
@dataclass(frozen=True)
class Nudge(Operation):
    """A plugin-like operation with a float parameter the workbench knows nothing about."""

    amount: float = 0.0
    name: ClassVar[str] = "test_nudge"

    def apply(self, values, edit):
        return values + self.amount


def test_a_plugin_operations_non_finite_parameter_is_refused_too():
    with pytest.raises(InterventionError, match=r"non-finite parameter amount=nan"):
        Intervention("resid_pre", Nudge(NAN))
    with pytest.raises(InterventionError, match=r"non-finite parameter amount=inf"):
        Intervention.from_dict({"site": "resid_pre", "op": {"name": "test_nudge", "amount": INF}})
    assert Intervention("resid_pre", Nudge(1.5)).operation.amount == 1.5


def workbench(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-m", "workbench", *args], capture_output=True, text=True, env=env, timeout=300, cwd=cwd
    )


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_the_cli_refuses_them_in_probe_options_and_intervention_strings():
    # JSON as Python's json module reads it: NaN, Infinity and 1e999 (an overflow to inf) are all accepted there.
    scale_nan = '[{"site": "resid_pre", "op": {"name": "scale", "factor": NaN}, "blocks": [0]}]'
    add_inf = json.dumps({"site": "resid_pre", "op": {"name": "add", "vector": vector(64, INF)}, "blocks": [0]})
    coefficient_big = '{"site": "resid_pre", "op": {"name": "add", "vector": [1.0], "coefficient": 1e999}}'
    runs = [
        (workbench("probe", "intervention", "--model", "tiny-qwen2", "-o", f"edits={scale_nan}"), "Scale factor"),
        (workbench("sample", "generate", "--model", "tiny-qwen2", "-i", add_inf, "--max-new-tokens", "2"), "Entry 3"),
        (workbench("sample", "generate", "--model", "tiny-qwen2", "-i", coefficient_big), "steering coefficient"),
    ]
    for done, what in runs:
        assert done.returncode == InterventionError.exit_code, done.stderr
        line = one_error_line(done)
        assert what in line and "not a finite number" in line


def test_a_toml_spec_refuses_them_before_the_model_loads(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt": "Hello world"}\n')
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f'metrics = ["kl"]\n[model]\nspec = "tiny-qwen2"\n[dataset]\npath = "{data}"\n'
        '[conditions]\nhalf = [{ site = "resid_pre", op = { name = "scale", factor = nan }, blocks = [0] }]\n'
    )
    with pytest.raises(InterventionError, match=r"Condition 'half': Scale factor is nan, not a finite number") as info:
        Experiment.from_toml(spec)
    assert "\n" not in str(info.value)
    spec.write_text(spec.read_text().replace("factor = nan", "factor = -inf"))
    done = workbench("experiment", "run", str(spec), "--out", str(tmp_path / "out"))
    # The spec's reader names the condition and keeps the intervention's own exit code.
    assert done.returncode == InterventionError.exit_code, done.stderr
    line = one_error_line(done)
    assert "Scale factor is -inf, not a finite number" in line
    assert not (tmp_path / "out").exists()
