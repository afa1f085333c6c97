"""Plugins: a probe shipped as a real installed distribution is found through its entry point and runs;
``@register_probe`` does the same in a notebook; ``workbench probes list`` shows both."""

from __future__ import annotations

import importlib.metadata
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from plugin_wheel import install_plugin

from workbench.errors import ProbeError
from workbench.probes import Probe, available_probes, get_probe, register_probe, registry
from workbench.results import Named, Result
from workbench.run import run

from .helpers import PROMPT

PLUGIN_MODULE = '''
"""A third-party probe: the L2 norm of the residual stream after every block."""
from dataclasses import dataclass
from typing import ClassVar

from workbench.probes import Probe
from workbench.results import Named, Result


@dataclass
class ResidNorm(Probe):
    """Residual norm: the L2 norm of the residual stream after every block, per position."""

    name: ClassVar[str] = "resid_norm"

    def hooks(self, ctx):
        def save(resid, hook, block):
            ctx.save(f"block {block}", resid.norm(dim=-1))

        return [
            (f"blocks.{b}.hook_resid_post", lambda resid, hook, b=b: save(resid, hook, b))
            for b in range(ctx.facts.n_layers)
        ]

    def result(self, record):
        import torch

        ctx, saved = record.context, record.saved[record.last_phase]
        norms = torch.stack([saved[f"block {b}"] for b in range(ctx.facts.n_layers)], 1)
        array = Named(norms, ("prompt", "block", "position"), {"position": ctx.str_tokens[0]})
        return Result(probe=self.name, model=ctx.facts.name, prompts=ctx.prompts, tokens=ctx.str_tokens,
                      arrays={"norm": array})
'''

PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "wb-resid-norm"
version = "0.0.1"
dependencies = []

[project.entry-points."workbench.probes"]
resid_norm = "wb_resid_norm:ResidNorm"
broken_plugin = "wb_resid_norm:DoesNotExist"

[tool.setuptools]
py-modules = ["wb_resid_norm"]
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """Build the plugin as a wheel (no network: no isolation, no deps) and install it into its own folder."""
    site = install_plugin(tmp_path_factory.mktemp("plugin"), "wb_resid_norm", PLUGIN_MODULE, PYPROJECT)
    assert list(site.glob("wb_resid_norm-0.0.1.dist-info"))
    return site


@pytest.fixture
def clean_registry(monkeypatch):
    """A private copy of the registry and its plugin errors, so nothing registered here outlives the test."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_PLUGIN_ERRORS", dict(registry._PLUGIN_ERRORS))


@pytest.fixture
def installed(plugin_site, clean_registry, monkeypatch, request):
    """The plugin's folder on sys.path (which is all importlib.metadata reads), for this test only."""
    monkeypatch.syspath_prepend(str(plugin_site))
    request.addfinalizer(lambda: sys.modules.pop("wb_resid_norm", None))
    return plugin_site


def check_resid_norm(model, result):
    n = model.facts.n_layers
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(model.to_tokens(PROMPT))
    expected = torch.stack([cache[f"blocks.{b}.hook_resid_post"].norm(dim=-1) for b in range(n)], 1)
    torch.testing.assert_close(result["norm"].values, expected, atol=1e-5, rtol=1e-6)
    assert result["norm"].dims == ("prompt", "block", "position")


def test_not_visible_before_install(clean_registry):
    assert "resid_norm" not in available_probes()
    with pytest.raises(ProbeError, match="Unknown probe 'resid_norm'"):
        get_probe("resid_norm")


def test_installed_plugin_is_discovered_and_runs(installed, tiny_qwen2):
    names = {ep.name for ep in importlib.metadata.entry_points(group="workbench.probes")}
    assert {"resid_norm", "broken_plugin"} <= names
    probes = available_probes()
    assert {"logit_lens", "attention", "block_replacement", "attention_mask", "patch", "resid_norm"} <= set(probes)
    cls = get_probe("resid_norm")
    assert cls.__module__ == "wb_resid_norm" and Path(sys.modules["wb_resid_norm"].__file__).parent == installed
    result = run(tiny_qwen2, PROMPT, cls())["resid_norm"]
    check_resid_norm(tiny_qwen2, result)
    assert result.to_dataframe().shape == (tiny_qwen2.facts.n_layers * len(tiny_qwen2.str_tokens(PROMPT)), 4)


def test_a_broken_plugin_is_reported_not_fatal(installed):
    probes = available_probes()
    assert "broken_plugin" not in probes and "resid_norm" in probes
    errors = registry.plugin_errors()
    assert "DoesNotExist" in errors["broken_plugin"]


def test_register_probe_decorator(clean_registry, tiny_llama):
    @register_probe
    @dataclass
    class FinalNorm(Probe):
        """Final norm: the residual norm after the last block."""

        name: ClassVar[str] = "final_norm"

        def hooks(self, ctx):
            def save(resid, hook):
                ctx.save("resid", resid.norm(dim=-1))

            return [(f"blocks.{ctx.facts.n_layers - 1}.hook_resid_post", save)]

        def result(self, record):
            ctx = record.context
            norm = record.saved[record.last_phase]["resid"]
            return Result(
                probe=self.name,
                model=ctx.facts.name,
                prompts=ctx.prompts,
                tokens=ctx.str_tokens,
                arrays={"norm": Named(norm, ("prompt", "position"))},
            )

    assert get_probe("final_norm") is FinalNorm and available_probes()["final_norm"] is FinalNorm
    result = run(tiny_llama, PROMPT, get_probe("final_norm")())["final_norm"]
    with torch.no_grad():
        _, cache = tiny_llama.bridge.run_with_cache(tiny_llama.to_tokens(PROMPT))
    torch.testing.assert_close(result["norm"].values, cache["blocks.2.hook_resid_post"].norm(dim=-1))


def test_register_probe_refuses_what_is_not_a_named_probe(clean_registry):
    with pytest.raises(ProbeError, match="not a Probe subclass"):
        register_probe(dict)

    class Nameless(Probe):
        def hooks(self, ctx):
            return []

        def result(self, record):
            return None

    with pytest.raises(ProbeError, match="no `name`"):
        register_probe(Nameless)


def test_cli_lists_and_runs_the_plugin(installed):
    pytest.importorskip("workbench.cli.probes")
    from typer.testing import CliRunner

    from workbench.cli import _register, app

    _register()
    runner = CliRunner()
    listed = runner.invoke(app, ["probes", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    data = json.loads(listed.stdout)
    assert data["probes"]["resid_norm"]["summary"].startswith("Residual norm")
    assert data["probes"]["resid_norm"]["class"] == "wb_resid_norm.ResidNorm"
    assert "broken_plugin" in data["plugin_errors"]
    table = runner.invoke(app, ["probes", "list"], env={"COLUMNS": "250"})
    assert table.exit_code == 0 and "resid_norm" in table.stdout and "logit_lens" in table.stdout
    ran = runner.invoke(app, ["probe", "resid_norm", "--model", "tiny-qwen2", "--json"])
    assert ran.exit_code == 0, ran.output
    result = json.loads(ran.stdout)
    assert result["probe"] == "resid_norm" and result["arrays"]["norm"]["dims"] == ["prompt", "block", "position"]
