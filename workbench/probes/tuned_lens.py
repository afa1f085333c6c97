"""Tuned lens: the logit lens read through a fitted lens (``workbench lens fit``), side by side with the plain one.

Every array of :class:`~workbench.probes.logit_lens.LogitLens` is there, read through the lens; the same
arrays of the plain logit lens, from the same forward pass, carry the prefix ``logit_lens_``. The
comparison answers "at which layer does the model know?" under both lenses: KL to the output per layer, and
the first layer at which some target token is in the top-k.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from workbench import plots
from workbench.errors import ProbeError
from workbench.lenses.lens import Lens
from workbench.probes.base import ProbeRecord, RunContext
from workbench.probes.logit_lens import LogitLens, LogitLensResult
from workbench.probes.registry import register_probe

PLAIN = "logit_lens_"


@register_probe
@dataclass
class TunedLens(LogitLens):
    """Tuned or linear lens (a fitted lens file) beside the logit lens: top-k, targets, KL, first layer in top-k."""

    lens: str | Path | Lens | None = None
    name: ClassVar[str] = "tuned_lens"

    def prepare(self, ctx: RunContext) -> tuple[list[int], Lens]:
        """The positions read (as the logit lens) and the lens, loaded and checked against this run's model."""
        keep = super().prepare(ctx)
        if self.lens is None:
            raise ProbeError("TunedLens needs a lens: pass lens=PATH (from `workbench lens fit`) or a Lens object.")
        if isinstance(self.lens, Lens):
            self.lens.check_model(ctx.model)
            return keep, self.lens
        return keep, Lens.load(self.lens, ctx.model)

    def positions_read(self, plan: tuple[list[int], Lens]) -> list[int]:
        return plan[0]

    def describe(self, plan: Any = None) -> str:
        lens = plan[1] if plan is not None else self.lens
        return f"{self.name} ({lens.describe() if isinstance(lens, Lens) else lens})"

    def result(self, record: ProbeRecord) -> TunedLensResult:
        keep, lens = record.plan
        fitted = self.read_layers(record, keep, lens.logits)
        plain = self.read_layers(record, keep, self.unembed)
        return TunedLensResult.combine(fitted, plain, lens)


