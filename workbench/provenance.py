"""Where a number came from: hashes of files, weights and text, and the library versions.

Anything the workbench saves to be reused later (a fitted lens, an experiment manifest) records these, so
loading it against a different model, corpus or library can be detected instead of silently giving
wrong numbers. Every hash is a hex SHA-256.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
from pathlib import Path
from typing import Any

import torch

_CHUNK = 1 << 20
_FILE_HASHES: dict[tuple[str, int, int], str] = {}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes, remembered per (path, size, mtime) so a process hashes each file once."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(_CHUNK):
                digest.update(block)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def text_hash(text: str | bytes) -> str:
    """SHA-256 of text (UTF-8) or bytes."""
    return hashlib.sha256(text.encode("utf-8") if isinstance(text, str) else text).hexdigest()


def tensor_hash(tensors: torch.Tensor | dict[str, torch.Tensor]) -> str:
    """SHA-256 over tensors' names, dtypes, shapes and bytes (a dict is hashed in sorted key order)."""
    items = tensors.items() if isinstance(tensors, dict) else [("", tensors)]
    digest = hashlib.sha256()
    for name, tensor in sorted(items, key=lambda kv: kv[0]):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def model_fingerprint(model: Any) -> dict[str, str]:
    """What identifies a model's weights: its files' SHA-256 when it was loaded from files, else its weights'.

    ``model`` is a workbench ``Model``. A GGUF is hashed as one file; a Hugging Face folder as the
    combined hash of its weight files; a model built in process or from the hub cache by its weights
    (the same weights give the same hash on every machine). Returns ``{"kind", "sha256", "source"}``.
    """
    source = str(model.facts.source)
    kind, _, location = source.partition(":")
    path = Path(location) if kind in ("gguf", "folder") else None
    if path is not None and path.is_file():
        return {"kind": "file", "sha256": sha256_file(path), "source": source}
    if path is not None and path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        if files:
            combined = "\n".join(f"{p.name} {sha256_file(p)}" for p in files)
            return {"kind": "files", "sha256": text_hash(combined), "source": source}
    return {"kind": "weights", "sha256": weights_hash(model.bridge.original_model), "source": source}


def weights_hash(module: torch.nn.Module) -> str:
    """SHA-256 of a module's distinct parameters (its weights), independent of their names.

    A wrapped model (the TransformerLens bridge registers each weight under several aliases, and adds
    buffers of its own) and the plain one hash the same: each distinct tensor counts once, the digests
    are sorted, not named, and buffers (derived from the config, e.g. rotary frequencies) are left out.
    """
    seen: dict[tuple, str] = {}
    for tensor in module.parameters():
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if key not in seen:
            seen[key] = tensor_hash(tensor)
    return text_hash("\n".join(sorted(seen.values())))


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries that decide the numbers."""
    versions = {"python": platform.python_version()}
    for package in ("workbench", "torch", "transformers", "transformer-lens", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions
