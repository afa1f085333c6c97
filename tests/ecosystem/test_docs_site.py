"""The docs site, built strictly: an API page per public module, every exported name documented, the notebooks
as pages whose Plotly figures render in a real (offline) browser, each linked from the page it illustrates.

``make test`` builds the site first and points ``WORKBENCH_DOCS_SITE`` at it; without that variable the
site is built here (the notebooks execute unless ``build/notebooks`` holds fresh copies).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

import workbench
from workbench.export import find_browser

from .browser import doms, figure_divs

ROOT = Path(__file__).resolve().parents[2]
PLOTLY_MIME = "application/vnd.plotly.v1+json"
ILLUSTRATES = {
    "probes_tour": "probes/index.html",
    "random_number_study": "study/index.html",
    "sampling_lab": "sampling/index.html",
}

_spec = importlib.util.spec_from_file_location("notebook_pages", ROOT / "docs" / "hooks" / "notebooks.py")
notebook_pages = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(notebook_pages)


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DISABLE_MKDOCS_2_WARNING": "true", "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "--site-dir", str(site)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
    )


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    if prebuilt := os.environ.get("WORKBENCH_DOCS_SITE"):
        path = Path(prebuilt).resolve()
        assert (path / "index.html").is_file(), f"WORKBENCH_DOCS_SITE={prebuilt} holds no built site"
        return path
    path = tmp_path_factory.mktemp("site")
    built = mkdocs_build(ROOT / "mkdocs.yml", path)
    assert built.returncode == 0, f"mkdocs build --strict failed:\n{built.stderr[-4000:]}"
    return path


def public_modules() -> list[str]:
    """Every importable module of the package whose dotted name has no private part, the CLI aside."""
    found = ["workbench"]
    for info in pkgutil.walk_packages(workbench.__path__, "workbench."):
        if not any(part.startswith("_") for part in info.name.split(".")) and not info.name.startswith("workbench.cli"):
            found.append(info.name)
    return sorted(found)


def defining_module(name: str) -> str:
    """The public module whose source assigns ``name`` at top level."""
    (home,) = [
        m
        for m in public_modules()
        if re.search(rf"^{name}\s*(:[^=]+)?=", inspect.getsource(importlib.import_module(m)), re.M)
    ]
    return home


def api_page(site: Path, module: str) -> str:
    return (site / "api" / module / "index.html").read_text()


@pytest.mark.real
def test_every_public_module_has_an_api_page(site):
    modules = public_modules()
    assert {
        "workbench.probes.logit_lens",
        "workbench.sweeps",
        "workbench.sampling.audit",
        "workbench.studies.report",
    } <= set(modules)
    pages = {p.name for p in (site / "api").iterdir() if (p / "index.html").is_file()} - {"SUMMARY"}
    assert pages == set(modules)
    for module in modules:
        assert f'id="{module}"' in api_page(site, module), f"{module}: no documented root"


@pytest.mark.real
def test_every_exported_name_is_documented_where_it_is_defined(site):
    """A name in a package's ``__all__`` is documented on its defining module's page and linked from the
    package's; one defined in a private module (no page of its own) is documented on the package's page."""
    modules = public_modules()
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                if obj.__module__.split(".")[0] != "workbench":
                    continue  # another package's name, re-exported: its own docs
                home, qualname = obj.__module__, obj.__qualname__
            else:  # a constant: documented in the module that assigns it
                home, qualname = defining_module(name), name
            if home not in modules:  # a private module
                home, qualname = module_name, name
            anchor = f'id="{home}.{qualname}"'
            assert anchor in api_page(site, home), f"{module_name}.{name}: no {anchor} on the {home} page"
            if module_name != home:
                assert f'href="../{home}/#{home}.{qualname}"' in api_page(site, module_name)


@pytest.mark.real
@pytest.mark.browser
@pytest.mark.skipif(find_browser() is None, reason="needs Chromium (make setup installs it)")
def test_notebook_pages_draw_every_figure_offline(site, tmp_path):
    notebooks = notebook_pages.notebooks()
    assert {p.stem for p in notebooks} == set(ILLUSTRATES)
    pages = [site / "notebooks" / p.stem / "index.html" for p in notebooks]
    rendered = doms(pages, tmp_path)
    for notebook, page in zip(notebooks, pages, strict=True):
        executed = nbformat.read(notebook_pages.executed(notebook), as_version=4)
        shown = sum(PLOTLY_MIME in o.get("data", {}) for c in executed.cells for o in c.get("outputs", []))
        drawn = figure_divs(rendered[page])
        assert shown > 0 and len(drawn) == shown, f"{notebook.name}: {shown} figures shown, {len(drawn)} on the page"
        assert all(drawn.values()), (
            f"{page.relative_to(site)}: figures not drawn: {[k for k, v in drawn.items() if not v]}"
        )


@pytest.mark.real
def test_each_notebook_is_linked_from_the_page_it_illustrates(site):
    for stem, page in ILLUSTRATES.items():
        assert f'notebooks/{stem}/"' in (site / page).read_text(), f"{page} does not link the {stem} notebook"


def test_a_broken_reference_in_a_docstring_fails_the_strict_build(tmp_path):
    """The API reference's own settings, on a two-function package: a Sphinx role to a name that exists
    becomes a link; one to a name that does not stops ``mkdocs build --strict``."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    mkdocstrings = next(p for p in config["plugins"] if isinstance(p, dict) and "mkdocstrings" in p)
    options = mkdocstrings["mkdocstrings"]["handlers"]["python"]["options"]
    options["extensions"] = [str(ROOT / e) for e in options["extensions"]]
    (tmp_path / "pkg").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# API\n\n::: pkg\n")
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump({"site_name": "t", "strict": True, "plugins": [mkdocstrings]}))
    sites = []
    for target in ("helper", "missing"):
        (tmp_path / "pkg" / "__init__.py").write_text(
            f'def helper():\n    """Help."""\n\n\n'
            f'def main():\n    """Calls :func:`{target}` and :func:`secrets.randbelow`."""\n'
        )
        sites.append(tmp_path / f"site-{target}")
        built = mkdocs_build(tmp_path / "mkdocs.yml", sites[-1])
        assert (built.returncode == 0) == (target == "helper"), built.stderr[-2000:]
    assert "Could not find cross-reference target 'missing'" in built.stderr
    page = (sites[0] / "index.html").read_text()
    assert 'href="#pkg.helper"' in page and "<code>secrets.randbelow</code>" in page