@dataclass(repr=False)
class TunedLensResult(LogitLensResult):
    """A :class:`LogitLensResult` read through a fitted lens, plus the plain logit lens' arrays (``logit_lens_*``)."""

    @classmethod
    def combine(cls, fitted: LogitLensResult, plain: LogitLensResult, lens: Lens) -> TunedLensResult:
        arrays = dict(fitted.arrays) | {PLAIN + name: array for name, array in plain.arrays.items()}
        meta = {
            **fitted.meta,
            "lens": lens.describe(),
            "lens_method": lens.method,
            "lens_heldout_kl": lens.header.get("heldout_kl"),
        }
        baseline = None
        if fitted.baseline is not None and plain.baseline is not None:
            baseline = cls.combine(fitted.baseline, plain.baseline, lens)
        return cls(
            probe="tuned_lens",
            model=fitted.model,
            prompts=fitted.prompts,
            tokens=fitted.tokens,
            arrays=arrays,
            meta=meta,
            baseline=baseline,
        )

    @property
    def lens_name(self) -> str:
        return {"identity": "zero lens"}.get(
            self.meta.get("lens_method"), f"{self.meta.get('lens_method', 'fitted')} lens"
        )

    @property
    def logit_lens(self) -> LogitLensResult:
        """The plain logit lens of the same forward pass."""
        arrays = {name.removeprefix(PLAIN): array for name, array in self.arrays.items() if name.startswith(PLAIN)}
        return LogitLensResult(
            probe="logit_lens",
            model=self.model,
            prompts=self.prompts,
            tokens=self.tokens,
            arrays=arrays,
            meta={k: v for k, v in self.meta.items() if not k.startswith("lens")},
        )

    def comparison(self, position: int | None = None, prompt: int = 0) -> LensComparison:
        """Per layer at one position (the readout by default): KL to the output and the best target rank,
        both lenses."""
        if "target_ranks" not in self.arrays:
            raise ProbeError("The comparison needs target tokens: run with targets (the digits by default).")
        column = self.column(self.meta["readout"] if position is None else position)
        layers = self["kl_to_final"].coords["layer"][:-1]

        def pick(prefix: str, name: str) -> np.ndarray:
            return self[prefix + name].sel(prompt=prompt, position=column).numpy()[:-1]

        return LensComparison(
            model=self.model,
            lens=self.lens_name,
            layers=layers,
            position=self.meta["positions"][column],
            k=int(self.meta["k"]),
            targets=list(self["target_ranks"].coords["target"]),
            kl={"logit lens": pick(PLAIN, "kl_to_final"), self.lens_name: pick("", "kl_to_final")},
            best_rank={
                "logit lens": pick(PLAIN, "target_ranks").min(-1),
                self.lens_name: pick("", "target_ranks").min(-1),
            },
            target_mass={
                "logit lens": pick(PLAIN, "target_probs").sum(-1),
                self.lens_name: pick("", "target_probs").sum(-1),
            },
        )

    def summary(self) -> str:
        first = self.comparison().first_in_top_k() if "target_ranks" in self.arrays else {}
        said = "; ".join(f"{name}: {layer or 'never'}" for name, layer in first.items())
        return (
            f"{self.lens_name} vs logit lens on {self.model}; "
            f"first layer with a target in the top-{self.meta['k']}: {said}"
        )

    def figure(self, kind: str = "top_tokens", prompt: int = 0, **options: Any):
        """The logit lens' figures read through the lens, or ``comparison`` (KL and best target rank, both lenses)."""
        if kind == "comparison":
            return self.comparison(options.get("position"), prompt).figure()
        fig = super().figure(kind, prompt)
        title = fig.layout.title.text or ""
        return fig.update_layout(title_text=title.replace("Logit lens", self.lens_name.capitalize(), 1))

    def figures(self) -> dict[str, Any]:
        figures = super().figures()
        if "target_ranks" in self.arrays:
            figures["comparison"] = self.figure("comparison")
        return figures


