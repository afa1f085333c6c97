"""Sweeps: one intervention over every block × position (× head), fast by the structure of the
computation, plus attribution patching (the gradient estimate)."""

from workbench.metrics import Metric, digits_above, kl_to_clean, logit_diff, resolve_metric, token_prob
from workbench.sweeps.result import SweepResult
from workbench.sweeps.sweep import block_sweep, evaluate_cells, intervention_sweep, mask_sweep, patch_sweep

__all__ = [
    "Metric",
    "digits_above",
    "kl_to_clean",
    "logit_diff",
    "resolve_metric",
    "token_prob",
    "SweepResult",
    "patch_sweep",
    "block_sweep",
    "mask_sweep",
    "intervention_sweep",
    "evaluate_cells",
]
