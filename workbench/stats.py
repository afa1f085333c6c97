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

Memory stays within :func:`workbench.memory.memory_budget`: the bootstrap and the permutation test run in
batches of resamples (scipy's ``batch=``) and, when the rows' resampled statistics alone would not fit, in
groups of rows that replay the same random draws, so the numbers do not depend on the budget
(``tests/experiments/test_stats.py``). What cannot fit even one row and one resample at a time is refused
up front with the estimate (:func:`require_stats_budget`, ``BudgetError``).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from workbench.errors import BudgetError
from workbench.memory import format_bytes, memory_budget

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


# ----- memory: batches sized from the budget ---------------------------------------------------------------

STATS_BATCH_BYTES = 256 << 20  # what one batch of resamples may take (less when the budget is less)
_F8 = 8  # bytes of a float64 (and of an int64 index)


def _per_row_bytes(resamples: int) -> int:
    """One row's bootstrap (or null) distribution, its concatenation and the sorted copy percentiles take."""
    return 3 * _F8 * int(resamples)


def _per_draw_bytes(n: int, rows: int) -> int:
    """One resample of ``rows`` rows of ``n`` items: the index row, the gathered values, the jackknife mask;
    ×4 for the sign-flip test, which stacks (x, −x) pairs and copies them once."""
    return 4 * n * (_F8 * (rows + 1) + 1)


def stats_bytes(n: int, resamples: int) -> int:
    """The least memory the statistics of one cell of ``n`` items need (one row, one resample a batch)."""
    return _per_row_bytes(resamples) + _per_draw_bytes(n, 1)


def require_stats_budget(n: int, resamples: int, budget: int | None = None) -> None:
    """Refuse, before any work, statistics whose smallest unit cannot fit the memory budget."""
    budget = memory_budget("cpu") if budget is None else int(budget)
    need = stats_bytes(n, resamples)
    if need > budget:
        raise BudgetError(
            f"The statistics of one cell ({n} items, {resamples} resamples) need about {format_bytes(need)}, more "
            f"than the memory budget of {format_bytes(budget)}: lower resamples, use fewer items, or raise "
            "WORKBENCH_MEMORY_BUDGET."
        )


def _layout(rows: int, n: int, resamples: int, budget: int | None) -> tuple[int, int]:
    """(rows per call, resamples per batch) that fit ``budget`` (refused when one row and one draw do not)."""
    budget = memory_budget("cpu") if budget is None else int(budget)
    require_stats_budget(n, resamples, budget)
    # The layout changes the last bit of a mean (summation order), so it must not follow the free memory,
    # which moves from call to call: it is fixed by STATS_BATCH_BYTES unless the budget is smaller.
    budget = min(budget, STATS_BATCH_BYTES)
    per_row = _per_row_bytes(resamples)
    group = max(1, min(rows, (budget // 2) // max(1, per_row)))
    left = budget - group * per_row
    batch = max(1, min(max(resamples, n), left // max(1, _per_draw_bytes(n, group))))
    return group, batch


def _divisor_at_most(total: int, cap: int) -> int:
    """The largest divisor of ``total`` that is ≤ ``cap``: every batch of the permutation test is then full,
    so its draws (and p-values) are the same whatever the budget."""
    cap = max(1, min(cap, total))
    for size in range(cap, 0, -1):
        if total % size == 0:
            return size
    return 1


def bootstrap_interval(
    samples: np.ndarray,
    confidence: float = 0.95,
    resamples: int = 9999,
    rng: np.random.Generator | None = None,
    budget: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Bootstrap confidence intervals of the mean of each row of ``samples`` ``[rows, n]``: BCa, the
    percentile interval where BCa is undefined, and the point itself where every value is equal.

    Runs in batches that fit ``budget`` bytes (default :func:`~workbench.memory.memory_budget`); the rows
    share their resamples, as in one call of :func:`scipy.stats.bootstrap`, whatever the batches."""
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
    group, batch = _layout(len(todo), n, resamples, budget)
    start = end = rng.bit_generator.state  # every group ends in the same state (it draws the same)
    lo, hi = np.full(len(todo), np.nan), np.full(len(todo), np.nan)
    undefined = np.zeros(len(todo), bool)
    for first in range(0, len(todo), group):
        part = slice(first, first + group)
        data = samples[todo[part]]
        rng.bit_generator.state = start  # every group of rows reads the same resamples
        distribution = _bootstrap_distribution(data, resamples, rng, batch)
        end = rng.bit_generator.state
        lo[part], hi[part], undefined[part] = _bca_of_mean(data, distribution, confidence)
    rng.bit_generator.state = end
    low[todo], high[todo] = lo, hi
    for k, r in enumerate(todo):
        methods[r] = CI_PERCENTILE if undefined[k] else CI_BCA
    return low, high, methods


def _bootstrap_distribution(data: np.ndarray, resamples: int, rng: np.random.Generator, batch: int) -> np.ndarray:
    """The means of ``resamples`` resamples of each row ``[rows, resamples]``: scipy's draws, ``batch`` at a time."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sps.bootstrap(
            (data,),
            _mean,
            n_resamples=resamples,
            batch=batch,
            method="percentile",
            axis=-1,
            vectorized=True,
            random_state=rng,
        )
    return np.asarray(result.bootstrap_distribution, float).reshape(data.shape[0], resamples)


def _bca_of_mean(
    data: np.ndarray, distribution: np.ndarray, confidence: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BCa intervals of each row's mean from its bootstrap ``distribution`` — scipy's formulas (Efron &
    Tibshirani 14.3, 15.36) with the jackknife in closed form: leaving item i out, the mean is (S − xᵢ)/(n − 1),
    so the acceleration costs O(n) instead of the n resamples of n − 1 items scipy builds. Rows where BCa is
    undefined get the percentile interval of the same distribution; returns (low, high, undefined)."""
    from scipy.special import ndtr, ndtri

    n = data.shape[-1]
    alpha = (1 - confidence) / 2
    theta = data.mean(axis=-1, keepdims=True)
    below = np.count_nonzero(distribution < theta, axis=-1) + np.count_nonzero(distribution <= theta, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        z0 = ndtri(below / (2 * distribution.shape[-1]))
        jackknife = (data.sum(axis=-1, keepdims=True) - data) / (n - 1)
        u = (n - 1) * (jackknife.mean(axis=-1, keepdims=True) - jackknife)
        a = (np.sum(u**3, axis=-1) / n**3) / 6 / (np.sum(u**2, axis=-1) / n**2) ** 1.5
        z = float(ndtri(alpha))
        p_low = ndtr(z0 + (z0 + z) / (1 - a * (z0 + z)))
        p_high = ndtr(z0 + (z0 - z) / (1 - a * (z0 - z)))
    probabilities = np.stack([p_low, p_high], axis=-1)
    undefined = ~np.isfinite(probabilities).all(axis=-1)
    probabilities[undefined] = (alpha, 1 - alpha)
    ci = np.asarray(sps.quantile(distribution, probabilities, axis=-1), float)
    return ci[:, 0], ci[:, 1], undefined


def sign_flip_test(
    differences: np.ndarray,
    resamples: int = 9999,
    rng: np.random.Generator | None = None,
    budget: int | None = None,
) -> np.ndarray:
    """Two-sided p-values that the mean of each row of paired ``differences`` ``[rows, n]`` is 0, in batches
    that fit ``budget`` bytes; the rows share their sign patterns, whatever the batches."""
    differences = np.atleast_2d(np.asarray(differences, dtype=float))
    rows, n = differences.shape
    p = np.ones(rows)
    todo = np.flatnonzero(np.any(differences != 0, axis=1))  # all-zero differences: nothing to test, p = 1
    if n == 0:
        return np.full(rows, np.nan)
    if len(todo):
        rng = rng or np.random.default_rng(0)
        group, batch = _layout(len(todo), n, resamples, budget)
        batch = _divisor_at_most(resamples, batch)
        start = end = rng.bit_generator.state  # every group ends in the same state (it draws the same)
        for first in range(0, len(todo), group):
            rows_now = todo[first : first + group]
            rng.bit_generator.state = start  # every group of rows reads the same sign patterns
            result = sps.permutation_test(
                (differences[rows_now],),
                _mean,
                permutation_type="samples",
                vectorized=True,
                n_resamples=resamples,
                alternative="two-sided",
                axis=-1,
                random_state=rng,
                batch=batch,
            )
            end = rng.bit_generator.state
            p[rows_now] = np.minimum(1.0, np.asarray(result.pvalue, float).reshape(-1))
        rng.bit_generator.state = end
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
    budget: int | None = None,
) -> list[dict[str, Any]]:
    """Per row of ``condition`` ``[rows, n]`` (paired item by item with ``clean`` ``[n]``): the mean
    effect, its interval, the paired test's p-value and the effect size."""
    condition = np.atleast_2d(np.asarray(condition, dtype=float))
    clean = np.asarray(clean, dtype=float)
    differences = condition - clean[None, :]
    rng = rng or np.random.default_rng(0)
    low, high, methods = bootstrap_interval(differences, confidence, resamples, rng, budget)
    p = sign_flip_test(differences, resamples, rng, budget)
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
