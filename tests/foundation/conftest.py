"""Fixtures for the foundation tests: GGUF files written here from the tiny models (``gguf_writer``), and
isolated caches."""

from __future__ import annotations

from pathlib import Path

import pytest

from .gguf_writer import write_tiny_gguf

PROMPT = "I'm generating a random number between [0, 9]. The number is "


@pytest.fixture(scope="session")
def tiny_gguf_dir(tmp_path_factory) -> Path:
    """A folder with ``tiny-llama.gguf`` and ``tiny-qwen2.gguf``, written once per session."""
    folder = tmp_path_factory.mktemp("tiny-gguf")
    for name in ("tiny-llama", "tiny-qwen2"):
        write_tiny_gguf(folder / f"{name}.gguf", name)
    return folder


@pytest.fixture
def tiny_llama_gguf(tiny_gguf_dir, tmp_path) -> Path:
    """A private copy of the tiny-llama GGUF (tests may touch or move it)."""
    target = tmp_path / "model" / "tiny-llama.gguf"
    target.parent.mkdir()
    target.write_bytes((tiny_gguf_dir / "tiny-llama.gguf").read_bytes())
    return target


@pytest.fixture
def workbench_cache(tmp_path, monkeypatch) -> Path:
    """An empty model cache for this test only (``WORKBENCH_CACHE``)."""
    cache = tmp_path / "workbench-cache"
    monkeypatch.setenv("WORKBENCH_CACHE", str(cache))
    return cache


@pytest.fixture
def from_pretrained_calls(monkeypatch) -> list[tuple[str, dict]]:
    """Record every ``AutoModelForCausalLM.from_pretrained`` call as ``(path, kwargs)``.

    A call with ``gguf_file`` is a de-quantization; one without is a load of a saved folder.
    """
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained
    calls: list[tuple[str, dict]] = []

    def recording(path, *args, **kwargs):
        calls.append((str(path), dict(kwargs)))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", recording)
    return calls


@pytest.fixture(scope="session")
def smollm2_converted(tmp_path_factory):
    """Convert SmolLM2's Q4_1 GGUF once per session into a fresh cache: ``(cache, tokens, logits)``.

    The only real conversion of the test session (tens of seconds); tests that need a converted
    SmolLM2 in their own ``WORKBENCH_CACHE`` point it here.
    """
    from workbench.models import load_model

    cache = tmp_path_factory.mktemp("smollm2-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBENCH_CACHE", str(cache))
        model = load_model("smollm2", cache=True)
        tokens = model.to_tokens(PROMPT)
        logits = model.logits(tokens)
    return cache, tokens, logits
