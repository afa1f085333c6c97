"""GGUF files: GGUFs written here from the tiny models, SmolLM2's Q4_1 file, the de-quantized cache, and GGUF errors.

Every test points ``WORKBENCH_CACHE`` at its own folder, so none depends on (or fills) the user's cache.
The cache is checked by behaviour, never by timing: a cached load must not call transformers'
de-quantizer (``from_pretrained`` with ``gguf_file``) and must give bit-identical logits.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from workbench.errors import GGUFError, ModelSpecError
from workbench.models import cache_root, cached_models, gguf_architecture, gguf_cache_dir, load_model

from .conftest import PROMPT
from .gguf_writer import write_header_only_gguf, write_tiny_gguf


def gguf_loads(calls) -> list[str]:
    """The GGUF files transformers was asked to de-quantize."""
    return [kwargs["gguf_file"] for _, kwargs in calls if "gguf_file" in kwargs]


# --- GGUFs written from the tiny models -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-llama"])
def test_tiny_gguf_equals_the_model_it_was_written_from(name, tiny_gguf_dir, workbench_cache, request):
    built = request.getfixturevalue(name.replace("-", "_"))
    path = tiny_gguf_dir / f"{name}.gguf"
    assert gguf_architecture(path) == name.removeprefix("tiny-")

    model = load_model(path, cache=False)
    assert model.facts.source == f"gguf:{path}"
    for key in (
        "architecture",
        "n_layers",
        "n_heads",
        "n_kv_heads",
        "d_model",
        "d_vocab",
        "prepend_bos",
        "head_to_group",
    ):
        assert getattr(model.facts, key) == getattr(built.facts, key), key
    # The GGUF tokenizer (rebuilt by transformers from metadata) splits the study prompt the same way.
    assert model.str_tokens(PROMPT) == built.str_tokens(PROMPT)
    tokens = built.to_tokens(PROMPT)
    assert torch.equal(model.to_tokens(PROMPT), tokens)
    # F32 tensors de-quantize exactly, and the Q/K un-permutation is right, so the logits are bit-identical.
    assert torch.equal(model.logits(tokens), built.logits(tokens))
    assert not workbench_cache.exists()  # cache=False writes nothing


def test_gguf_cache_round_trip(tiny_llama_gguf, workbench_cache, from_pretrained_calls, tiny_llama):
    assert cache_root() == workbench_cache
    tokens = tiny_llama.to_tokens(PROMPT)

    first = load_model(tiny_llama_gguf)
    assert gguf_loads(from_pretrained_calls) == [tiny_llama_gguf.name]
    folder = gguf_cache_dir(tiny_llama_gguf, torch.float32)
    assert folder.parent == workbench_cache / "gguf"
    assert json.loads((folder / "done.json").read_text())["source"] == str(tiny_llama_gguf)
    assert (folder / "config.json").is_file() and list(folder.glob("*.safetensors"))
    assert cached_models() == [{"path": str(folder), "source": str(tiny_llama_gguf)}]

    from_pretrained_calls.clear()
    second = load_model(tiny_llama_gguf)
    assert gguf_loads(from_pretrained_calls) == []  # the de-quantizer did not run
    assert [path for path, _ in from_pretrained_calls] == [str(folder)]
    assert torch.equal(second.logits(tokens), first.logits(tokens))
    assert second.facts == first.facts
    assert second.str_tokens(PROMPT) == first.str_tokens(PROMPT)

    from_pretrained_calls.clear()
    bypass = load_model(tiny_llama_gguf, cache=False)
    assert gguf_loads(from_pretrained_calls) == [tiny_llama_gguf.name]
    assert torch.equal(bypass.logits(tokens), first.logits(tokens))


def test_gguf_cache_is_keyed_by_file_and_dtype(tiny_llama_gguf, workbench_cache, from_pretrained_calls):
    load_model(tiny_llama_gguf)
    before = gguf_cache_dir(tiny_llama_gguf, torch.float32)
    assert before != gguf_cache_dir(tiny_llama_gguf, torch.bfloat16)

    # A rewritten file (new mtime) must not be served the old conversion.
    stat = tiny_llama_gguf.stat()
    os.utime(tiny_llama_gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = gguf_cache_dir(tiny_llama_gguf, torch.float32)
    assert after != before
    from_pretrained_calls.clear()
    load_model(tiny_llama_gguf)
    assert gguf_loads(from_pretrained_calls) == [tiny_llama_gguf.name]
    assert sorted(row["path"] for row in cached_models()) == sorted([str(before), str(after)])


def test_a_folder_holding_one_gguf(tiny_llama_gguf, workbench_cache, tiny_llama):
    model = load_model(tiny_llama_gguf.parent, cache=False)
    assert model.facts.name == "tiny-llama"
    tokens = tiny_llama.to_tokens(PROMPT)
    assert torch.equal(model.logits(tokens), tiny_llama.logits(tokens))

    (tiny_llama_gguf.parent / "second.gguf").write_bytes(tiny_llama_gguf.read_bytes())
    with pytest.raises(ModelSpecError, match=r"neither a config.json nor exactly one .gguf \(2 found\)"):
        load_model(tiny_llama_gguf.parent)


# --- GGUF errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"garbage, not a GGUF at all", b"", b"GGUF\x03\x00\x00\x00truncated"])
def test_corrupt_gguf(tmp_path, workbench_cache, content):
    path = tmp_path / "x.gguf"
    path.write_bytes(content)
    with pytest.raises(GGUFError, match=r"x.gguf is not a valid GGUF file"):
        load_model(path)
    assert not workbench_cache.exists()


def test_gguf_of_an_unsupported_architecture(tmp_path, workbench_cache):
    path = write_header_only_gguf(tmp_path / "foo.gguf", arch="foo")
    assert gguf_architecture(path) == "foo"
    with pytest.raises(GGUFError) as error:
        load_model(path)
    message = str(error.value)
    assert "architecture 'foo'" in message
    supported = message.split("supported: ")[1].split(".")[0].split(", ")
    assert {"llama", "qwen2", "mistral", "gemma2"} <= set(supported)
    # Metadata sections of transformers' mapping are not architectures a user could convert from.
    assert "general" not in supported and "tokenizer" not in supported


def test_gguf_with_metadata_but_no_tensors(tmp_path, workbench_cache):
    # Refused before transformers sees it: it would otherwise build a default-size (7B) llama from random weights.
    path = write_header_only_gguf(tmp_path / "empty-llama.gguf", arch="llama")
    with pytest.raises(GGUFError, match=r"empty-llama.gguf holds no weight tensors"):
        load_model(path)
    assert cached_models() == []


def test_gguf_missing_a_tensor(tmp_path, workbench_cache):
    # transformers fills a missing tensor with random values and only logs it; the loader must refuse.
    path = write_tiny_gguf(tmp_path / "incomplete.gguf", "tiny-llama", drop=frozenset({"blk.2.ffn_down.weight"}))
    with pytest.raises(GGUFError, match=r"lacks 1 weight tensor\(s\) \(first: model.layers.2.mlp.down_proj.weight\)"):
        load_model(path)
    assert cached_models() == []


def test_gguf_whose_tokenizer_transformers_cannot_build(tmp_path, workbench_cache):
    path = tmp_path / "no-tokenizer.gguf"
    write_tiny_gguf(path, "tiny-llama")
    import gguf

    reader = gguf.GGUFReader(str(path))
    writer = gguf.GGUFWriter(str(tmp_path / "stripped.gguf"), arch="llama")
    for field in reader.fields.values():
        if field.name.startswith(("llama.", "general.name")):
            writer.add_key_value(field.name, field.contents(), field.types[0])
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, tensor.data.reshape(tuple(reversed(tensor.shape.tolist()))).copy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFError, match=r"transformers could not load stripped.gguf \(Cannot build a tokenizer"):
        load_model(tmp_path / "stripped.gguf")


# --- SmolLM2's GGUF: one real conversion per session ------------------------------------------------------


@pytest.mark.real
def test_smollm2_gguf_second_load_comes_from_the_cache(smollm2_converted, monkeypatch, from_pretrained_calls):
    from workbench.models import smollm2_gguf_path

    cache, tokens, converted_logits = smollm2_converted
    monkeypatch.setenv("WORKBENCH_CACHE", str(cache))
    folder = gguf_cache_dir(smollm2_gguf_path(), torch.float32)
    assert folder.parent == cache / "gguf" and (folder / "done.json").is_file()

    cached = load_model("smollm2")
    assert gguf_loads(from_pretrained_calls) == []
    assert [path for path, _ in from_pretrained_calls] == [str(folder)]
    assert cached.facts.n_layers == 30
    assert torch.equal(cached.logits(tokens), converted_logits)
