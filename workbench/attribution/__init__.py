"""Attribution: which components write an answer — direct logit attribution and path patching.

- :func:`direct_logit_attribution`: the metric at a readout split exactly into what each component wrote
  (embeddings, heads, MLPs, neurons, biases), final norm frozen (:mod:`workbench.attribution.dla`);
- :func:`~workbench.attribution.path.path_patching`: the effect of a sender's output, patched from a source
  prompt, on one receiver only — a head's q, k or v input, an MLP's input, or the logits;
- :mod:`workbench.attribution.total` (direct beside total effect) and :mod:`workbench.attribution.dataset`
  (over a prompt dataset, with intervals).
"""

from workbench.attribution.dla import (
    UNITS,
    Attribution,
    Component,
    attribute,
    check_unit,
    direct_logit_attribution,
    dla_reads,
    metric_spec,
)

__all__ = [
    "UNITS",
    "Attribution",
    "Component",
    "attribute",
    "check_unit",
    "direct_logit_attribution",
    "dla_reads",
    "metric_spec",
]
