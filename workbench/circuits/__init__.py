"""Circuits: which edges between heads and MLPs carry the answer — EAP and EAP-IG edge scores on any pre-norm
family (grouped-query attention included), and circuits evaluated exactly."""
