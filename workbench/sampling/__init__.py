"""The sampling lab: logit processors and samplers, generation, beam search, distribution monitors,
the randomness audit, the anomalous-token finder, a bigram model and the temperature explorer.

Every tool takes a :class:`~workbench.sampling.lm.NextTokenModel`: a workbench ``Model`` or a
:class:`BigramModel`.
"""

from typing import TYPE_CHECKING

from workbench.lazy import lazy_exports

if TYPE_CHECKING:
    from workbench.sampling.anomalous import AnomalousToken, AnomalousTokens, centroid_distances, find_anomalous_tokens
    from workbench.sampling.audit import (
        DEFAULT_PROMPT,
        HistogramStats,
        RandomnessAudit,
        audit_figure,
        chi_square,
        exact_number_distribution,
        exact_number_distributions,
        parse_answer,
        randomness_audit,
        secrets_histogram,
    )
    from workbench.sampling.beam import Beam, BeamSearchResult, beam_search, sequence_logprob
    from workbench.sampling.bigram import BigramModel
    from workbench.sampling.explorer import TemperatureSweep, sweep_figure, temperature_sweep
    from workbench.sampling.generate import Generation, generate, generation_chunks
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
        sample_seed,
    )

# Imported when first used: the command line parses its arguments before torch loads.
lazy_exports(
    __name__,
    {
        "workbench.sampling.anomalous": (
            "AnomalousToken",
            "AnomalousTokens",
            "centroid_distances",
            "find_anomalous_tokens",
        ),
        "workbench.sampling.audit": (
            "DEFAULT_PROMPT",
            "HistogramStats",
            "RandomnessAudit",
            "audit_figure",
            "chi_square",
            "exact_number_distribution",
            "exact_number_distributions",
            "parse_answer",
            "randomness_audit",
            "secrets_histogram",
        ),
        "workbench.sampling.beam": ("Beam", "BeamSearchResult", "beam_search", "sequence_logprob"),
        "workbench.sampling.bigram": ("BigramModel",),
        "workbench.sampling.explorer": ("TemperatureSweep", "sweep_figure", "temperature_sweep"),
        "workbench.sampling.generate": ("Generation", "generate", "generation_chunks"),
        "workbench.sampling.lm": ("BridgeModel", "NextTokenModel", "as_next_token_model"),
        "workbench.sampling.monitors": ("DistributionStats", "batch_stats", "distribution_stats", "entropy_bits"),
        "workbench.sampling.processors": (
            "LogitsProcessor",
            "MinP",
            "RepetitionPenalty",
            "Sampler",
            "Temperature",
            "TopK",
            "TopNSigma",
            "TopP",
            "greedy",
            "make_sampler",
            "parse_sampler",
            "sample_seed",
        ),
    },
)

__all__ = [
    "AnomalousToken",
    "AnomalousTokens",
    "as_next_token_model",
    "audit_figure",
    "batch_stats",
    "Beam",
    "beam_search",
    "BeamSearchResult",
    "BigramModel",
    "BridgeModel",
    "centroid_distances",
    "chi_square",
    "DEFAULT_PROMPT",
    "distribution_stats",
    "DistributionStats",
    "entropy_bits",
    "exact_number_distribution",
    "exact_number_distributions",
    "find_anomalous_tokens",
    "generate",
    "Generation",
    "generation_chunks",
    "greedy",
    "HistogramStats",
    "LogitsProcessor",
    "make_sampler",
    "MinP",
    "NextTokenModel",
    "parse_answer",
    "parse_sampler",
    "randomness_audit",
    "RandomnessAudit",
    "RepetitionPenalty",
    "sample_seed",
    "Sampler",
    "secrets_histogram",
    "sequence_logprob",
    "sweep_figure",
    "Temperature",
    "temperature_sweep",
    "TemperatureSweep",
    "TopK",
    "TopNSigma",
    "TopP",
]
