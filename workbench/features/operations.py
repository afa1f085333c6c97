"""An SAE as an edit of the intervention language: operations that rewrite activations through features.

Each operation encodes the selected activations ``x`` with the SAE, edits the feature activations ``f``
into ``f'`` and writes ``decode(f') + (x − decode(f))``: the SAE's error term is kept, so only the edited
features change the activation (``SAESplice`` edits nothing and leaves it unchanged up to rounding). The
SAE is referenced by its folder (``sae="path/to/sae"``), so an operation serialises with
``Intervention.to_dict`` like any other; the folder is read once per path and cached.

The intervention's site and block must be the SAE's own (``metadata.hook_name``): an SAE trained on
``blocks.3.hook_resid_pre`` edits ``Intervention("resid_pre", op, blocks=3)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import torch

from workbench.errors import FeatureError
from workbench.features.sae import SparseAutoencoder, load_sae
from workbench.interventions.operations import Operation, finite_number, register_operation

FEATURE_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z", "mlp_hidden")
_CACHE: dict[tuple[str, int], SparseAutoencoder] = {}


def _key(path: Path) -> tuple[str, int]:
    from workbench.features.sae import WEIGHTS_FILENAME

    weights = path / WEIGHTS_FILENAME
    return str(path.resolve()), weights.stat().st_mtime_ns if weights.is_file() else -1


def cached_sae(path: str | os.PathLike) -> SparseAutoencoder:
    """The SAE in folder ``path``, read once (again when its weights file changes)."""
    folder = Path(path).expanduser()
    key = _key(folder)
    if key not in _CACHE:
        _CACHE[key] = load_sae(folder)
    return _CACHE[key]


def sae_path(value: Any) -> str:
    """An operation's ``sae`` parameter as a folder path: a path, or an SAE read from (or saved to) one."""
    if isinstance(value, SparseAutoencoder):
        if value.path is None:
            raise FeatureError(
                "This SAE has no folder, so an operation cannot reference it: save it first (sae.save(path)) "
                "and pass the path."
            )
        _CACHE[_key(value.path)] = value
        return str(value.path)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise FeatureError(f"sae={value!r} is not an SAE folder: pass sae='path/to/sae' (cfg.json + sae_weights).")
    return value


def feature_list(value: Any, what: str = "features") -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise FeatureError(f"{what}={value!r} is not a list of feature indices: pass e.g. {what}=[3, 17].")
    out = tuple(value)
    if not out or any(isinstance(f, bool) or not isinstance(f, int) or f < 0 for f in out):
        raise FeatureError(f"{what}={value!r} must be one or more feature indices ≥ 0: pass e.g. {what}=[3, 17].")
    return out


@dataclass(frozen=True)
class FeatureOperation(Operation):
    """Base of the SAE operations: the SAE read in ``prepare`` (checked against the model, site and block)
    and ``apply`` = ``decode(edit(f)) + error``; subclasses implement :meth:`edit_features`."""

    sae: str | os.PathLike | SparseAutoencoder = ""  # stored as the folder's path (a str) by __post_init__
    sites: ClassVar[tuple[str, ...]] = FEATURE_SITES

    def __post_init__(self) -> None:
        object.__setattr__(self, "sae", sae_path(self.sae))

    def feature_indices(self) -> tuple[int, ...]:
        return ()

    def prepare(self, prep) -> SparseAutoencoder:
        sae = load_sae(cached_sae(str(self.sae)), prep.model)
        if sae.is_transcoder:
            raise FeatureError(
                f"{self.sae} is a transcoder: editing through transcoders is not yet supported (use an SAE)."
            )
        site = prep.sites[0].name
        if site != sae.site or prep.blocks != [sae.block]:
            raise FeatureError(
                f"The SAE {self.sae} reads {sae.hook_name} (site {sae.site!r}, block {sae.block}), but the "
                f"intervention edits site {site!r} at blocks {prep.blocks}: use Intervention({sae.site!r}, ..., "
                f"blocks={sae.block})."
            )
        if prep.heads is not None:
            raise FeatureError(f"An SAE edits every head of {site} together: leave heads= out.")
        for f in self.feature_indices():
            if f >= sae.d_sae:
                raise FeatureError(
                    f"Feature {f} does not exist: the SAE {self.sae} has {sae.d_sae} (0–{sae.d_sae - 1})."
                )
        return sae

    def edit_features(self, features: torch.Tensor, sae: SparseAutoencoder) -> torch.Tensor:
        return features

    def apply(self, values: torch.Tensor, edit) -> torch.Tensor:
        sae: SparseAutoencoder = edit.state
        x = values.to(device=sae.device, dtype=torch.float32)
        features = sae.encode(x)
        reconstruction = sae.decode(features)
        error = x - reconstruction.reshape(x.shape)
        edited = sae.decode(self.edit_features(features.clone(), sae)).reshape(x.shape)
        return (edited + error).to(device=values.device, dtype=values.dtype)

    def _features_text(self) -> str:
        shown = self.feature_indices()
        return ", ".join(map(str, shown[:6])) + ("…" if len(shown) > 6 else "")


