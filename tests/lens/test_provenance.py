"""Provenance hashes: files, text, tensors, and model fingerprints that survive the bridge's aliases."""

from __future__ import annotations

import hashlib

import pytest
import torch

from workbench.models import load_model
from workbench.provenance import library_versions, model_fingerprint, sha256_file, tensor_hash, text_hash, weights_hash
from workbench.tiny import build_tiny_model


def test_file_and_text_hashes_are_plain_sha256(tmp_path):
    path = tmp_path / "data.bin"
    payload = bytes(range(256)) * 5000
    path.write_bytes(payload)
    assert sha256_file(path) == hashlib.sha256(payload).hexdigest()
    path.write_bytes(payload[:-1])  # a changed file is hashed again, not served from memory
    assert sha256_file(path) == hashlib.sha256(payload[:-1]).hexdigest()
    assert text_hash("número") == hashlib.sha256("número".encode()).hexdigest()


def test_tensor_hash_sees_values_dtype_and_shape():
    x = torch.arange(6, dtype=torch.float32)
    assert tensor_hash(x) == tensor_hash(x.clone())
    assert tensor_hash(x) != tensor_hash(x.reshape(2, 3))
    assert tensor_hash(x) != tensor_hash(x.double())
    assert tensor_hash({"a": x, "b": x + 1}) == tensor_hash({"b": x + 1, "a": x})
    assert tensor_hash(x.bfloat16()) != tensor_hash(x.half())


def test_built_in_models_are_fingerprinted_by_their_weights(tiny_qwen2):
    fingerprint = model_fingerprint(tiny_qwen2)
    assert fingerprint["kind"] == "weights"
    plain, _ = build_tiny_model("tiny-qwen2")  # the same weights without the bridge's aliases and buffers
    assert fingerprint["sha256"] == weights_hash(plain)
    assert fingerprint["sha256"] != model_fingerprint(load_model("tiny-qwen2", seed=1))["sha256"]


def test_library_versions_name_the_libraries_that_decide_the_numbers():
    versions = library_versions()
    assert versions["torch"] == torch.__version__.split("+")[0] or versions["torch"].startswith(torch.__version__[:4])
    assert set(versions) >= {"python", "workbench", "torch", "transformers", "transformer-lens", "numpy"}


@pytest.mark.real
def test_gguf_models_are_fingerprinted_by_their_file(smollm2):
    from workbench.models import smollm2_gguf_path

    fingerprint = model_fingerprint(smollm2)
    path = smollm2_gguf_path()
    assert fingerprint == {
        "kind": "file",
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "source": f"gguf:{path}",
    }
