"""GGUF files of every family, written as llama.cpp writes them, loaded back with ``load_model``.

A family transformers can de-quantize must come back with the same tokens and facts and bit-identical
F32 logits (or, where its GGUF cannot carry a quirk, equal to the tiny model rebuilt without it, which
the row of the table names). One it cannot de-quantize gets the loader's one-line GGUFError.
"""

from __future__ import annotations

import pytest
import torch
from foundation.gguf_writer import llama_cpp_architecture, write_header_only_gguf, write_tiny_gguf

from workbench.errors import GGUFError
from workbench.models import load_model, supported_gguf_architectures
from workbench.tiny import TINY_FAMILIES, build_tiny_model

from .conftest import PROMPT, note

pytestmark = pytest.mark.column("GGUF")
SHARED_FACTS = ("n_layers", "n_heads", "n_kv_heads", "d_model", "d_head", "d_vocab", "prepend_bos", "head_to_group")


def test_gguf_round_trip(family, model, tmp_path, request, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    arch = llama_cpp_architecture(TINY_FAMILIES[family.name].architecture)
    if arch is None:
        pytest.skip("llama.cpp has no architecture for this family")
    if arch not in supported_gguf_architectures():
        path = write_header_only_gguf(tmp_path / f"{family.name}.gguf", arch)
        with pytest.raises(GGUFError, match=rf"architecture '{arch}', which transformers cannot de-quantize"):
            load_model(path)
        note(request, "transformers cannot de-quantize this architecture: load_model says so in one line (GGUFError)")
        return
    path = write_tiny_gguf(tmp_path / f"{family.name}.gguf", family.name)
    if "GGUF" in family.known:
        with pytest.raises(GGUFError, match=rf"transformers could not load {path.name}"):
            load_model(path, cache=False)
        note(request, family.known["GGUF"])
        return
    loaded = load_model(path, cache=False, device="cpu")
    tokens = model.to_tokens(PROMPT)
    assert torch.equal(loaded.to_tokens(PROMPT), tokens)
    for key in SHARED_FACTS:
        assert getattr(loaded.facts, key) == getattr(model.facts, key), key
    logits = loaded.logits(tokens)
    if not family.gguf_loses:
        torch.testing.assert_close(logits, model.logits(tokens), atol=1e-5, rtol=0)
        return
    without, _ = build_tiny_model(family.name, **family.gguf_loses)
    with torch.no_grad():
        torch.testing.assert_close(logits, without(tokens.cpu()).logits, atol=1e-5, rtol=0)
    assert not torch.allclose(logits, model.logits(tokens), atol=1e-3), (
        f"{family.name}'s GGUF now keeps {list(family.gguf_loses)}: drop its gguf_loses in tests/families/table.py"
    )
    lost = ", ".join(f"{key}={value}" for key, value in family.gguf_loses.items())
    note(request, f"loads, but transformers reads no {', '.join(family.gguf_loses)} from it: {lost} assumed", "◐")
