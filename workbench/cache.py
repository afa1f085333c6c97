"""The model cache: GGUF files de-quantized once and kept as safetensors folders.

A cache entry is a Hugging Face folder under ``cache_root()/gguf`` keyed by the GGUF file (path, size,
mtime), the dtype asked for and the transformers version. It is written atomically, so a half-written
entry is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from workbench.errors import WorkbenchError


def cache_root() -> Path:
    """Where de-quantized GGUF models are kept: ``$WORKBENCH_CACHE`` or ``~/.cache/workbench``."""
    if env := os.environ.get("WORKBENCH_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "workbench"


def gguf_cache_dir(path: Path, dtype: torch.dtype) -> Path:
    """A cache folder keyed by the file's path, size, mtime, the dtype asked for and the transformers version."""
    stat = path.stat()
    import transformers

    # The transformers version is part of the key: its GGUF de-quantization has changed between releases.
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{dtype}|{transformers.__version__}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{path.stem}-{digest}"


def write_cache(hf_model, tokenizer, target: Path, source: Path) -> None:
    """Save the de-quantized model atomically: a half-written cache would load wrong weights later."""
    hf_model.hf_quantizer = None
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        hf_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "done.json").write_text(json.dumps({"source": str(source)}))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WorkbenchError(f"Could not write the model cache at {target} ({exc}): set WORKBENCH_CACHE to a writable folder.") from None


def cached_models() -> list[dict[str, str]]:
    """De-quantized GGUF models in the cache, with the file each came from."""
    rows = []
    for folder in sorted((cache_root() / "gguf").glob("*/")):
        done = folder / "done.json"
        if done.is_file():
            rows.append({"path": str(folder), "source": json.loads(done.read_text()).get("source", "?")})
    return rows
