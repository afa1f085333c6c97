"""The report opens from disk in headless Chromium and every Plotly figure renders (checked in the DOM)."""

import re
import subprocess

import pytest

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

pytestmark = [
    pytest.mark.browser,
    pytest.mark.real,
    pytest.mark.skipif(find_browser() is None, reason="needs Chromium (make setup installs it)"),
]


def chromium(tmp_path, *args):
    return subprocess.run(
        [find_browser(), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=60000", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_figure_renders_in_a_real_browser(smollm2_study, tmp_path):
    study, out = smollm2_study
    dom = chromium(tmp_path, "--dump-dom", (out / "report.html").as_uri()).stdout
    ids = re.findall(r'id="fig-([\w-]+)"', dom)
    assert sorted(ids) == sorted(f.key for f in study.figures)
    # plotly.js replaces each figure div's content with rendered SVG layers; split the DOM per figure.
    chunks = re.split(r'id="fig-[\w-]+"', dom)[1:]
    for key, chunk in zip(ids, chunks, strict=True):
        assert 'class="main-svg"' in chunk, f"figure {key} did not render"
    heatmap_layers = dom.count('class="hm"') + dom.count("heatmaplayer")
    bars = dom.count('class="trace bars"')
    assert heatmap_layers > 0 and bars > 0


def test_screenshot_of_the_report(smollm2_study, tmp_path):
    _, out = smollm2_study
    shot = tmp_path / "report.png"
    chromium(tmp_path, "--window-size=1300,2400", f"--screenshot={shot}", (out / "report.html").as_uri())
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
