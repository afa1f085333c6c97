"""Sparse autoencoders and transcoders in SAELens' folder format, read and written without SAELens.

A folder holds ``cfg.json`` (the configuration SAELens writes: ``d_in``, ``d_sae``, ``architecture``,
``apply_b_dec_to_input``, ``normalize_activations``, ``reshape_activations``, ``metadata.hook_name``…)
and ``sae_weights.safetensors`` (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc [d_sae]``,
``b_dec [d_in]``, plus ``threshold [d_sae]`` for JumpReLU and ``W_skip [d_out, d_in]`` for skip
transcoders). The formulas follow SAELens' inference classes:

- input: ``x`` (``hook_z`` SAEs flatten ``[..., heads, d_head]``), times the scaling factor ``s`` when
  ``normalize_activations == "expected_average_only_in"`` (SAELens' ActivationScaler; the factor is the
  folder's ``activation_scaler.json`` or ``scaling_factor=``), minus ``b_dec`` when
  ``apply_b_dec_to_input`` (never for transcoders);
- ``pre = x_in @ W_enc + b_enc``; features: ``standard`` ReLU(pre); ``topk`` the ``k`` largest of pre
  kept and ReLU'd (pre × ‖W_dec row‖ first with ``rescale_acts_by_decoder_norm``); ``jumprelu``
  ReLU(pre) · [pre > threshold]; ``batchtopk`` the same JumpReLU when the folder has a threshold
  (SAELens' inference form), else the ``k × n_tokens`` largest over the tokens encoded together;
- output: ``f @ W_dec + b_dec`` (``f / ‖W_dec row‖`` first with ``rescale_acts_by_decoder_norm``),
  divided by ``s`` (SAELens folds ``s`` into the weights the same way); skip transcoders add
  ``x @ W_skip.T``.
"""

from __future__ import annotations

import json
import math
import os
import re
import weakref
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float

from workbench.errors import FeatureError

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SCALER_FILENAME = "activation_scaler.json"
KIND = "sparse autoencoder"

SAES = ("standard", "topk", "batchtopk", "jumprelu")
TRANSCODERS = ("transcoder", "skip_transcoder", "jumprelu_transcoder")
ARCHITECTURES = SAES + TRANSCODERS
NORMALIZATIONS = ("none", "expected_average_only_in")

# The metadata fields SAELens 6 writes (SAEMetadata), with their defaults.
METADATA_DEFAULTS: dict[str, Any] = {
    "model_name": None,
    "hook_name": None,
    "model_class_name": None,
    "hook_head_index": None,
    "model_from_pretrained_kwargs": None,
    "prepend_bos": None,
    "exclude_special_tokens": None,
    "neuronpedia_id": None,
    "context_size": None,
    "seqpos_slice": None,
    "dataset_path": None,
    "sae_lens_version": None,
    "sae_lens_training_version": None,
}
_PRE_6_RENAMES = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index"}


def _fail(path: Any, problem: str, fix: str) -> FeatureError:
    where = f"{path}: " if path is not None else ""
    return FeatureError(f"{where}{problem}: {fix}.")


def _int(cfg: dict, key: str, path: Any, minimum: int = 1) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(path, f"cfg.json's {key} is {value!r}, not a whole number ≥ {minimum}", f"set {key} in cfg.json")
    return value