@dataclass
class LensComparison:
    """Two lenses on one prompt position: KL(final ‖ layer), best target rank and target mass per layer."""

    model: str
    lens: str
    layers: list[str]
    position: int
    k: int
    targets: list[str]
    kl: dict[str, np.ndarray]
    best_rank: dict[str, np.ndarray]
    target_mass: dict[str, np.ndarray]

    def first_in_top_k(self) -> dict[str, str | None]:
        """Per lens, the first layer at which some target token is among the top-k (None: never)."""
        return {
            name: next((layer for layer, r in zip(self.layers, ranks, strict=True) if r < self.k), None)
            for name, ranks in self.best_rank.items()
        }

    def in_top_k_from(self) -> dict[str, str | None]:
        """Per lens, the layer from which on some target stays in the top-k up to the last layer
        (None: not even there)."""
        out = {}
        for name, ranks in self.best_rank.items():
            inside = ranks < self.k
            start = len(inside)
            while start > 0 and inside[start - 1]:
                start -= 1
            out[name] = self.layers[start] if start < len(inside) else None
        return out

    def sentence(self) -> str:
        """In words and numbers: where each lens first puts a target in its top-k, and the KL it reads with."""
        first, stays = self.first_in_top_k(), self.in_top_k_from()
        parts = []
        for name in self.kl:
            kl = self.kl[name]
            parts.append(
                f"{name}: first in the top-{self.k} at {first[name] or 'no layer'}"
                f" (stays from {stays[name] or 'no layer'}); mean KL to the output over the layers {kl.mean():.2f} nats"
            )
        return f"{self.model}, position {self.position}: " + "; ".join(parts) + "."

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "lens": self.lens,
            "position": self.position,
            "k": self.k,
            "targets": self.targets,
            "layers": self.layers,
            "first_in_top_k": self.first_in_top_k(),
            "in_top_k_from": self.in_top_k_from(),
            "kl": {n: v.tolist() for n, v in self.kl.items()},
            "best_rank": {n: v.tolist() for n, v in self.best_rank.items()},
            "target_mass": {n: v.tolist() for n, v in self.target_mass.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LensComparison:
        """The comparison :meth:`to_dict` wrote (a saved study redraws its figure from it, without the model)."""
        arrays = {
            key: {n: np.asarray(v, dtype=float) for n, v in data[key].items()}
            for key in ("kl", "best_rank", "target_mass")
        }
        arrays["best_rank"] = {n: v.astype(np.int64) for n, v in arrays["best_rank"].items()}
        return cls(
            model=data["model"],
            lens=data["lens"],
            layers=list(data["layers"]),
            position=data["position"],
            k=data["k"],
            targets=list(data["targets"]),
            **arrays,
        )

    def figure(self):
        """Two panels over the layers: KL to the output (log), and the best target's rank (log, the top-k line)."""
        from plotly.subplots import make_subplots

        fig = make_subplots(
            rows=2,
            cols=1,
            shared_xaxes=True,
            vertical_spacing=0.08,
            subplot_titles=(
                "KL(final ‖ layer), nats",
                f"rank of the best target (0 = top); top-{self.k} below the line",
            ),
        )
        colours = {"logit lens": "#7f7f7f", "linear lens": "#1f77b4", "tuned lens": "#d62728"}
        first = self.first_in_top_k()
        for name in self.kl:
            colour = colours.get(name, "#2ca02c")
            kl = np.where(self.kl[name] > 1e-6, self.kl[name], np.nan)  # exact rows (KL 0 up to float noise): no log
            fig.add_scatter(
                x=self.layers,
                y=kl,
                name=name,
                mode="lines+markers",
                line={"color": colour},
                legendgroup=name,
                row=1,
                col=1,
            )
            fig.add_scatter(
                x=self.layers,
                y=self.best_rank[name] + 1,
                name=name,
                mode="lines+markers",
                showlegend=False,
                line={"color": colour},
                legendgroup=name,
                row=2,
                col=1,
                customdata=self.best_rank[name],
                hovertemplate="%{x}: rank %{customdata}<extra>" + name + "</extra>",
            )
            if first[name] is not None:
                fig.add_vline(x=self.layers.index(first[name]), line={"color": colour, "dash": "dot"}, row=2, col=1)
        fig.add_hline(y=self.k + 0.5, line={"color": "black", "dash": "dash"}, row=2, col=1)
        worst = max(int(r.max()) for r in self.best_rank.values()) + 1
        ranks = [r for r in (0, 1, 3, 9, 30, 100, 300, 1000, 3000, 10000, 30000, 100000) if r < worst * 2]
        fig.update_yaxes(type="log", row=1, col=1, title_text="KL (nats)")
        fig.update_yaxes(
            type="log",
            row=2,
            col=1,
            title_text="rank (log scale)",
            tickvals=[r + 1 for r in ranks],
            ticktext=["0 (top)", *map(str, ranks[1:])],
            range=[-0.05, np.log10(worst * 1.5)],
        )
        fig.update_xaxes(title_text="residual stream", tickangle=-45, row=2, col=1)
        said = ", ".join(f"{name} {layer or 'never'}" for name, layer in first.items())
        title = (
            f"Logit lens vs {self.lens} ({self.model}, position {self.position}); first target in top-{self.k}: {said}"
        )
        fig = plots.style(fig, title, height=760, width=max(900, 28 * len(self.layers) + 250))
        return fig.update_layout(margin={"t": 140})
