"""Helpers for the reliability tests: the CLI as a user runs it (a subprocess), checksums of folders,
and read-only folders that hold even for root (the CLI child drops CAP_DAC_OVERRIDE)."""

from __future__ import annotations

import ctypes
import hashlib
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [
            line for line in self.stderr.splitlines() if line.startswith(("error:", "internal error:", "interrupted"))
        ]


def _drop_dac_override() -> None:
    """In the child, before exec: lose the root capabilities that ignore file permissions."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def permissions_apply() -> bool:
    """Whether a read-only folder stops this process's CLI children (always for non-root; for root when
    the bounding set can be dropped)."""
    if os.geteuid() != 0:
        return True
    try:
        return subprocess.run(["true"], preexec_fn=_drop_dac_override).returncode == 0
    except OSError:
        return False


needs_permissions = pytest.mark.skipif(
    not permissions_apply(), reason="root without CAP_SETPCAP: permissions do not apply"
)


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update({"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb", "OMP_NUM_THREADS": "1"})
    env.pop("WORKBENCH_DEBUG", None)
    env.update(extra)
    return env


def workbench(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: int = 300,
    permissions: bool = False,
    stdin: str | None = None,
) -> Run:
    """``python -m workbench ARGS``; ``permissions=True`` makes file permissions bind even for root."""
    preexec = _drop_dac_override if permissions and os.geteuid() == 0 else None
    done = subprocess.run(
        [sys.executable, "-m", "workbench", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env or cli_env(),
        timeout=timeout,
        preexec_fn=preexec,
        input=stdin,
    )
    return Run(list(args), done.returncode, done.stdout, done.stderr)


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file, folder and link under ``roots`` (included): kind, mode and content hash or target."""
    out = {}
    for root in roots:
        if not root.exists() and not root.is_symlink():
            out[str(root)] = ("absent",)
            continue
        for path in [root, *sorted(root.rglob("*"))] if root.is_dir() and not root.is_symlink() else [root]:
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                out[str(path)] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                out[str(path)] = ("dir", stat.S_IMODE(info.st_mode))
            else:
                out[str(path)] = ("file", stat.S_IMODE(info.st_mode), hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def leftovers(folder: Path) -> list[str]:
    """Temporary siblings the workbench would have left behind (hidden ``.name.*.tmp`` / ``.old``)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith((".tmp", ".old")))


def user_folder(path: Path) -> Path:
    """The folder from the issue: a results.json, a thesis and a subfolder of data, none written by us."""
    (path / "sub").mkdir(parents=True)
    (path / "results.json").write_text("{}\n")
    (path / "thesis.tex").write_text("keep\n")
    (path / "sub" / "data.csv").write_text("x\n")
    return path
