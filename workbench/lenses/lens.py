"""A fitted lens: one affine translator per residual row, read through the model's own final norm and unembedding.

Row ``l`` (0 = embeddings, ``i + 1`` = after block ``i``) is read as ``unembed(final_norm(h + A_l h + b_l))``.
With every ``A_l`` and ``b_l`` zero this *is* the logit lens (Belrose et al. 2023 start their tuned lens
there; weight decay then pulls towards it). A lens file is safetensors (``weight`` ``[layer, d, d]`` = the
``A_l``, ``bias`` ``[layer, d]``) whose metadata holds one JSON header: the model and its fingerprint, the
corpus and its hash, the method, token counts, settings, and held-out KL per layer for this lens and
for the logit lens on the same tokens.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float

from workbench.errors import LensError
from workbench.layers import resid_labels
from workbench.memory import rows_per_batch
from workbench.outputs import write_through
from workbench.provenance import library_versions, model_fingerprint, tensor_hash

LENS_FORMAT = "workbench.lens/1"
HEADER_KEY = "workbench_lens"


def unembed(model, resid: Float[torch.Tensor, "... d_model"]) -> Float[torch.Tensor, "... vocab"]:
    """The model's own final norm and unembedding (the logit lens' read), as float32 logits."""
    from workbench.probes.logit_lens import LogitLens

    return LogitLens.unembed(model, resid.to(getattr(torch, model.facts.dtype)))


@dataclass
class Lens:
    """Per residual row ``l``: the translator ``h ↦ h + weight[l] h + bias[l]`` (float32), and its header."""

    weight: Float[torch.Tensor, "layer d_model d_model"]
    bias: Float[torch.Tensor, "layer d_model"]
    header: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, d, d2 = self.weight.shape
        if d != d2 or tuple(self.bias.shape) != (n, d):
            raise LensError(
                f"A lens needs weight [layer, d, d] and bias [layer, d]; got {tuple(self.weight.shape)} "
                f"and {tuple(self.bias.shape)}."
            )

    @classmethod
    def identity(cls, model, **header: Any) -> Lens:
        """Zero translators: the logit lens written as a lens."""
        f = model.facts
        return cls(
            torch.zeros(f.n_layers + 1, f.d_model, f.d_model),
            torch.zeros(f.n_layers + 1, f.d_model),
            {**model_header(model), "method": "identity", **header},
        )

    @property
    def n_rows(self) -> int:
        return int(self.weight.shape[0])

    @property
    def labels(self) -> list[str]:
        """``embeddings``, ``after block 0`` … ``after block n-1``: the rows this lens translates."""
        return resid_labels(self.n_rows - 1)[:-1]

    @property
    def method(self) -> str:
        return str(self.header.get("method", "?"))

    def translate(self, resid: Float[torch.Tensor, "... d_model"], layer: int) -> Float[torch.Tensor, "... d_model"]:
        """``h + A_l h + b_l`` in float32, returned in ``resid``'s dtype."""
        h = resid.float()
        weight = self.weight[layer].to(h.device)
        bias = self.bias[layer].to(h.device)
        return (h + h @ weight.T + bias).to(resid.dtype)

    def logits(self, model, resid: Float[torch.Tensor, "... d_model"], layer: int) -> Float[torch.Tensor, "... vocab"]:
        """What this lens reads from residual row ``layer``."""
        return unembed(model, self.translate(resid, layer))

    def heldout_kl(self, lens: str = "lens") -> dict[str, float]:
        """Held-out mean KL(final ‖ row) per row, in nats: of this lens (``"lens"``) or of the logit lens
        (``"logit"``)."""
        values = self.header.get("heldout_kl", {}).get(lens)
        if values is None:
            raise LensError(f"This lens carries no held-out KL for {lens!r} (an unfitted lens): fit one with fit_lens.")
        return dict(zip(self.labels, values, strict=True))

    def table(self):
        """A DataFrame: held-out KL per row for the logit lens and this lens, and their ratio."""
        import pandas as pd

        logit, lens = self.heldout_kl("logit"), self.heldout_kl("lens")
        return pd.DataFrame(
            {
                "layer": self.labels,
                "logit lens KL": [logit[k] for k in self.labels],
                f"{self.method} lens KL": [lens[k] for k in self.labels],
                "ratio": [lens[k] / logit[k] if logit[k] > 0 else float("nan") for k in self.labels],
            }
        )

    def check_model(self, model) -> None:
        """Refuse a model other than the one this lens was fitted on (shape first, then weight fingerprint)."""
        fitted = self.header.get("model")
        name = fitted.get("name", "another model") if isinstance(fitted, dict) else "another model"
        f = model.facts
        if (self.n_rows, self.weight.shape[1]) != (f.n_layers + 1, f.d_model):
            raise LensError(
                f"This lens was fitted on {name} ({self.n_rows - 1} blocks, d_model {self.weight.shape[1]}), "
                f"not on {f.name} ({f.n_layers} blocks, d_model {f.d_model}): fit one for it with "
                "`workbench lens fit`."
            )
        expected = _fingerprint_sha256(self.header)
        if expected is None:
            raise LensError(
                f"This lens carries no fingerprint of the model it was fitted on, so it cannot be checked against "
                f"{f.name}: fit it again with `workbench lens fit` (lenses record their model's fingerprint)."
            )
        actual = model_fingerprint(model)["sha256"]
        if actual != expected:
            raise LensError(
                f"This lens was fitted on {name} (weights {expected[:12]}), not on {f.name} "
                f"(weights {actual[:12]}): fit one for this model with `workbench lens fit`."
            )

    def save(self, path: str | Path) -> Path:
        """Write safetensors + JSON header atomically; an existing file is replaced only if it is a lens file."""
        from safetensors.torch import save_file

        path = check_lens_path(path)
        tensors = {"weight": self.weight.detach().cpu().contiguous(), "bias": self.bias.detach().cpu().contiguous()}
        _refuse_nonfinite(tensors, f"This lens (for {path})", "fit it again (a lower learning rate, a larger ridge)")
        if _fingerprint_sha256(self.header) is None:
            raise LensError(
                f"This lens has no model fingerprint in its header, so {path} could not be checked on load: "
                "build it with fit_lens or Lens.identity(model), which record it."
            )
        header = {"format": LENS_FORMAT, **self.header, "tensors": _tensor_hashes(tensors)}
        metadata = {HEADER_KEY: json.dumps(header, allow_nan=False)}
        return write_through(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))

    @classmethod
    def load(cls, path: str | Path, model=None) -> Lens:
        """Read a lens file; with ``model``, refuse it unless it was fitted on that model."""
        from safetensors import SafetensorError
        from safetensors.torch import safe_open

        path = Path(path).expanduser()
        if not path.is_file():
            raise LensError(f"No lens file at {path}: fit one with `workbench lens fit --model SPEC --out {path}`.")
        try:
            with safe_open(str(path), framework="pt") as fh:
                header = _parse_header(path, fh.metadata())
                names = set(fh.keys())
                if names != {"weight", "bias"}:
                    raise LensError(
                        f"{path} holds the tensors {sorted(names)}, not a lens' weight and bias: fit it again."
                    )
                tensors = {name: fh.get_tensor(name) for name in ("weight", "bias")}
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            if isinstance(exc, LensError):
                raise
            raise LensError(f"{path} is not a readable lens file ({type(exc).__name__}): fit it again.") from None
        _verify_tensors(path, header, tensors)
        lens = cls(tensors["weight"].float(), tensors["bias"].float(), header)
        _check_kl(path, header, lens.n_rows)
        if model is not None:
            lens.check_model(model)
        return lens

    def describe(self) -> str:
        model = self.header.get("model", {}).get("name", "?")
        tokens = self.header.get("tokens", {}).get("train", "?")
        return f"{self.method} lens for {model} ({self.n_rows} rows, fitted on {tokens} tokens)"

    def __repr__(self) -> str:
        return f"Lens({self.describe()})"


