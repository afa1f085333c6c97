"""Lenses beyond the logit lens: per-layer affine translators fitted to the model's own output.

``fit_lens(model)`` fits one (``linear``: ridge regression in closed form; ``tuned``: the tuned-lens KL
objective from that start), ``Lens.load(path, model)`` reads one back (refused on another model), and
the :class:`~workbench.probes.tuned_lens.TunedLens` probe reads a prompt through it next to the logit lens.
"""

from workbench.lenses.collect import collect_residuals, residual_batches, residual_stack
from workbench.lenses.corpus import Corpus, corpus_from_file, corpus_from_text, make_corpus, sample_corpus
from workbench.lenses.fit import LENS_METHODS, TunedSettings, fit_lens, fit_linear, fit_tuned
from workbench.lenses.lens import Lens, check_lens_path, kl_per_layer

__all__ = [
    "Corpus",
    "Lens",
    "LENS_METHODS",
    "TunedSettings",
    "check_lens_path",
    "collect_residuals",
    "corpus_from_file",
    "corpus_from_text",
    "fit_lens",
    "fit_linear",
    "fit_tuned",
    "kl_per_layer",
    "make_corpus",
    "residual_batches",
    "residual_stack",
    "sample_corpus",
]