def normalise_cfg(raw: dict[str, Any], path: Any = None) -> dict[str, Any]:
    """``raw`` (a cfg.json object, SAELens 6 or older) with every field SAELens writes filled in; fields it
    does not know are kept as they are. Refuses an architecture or normalisation this module cannot run."""
    if not isinstance(raw, dict):
        raise _fail(path, f"cfg.json holds a JSON {type(raw).__name__}, not an object", "write SAELens' cfg.json")
    cfg = dict(raw)
    meta_key = "metadata" if "metadata" in cfg or "meta" not in cfg else "meta"
    meta = cfg.get(meta_key) or {}
    if not isinstance(meta, dict):
        raise _fail(path, f"cfg.json's {meta_key} is not an object", 'write metadata as {"hook_name": ...}')
    meta = dict(meta)
    for old, new in _PRE_6_RENAMES.items():  # SAELens < 6 kept these at the top level under older names
        if old in cfg and new not in cfg:
            cfg[new] = cfg[old]
    for key in (*METADATA_DEFAULTS, "hook_name_out", "hook_head_index_out"):
        if meta.get(key) is None and cfg.get(key) is not None:
            meta[key] = cfg[key]
    architecture = cfg.get("architecture")
    if architecture is None:  # SAELens < 6: standard, or topk through activation_fn
        kwargs = cfg.get("activation_fn_kwargs") or {}
        architecture = "topk" if cfg.get("activation_fn") == "topk" and "k" in kwargs else "standard"
        if architecture == "topk":
            cfg.setdefault("k", kwargs["k"])
    if architecture not in ARCHITECTURES:
        raise _fail(
            path,
            f"unknown SAE architecture {architecture!r}",
            f"the workbench reads {', '.join(ARCHITECTURES)} (gated and others are not yet supported)",
        )
    cfg["architecture"] = architecture
    d_in, d_sae = _int(cfg, "d_in", path), _int(cfg, "d_sae", path)
    del d_in, d_sae
    transcoder = architecture in TRANSCODERS
    cfg.setdefault("dtype", "float32")
    cfg.setdefault("device", "cpu")
    cfg.setdefault("apply_b_dec_to_input", not transcoder)
    if not isinstance(cfg["apply_b_dec_to_input"], bool):
        raise _fail(path, "cfg.json's apply_b_dec_to_input is not true or false", "set it to true or false")
    if transcoder and cfg["apply_b_dec_to_input"]:
        raise _fail(
            path,
            "a transcoder with apply_b_dec_to_input true (b_dec is on the output side, SAELens refuses it too)",
            "set apply_b_dec_to_input to false",
        )
    norm = cfg.get("normalize_activations")
    if norm is None or norm is False:
        norm = "none"
    if norm is True:  # SAELens < 6 wrote a bool
        norm = "expected_average_only_in"
    if norm not in NORMALIZATIONS:
        raise _fail(
            path,
            f"normalize_activations {norm!r} is not supported",
            "the workbench reads none and expected_average_only_in (constant_norm_rescale and layer_norm not yet)",
        )
    cfg["normalize_activations"] = norm
    reshape = cfg.get("reshape_activations")
    if reshape is None:
        reshape = "hook_z" if str(meta.get("hook_name") or "").endswith("hook_z") else "none"
    if reshape not in ("none", "hook_z"):
        raise _fail(path, f"reshape_activations {reshape!r} is unknown", "use none or hook_z")
    cfg["reshape_activations"] = reshape
    if architecture in ("topk", "batchtopk"):
        k = cfg.setdefault("k", 100)
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k <= 0:
            raise _fail(path, f"cfg.json's k is {k!r}, not a positive number", "set k (features kept per token)")
        if architecture == "topk" and (not float(k).is_integer() or k > cfg["d_sae"]):
            raise _fail(path, f"topk k={k!r} is not a whole number from 1 to d_sae={cfg['d_sae']}", "fix k")
        if architecture == "topk":
            cfg["k"] = int(k)
            cfg.setdefault("rescale_acts_by_decoder_norm", False)
    if transcoder:
        cfg.setdefault("d_out", cfg["d_in"])
        _int(cfg, "d_out", path)
    cfg[meta_key] = {**METADATA_DEFAULTS, **meta}
    if meta.get("hook_head_index") is not None:
        raise _fail(path, "SAEs on one attention head (hook_head_index) are not yet supported", "use a hook_z SAE")
    return cfg


def _metadata(cfg: dict[str, Any]) -> dict[str, Any]:
    meta = cfg.get("metadata") if "metadata" in cfg else cfg.get("meta")
    return meta if isinstance(meta, dict) else {}


