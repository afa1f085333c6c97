"""The sampling lab: logit processors and samplers, generation, beam search, distribution monitors,
the randomness audit, the anomalous-token finder, a bigram model and the temperature explorer.

Every tool takes a :class:`~workbench.sampling.lm.NextTokenModel`: a workbench ``Model`` or a
:class:`BigramModel`.
"""

from workbench.sampling.anomalous import AnomalousToken, AnomalousTokens, centroid_distances, find_anomalous_tokens
from workbench.sampling.audit import (
    DEFAULT_PROMPT,
    HistogramStats,
    RandomnessAudit,
    audit_figure,
    chi_square,
    exact_number_distribution,
    parse_answer,
    randomness_audit,
    secrets_histogram,
)
from workbench.sampling.beam import Beam, BeamSearchResult, beam_search, sequence_logprob
from workbench.sampling.bigram import BigramModel
from workbench.sampling.explorer import TemperatureSweep, sweep_figure, temperature_sweep
from workbench.sampling.generate import Generation, generate, identity_block_hooks
from workbench.sampling.lm import BridgeModel, NextTokenModel, as_next_token_model
from workbench.sampling.monitors import DistributionStats, batch_stats, distribution_stats, entropy_bits
from workbench.sampling.processors import (
    LogitsProcessor,
    MinP,
    RepetitionPenalty,
    Sampler,
    Temperature,
    TopK,
    TopNSigma,
    TopP,
    greedy,
    make_sampler,
    parse_sampler,
)

__all__ = [
    "AnomalousToken", "AnomalousTokens", "Beam", "BeamSearchResult", "BigramModel", "BridgeModel",
    "DEFAULT_PROMPT", "DistributionStats", "Generation", "HistogramStats", "LogitsProcessor", "MinP",
    "NextTokenModel", "RandomnessAudit", "RepetitionPenalty", "Sampler", "Temperature", "TemperatureSweep",
    "TopK", "TopNSigma", "TopP", "as_next_token_model", "audit_figure", "batch_stats", "beam_search",
    "centroid_distances", "chi_square", "distribution_stats", "entropy_bits", "exact_number_distribution",
    "find_anomalous_tokens", "generate", "greedy", "identity_block_hooks", "make_sampler", "parse_answer",
    "parse_sampler", "randomness_audit", "secrets_histogram", "sequence_logprob", "sweep_figure", "temperature_sweep",
]
