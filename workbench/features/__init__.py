"""Sparse autoencoders and transcoders on TransformerLens 4, without SAELens.

- :func:`load_sae` reads SAELens' folder format (``cfg.json`` + ``sae_weights.safetensors``) into a
  :class:`SparseAutoencoder` (``encode``, ``decode``, ``forward``, ``save``), placed on the model's site;
- operations of the intervention language edit activations through its features, keeping the error term:
  :class:`SAESplice`, :class:`FeatureAblate`, :class:`FeatureScale`, :class:`FeatureClamp`,
  :class:`FeatureSteer`;
- the ``sae_features`` probe reads the top features per position and their logit effects.

Training and dashboards are not yet part of the workbench (see ``docs/features.md``).
"""

from workbench.features.operations import (
    FeatureAblate,
    FeatureClamp,
    FeatureOperation,
    FeatureScale,
    FeatureSteer,
    SAESplice,
)
from workbench.features.sae import SparseAutoencoder, load_sae, site_of_hook

__all__ = [
    "SparseAutoencoder",
    "load_sae",
    "site_of_hook",
    "FeatureOperation",
    "SAESplice",
    "FeatureAblate",
    "FeatureScale",
    "FeatureClamp",
    "FeatureSteer",
]