def _read_header(path: Path, metadata: dict[str, str] | None) -> dict[str, Any]:
    """The header's JSON object and its format: enough to know that the workbench wrote the file."""
    text = (metadata or {}).get(HEADER_KEY)
    if text is None:
        raise LensError(f"{path} is a safetensors file but not a workbench lens (no {HEADER_KEY!r} header).")
    try:
        header = json.loads(text)
    except ValueError:
        raise LensError(f"{path} has a lens header that is not JSON (damaged or edited): fit it again.") from None
    if not isinstance(header, dict):
        raise LensError(
            f"{path} has a lens header that is a JSON {type(header).__name__}, not an object: fit it again."
        )
    if header.get("format") != LENS_FORMAT:
        raise LensError(f"{path} is a lens of format {header.get('format')!r}; this workbench reads {LENS_FORMAT!r}.")
    return header


def _parse_header(path: Path, metadata: dict[str, str] | None) -> dict[str, Any]:
    """The JSON header, checked for every field the workbench reads (a tampered header is one LensError)."""
    header = _read_header(path, metadata)
    if _fingerprint_sha256(header) is None:
        raise LensError(
            f"{path} carries no valid fingerprint of the model it was fitted on (a lens written before "
            "fingerprints, or an edited header), so it cannot be checked against a model: fit it again with "
            "`workbench lens fit`."
        )
    for where, value, kind in _header_fields(header):
        if not _is_kind(value, kind):
            raise LensError(
                f"{path} has a damaged lens header: {where} is {_value_name(value)}, not {_kind_name(kind)} "
                "(the file was edited): fit it again."
            )
    return header


