"""Build a one-module plugin as a real wheel and install it into its own folder (no network, no deps):
what a user gets from `pip install their-plugin`, for the plugin tests."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def install_plugin(root: Path, module: str, source: str, pyproject: str) -> Path:
    """``module``.py with ``source`` and ``pyproject``, built and installed under ``root``; returns the site folder."""
    src, dist, site = root / "src", root / "dist", root / "site"
    src.mkdir(parents=True)
    (src / "pyproject.toml").write_text(textwrap.dedent(pyproject))
    (src / f"{module}.py").write_text(source)
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(src)],
        check=True,
        capture_output=True,
    )
    wheels = list(dist.glob(f"{module}-*.whl"))
    assert len(wheels) == 1, wheels
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site), str(wheels[0])],
        check=True,
        capture_output=True,
    )
    assert (site / f"{module}.py").is_file()
    return site
