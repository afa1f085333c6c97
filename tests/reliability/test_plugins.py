"""Plugins that misbehave at import, in every way we could think of, never break the workbench.

Each bad plugin is an installed distribution (a ``*.dist-info`` with an entry point in the
``workbench.probes`` group) on a temporary ``PYTHONPATH``, as pip would leave it. The CLI must keep
its stdout clean (``--json`` stays parseable), keep the built-in probes, report each broken plugin
on one line, and run the good ones.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from .conftest import cli_env, workbench

GOOD = '''
from dataclasses import dataclass
from typing import ClassVar

from workbench.probes import Probe
from workbench.results import Named, Result


@dataclass
class FinalNorm(Probe):
    """Final norm: the residual norm after the last block."""

    name: ClassVar[str] = "final_norm"

    def hooks(self, ctx):
        def save(resid, hook):
            return ctx.save("n", resid.norm(dim=-1))

        return [(f"blocks.{ctx.facts.n_layers - 1}.hook_resid_post", save)]

    def result(self, record):
        ctx = record.context
        return Result(probe=self.name, model=ctx.facts.name, prompts=ctx.prompts, tokens=ctx.str_tokens,
                      arrays={"norm": Named(record.saved[record.last_phase]["n"], ("prompt", "position"))})
'''

BAD = {
    # entry-point name: module source (the entry point is "module:Thing")
    "raises": "raise RuntimeError('plugin bug\\nwith a second line')\n",
    "exits": "import sys\nsys.exit(3)\n",
    "interrupts": "raise KeyboardInterrupt\n",
    "prints": "print('hello from a plugin at import')\nThing = 42\n",
    "not_a_probe": "class Thing:\n    name = 'not_a_probe'\n",
    "missing_attribute": "x = 1\n",
    "syntax_error": "def broken(:\n",
    "replaces_builtin": textwrap.dedent('''
        from dataclasses import dataclass
        from typing import ClassVar
        from workbench.probes import Probe, register_probe

        @register_probe
        @dataclass
        class Thing(Probe):
            """An impostor."""
            name: ClassVar[str] = "logit_lens"
            def hooks(self, ctx):
                raise RuntimeError("impostor ran")
            def result(self, record):
                return None
    '''),
    "import_error": "import no_such_dependency_xyz\n",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """One installed distribution with a good plugin and every bad one."""
    root = tmp_path_factory.mktemp("plugin-site")
    (root / "wb_good_plugin.py").write_text(GOOD)
    lines = ["[workbench.probes]", "final_norm = wb_good_plugin:FinalNorm"]
    for name, source in BAD.items():
        (root / f"wb_bad_{name}.py").write_text(source)
        lines.append(f"{name} = wb_bad_{name}:Thing")
    info = root / "wb_plugins-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wb-plugins\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    (info / "RECORD").write_text("")
    return root


def env_with(site: Path) -> dict[str, str]:
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(site)])
    return env


def test_probes_list_survives_every_bad_plugin(site):
    run = workbench("probes", "list", "--json", env=env_with(site))
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    data = json.loads(run.stdout)  # nothing a plugin printed reached stdout
    assert {"logit_lens", "attention", "block_replacement", "attention_mask", "patch", "final_norm"} <= set(
        data["probes"]
    )
    assert data["probes"]["logit_lens"]["class"] == "workbench.probes.logit_lens.LogitLens"  # the impostor was undone
    errors = data["plugin_errors"]
    assert set(errors) == set(BAD)
    assert errors["raises"] == "RuntimeError: plugin bug with a second line"
    assert errors["exits"] == "SystemExit: 3"
    assert errors["interrupts"].startswith("KeyboardInterrupt")
    assert "not a Probe subclass" in errors["prints"] and "not a Probe subclass" in errors["not_a_probe"]
    assert "has no attribute 'Thing'" in errors["missing_attribute"]
    assert errors["syntax_error"].startswith("SyntaxError")
    assert errors["replaces_builtin"] == "tried to replace the probe(s) logit_lens; kept the originals"
    assert errors["import_error"].startswith("ModuleNotFoundError: No module named 'no_such_dependency_xyz'")
    assert all("\n" not in e for e in errors.values())
    assert "hello from a plugin at import" in run.stderr


def test_the_table_names_each_broken_plugin_on_one_line(site):
    run = workbench("probes", "list", env=env_with(site))
    assert run.returncode == 0 and "Traceback" not in run.stderr
    failed = [line for line in run.stderr.splitlines() if line.startswith("plugin ")]
    assert sorted(line.split()[1] for line in failed) == sorted(BAD)


def test_good_plugins_and_built_ins_still_run(site):
    ran = workbench("probe", "final_norm", "--model", "tiny-qwen2", "--json", env=env_with(site))
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["arrays"]["norm"]["dims"] == ["prompt", "position"]
    builtin = workbench("probe", "logit_lens", "--model", "tiny-qwen2", env=env_with(site))
    assert builtin.returncode == 0 and "impostor" not in builtin.stderr + builtin.stdout


def test_a_broken_plugin_asked_for_by_name_is_one_line(site):
    run = workbench("probe", "raises", "--model", "tiny-qwen2", env=env_with(site))
    assert run.returncode == 8 and "Traceback" not in run.stderr
    assert len(run.error_lines) == 1 and run.error_lines[0].startswith(
        "error: The probe plugin 'raises' failed to load (RuntimeError"
    )