NUMBER = (int, float)
# What the workbench reads from a header, and of what kind; "?" marks a field that may be absent.
HEADER_SCHEMA: dict[str, Any] = {
    "model": {"name": str, "spec": str},
    "fingerprint": {"kind": str},
    "?method": str,
    "?corpus": dict,
    "?tokens": dict,
    "?versions": dict,
    "?tensors": {"weight": str, "bias": str},
    "?heldout_kl": dict,
    "?ridge": {"alpha": [NUMBER]},
    "?tuned": {"?steps": int, "?tokens_per_step": int, "?optimizer": str, "?lr": NUMBER, "?note": str},
    "?fit_seconds": NUMBER,
}


def _header_fields(header: dict[str, Any], schema: dict[str, Any] | None = None, prefix: str = ""):
    """``(where, value, kind)`` for every field of the schema the header has (a required one it lacks is None)."""
    for key, kind in (HEADER_SCHEMA if schema is None else schema).items():
        optional, name = key.startswith("?"), key.removeprefix("?")
        where = f"{prefix}{name!r}" if not prefix else f"{prefix}[{name!r}]"
        if name not in header:
            if not optional:
                yield where, None, kind
            continue
        value = header[name]
        yield where, value, kind
        if isinstance(kind, dict) and isinstance(value, dict):
            yield from _header_fields(value, kind, where)


def _is_kind(value: Any, kind: Any) -> bool:
    if isinstance(kind, dict):
        return isinstance(value, dict)
    if isinstance(kind, list):
        return isinstance(value, list) and all(_is_kind(v, kind[0]) for v in value)
    if isinstance(value, bool):  # JSON's true/false are not numbers here
        return kind is bool
    return isinstance(value, kind)


def _kind_name(kind: Any) -> str:
    """A schema kind in words."""
    if isinstance(kind, dict) or kind is dict:
        return "an object"
    if isinstance(kind, list):
        return f"a list of {_kind_name(kind[0]).split(' ', 1)[1]}s"
    if kind is str:
        return "a text"
    return "a number" if kind in (int, float, NUMBER) else f"a {getattr(kind, '__name__', kind)}"


def _value_name(value: Any) -> str:
    """A JSON value's kind in words."""
    if value is None:
        return "missing (or null)"
    if isinstance(value, bool):
        return "true/false"
    kinds = ((str, "a text"), (int, "a number"), (float, "a number"), (list, "a list"), (dict, "an object"))
    return next((name for kind, name in kinds if isinstance(value, kind)), type(value).__name__)


