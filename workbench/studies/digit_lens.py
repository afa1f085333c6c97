"""Section 2c of the study: when does the model decide *which* digit?

"A digit is in the top-10 from the embeddings on" only says that a lens learned that digits follow " ". The
question is when the lens' distribution **over the ten digits** (renormalised) takes the shape of the final
one. Per layer: KL(final ‖ layer) over the digits and the rank correlation (Spearman) with the final digits, at
the last position, for the study prompt and for a control — the same prompt with the upper bound removed, so
its digits cannot depend on the bound. The embeddings row is the bigram-only readout of the last token. The
model has decided from the first layer at which the rank correlation stays ≥ 0.9 to the end; the verdict says
whether the control gets there as early (then the lens shows a digit prior, not the decision).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from workbench import plots
from workbench.layers import resid_labels
from workbench.probes import LogitLens
from workbench.run import run
from workbench.studies.figure import Figure
from workbench.tokens import DIGITS

DECIDED = 0.9  # rank correlation with the final digit distribution that counts as "the same shape"
SECTION = "2c. When is the digit decided?"


def control_prompt(model, prompt: str, bound_position: int) -> str:
    """The prompt with the bound's token removed (its text cut out of the prompt where the token sits)."""
    pieces = model.str_tokens(prompt)
    skip = 1 if model.facts.prepend_bos else 0
    return "".join(piece for i, piece in enumerate(pieces) if i != bound_position and i >= skip)


def digit_rows(target_probs: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    """Per layer (``target_probs`` ``[layer, digit]`` at the readout), the renormalised digits against the final."""
    digits = target_probs / target_probs.sum(-1, keepdims=True)
    final = digits[-1]
    rows = []
    for label, row in zip(labels, digits, strict=True):
        kl = float(np.sum(final * (np.log(final) - np.log(row))))
        rho = sps.spearmanr(row, final).statistic
        rows.append({"layer": label, "kl": kl, "spearman": None if not np.isfinite(rho) else float(rho)})
    return rows


def decided_from(rows: list[dict[str, Any]]) -> str | None:
    """The first layer from which the rank correlation stays ≥ DECIDED up to (not counting) the output row."""
    first = None
    for row in rows[:-1]:
        same_order = row["spearman"] is not None and row["spearman"] >= DECIDED
        first = (first or row["layer"]) if same_order else None
    return first


def measure_digit_lens(model, prompt: str, bound_position: int, lens_result, fitted=None) -> dict[str, Any]:
    """The record of section 2c, from the study's logit lens (``lens_result``) and, when given, a fitted lens."""
    labels = resid_labels(model.facts.n_layers)
    column = lens_result.column(-1)
    study = digit_rows(lens_result["target_probs"].sel(prompt=0, position=column).numpy(), labels)
    control_text = control_prompt(model, prompt, bound_position)
    control = run(model, control_text, LogitLens(k=1, positions=[-1]), targets=list(DIGITS))["logit_lens"]
    control_rows = digit_rows(control["target_probs"].sel(prompt=0, position=0).numpy(), labels)
    lenses = {"logit lens": {"study": study, "control": control_rows}}
    if fitted is not None:
        fitted_probs = fitted["target_probs"].sel(prompt=0, position=fitted.column(-1)).numpy()
        lenses[fitted.lens_name] = {"study": digit_rows(fitted_probs, labels)}
    verdicts = []
    for name, rows in lenses.items():
        ours = decided_from(rows["study"])
        said = (
            f"Under the {name} the digits take their final order (rank correlation ≥ {DECIDED}) from "
            f"{ours or 'no layer before the output'}"
        )
        if "control" in rows:
            theirs = decided_from(rows["control"])
            said += f"; without the bound, from {theirs or 'no layer before the output'}"
            if ours is not None and theirs is not None and labels.index(theirs) <= labels.index(ours):
                said += ": as early, so this is the digits' prior, not a decision about the bound"
        verdicts.append(said + ".")
    bigram = study[0]
    verdicts.append(
        f"The bigram-only readout of the last token (the embeddings row) has rank correlation "
        f"{bigram['spearman'] if bigram['spearman'] is not None else float('nan'):.2f} with the final digits."
    )
    return {"control_prompt": control_text, "lenses": lenses, "threshold": DECIDED, "verdict": " ".join(verdicts)}


def digit_lens_figures(record: dict[str, Any]):
    if "digit_lens" not in record:
        return
    check, name = record["digit_lens"], record["model"]["name"]
    series: dict[str, Sequence[float]] = {}
    labels: list[str] = []
    for lens, rows in check["lenses"].items():
        for kind, values in rows.items():
            labels = [r["layer"] for r in values]
            series[f"{lens}, {'study prompt' if kind == 'study' else 'bound removed'}"] = [
                float(r["spearman"]) if r["spearman"] is not None else 0.0 for r in values
            ]
    yield Figure(
        "digit_lens",
        "When do the digits take their final order?",
        "Rank correlation (Spearman) of each layer's distribution over the ten digits (renormalised) with the final "
        "one, at the last position, for the study prompt and for the same prompt with the bound removed "
        f"({check['control_prompt']!r}). {check['verdict']}",
        plots.bars(
            series,
            labels=labels,
            title=f"Digit order per layer vs the output ({name})",
            x_title="residual stream",
            y_title="Spearman correlation with the final digits",
        ),
        SECTION,
    )
