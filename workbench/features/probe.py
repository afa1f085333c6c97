"""The ``sae_features`` probe: what an SAE reads at its hook, position by position.

It captures the activation at the SAE's hook (``metadata.hook_name``), encodes it, and reports:

- the ``k`` most active features at every position, with their activations, and how many are active (L0);
- a features × tokens heatmap of the features that are ever in a top ``k`` (the most active first);
- each of those features' *logit effect*: its decoder direction read through the model's own final norm
  and unembedding (``model.unembed``, as the logit lens reads a residual stream), with the tokens it
  promotes most and least (only for SAEs whose decoder writes a ``d_model``-wide site);
- the SAE's relative reconstruction error ``‖x − decode(encode(x))‖ / ‖x‖`` per position.

``workbench probe sae_features --model tiny-qwen2 -o sae=DIR``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from workbench import plots
from workbench.errors import FeatureError, ProbeError
from workbench.features.operations import cached_sae
from workbench.features.sae import SparseAutoencoder, load_sae
from workbench.probes.base import Probe, ProbeRecord, RunContext
from workbench.probes.logit_lens import decode_ids
from workbench.probes.registry import register_probe
from workbench.results import Named, Result


def _whole(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProbeError(f"{what}={value!r}: pass a whole number from {low} to {high}.")
    return value


@register_probe
@dataclass
class SAEFeatures(Probe):
    """SAE features: the top features per position, a features × tokens heatmap, each feature's logit effect."""

    sae: str = ""
    k: int = 5
    max_features: int = 24
    n_tokens: int = 8
    name: ClassVar[str] = "sae_features"

    def prepare(self, ctx: RunContext) -> SparseAutoencoder:
        if not isinstance(self.sae, str) or not self.sae:
            raise FeatureError(
                "sae_features needs an SAE folder: pass -o sae=DIR (cfg.json + sae_weights.safetensors)."
            )
        sae = load_sae(cached_sae(self.sae), ctx.model)
        _whole(self.k, "k (top features per position)", 1, sae.d_sae)
        _whole(self.max_features, "max_features (heatmap rows)", 1, sae.d_sae)
        _whole(self.n_tokens, "n_tokens (per logit effect)", 1, ctx.facts.d_vocab)
        return sae

    def hooks(self, ctx: RunContext):
        sae: SparseAutoencoder = ctx.plan
        assert sae.hook_name is not None, "load_sae(..., model) refuses an SAE without a hook"

        def save(act: torch.Tensor, hook: Any) -> None:
            ctx.save("acts", act)

        return [(sae.hook_name, save)]

    def describe(self, plan: Any = None) -> str:
        return f"SAE features at {plan.hook_name}" if isinstance(plan, SparseAutoencoder) else self.name

    @torch.no_grad()
    def result(self, record: ProbeRecord) -> SAEFeaturesResult:
        ctx, sae = record.context, record.plan
        x = record.saved[record.last_phase]["acts"]
        features = sae.encode(x)  # [prompt, pos, d_sae]
        top_values, top_index = features.topk(self.k, dim=-1)
        active = features > 0
        # heatmap rows: features that are in some position's top k and active there, the most active first
        in_top = torch.zeros(sae.d_sae, dtype=torch.bool, device=features.device)
        in_top[top_index[top_values > 0]] = True
        peak = features.amax(dim=(0, 1))
        chosen = [int(i) for i in sorted(in_top.nonzero().flatten().tolist(), key=lambda i: -float(peak[i]))]
        chosen = chosen[: self.max_features]
        n_prompts, n_pos = features.shape[:2]
        positions = [f"{p}:{ctx.str_tokens[0][p]}" for p in range(n_pos)]
        labels: dict[str, list] = {
            "prompt": list(range(n_prompts)),
            "position": positions,
            "rank": list(range(self.k)),
            "feature": chosen,
            "token_rank": list(range(self.n_tokens)),
        }

        def named(values, *dims: str) -> Named:
            return Named(values, dims, {d: list(labels[d]) for d in dims})

        arrays = {
            "top_features": named(top_index, "prompt", "position", "rank"),
            "top_activations": named(top_values, "prompt", "position", "rank"),
            "l0": named(active.sum(-1), "prompt", "position"),
            "activations": named(features[..., chosen].permute(0, 2, 1), "prompt", "feature", "position"),
        }
        if not sae.is_transcoder:
            flat = sae._input(x)
            recon = sae.decode(features).reshape(flat.shape)
            error = (flat - recon).norm(dim=-1) / flat.norm(dim=-1).clamp_min(1e-12)
            arrays["relative_error"] = named(error, "prompt", "position")
        notes = []
        if chosen and sae.d_out == ctx.facts.d_model:
            directions = torch.stack([sae.decoder_direction(i) for i in chosen]).to(ctx.model.device)
            logits = ctx.model.unembed(directions)  # [feature, vocab]
            n = self.n_tokens
            up, up_ids = logits.topk(n, dim=-1)
            down, down_ids = (-logits).topk(n, dim=-1)
            tok = ctx.model.tokenizer
            dims = ("feature", "token_rank")
            arrays["promoted_tokens"] = named(decode_ids(tok, up_ids), *dims)
            arrays["promoted_logits"] = named(up, *dims)
            arrays["suppressed_tokens"] = named(decode_ids(tok, down_ids), *dims)
            arrays["suppressed_logits"] = named(-down, *dims)
        elif chosen:
            notes.append(f"no logit effect: the decoder writes {sae.d_out}-wide {sae.hook_name}, not the residual")
        return SAEFeaturesResult(
            arrays=arrays,
            meta={
                "sae": str(sae.path) if sae.path is not None else None,
                "hook_name": sae.hook_name,
                "site": sae.site,
                "block": sae.block,
                "architecture": sae.architecture,
                "d_sae": sae.d_sae,
                "k": self.k,
                "features": chosen,
                "notes": notes,
                "logit_effect": "decoder direction through the final norm and unembedding (model.unembed)",
            },
        )


