"""Every file the workbench writes gets the mode the umask gives a new file (644 under 022): results, lens files
and tuned-lens checkpoints alike (mkstemp alone would leave them 600)."""

from __future__ import annotations

import os
import stat

import pytest

from workbench.lenses.fit import _write_checkpoint
from workbench.lenses.lens import Lens
from workbench.outputs import write_file


@pytest.fixture
def umask_022():
    before = os.umask(0o022)
    yield
    os.umask(before)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_follow_the_umask(tiny_qwen2, tmp_path, umask_022):
    assert mode(write_file(tmp_path / "result.json", "{}")) == 0o644
    assert mode(Lens.identity(tiny_qwen2).save(tmp_path / "model.lens")) == 0o644
    _write_checkpoint(tmp_path / "fit.ckpt", {"step": 1})
    assert mode(tmp_path / "fit.ckpt") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.ckpt", "model.lens", "result.json"]  # no temporaries
