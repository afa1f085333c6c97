"""The package's own exceptions: each message says what was wrong and what to do.

The CLI prints ``str(error)`` on one line and exits with ``error.exit_code``; no traceback.
"""

from __future__ import annotations


class WorkbenchError(Exception):
    """Base of every error the workbench raises on purpose."""

    exit_code = 1


class ModelSpecError(WorkbenchError):
    """A model spec that names nothing the loader knows (not a path, short name or hub id)."""

    exit_code = 2


class ModelNotFoundError(WorkbenchError):
    """A path, wheel or cache entry the spec points to does not exist."""

    exit_code = 3


class GGUFError(WorkbenchError):
    """A GGUF file that is corrupt or of an architecture transformers cannot de-quantize."""

    exit_code = 4


class OfflineError(WorkbenchError):
    """A hub id was asked for while offline and nothing is cached locally."""

    exit_code = 5


class LayerError(WorkbenchError, IndexError):
    """A block or head that the model does not have, or an empty list of them."""

    exit_code = 6


class TokenError(WorkbenchError, ValueError):
    """A target that is not one token, a position or text not in the prompt, prompts that do not align,
    or a prompt longer than the model's context."""

    exit_code = 7


class ProbeError(WorkbenchError, ValueError):
    """A probe that is unknown, misconfigured, or would produce meaningless numbers."""

    exit_code = 8


class ExportError(WorkbenchError):
    """A figure or result that cannot be written (e.g. no browser for static images)."""

    exit_code = 9


class SamplingError(WorkbenchError, ValueError):
    """A sampler setting outside its domain (non-finite temperature, top-p outside (0, 1], ...)."""

    exit_code = 10


class BudgetError(WorkbenchError):
    """A size the user asked for that cannot run within the memory budget, even in batches."""

    exit_code = 11


class InterventionError(ProbeError):
    """An intervention that is malformed: an unknown site or operation, an operation a site cannot take,
    or an edit that would produce meaningless numbers (a query left with no visible key)."""

    exit_code = 12


class SweepError(ProbeError):
    """A sweep asked for a grid, site or method it cannot run."""

    exit_code = 13


class ResultError(ProbeError, KeyError):
    """A result array, dimension or label that does not exist, or a figure a result cannot draw."""

    exit_code = 14

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DeviceError(WorkbenchError):
    """A device this machine does not have (``--device cuda`` without a GPU) or that the workbench does not know."""

    exit_code = 15


class LensError(WorkbenchError, ValueError):
    """A lens file that is missing, corrupt or fitted on another model, or a lens fit that cannot run."""

    exit_code = 16


class DatasetError(WorkbenchError, ValueError):
    """A prompt dataset that cannot be read (missing, not UTF-8, not JSONL/CSV/Parquet, no ``prompt`` column)
    or that holds bad rows (each named by its id)."""

    exit_code = 17


class ExperimentError(WorkbenchError, ValueError):
    """An experiment spec that is malformed, or an output folder that holds another experiment's results."""

    exit_code = 18


class ExperimentDataError(ExperimentError):
    """An experiment folder's manifest, plan, results, shard or marker that is damaged or was edited."""

    exit_code = 19


class UserFileError(ExperimentError):
    """A file in an experiment folder that its marker does not list, or that changed since the workbench wrote it,
    where a run would have to replace or delete it (or a symlink a write or deletion would follow)."""

    exit_code = 20


class DiskFullError(WorkbenchError, OSError):
    """The disk (or the user's quota) ran out of space while the workbench was writing."""

    exit_code = 21


class RayConnectionError(ExperimentError):
    """A Ray cluster named by ``--address`` that cannot be reached within the timeout."""

    exit_code = 22


class AttributionError(ProbeError):
    """An attribution that cannot be made exact: a metric with no direction in logit space (``kl``, ``rank``),
    a component or unit the model does not have, or a norm or projection that is not affine once frozen."""

    exit_code = 28


class FeatureError(WorkbenchError, ValueError):
    """An SAE/transcoder file that is missing, corrupt, of an unknown architecture, or that does not fit the
    model's site."""

    exit_code = 29


class CircuitError(ProbeError):
    """A circuit that cannot be found or evaluated: a family whose residual stream is not a sum of per-head
    writes, an edge or node name the graph does not have, or a circuit file that is damaged or for another model."""

    exit_code = 30
