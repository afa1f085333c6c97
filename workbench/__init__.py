"""workbench: a mechanistic-interpretability workbench for small language models, on TransformerLens hooks.

The small public surface: load a model, run probes, get results.
"""

from workbench.errors import WorkbenchError
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
