"""Write Plotly figures to HTML, PNG, SVG or PDF; static formats go through kaleido and a system Chromium.

Every file goes through :mod:`workbench.outputs`: written atomically, marked as the workbench's, and
never over a file the workbench did not write. HTML needs nothing. Static images need a Chrome/Chromium
(Debian: ``apt-get install chromium``); without one the error says so instead of kaleido's long traceback.
``static_export()`` keeps one browser alive for a batch of figures (each standalone call would start a new one, ≈3.5 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from workbench.errors import ExportError
from workbench.outputs import check_file, json_mark, write_file

STATIC_FORMATS = (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".webp")
_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
_server_depth = 0


def find_browser() -> str | None:
    """A Chrome/Chromium executable: ``$BROWSER_PATH`` first, then the usual names on ``PATH``."""
    if (env := os.environ.get("BROWSER_PATH")) and Path(env).is_file():
        return env
    for name in _BROWSERS:
        if found := shutil.which(name):
            return found
    return None


def _require_browser() -> None:
    browser = find_browser()
    if browser is None:
        raise ExportError(
            "Static figure export (PNG/SVG/PDF) needs Chrome or Chromium and none was found: "
            "install it (`apt-get install chromium`) or set BROWSER_PATH, or save as .html instead."
        )
    os.environ.setdefault("BROWSER_PATH", browser)


@contextlib.contextmanager
def static_export():
    """Keep one headless browser for every static export inside the block."""
    global _server_depth
    _require_browser()
    import kaleido

    if _server_depth == 0:
        kaleido.start_sync_server(silence_warnings=True)
    _server_depth += 1
    try:
        yield
    finally:
        _server_depth -= 1
        if _server_depth == 0:
            kaleido.stop_sync_server(silence_warnings=True)


FIGURE_FORMATS = (".html", ".htm", ".json", *STATIC_FORMATS)


def check_figure_path(path: str | Path, formats: tuple[str, ...] = FIGURE_FORMATS) -> Path:
    """Refuse, before any work, a figure path that cannot be written: an unknown suffix, a file the
    workbench did not write (:func:`workbench.outputs.check_file`), or a static format without a browser."""
    if Path(path).suffix.lower() not in formats:
        raise ExportError(
            f"Unknown figure format {Path(path).suffix or '(no suffix)'!r} for {path}: use {', '.join(formats)}."
        )
    target = check_file(path)
    if target.suffix.lower() in STATIC_FORMATS:
        _require_browser()
    return target


def figure_bytes(fig, suffix: str, *, width: int | None = None, height: int | None = None, scale: float = 2) -> bytes:
    """The file content of ``fig`` in the format of ``suffix`` (HTML self-contained and offline)."""
    suffix = suffix.lower()
    if suffix in (".html", ".htm"):
        return fig.to_html(include_plotlyjs=True, full_html=True).encode("utf-8")
    if suffix == ".json":
        return json.dumps(json_mark("figure") | json.loads(fig.to_json())).encode("utf-8")
    if suffix not in STATIC_FORMATS:
        raise ExportError(f"Unknown figure format {suffix!r}: use .html, .json, .png, .svg or .pdf.")
    _require_browser()
    import plotly.io as pio

    from workbench.plots import static_safe

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "kopts ignored" when a server is running
            # Strings with characters an SVG cannot hold (a control character in a token) are escaped in the
            # copy that is rendered; the figure itself is untouched.
            return pio.to_image(
                static_safe(fig.to_dict()),
                format=suffix[1:].replace("jpg", "jpeg"),
                width=width,
                height=height,
                scale=scale,
                validate=False,
            )
    except Exception as exc:  # kaleido wraps browser failures in many types
        raise ExportError(
            f"Could not render a {suffix} image with kaleido ({_first_line(exc)}): save as .html instead."
        ) from None


def write_figure(
    fig, path: str | Path, *, width: int | None = None, height: int | None = None, scale: float = 2
) -> Path:
    """Write ``fig`` by the file suffix: .html (self-contained, offline), .json, or a static image.

    The file is written atomically and never over a file the workbench did not write.
    """
    check_figure_path(path)
    return write_file(path, figure_bytes(fig, Path(path).suffix, width=width, height=height, scale=scale))


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


NO_BROWSER_NOTE = "no Chromium found: wrote HTML figures only (apt-get install chromium for PNG/SVG)"
PLOTLYJS_MODES = ("inline", "shared", "cdn")


def write_figures(
    figures: dict[str, Any],  # plotly Figures (plotly is imported only when a figure is written)
    folder: str | Path,
    *,
    static: tuple[str, ...] = ("png", "svg"),
    scale: float = 2,
    plotlyjs: str | None = None,
) -> tuple[list[Path], str | None]:
    """Write each figure as ``folder/<name>.html`` and, under one browser, in the ``static`` formats.

    ``plotlyjs`` says how the HTML files get plotly.js (≈4.8 MB): ``"shared"`` (the default for more than one
    figure) writes one ``plotly-<version>.min.js`` beside them that each file loads, so the folder opens
    offline and weighs one copy; ``"inline"`` (the default for one figure) makes every file self-contained;
    ``"cdn"`` loads it from cdn.plot.ly (lightest; the reader needs the network).
    Returns the paths written (the shared script too) and, when static formats were asked for but no
    browser exists, a note saying so (the HTML is written either way).
    """
    folder = Path(folder)
    mode = plotlyjs or ("shared" if len(figures) > 1 else "inline")
    if mode not in PLOTLYJS_MODES:
        raise ExportError(f"plotlyjs={mode!r} is not one of {', '.join(PLOTLYJS_MODES)}: pick one of them.")
    formats = ["html", *(static if static and find_browser() is not None else ())]
    for name in figures:  # refuse before writing anything
        for fmt in formats:
            check_file(folder / f"{name}.{fmt}")
    written = []
    if mode == "inline":
        written += [write_figure(fig, folder / f"{name}.html") for name, fig in figures.items()]
    else:
        source = "cdn" if mode == "cdn" else write_shared_plotlyjs(folder)
        if mode == "shared":
            written.append(folder / source)
        written += [
            write_file(folder / f"{name}.html", fig.to_html(include_plotlyjs=source, full_html=True))
            for name, fig in figures.items()
        ]
    if not static:
        return written, None
    if len(formats) == 1:
        return written, NO_BROWSER_NOTE
    with static_export():
        for name, fig in figures.items():
            written += [write_figure(fig, folder / f"{name}.{fmt}", scale=scale) for fmt in static]
    return written, None


def write_shared_plotlyjs(folder: Path) -> str:
    """Write ``plotly-<version>.min.js`` into ``folder`` once and return its name (the version in the name keeps
    figures of another plotly release working). An existing file is reused only if it is that exact script."""
    from plotly.offline import get_plotlyjs, get_plotlyjs_version

    name = f"plotly-{get_plotlyjs_version()}.min.js"
    path = folder / name
    script = get_plotlyjs().encode()
    if path.exists():
        if path.is_file() and path.stat().st_size == len(script) and path.read_bytes() == script:
            return name
        raise ExportError(
            f"{path} exists and is not the plotly.js the workbench writes there: move it away or choose another folder."
        )
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{name}.partial"
    partial.write_bytes(script)
    partial.replace(path)
    return name
