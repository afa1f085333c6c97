"""workbench: a mechanistic-interpretability workbench for small language models, on TransformerLens hooks.

The small public surface: load a model, run probes, get results.
"""

from typing import TYPE_CHECKING

from workbench.errors import WorkbenchError
from workbench.lazy import lazy_exports

if TYPE_CHECKING:
    from workbench.models import Model, ModelFacts, load_model
    from workbench.probes import (
        ActivationPatch,
        AttentionCapture,
        AttentionMask,
        BlockReplacement,
        LogitLens,
        Probe,
        register_probe,
    )
    from workbench.results import load_result, load_run, save_run
    from workbench.run import RunResult, run

# Imported when first used: the command line parses its arguments before torch loads.
lazy_exports(
    __name__,
    {
        "workbench.models": ("Model", "ModelFacts", "load_model"),
        "workbench.probes": (
            "ActivationPatch",
            "AttentionCapture",
            "AttentionMask",
            "BlockReplacement",
            "LogitLens",
            "Probe",
            "register_probe",
        ),
        "workbench.results": ("load_result", "load_run", "save_run"),
        "workbench.run": ("RunResult", "run"),
    },
)

__all__ = [
    "WorkbenchError",
    "Model",
    "ModelFacts",
    "load_model",
    "run",
    "RunResult",
    "Probe",
    "register_probe",
    "LogitLens",
    "BlockReplacement",
    "AttentionCapture",
    "AttentionMask",
    "ActivationPatch",
    "load_result",
    "save_run",
    "load_run",
]
__version__ = "0.1.0"
