"""The temperature explorer: how one next-token distribution changes as T sweeps through 0.

Two views of the same logits: the probabilities of a token set (the ten digits by default) over T from
−2 to 2 (T = 0 is greedy, T < 0 reverses the order), and the size of the set each filter keeps
(top-k, top-p, top-nσ, min-p) when the filter runs after the temperature. Top-nσ's kept set is flat
for T > 0 and top-k's is flat everywhere; top-p's and min-p's grow with T.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from workbench.errors import SamplingError
from workbench.memory import format_bytes, require_within_budget
from workbench.sampling.audit import DEFAULT_PROMPT
from workbench.sampling.checks import whole_number
from workbench.sampling.lm import as_next_token_model, check_context, model_device, prompt_tokens, single_token
from workbench.sampling.processors import LogitsProcessor, MinP, Temperature, TopK, TopNSigma, TopP


@dataclass
class TemperatureSweep:
    """``probs[i, j]``: P(token j | T = temperatures[i]) within ``token_texts`` (renormalised when
    ``restricted``); ``set_mass[i]``: that set's share of the full distribution; ``kept[rule][i]``: tokens
    kept by the rule after temperature T; ``kept_tokens[rule][i][j]``: whether token j is among them."""

    model: str
    prompt: str
    temperatures: list[float]
    token_ids: list[int]
    token_texts: list[str]
    restricted: bool
    probs: list[list[float]]
    set_mass: list[float]
    kept: dict[str, list[int]]
    kept_tokens: dict[str, list[list[bool]]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def figure(self):
        return sweep_figure(self)


def default_temperatures(n: int = 41, bound: float = 2.0) -> list[float]:
    return temperature_grid(-bound, bound, n)


def temperature_grid(low: float, high: float, steps: int) -> list[float]:
    """``steps`` evenly spaced temperatures from ``low`` to ``high`` (an odd count over a symmetric range
    keeps T = 0)."""
    steps = whole_number("steps", steps, 1)
    for name, value in (("The lowest temperature", low), ("The highest temperature", high)):
        if not np.isfinite(float(value)):
            raise SamplingError(f"{name} is {value}: pass a finite number (the sweep spans finite temperatures).")
    if float(low) > float(high):
        raise SamplingError(f"The sweep runs from {low:g} to {high:g}: pass the lower temperature first.")
    return [float(t) for t in np.round(np.linspace(float(low), float(high), steps), 6)]


def _bytes_per_temperature(n_tokens: int, n_rules: int) -> int:
    """What one temperature of the sweep keeps: probabilities and kept flags as Python lists."""
    return 64 + n_tokens * 40 + n_rules * (40 + n_tokens * 16)


@torch.no_grad()
def temperature_sweep(
    model: Any,
    prompt: str = DEFAULT_PROMPT,
    temperatures: Sequence[float] | None = None,
    tokens: Sequence[str] | None = None,
    restricted: bool = True,
    top_k: int = 10,
    top_p: float = 0.9,
    top_n_sigma: float = 1.0,
    min_p: float = 0.1,
    progress: bool = False,
) -> TemperatureSweep:
    """Apply every T to the prompt's next-token logits (one forward) and record probabilities and kept sets.

    ``restricted=True`` renormalises over ``tokens`` (default: the digits 0–9), the distribution of a
    digit answer; ``False`` shows each token's share of the whole vocabulary.
    """
    lm = as_next_token_model(model)
    temps = default_temperatures() if temperatures is None else [float(t) for t in temperatures]
    if not temps:
        raise SamplingError("No temperature given: pass at least one (e.g. -2 … 2).")
    texts = [str(d) for d in range(10)] if tokens is None else list(tokens)
    if not texts:
        raise SamplingError("No token given: pass at least one single-token text (default: the digits).")
    per_step = _bytes_per_temperature(len(texts), 4)
    require_within_budget(
        len(temps) * per_step,
        f"A sweep over {len(temps):,} temperatures",
        f"pass fewer temperatures (each keeps about {format_bytes(per_step)})",
        model_device(lm),
    )
    ids = []
    for text in texts:
        token = single_token(lm, text)
        if token is None:
            raise SamplingError(f"{text!r} is several tokens for {lm.name}: pass single-token texts.")
        ids.append(token)
    prompt_row = prompt_tokens(lm, prompt)
    check_context(lm, prompt_row.shape[1])
    logits = lm.next_token_logits(prompt_row)[0].float()
    index = torch.tensor(ids, device=logits.device)
    rules: dict[str, LogitsProcessor] = {
        f"top-k (k={top_k})": TopK(top_k),
        f"top-p (p={top_p:g})": TopP(top_p),
        f"top-nσ (n={top_n_sigma:g})": TopNSigma(top_n_sigma),
        f"min-p (p={min_p:g})": MinP(min_p),
    }
    probs, mass = [], []
    kept: dict[str, list[int]] = {name: [] for name in rules}
    kept_tokens: dict[str, list[list[bool]]] = {name: [] for name in rules}
    for t in tqdm(temps, desc="temperatures", disable=not progress or len(temps) < 200, leave=False):
        scaled = Temperature(t)(logits)
        full = scaled.softmax(dim=-1)
        mass.append(float(full[index].sum()))
        chosen = (Temperature(t)(logits[index]).softmax(dim=-1) if restricted else full[index]).tolist()
        probs.append([float(x) for x in chosen])
        for name, rule in rules.items():
            alive = torch.isfinite(rule(scaled))
            kept[name].append(int(alive.sum()))
            kept_tokens[name].append(alive[index].tolist())
    return TemperatureSweep(
        model=lm.name,
        prompt=prompt,
        temperatures=temps,
        token_ids=ids,
        token_texts=texts,
        restricted=restricted,
        probs=probs,
        set_mass=mass,
        kept=kept,
        kept_tokens=kept_tokens,
    )


def sweep_figure(sweep: TemperatureSweep):
    """Top: heatmap of the token probabilities over T. Bottom: kept-set size per rule over T (log scale)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        row_heights=[0.55, 0.45],
        subplot_titles=(
            "P(token | T)" + (" within the set" if sweep.restricted else " in the full vocabulary"),
            "tokens kept by each filter applied after temperature T",
        ),
    )
    z = np.asarray(sweep.probs).T
    fig.add_trace(
        go.Heatmap(
            x=sweep.temperatures,
            y=sweep.token_texts,
            z=z,
            colorscale="Viridis",
            zmin=0,
            zmax=1,
            colorbar=dict(title="P", len=0.55, y=0.78),
            hovertemplate="T=%{x}<br>token %{y}<br>P=%{z:.3f}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    for name, sizes in sweep.kept.items():
        fig.add_trace(go.Scatter(x=sweep.temperatures, y=sizes, mode="lines+markers", name=name), row=2, col=1)
    fig.update_yaxes(type="log", title_text="kept tokens", row=2, col=1)
    fig.update_xaxes(title_text="temperature T (0 = greedy, < 0 = order reversed)", row=2, col=1)
    prompt = sweep.prompt if len(sweep.prompt) <= 80 else sweep.prompt[:77] + "…"
    fig.update_layout(
        title=f"{sweep.model}: temperature explorer<br><sup>{prompt!r}</sup>",
        height=760,
        width=1000,
        template="plotly_white",
        legend=dict(orientation="h", yanchor="top", y=-0.12, xanchor="left", x=0),
    )
    return fig