def _fingerprint_sha256(header: dict[str, Any]) -> str | None:
    """The fitted model's weight hash from a header, or None when absent or not a SHA-256."""
    fingerprint = header.get("fingerprint")
    sha = fingerprint.get("sha256") if isinstance(fingerprint, dict) else None
    if isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha):
        return sha
    return None


def _tensor_hashes(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """SHA-256 of each tensor (dtype, shape and bytes), as the header records them."""
    return {name: tensor_hash(tensor) for name, tensor in tensors.items()}


def _refuse_nonfinite(tensors: dict[str, torch.Tensor], what: str, fix: str) -> None:
    for name, tensor in tensors.items():
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise LensError(f"{what} has {bad} NaN or infinite value(s) in its {name}: {fix}.")


def _verify_tensors(path: Path, header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """The tensors must hash to what the header recorded at save (files from before hashes: finite only)."""
    recorded = header.get("tensors")
    if recorded is not None:
        actual = _tensor_hashes(tensors)
        changed = sorted(name for name in actual if recorded.get(name) != actual[name])
        if changed:
            raise LensError(
                f"{path}: the {' and '.join(changed)} tensor(s) do not match the SHA-256 its header recorded "
                "when it was saved (the file is damaged or was edited): fit it again, or restore the file."
            )
    _refuse_nonfinite(tensors, str(path), "the file is damaged; fit it again")


def _check_kl(path: Path, header: dict[str, Any], n_rows: int) -> None:
    for which, values in header.get("heldout_kl", {}).items():
        if values is not None and (
            not isinstance(values, list)
            or len(values) != n_rows
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        ):
            raise LensError(
                f"{path} has a damaged lens header: heldout_kl[{which!r}] is not {n_rows} numbers "
                "(the file was edited): fit it again."
            )


def is_lens_file(path: str | Path) -> bool:
    """Whether ``path`` is a lens file this workbench wrote (checked from its header only)."""
    from safetensors.torch import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            _read_header(Path(path), fh.metadata())
        return True
    except Exception:
        return False


def check_lens_path(path: str | Path) -> Path:
    """Check an output path before any work: never overwrite a file the workbench did not write."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise LensError(f"--out {path} is a folder: name a lens file, e.g. {path / 'model.lens.safetensors'}.")
    if path.exists() and not is_lens_file(path):
        raise LensError(
            f"{path} exists and is not a lens file the workbench wrote: choose another --out (it is never overwritten)."
        )
    parent = path.parent if str(path.parent) else Path(".")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise LensError(f"Cannot write {path}: {probe} is not writable. Choose another --out.")
    return path


def model_header(model, spec: str | None = None) -> dict[str, Any]:
    """What a lens records about its model: spec, facts that shape the lens, and the weights' fingerprint."""
    f = model.facts
    return {
        "model": {
            "spec": spec or f.source,
            "name": f.name,
            "architecture": f.architecture,
            "n_layers": f.n_layers,
            "d_model": f.d_model,
            "d_vocab": f.d_vocab,
            "dtype": f.dtype,
        },
        "fingerprint": model_fingerprint(model),
        "versions": library_versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


@torch.no_grad()
def kl_per_layer(
    model, residuals: Float[torch.Tensor, "layer token d_model"], lens: Lens | None = None
) -> Float[torch.Tensor, " layer"]:
    """Mean KL(final ‖ row) over tokens, in nats, for every row: of ``lens``, or of the logit lens (``None``).

    ``final`` is the model's output distribution, read from the last row untranslated.
    """
    n_rows, n_tokens, _ = residuals.shape
    chunk = rows_per_batch(4 * 3 * model.facts.d_vocab, model.device, cap=4096)
    total = torch.zeros(n_rows, dtype=torch.float64)
    for begin in range(0, n_tokens, chunk):
        part = residuals[:, begin : begin + chunk].to(model.device)
        final = unembed(model, part[-1]).log_softmax(-1)
        p = final.exp()
        for layer in range(n_rows):
            logits = unembed(model, part[layer]) if lens is None else lens.logits(model, part[layer], layer)
            total[layer] += (p * (final - logits.log_softmax(-1))).sum().double().cpu()
    return (total / max(1, n_tokens)).float()