def expected_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The tensors an architecture needs, with their shapes."""
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    d_out = cfg.get("d_out", d_in) if cfg["architecture"] in TRANSCODERS else d_in
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_out), "b_enc": (d_sae,), "b_dec": (d_out,)}
    if cfg["architecture"] in ("jumprelu", "jumprelu_transcoder"):
        shapes["threshold"] = (d_sae,)
    if cfg["architecture"] == "skip_transcoder":
        shapes["W_skip"] = (d_out, d_in)
    return shapes


def check_weights(cfg: dict[str, Any], weights: dict[str, torch.Tensor], path: Any = None) -> None:
    """Every tensor the architecture needs, at its shape, finite; refused in one line otherwise."""
    for name, shape in expected_shapes(cfg).items():
        if name not in weights:
            raise _fail(
                path,
                f"the {cfg['architecture']} SAE has no tensor {name} (it holds {', '.join(sorted(weights))})",
                "write every tensor SAELens saves",
            )
        if tuple(weights[name].shape) != shape:
            raise _fail(
                path,
                f"{name} has shape {list(weights[name].shape)}, but cfg.json (d_in, d_sae) says {list(shape)}",
                "fix cfg.json or the weights",
            )
    if cfg["architecture"] == "batchtopk":
        threshold = weights.get("threshold", weights.get("topk_threshold"))
        if threshold is not None and threshold.numel() not in (1, cfg["d_sae"]):
            raise _fail(path, f"the batchtopk threshold has {threshold.numel()} entries", f"give 1 or {cfg['d_sae']}")
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise _fail(path, f"{name} holds NaN or infinite values", "the file is damaged; train or download it again")


def site_of_hook(hook_name: str | None) -> tuple[str | None, int | None]:
    """``(site, block)`` of a TransformerLens hook name in the workbench's site table
    (``blocks.3.hook_resid_pre`` → ``("resid_pre", 3)``), or ``(None, block-or-None)``."""
    from workbench.interventions.sites import SITES

    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", hook_name or "")
    if match is None:
        return None, None
    block = int(match.group(1))
    for site in SITES.values():
        if site.write != "block_output" and site.hook_name(block) == hook_name:
            return site.name, block
    return None, block


class SparseAutoencoder:
    """An SAE or transcoder: ``encode``, ``decode``, ``forward`` with SAELens' formulas (module docstring).

    ``cfg`` is the folder's cfg.json with every SAELens field filled in (unknown fields kept); ``site`` and
    ``block`` place ``metadata.hook_name`` in the workbench's site table (``None`` when the hook is not a
    site, e.g. a transcoder reading ``ln2.hook_normalized``)."""

    def __init__(
        self,
        cfg: dict[str, Any],
        weights: dict[str, torch.Tensor],
        *,
        scaling_factor: float | None = None,
        path: str | os.PathLike | None = None,
    ) -> None:
        self.cfg = normalise_cfg(cfg, path)
        self.weights = {name: tensor.detach() for name, tensor in weights.items()}
        check_weights(self.cfg, self.weights, path)
        self.path = Path(path) if path is not None else None
        if self.cfg["normalize_activations"] == "expected_average_only_in" and scaling_factor is None:
            raise _fail(
                path,
                "normalize_activations is expected_average_only_in but no scaling factor is known",
                f"pass scaling_factor= (SAELens' norm_scaling_factor) or add {SCALER_FILENAME}",
            )
        if scaling_factor is not None:
            if (
                isinstance(scaling_factor, bool)
                or not isinstance(scaling_factor, (int, float))
                or not math.isfinite(scaling_factor)
                or scaling_factor <= 0
            ):
                raise _fail(path, f"scaling factor {scaling_factor!r} is not a positive number", "pass e.g. 1.7")
            if self.cfg["normalize_activations"] != "expected_average_only_in":
                scaling_factor = None  # SAELens ignores it too (it has already been folded into the weights)
        self.scaling_factor = float(scaling_factor) if scaling_factor is not None else None
        self.device = torch.device("cpu")
        self._float = {name: t.float() for name, t in self.weights.items()}
        self.n_heads: int | None = None  # hook_z SAEs: set when bound to a model, so decode restores the heads
        self.site, self.block = site_of_hook(self.hook_name)
        self._fitted: weakref.ref | None = None  # the bridge check_model accepted this SAE for

    # ----- facts ---------------------------------------------------------------------------------

    @property
    def architecture(self) -> str:
        return self.cfg["architecture"]

    @property
    def is_transcoder(self) -> bool:
        return self.architecture in TRANSCODERS

    @property
    def d_in(self) -> int:
        return self.cfg["d_in"]

    @property
    def d_sae(self) -> int:
        return self.cfg["d_sae"]

    @property
    def d_out(self) -> int:
        return self.cfg.get("d_out", self.d_in) if self.is_transcoder else self.d_in

    @property
    def hook_name(self) -> str | None:
        return _metadata(self.cfg).get("hook_name")

    @property
    def hook_name_out(self) -> str | None:
        """Where a transcoder writes (``metadata.hook_name_out``); an SAE's output replaces its input."""
        return _metadata(self.cfg).get("hook_name_out") if self.is_transcoder else self.hook_name

    def __getitem__(self, name: str) -> torch.Tensor:
        """A weight as float32 on the SAE's device (``sae["W_dec"]``)."""
        return self._float[name]

    def decoder_direction(self, feature: int) -> Float[torch.Tensor, " d_out"]:
        """What one unit of ``feature`` adds to the output, in the activation's own units (``W_dec`` row,
        divided by the scaling factor, and by the row's norm for ``rescale_acts_by_decoder_norm``)."""
        row = self._float["W_dec"][feature]
        if self.cfg.get("rescale_acts_by_decoder_norm"):
            row = row / row.norm()
        return row / self.scaling_factor if self.scaling_factor is not None else row

    def to(self, device: str | torch.device) -> SparseAutoencoder:
        self.device = torch.device(device)
        self._float = {name: t.to(self.device) for name, t in self._float.items()}
        return self

    def describe(self) -> str:
        where = self.hook_name or "no hook"
        return f"{self.architecture} {'transcoder' if self.is_transcoder else 'SAE'} at {where} ({self.d_sae} features)"

    def __repr__(self) -> str:
        return f"SparseAutoencoder({self.describe()})"

    # ----- the formulas --------------------------------------------------------------------------

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(device=self.device, dtype=torch.float32)
        if self.cfg["reshape_activations"] == "hook_z" and x.shape[-1] != self.d_in:
            x = x.flatten(-2)  # [..., heads, d_head] → [..., heads · d_head]
        if x.shape[-1] != self.d_in:
            raise FeatureError(
                f"The SAE reads {self.d_in}-wide activations, not {x.shape[-1]}-wide ones: pass activations of "
                f"its hook ({self.hook_name})."
            )
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``[..., d_sae]`` (float32) of ``x`` ``[..., d_in]`` (a ``hook_z`` SAE also takes
        ``[..., heads, d_head]``)."""
        w = self._float
        x = self._input(x)
        if self.scaling_factor is not None:
            x = x * self.scaling_factor
        if self.cfg["apply_b_dec_to_input"]:
            x = x - w["b_dec"]
        pre = x @ w["W_enc"] + w["b_enc"]
        arch = self.architecture
        if arch == "topk":
            if self.cfg.get("rescale_acts_by_decoder_norm"):
                pre = pre * w["W_dec"].norm(dim=-1)
            values, indices = pre.topk(self.cfg["k"], dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter_(-1, indices, values.relu())
        threshold = w.get("threshold")
        if arch == "batchtopk" and threshold is None and "topk_threshold" in w:
            threshold = w["topk_threshold"].reshape(-1)
        if arch in ("jumprelu", "jumprelu_transcoder") or (arch == "batchtopk" and threshold is not None):
            assert threshold is not None, "check_weights requires a jumprelu threshold"
            return pre.relu() * (pre > threshold).to(pre.dtype)
        if arch == "batchtopk":  # no threshold: the k × n largest over every token encoded together
            acts = pre.relu()
            flat = acts.flatten()
            n = int(self.cfg["k"] * acts.shape[:-1].numel())
            top = flat.topk(min(n, flat.numel()))
            return torch.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(acts.shape)
        return pre.relu()

    def decode(self, features: Float[torch.Tensor, "*batch d_sae"]) -> torch.Tensor:
        """The reconstruction (an SAE) or the output (a transcoder, without the skip term) of ``features``:
        ``[..., d_out]``, or ``[..., heads, d_head]`` for a ``hook_z`` SAE bound to a model."""
        w = self._float
        f = features.to(device=self.device, dtype=torch.float32)
        if self.cfg.get("rescale_acts_by_decoder_norm"):
            f = f / w["W_dec"].norm(dim=-1)
        out = f @ w["W_dec"] + w["b_dec"]
        if self.scaling_factor is not None:
            out = out / self.scaling_factor
        if self.cfg["reshape_activations"] == "hook_z" and self.n_heads is not None:
            out = out.unflatten(-1, (self.n_heads, self.d_out // self.n_heads))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))``, plus ``x @ W_skip.T`` for a skip transcoder."""
        out = self.decode(self.encode(x))
        if self.architecture == "skip_transcoder":
            out = out + self._input(x) @ self._float["W_skip"].T
        return out

    __call__ = forward

    # ----- the model ---------------------------------------------------------------------------------

    def check_model(self, model) -> None:
        """Refuse, in one line, an SAE whose hook the model lacks or whose width does not fit the site (checked
        once per model: every resolve of an operation in a sweep asks again)."""
        fitted = self._fitted() if self._fitted is not None else None
        if fitted is model.bridge:
            return
        wanted = [("hook_name", self.hook_name, self.d_in)]
        if self.is_transcoder:
            wanted.append(("hook_name_out", self.hook_name_out, self.d_out))
        names = model.bridge.hook_dict
        hooks: list[tuple[str, str, int]] = []
        for field_name, hook, width in wanted:
            if not hook:
                raise FeatureError(
                    f"The SAE's cfg.json has no metadata.{field_name}, so it cannot be placed on {model.facts.name}: "
                    f"add it (e.g. blocks.0.hook_resid_pre)."
                )
            if hook not in names:
                site, block = site_of_hook(hook)
                why = (
                    f"it has {model.facts.n_layers} blocks"
                    if block is not None and block >= model.facts.n_layers
                    else "it has no such hook point"
                )
                raise FeatureError(
                    f"The SAE reads {hook}, a site {model.facts.name} lacks ({why}): use an SAE trained on this model."
                )
            hooks.append((field_name, hook, width))
        if not self.is_transcoder and self.site is None:
            raise FeatureError(
                f"The SAE's hook {self.hook_name} is not a site of the workbench's site table (resid_pre, "
                "resid_mid, resid_post, attn_out, mlp_out, z, mlp_hidden…): it cannot be edited."
            )
        widths = hook_widths(model, [hook for _, hook, _ in hooks])
        for field_name, hook, width in hooks:
            shape = widths[hook]
            actual = shape[-1] * (shape[-2] if self.cfg["reshape_activations"] == "hook_z" and len(shape) > 3 else 1)
            if actual != width:
                raise FeatureError(
                    f"The SAE expects {width}-wide activations at {hook} ({field_name}), but {model.facts.name}'s are "
                    f"{actual} wide: use an SAE trained on this model."
                )
            if self.cfg["reshape_activations"] == "hook_z" and len(shape) > 3:
                self.n_heads = int(shape[-2])
        self._fitted = weakref.ref(model.bridge)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the SAELens folder (cfg.json, sae_weights.safetensors, activation_scaler.json when scaled)
        through the workbench's folder writer: a new, empty or workbench-written SAE folder only."""
        from safetensors.torch import save_file

        from workbench import outputs

        with outputs.output_folder(path, KIND) as folder:
            (folder / CFG_FILENAME).write_text(json.dumps(self.cfg, indent=2, allow_nan=False), encoding="utf-8")
            save_file({k: v.cpu().contiguous() for k, v in self.weights.items()}, str(folder / WEIGHTS_FILENAME))
            if self.scaling_factor is not None:
                (folder / SCALER_FILENAME).write_text(json.dumps({"scaling_factor": self.scaling_factor}))
        self.path = Path(path)
        return self.path


