"""The built-in probes (each registers itself on import) and the plugin API."""

from workbench.probes.attention import AttentionCapture, AttentionResult, display_pattern
from workbench.probes.attention_mask import AttentionMask
from workbench.probes.attribution import DirectLogitAttribution
from workbench.probes.base import Probe, ProbeRecord, RunContext
from workbench.probes.block_replacement import BlockReplacement
from workbench.probes.intervene import Intervene
from workbench.probes.intervention import InterventionResult
from workbench.probes.logit_lens import LogitLens, LogitLensResult
from workbench.probes.patching import ActivationPatch
from workbench.probes.registry import available_probes, get_probe, register_probe
from workbench.probes.tuned_lens import LensComparison, TunedLens, TunedLensResult

__all__ = [
    "DirectLogitAttribution",
    "Probe",
    "ProbeRecord",
    "RunContext",
    "available_probes",
    "get_probe",
    "register_probe",
    "LogitLens",
    "LogitLensResult",
    "BlockReplacement",
    "AttentionCapture",
    "AttentionResult",
    "display_pattern",
    "AttentionMask",
    "ActivationPatch",
    "Intervene",
    "InterventionResult",
    "TunedLens",
    "TunedLensResult",
    "LensComparison",
]

# The SAE probe lives with the SAEs (workbench.features); imported here so it registers with the built-ins.
import workbench.features.probe  # noqa: E402, F401
