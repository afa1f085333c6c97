"""Plugins that misbehave at import, in every way we could think of, never break the workbench.

Each bad plugin is an installed distribution (a ``*.dist-info`` with an entry point in the
``workbench.probes`` group) on a temporary ``PYTHONPATH``, as pip would leave it. The CLI must keep
its stdout clean (``--json`` stays parseable), keep the built-in probes, report each broken plugin
on one line, and run the good ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


# ----- saved results name their class; load_result looks it up, never imports it ---------------------------

RESULT_PLUGIN = '''
from dataclasses import dataclass

from workbench.results import Result


@dataclass(repr=False)
class NormResult(Result):
    """A plugin's own result class, with a field of its own."""

    unit: str = "l2"
'''

RESULT_BAD = {
    "result_exits": "import sys\nsys.exit(4)\n",
    "result_raises": "raise RuntimeError('result plugin bug')\n",
    "result_not_a_result": "class Thing:\n    pass\n",
}


@pytest.fixture(scope="module")
def result_site(tmp_path_factory) -> Path:
    """A distribution with a good result-class plugin (entry-point group workbench.results), bad ones, and
    the probe plugins above (a probe plugin's module that exits at import too)."""
    root = tmp_path_factory.mktemp("result-plugin-site")
    (root / "wb_result_plugin.py").write_text(RESULT_PLUGIN)
    lines = ["[workbench.results]", "norm_result = wb_result_plugin:NormResult"]
    for name, source in RESULT_BAD.items():
        (root / f"wb_{name}.py").write_text(source)
        lines.append(f"{name} = wb_{name}:Thing")
    lines += ["[workbench.probes]", "exits = wb_bad_exits:Thing"]
    (root / "wb_bad_exits.py").write_text(BAD["exits"])
    info = root / "wb_results-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wb-results\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    (info / "RECORD").write_text("")
    return root


def python(code: str, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *argv], capture_output=True, text=True, env=env, timeout=300
    )


def saved_result(path: Path, cls: str) -> Path:
    """A plain saved result whose "class" is ``cls`` (the numbers: a 2-entry array)."""
    import torch

    from workbench.results import Named, Result

    Result(probe="x", model="m", prompts=["p"], tokens=[["p"]], arrays={"x": Named(torch.arange(2.0), ("i",))}).save(
        path
    )
    data = json.loads(path.read_text())
    path.write_text(json.dumps(data | {"class": cls}))
    return path


def test_a_plugins_result_class_round_trips_in_a_fresh_process(result_site, tmp_path):
    env = env_with(result_site)
    path = tmp_path / "norm.json"
    saved = python(
        """
        import sys, torch
        from wb_result_plugin import NormResult
        from workbench.results import Named
        NormResult(probe="n", model="m", prompts=["p"], tokens=[["p"]],
                   arrays={"n": Named(torch.tensor([1.5, -2.0]), ("i",))}, unit="l1").save(sys.argv[1])
        """,
        env,
        str(path),
    )
    assert saved.returncode == 0, saved.stderr
    assert json.loads(path.read_text())["class"] == "wb_result_plugin:NormResult"
    loaded = python(
        """
        import sys, torch
        from workbench import load_result
        r = load_result(sys.argv[1])
        print(type(r).__module__, type(r).__name__, r.unit, r["n"].values.tolist())
        from workbench.serialization import result_plugin_errors
        for name, why in sorted(result_plugin_errors().items()):
            print("failed", name, why)
        """,
        env,
        str(path),
    )
    assert loaded.returncode == 0 and "Traceback" not in loaded.stderr, loaded.stderr
    out = loaded.stdout.splitlines()
    assert out[0] == "wb_result_plugin NormResult l1 [1.5, -2.0]"
    # The broken result plugins are reported, one line each, and everything else kept working.
    assert out[1:] == [
        "failed result_exits SystemExit: 4",
        "failed result_not_a_result ExportError: <class 'wb_result_not_a_result.Thing'> is not a workbench "
        "Result subclass: subclass workbench.results.Result.",
        "failed result_raises RuntimeError: result plugin bug",
    ]


def test_a_plugin_that_exits_at_import_does_not_escape_load_result(result_site, tmp_path):
    path = saved_result(tmp_path / "exits.json", "wb_bad_exits:Thing")
    loaded = python(
        """
        import sys
        from workbench import load_result
        r = load_result(sys.argv[1])
        print("still here", type(r).__name__, r["x"].values.tolist())
        """,
        env_with(result_site),
        str(path),
    )
    assert loaded.returncode == 0 and "Traceback" not in loaded.stderr, loaded.stderr
    assert loaded.stdout.strip() == "still here Result [0.0, 1.0]"
    warning = [line for line in loaded.stderr.splitlines() if line.startswith("warning:")]
    assert warning == [
        "warning: saved result class wb_bad_exits:Thing is not available (the plugin 'exits' failed to load: "
        "SystemExit: 3): loaded as a plain Result."
    ]


@pytest.mark.parametrize("hostile", ["workbench.__main__:X", "workbench.cli:app", "workbench.cli.study:X"])
def test_a_saved_class_never_makes_the_workbench_import_a_module(tmp_path, hostile):
    """``workbench.__main__`` runs the CLI on the process's own arguments when imported: a file naming it is
    refused without importing it (here the arguments would print the CLI's help)."""
    path = saved_result(tmp_path / "hostile.json", hostile)
    module = hostile.split(":")[0]
    loaded = python(
        f"""
        import sys
        from workbench import load_result
        from workbench.errors import ExportError
        before = set(sys.modules)
        try:
            load_result(sys.argv[1])
        except ExportError as exc:
            print("refused:", exc)
        print("imported:", {module!r} in set(sys.modules) - before)
        """,
        cli_env(),
        str(path),
        "--help",
    )
    assert loaded.returncode == 0 and "Traceback" not in loaded.stderr, loaded.stderr
    assert loaded.stdout.splitlines() == [  # no CLI output, no new module
        f"refused: The saved class {hostile} is not a result class of this workbench (the file was edited, "
        "or written by another version): re-save the result with this version.",
        "imported: False",
    ]


def test_an_unknown_class_outside_the_workbench_still_loads_the_numbers(tmp_path):
    path = saved_result(tmp_path / "other.json", "not_installed_pkg.__main__:X")
    loaded = python(
        """
        import sys
        from workbench import load_result
        r = load_result(sys.argv[1])
        print(type(r).__name__, r["x"].values.tolist(), "not_installed_pkg" in sys.modules)
        """,
        cli_env(),
        str(path),
    )
    assert loaded.returncode == 0 and loaded.stdout.strip() == "Result [0.0, 1.0] False", loaded.stderr
    assert "saved result class not_installed_pkg.__main__:X is not available" in loaded.stderr