@torch.no_grad()
def hook_widths(model, hooks: list[str]) -> dict[str, tuple[int, ...]]:
    """The shape of each hook point's activation on a one-token forward."""
    seen: dict[str, tuple[int, ...]] = {}

    def keep(name: str):
        def hook(act, hook):
            seen[name] = tuple(act.shape)

        return hook

    tokens = torch.zeros(1, 1, dtype=torch.long, device=model.device)
    with model.bridge.hooks(fwd_hooks=[(h, keep(h)) for h in dict.fromkeys(hooks)]):
        model.bridge(tokens)
    return seen


def load_sae(
    path: str | os.PathLike | SparseAutoencoder,
    model=None,
    *,
    scaling_factor: float | None = None,
) -> SparseAutoencoder:
    """Read an SAELens folder; with ``model``, refuse it unless its hook and width fit the model, and put it
    on the model's device. ``scaling_factor`` overrides the folder's ``activation_scaler.json``."""
    sae = path if isinstance(path, SparseAutoencoder) else _read(Path(path).expanduser(), scaling_factor)
    if model is not None:
        sae.check_model(model)
        sae.to(model.device)
    return sae


def _read(folder: Path, scaling_factor: float | None) -> SparseAutoencoder:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not folder.is_dir():
        raise _fail(folder, "no SAE folder here", f"pass a folder holding {CFG_FILENAME} and {WEIGHTS_FILENAME}")
    for name in (CFG_FILENAME, WEIGHTS_FILENAME):
        if not (folder / name).is_file():
            raise _fail(
                folder, f"the folder has no {name}", f"an SAELens folder holds {CFG_FILENAME} and {WEIGHTS_FILENAME}"
            )
    try:
        raw = json.loads((folder / CFG_FILENAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _fail(folder, f"{CFG_FILENAME} is not readable JSON ({type(exc).__name__})", "write it again") from None
    try:
        weights = load_file(str(folder / WEIGHTS_FILENAME))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _fail(
            folder, f"{WEIGHTS_FILENAME} is not a readable safetensors file ({type(exc).__name__})", "write it again"
        ) from None
    if scaling_factor is None and (folder / SCALER_FILENAME).is_file():
        try:
            scaling_factor = json.loads((folder / SCALER_FILENAME).read_text(encoding="utf-8"))["scaling_factor"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise _fail(
                folder, f'{SCALER_FILENAME} is not {{"scaling_factor": number}} ({type(exc).__name__})', "fix it"
            ) from None
    return SparseAutoencoder(raw, weights, scaling_factor=scaling_factor, path=folder)
