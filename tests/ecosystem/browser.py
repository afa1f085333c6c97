"""Headless Chromium for DOM checks: a page is opened from disk, its scripts run, the DOM comes back.

``offline=True`` (the default) sends every host name to nowhere and every request through a closed
proxy, so only ``file://`` loads: a figure that renders has everything it needs on disk.
"""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from workbench.export import find_browser

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OFFLINE = [
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
]


def dom(page: Path, profile: Path, *, offline: bool = True, budget_ms: int = 30_000) -> str:
    """The DOM of ``page`` after its scripts ran (virtual time, so a slow machine waits rather than fails)."""
    result = subprocess.run(
        [
            find_browser(),
            *FLAGS,
            *(OFFLINE if offline else []),
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "<html" in result.stdout.lower(), f"Chromium returned no DOM for {page}: {result.stderr[-2000:]}"
    return result.stdout


def doms(pages: list[Path], workdir: Path, *, offline: bool = True, workers: int = 3) -> dict[Path, str]:
    """``dom`` of many pages, a few browsers at a time (each with its own profile)."""
    with ThreadPoolExecutor(workers) as pool:
        found = pool.map(
            lambda i_page: dom(i_page[1], workdir / f"profile-{i_page[0]}", offline=offline), enumerate(pages)
        )
        return dict(zip(pages, found, strict=True))


FIGURE_DIV = re.compile(r'<div\b[^>]*\bclass="plotly-graph-div[^"]*"[^>]*>')


def figure_divs(dom_text: str) -> dict[str, bool]:
    """Each Plotly figure div of a DOM by id, and whether plotly.js drew it (``main-svg`` before the next one)."""
    tags = list(FIGURE_DIV.finditer(dom_text))
    drawn = {}
    for tag, following in zip(tags, [*tags[1:], None], strict=True):
        div = re.search(r'\bid="([^"]+)"', tag.group(0)).group(1)
        drawn[div] = 'class="main-svg"' in dom_text[tag.end() : following.start() if following else None]
    return drawn