@dataclass(repr=False)
class SAEFeaturesResult(Result):
    """Top SAE features per position, their activations over the tokens, and their logit effects."""

    def top_features(self, position: int = -1, prompt: int = 0) -> list[tuple[int, float]]:
        """The (feature, activation) pairs most active at one position (the last by default)."""
        n = len(self["top_features"].coords["position"])
        position = _position(position, n)
        ids = self["top_features"].sel(prompt=prompt, position=position).numpy()
        acts = self["top_activations"].sel(prompt=prompt, position=position).numpy()
        return [(int(i), float(a)) for i, a in zip(ids, acts, strict=True) if a > 0]

    def logit_effect(self, feature: int) -> dict[str, list[tuple[str, float]]]:
        """The tokens ``feature`` promotes and suppresses most, with their logits."""
        if "promoted_tokens" not in self.arrays:
            raise ProbeError("This SAE's decoder does not write the residual stream: it has no logit effect.")
        if feature not in self.meta["features"]:
            raise ProbeError(f"Feature {feature} is not among the features read: {self.meta['features'][:8]}.")

        def pairs(kind: str) -> list[tuple[str, float]]:
            toks = self[f"{kind}_tokens"].sel(feature=feature).numpy()
            vals = self[f"{kind}_logits"].sel(feature=feature).numpy()
            return [(str(t), float(v)) for t, v in zip(toks, vals, strict=True)]

        return {"promoted": pairs("promoted"), "suppressed": pairs("suppressed")}

    def summary(self) -> str:
        top = self.top_features()
        shown = ", ".join(f"{i} ({a:.2f})" for i, a in top[:5]) or "none active"
        l0 = float(self["l0"].numpy().mean())
        return (
            f"SAE features at {self.meta['hook_name']} on {self.model}: mean L0 {l0:.1f} of {self.meta['d_sae']}; "
            f"top at the last position: {shown}"
        )

    def figure(self, kind: str = "heatmap", prompt: int = 0, **_: Any):
        """``heatmap`` (features × tokens, activations) or ``logit_effect`` (promoted/suppressed tokens)."""
        features = self.meta["features"]
        if not features:
            raise ProbeError("No feature is active on these prompts: there is nothing to draw.")
        rows = [f"feature {i}" for i in features]
        if kind == "heatmap":
            acts = self["activations"].sel(prompt=prompt)
            z = acts.numpy()
            positions = [plots.show_token(p) for p in acts.coords["position"]]
            return plots.heatmap(
                z,
                x=positions,
                y=rows,
                text=np.vectorize(lambda v: f"{v:.2f}" if v > 0 else "")(z),
                colorbar="activation",
                zmin=0,
                width=max(900, 70 * len(positions) + 250),
                title=f"SAE features at {self.meta['hook_name']}: activation per token ({self.model})",
                x_title="position: token",
                y_title="feature",
            )
        if kind == "logit_effect":
            if "promoted_tokens" not in self.arrays:
                raise ProbeError("This SAE's decoder does not write the residual stream: it has no logit effect.")
            up, down = self["promoted_logits"].numpy(), self["suppressed_logits"].numpy()
            n = up.shape[1]
            z = np.concatenate([up, down], axis=1)
            tokens = np.concatenate([self["promoted_tokens"].numpy(), self["suppressed_tokens"].numpy()], axis=1)
            text = np.vectorize(lambda t: plots.show_token(t)[:10])(tokens)
            return plots.heatmap(
                z,
                x=[f"+{i + 1}" for i in range(n)] + [f"−{i + 1}" for i in range(n)],
                y=rows,
                text=text,
                diverging=True,
                colorbar="logit",
                title=f"SAE features' logit effects: decoder direction through the unembedding ({self.model})",
                x_title="most promoted (+) and suppressed (−) tokens",
                y_title="feature",
            )
        raise ProbeError(f"Unknown sae_features figure {kind!r}: use heatmap or logit_effect.")

    def figures(self) -> dict[str, Any]:
        if not self.meta["features"]:
            return {}
        kinds = ["heatmap"] + (["logit_effect"] if "promoted_tokens" in self.arrays else [])
        return {kind: self.figure(kind) for kind in kinds}


def _position(position: int, n: int) -> int:
    if not -n <= position < n:
        raise ProbeError(f"Position {position} is outside the prompt's {n} tokens.")
    return position % n
