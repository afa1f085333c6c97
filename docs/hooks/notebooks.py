"""Docs build hook: the notebooks in ``notebooks/`` become pages, executed on the embedded default model.

The committed notebooks carry no outputs (clean diffs). :func:`executed` runs one with nbclient into
``build/notebooks/`` and stamps the copy with a key: a hash of the notebook, of the workbench source and
of the packages that shape its outputs. A copy whose key still matches is reused, so ``make test`` runs
each notebook once: ``tests/test_notebooks.py`` checks the same copies the docs build renders
(mkdocs-jupyter, ``execute: false``). The kernel shows figures with Plotly's ``plotly_mimetype+notebook``
renderer, so each figure output also carries HTML that draws it on a static page (plotly.js is embedded
once per notebook), and leaves out download progress bars, which mean nothing on a page.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from mkdocs.plugins import event_priority

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
BUILD = ROOT / "build" / "notebooks"
KERNEL_ENV = {
    "PLOTLY_RENDERER": "plotly_mimetype+notebook",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" bars
}
KERNEL_STARTUP = "import warnings; warnings.filterwarnings('ignore', message='IProgress not found')"  # no ipywidgets
PACKAGES = ("plotly", "torch", "transformers", "transformer-lens", "nbclient", "ipykernel")
ENVIRONMENT = ("WORKBENCH_NOTEBOOK_MODEL", "WORKBENCH_CACHE")
TIMEOUT_S = 900

log = logging.getLogger("mkdocs.hooks.notebooks")


def notebooks() -> list[Path]:
    """The committed notebooks, by name."""
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def cache_key(notebook: Path) -> str:
    """What an executed copy depends on: the notebook, the workbench source, key packages and settings."""
    digest = hashlib.sha256(notebook.read_bytes())
    for path in sorted((ROOT / "workbench").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + path.read_bytes())
    for package in PACKAGES:
        digest.update(f"{package}={_version(package)}".encode())
    for name in ENVIRONMENT:
        digest.update(f"{name}={os.environ.get(name)}".encode())
    digest.update(f"{sys.version} {sorted(KERNEL_ENV.items())} {KERNEL_STARTUP}".encode())
    return digest.hexdigest()


def executed(notebook: Path, build: Path = BUILD) -> Path:
    """An executed copy of ``notebook`` in ``build``: reused when its key matches, else run now (about a minute).

    A cell that raises stops the run with nbclient's ``CellExecutionError`` (the cell and its traceback) and
    nothing is written.
    """
    import nbformat
    from nbclient import NotebookClient

    target = build / notebook.name
    key = cache_key(notebook)
    if (
        target.is_file()
        and nbformat.read(target, as_version=4).metadata.get("workbench_execution", {}).get("key") == key
    ):
        return target
    log.info("executing %s (the embedded default model; about a minute)", notebook.relative_to(ROOT))
    book = nbformat.read(notebook, as_version=4)
    with tempfile.TemporaryDirectory() as cwd, _environment(**KERNEL_ENV):
        NotebookClient(
            book,
            timeout=TIMEOUT_S,
            kernel_name="python3",
            resources={"metadata": {"path": cwd}},
            extra_arguments=[f"--IPKernelApp.exec_lines={KERNEL_STARTUP}"],
        ).execute()
    book.metadata["workbench_execution"] = {"key": key}
    build.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    nbformat.write(book, partial)
    partial.replace(target)
    return target


@event_priority(100)  # before mkdocs-jupyter's on_files, which turns .ipynb files into pages
def on_files(files, config):
    """Add each executed notebook as the page ``notebooks/<name>.ipynb`` (before mkdocs-jupyter claims it)."""
    from mkdocs.structure.files import File

    for notebook in notebooks():
        copy = executed(notebook)
        files.append(
            File(
                f"notebooks/{copy.name}",
                src_dir=str(copy.parent.parent),
                dest_dir=config.site_dir,
                use_directory_urls=config.use_directory_urls,
            )
        )
    return files


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@contextlib.contextmanager
def _environment(**values: str):
    """Set environment variables for the kernel nbclient starts (it inherits ours), then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
