"""``workbench lens fit / info / compare`` end to end on a tiny model, and what they refuse."""

from __future__ import annotations

import json

import pytest

from workbench.cli import main
from workbench.lenses import Lens


def run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr()
    return exit_info.value.code or 0, out.out, out.err


def test_fit_info_compare(tmp_path, words_file, capsys):
    lens_path = tmp_path / "tiny.lens"
    code, out, err = run(
        [
            "lens",
            "fit",
            "--model",
            "tiny-llama",
            "--out",
            str(lens_path),
            "--corpus",
            str(words_file),
            "--tokens",
            "2048",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    header = json.loads(out)
    assert header["method"] == "linear" and header["model"]["spec"] == "tiny-llama"
    assert header["corpus"]["source"] == f"file:{words_file.resolve()}" and len(header["corpus"]["file_sha256"]) == 64
    assert Lens.load(lens_path).header["heldout_kl"] == header["heldout_kl"]

    code, out, _ = run(["lens", "info", str(lens_path), "--json"], capsys)
    assert code == 0 and json.loads(out)["corpus"]["sha256"] == header["corpus"]["sha256"]
    code, out, _ = run(["lens", "info", str(lens_path)], capsys)
    assert code == 0 and "after block 1" in out and "linear lens KL" in out

    figure = tmp_path / "comparison.html"
    code, out, err = run(
        ["lens", "compare", str(lens_path), "--model", "tiny-llama", "--out", str(figure), "--json"], capsys
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["layers"][0] == "embeddings" and set(data["kl"]) == {"logit lens", "linear lens"}
    assert data["kl"]["logit lens"][-1] == pytest.approx(0, abs=1e-5)
    assert figure.stat().st_size > 10_000

    code, _, err = run(["lens", "compare", str(lens_path), "--model", "tiny-llama", "--out", str(figure)], capsys)
    assert code == 0, err  # its own figure is replaced …
    notes = tmp_path / "notes.html"
    notes.write_text("<p>mine</p>")
    code, _, err = run(["lens", "compare", str(lens_path), "--model", "tiny-llama", "--out", str(notes)], capsys)
    assert code == 9 and "not written by the workbench" in err and err.count("\n") == 1  # … a user's never
    assert notes.read_text() == "<p>mine</p>"

    # Refitting over its own lens file is allowed; a lens for another model is refused in one line.
    code, _, err = run(
        [
            "lens",
            "fit",
            "--model",
            "tiny-llama",
            "--out",
            str(lens_path),
            "--corpus",
            str(words_file),
            "--tokens",
            "2048",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    code, _, err = run(["lens", "compare", str(lens_path), "--model", "tiny-qwen2"], capsys)
    assert code == 16 and "fitted on tiny-llama" in err and err.count("\n") == 1 and "Traceback" not in err


def test_fit_refuses_before_any_work(tmp_path, words_file, capsys):
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")
    code, _, err = run(["lens", "fit", "--model", "no-such-model", "--out", str(precious)], capsys)
    assert code == 16 and "never overwritten" in err and precious.read_text() == "keep me"
    code, _, err = run(
        [
            "lens",
            "fit",
            "--model",
            "no-such-model",
            "--out",
            str(tmp_path / "a.lens"),
            "--corpus",
            str(tmp_path / "missing.txt"),
        ],
        capsys,
    )
    assert code == 16 and "No corpus file" in err
    code, _, err = run(
        ["lens", "fit", "--model", "tiny-llama", "--out", str(tmp_path / "a.lens"), "--method", "exact"], capsys
    )
    assert code == 16 and "linear or tuned" in err
    code, _, err = run(
        ["lens", "fit", "--model", "tiny-llama", "--out", str(tmp_path), "--corpus", str(words_file)], capsys
    )
    assert code == 16 and "is a folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