@register_operation
@dataclass(frozen=True)
class SAESplice(FeatureOperation):
    """Replace the activation by the SAE's reconstruction plus its error: the same activation, now
    routed through the SAE's features (a base for feature edits; the output is unchanged)."""

    name: ClassVar[str] = "sae_splice"

    def describe(self) -> str:
        return f"spliced through the SAE {Path(str(self.sae)).name}"


@register_operation
@dataclass(frozen=True)
class FeatureAblate(FeatureOperation):
    """Set ``features`` to zero: the activation loses exactly their decoder contributions."""

    features: int | Sequence[int] = ()  # stored as a tuple by __post_init__
    name: ClassVar[str] = "feature_ablate"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "features", feature_list(self.features))

    def feature_indices(self) -> tuple[int, ...]:
        return cast(tuple[int, ...], self.features)

    def edit_features(self, features: torch.Tensor, sae: SparseAutoencoder) -> torch.Tensor:
        features[..., list(self.feature_indices())] = 0.0
        return features

    def describe(self) -> str:
        return f"SAE features {self._features_text()} ablated"


@register_operation
@dataclass(frozen=True)
class FeatureScale(FeatureOperation):
    """Multiply ``features``' activations by ``factor``."""

    features: int | Sequence[int] = ()  # stored as a tuple by __post_init__
    factor: float = 1.0
    name: ClassVar[str] = "feature_scale"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "features", feature_list(self.features))
        object.__setattr__(self, "factor", finite_number(self.factor, "Feature scale factor", "factor=2.0"))

    def feature_indices(self) -> tuple[int, ...]:
        return cast(tuple[int, ...], self.features)

    def edit_features(self, features: torch.Tensor, sae: SparseAutoencoder) -> torch.Tensor:
        features[..., list(self.feature_indices())] *= self.factor
        return features

    def describe(self) -> str:
        return f"SAE features {self._features_text()} scaled by {self.factor:g}"


@register_operation
@dataclass(frozen=True)
class FeatureClamp(FeatureOperation):
    """Set ``features``' activations to ``value`` at every selected position (active or not)."""

    features: int | Sequence[int] = ()  # stored as a tuple by __post_init__
    value: float = 0.0
    name: ClassVar[str] = "feature_clamp"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "features", feature_list(self.features))
        object.__setattr__(self, "value", finite_number(self.value, "Feature clamp value", "value=5.0"))

    def feature_indices(self) -> tuple[int, ...]:
        return cast(tuple[int, ...], self.features)

    def edit_features(self, features: torch.Tensor, sae: SparseAutoencoder) -> torch.Tensor:
        features[..., list(self.feature_indices())] = self.value
        return features

    def describe(self) -> str:
        return f"SAE features {self._features_text()} clamped to {self.value:g}"


@register_operation
@dataclass(frozen=True)
class FeatureSteer(FeatureOperation):
    """Add ``coefficient`` × the feature's decoder direction (``SparseAutoencoder.decoder_direction``):
    the feature's activation raised by ``coefficient``, error term and other features untouched, so the
    edit equals ``Add`` of that vector."""

    feature: int = 0
    coefficient: float = 1.0
    name: ClassVar[str] = "feature_steer"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "feature", feature_list(self.feature, "feature")[0])
        object.__setattr__(self, "coefficient", finite_number(self.coefficient, "The steering coefficient", "4.0"))

    def feature_indices(self) -> tuple[int, ...]:
        return (self.feature,)

    def apply(self, values: torch.Tensor, edit) -> torch.Tensor:
        # decode is affine in f, so decode(f + c·e_i) + error = x + c · (decoder direction i): written directly.
        sae: SparseAutoencoder = edit.state
        direction = sae.decoder_direction(self.feature).to(device=values.device, dtype=values.dtype)
        return values + self.coefficient * direction.reshape(values.shape[1:])  # [d], or [heads, d_head] at z

    def describe(self) -> str:
        return f"{self.coefficient:g} × SAE feature {self.feature}'s decoder direction added"
