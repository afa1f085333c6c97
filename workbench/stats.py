"""Statistics of effects over a dataset: intervals, paired tests, multiple-comparison control, effect sizes.

An experiment measures each item under the clean run and under each condition, so an effect is a set
of *paired* differences (condition − clean, one per item). For each condition and metric:

- the **mean effect** with a seeded bootstrap confidence interval (:func:`scipy.stats.bootstrap`, BCa —
  bias-corrected and accelerated — and the percentile interval where BCa is undefined, e.g. when
  nearly every difference is equal; each interval says which it is);
- a **paired sign-flip permutation test** of the mean difference (:func:`scipy.stats.permutation_test`
  with ``permutation_type="samples"``): under "the condition changes nothing" each difference is as
  likely positive as negative, so flipping signs gives the null distribution of the very statistic we
  report (the mean). It is exact when 2ⁿ ≤ ``resamples`` and needs no normality; a Wilcoxon test
  would test the median of the Walsh averages instead of the mean the figures show;
- **Benjamini–Hochberg** adjusted p-values (:func:`scipy.stats.false_discovery_control`) across the
  cells of each grid (one family per grid and metric), and across the named conditions (one family per
  metric);
- the **effect size** Cohen's d_z: the mean difference over the standard deviation of the differences.

Everything is seeded (the experiment's seed and the cell's name), so a summary is reproducible bit for bit.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

CI_BCA = "BCa bootstrap"
CI_PERCENTILE = "percentile bootstrap (BCa undefined)"
CI_CONSTANT = "none: every difference is equal"
TEST = "paired sign-flip permutation test of the mean difference"
CORRECTION = "Benjamini–Hochberg, per grid and metric (named conditions: per metric)"
EFFECT_SIZE = "Cohen's d_z (mean difference / SD of the differences)"


def rng_for(seed: int, *names: str) -> np.random.Generator:
    """A generator seeded by the experiment's seed and a cell's name: the same cell, the same draws."""
    salt = int(hashlib.sha256("\x1f".join(names).encode()).hexdigest()[:15], 16)
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, salt]))


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def bootstrap_interval(
    samples: np.ndarray, confidence: float = 0.95, resamples: int = 9999, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Bootstrap confidence intervals of the mean of each row of ``samples`` ``[rows, n]``: BCa, the
    percentile interval where BCa is undefined, and the point itself where every value is equal."""
    samples = np.atleast_2d(np.asarray(samples, dtype=float))
    rows, n = samples.shape
    low, high = np.full(rows, np.nan), np.full(rows, np.nan)
    methods = [""] * rows
    constant = np.ptp(samples, axis=1) == 0 if n else np.zeros(rows, bool)
    for r in np.flatnonzero(constant):
        low[r] = high[r] = samples[r, 0]
        methods[r] = CI_CONSTANT
    todo = np.flatnonzero(~constant)
    if n < 2 or not len(todo):
        return low, high, [m or "none: fewer than 2 items" for m in methods]
    rng = rng or np.random.default_rng(0)
    data = samples[todo]
    state = rng.bit_generator.state
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bca = sps.bootstrap(
            (data,),
            _mean,
            confidence_level=confidence,
            n_resamples=resamples,
            method="BCa",
            axis=-1,
            vectorized=True,
            random_state=rng,
        ).confidence_interval
    lo, hi = np.asarray(bca.low, float).reshape(-1), np.asarray(bca.high, float).reshape(-1)
    undefined = ~(np.isfinite(lo) & np.isfinite(hi))
    if undefined.any():
        rng.bit_generator.state = state  # the same resamples, read by percentiles
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pct = sps.bootstrap(
                (data[undefined],),
                _mean,
                confidence_level=confidence,
                n_resamples=resamples,
                method="percentile",
                axis=-1,
                vectorized=True,
                random_state=rng,
            ).confidence_interval
        lo[undefined] = np.asarray(pct.low, float).reshape(-1)
        hi[undefined] = np.asarray(pct.high, float).reshape(-1)
    low[todo], high[todo] = lo, hi
    for k, r in enumerate(todo):
        methods[r] = CI_PERCENTILE if undefined[k] else CI_BCA
    return low, high, methods


def sign_flip_test(
    differences: np.ndarray, resamples: int = 9999, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Two-sided p-values that the mean of each row of paired ``differences`` ``[rows, n]`` is 0."""
    differences = np.atleast_2d(np.asarray(differences, dtype=float))
    rows, n = differences.shape
    p = np.ones(rows)
    todo = np.flatnonzero(np.any(differences != 0, axis=1))  # all-zero differences: nothing to test, p = 1
    if n == 0:
        return np.full(rows, np.nan)
    if len(todo):
        result = sps.permutation_test(
            (differences[todo],),
            _mean,
            permutation_type="samples",
            vectorized=True,
            n_resamples=resamples,
            alternative="two-sided",
            axis=-1,
            random_state=rng or np.random.default_rng(0),
            batch=1000,
        )
        p[todo] = np.minimum(1.0, np.asarray(result.pvalue, float).reshape(-1))
    return p


def benjamini_hochberg(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (NaN entries stay NaN and do not count as tests)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = sps.false_discovery_control(p[finite], method="bh")
    return out


def cohens_dz(differences: np.ndarray) -> np.ndarray:
    """Mean over standard deviation (ddof 1) of each row of paired differences; NaN when it is undefined."""
    differences = np.atleast_2d(np.asarray(differences, dtype=float))
    if differences.shape[1] < 2:
        return np.full(differences.shape[0], np.nan)
    sd = differences.std(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd > 0, differences.mean(axis=1) / sd, np.nan)


def paired_effects(
    condition: np.ndarray,
    clean: np.ndarray,
    *,
    confidence: float = 0.95,
    resamples: int = 9999,
    rng: np.random.Generator | None = None,
) -> list[dict[str, Any]]:
    """Per row of ``condition`` ``[rows, n]`` (paired item by item with ``clean`` ``[n]``): the mean
    effect, its interval, the paired test's p-value and the effect size."""
    condition = np.atleast_2d(np.asarray(condition, dtype=float))
    clean = np.asarray(clean, dtype=float)
    differences = condition - clean[None, :]
    rng = rng or np.random.default_rng(0)
    low, high, methods = bootstrap_interval(differences, confidence, resamples, rng)
    p = sign_flip_test(differences, resamples, rng)
    dz = cohens_dz(differences)
    out = []
    for r in range(differences.shape[0]):
        out.append(
            {
                "mean": _num(differences[r].mean()) if differences.shape[1] else None,
                "ci_low": _num(low[r]),
                "ci_high": _num(high[r]),
                "ci_method": methods[r],
                "n": int(differences.shape[1]),
                "p_value": _num(p[r]),
                "effect_size": _num(dz[r]),
                "condition_mean": _num(condition[r].mean()) if differences.shape[1] else None,
                "clean_mean": _num(clean.mean()) if len(clean) else None,
            }
        )
    return out


def _num(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
