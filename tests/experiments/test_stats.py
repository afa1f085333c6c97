"""Statistics: bootstrap intervals cover the true mean at about the nominal rate; Benjamini–Hochberg keeps
the false discovery rate of a synthetic grid under its level; the sign-flip test equals exhaustive
enumeration of every sign pattern; degenerate cells say how their interval was made."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as sps

from workbench import stats


def test_bootstrap_intervals_cover_the_true_mean_at_the_nominal_rate():
    rng = np.random.default_rng(7)
    draws, n, mu = 400, 60, 0.4  # at n = 30 BCa covers ≈ 0.93: bootstrap intervals run a little narrow
    samples = rng.normal(mu, 1.0, size=(draws, n))
    low, high, methods = stats.bootstrap_interval(samples, 0.95, resamples=999, rng=np.random.default_rng(1))
    covered = np.mean((low <= mu) & (mu <= high))
    tolerance = 3 * np.sqrt(0.95 * 0.05 / draws)  # three binomial standard errors (≈ 0.033)
    assert abs(covered - 0.95) <= tolerance, covered
    assert set(methods) == {stats.CI_BCA}
    # Skewed data too (exponential, mean 1): BCa corrects for the skew.
    skewed = rng.exponential(1.0, size=(draws, n))
    low, high, _ = stats.bootstrap_interval(skewed, 0.9, resamples=999, rng=np.random.default_rng(2))
    assert abs(np.mean((low <= 1.0) & (high >= 1.0)) - 0.9) <= 3 * np.sqrt(0.9 * 0.1 / draws)


def test_benjamini_hochberg_keeps_the_false_discovery_rate_on_a_grid():
    rng = np.random.default_rng(3)
    q, grids, cells, n = 0.1, 40, 60, 16
    fdp, power = [], []
    for _ in range(grids):
        effect = np.zeros(cells)
        effect[:12] = 1.2  # 12 real effects, 48 null cells
        differences = rng.normal(effect[:, None], 1.0, size=(cells, n))
        p = stats.sign_flip_test(differences, resamples=999, rng=rng)
        rejected = stats.benjamini_hochberg(p) < q
        fdp.append(rejected[12:].sum() / max(1, rejected.sum()))
        power.append(rejected[:12].mean())
    assert np.mean(fdp) <= q + 0.03  # BH: E[FDP] ≤ q·(null share) = 0.08; Monte Carlo slack
    assert np.mean(power) > 0.8
    unadjusted = rng.uniform(size=cells)  # with no effect at all, raw p < q rejects ~6 cells; BH almost none
    assert (stats.benjamini_hochberg(unadjusted) < q).sum() <= 1
    np.testing.assert_allclose(stats.benjamini_hochberg([0.01, 0.04, 0.03, np.nan]), [0.03, 0.04, 0.04, np.nan])


def test_sign_flip_test_equals_enumerating_every_sign_pattern():
    rng = np.random.default_rng(5)
    differences = rng.normal(0.5, 1.0, size=(3, 10))
    p = stats.sign_flip_test(differences, resamples=9999, rng=rng)  # 2^10 = 1024 patterns: exact
    for row, got in zip(differences, p, strict=True):
        observed = abs(row.mean())
        flips = np.array(list(itertools.product([-1, 1], repeat=len(row))))
        null = (flips * row).mean(axis=1)
        greater = np.mean(null >= row.mean() - 1e-12)
        less = np.mean(null <= row.mean() + 1e-12)
        assert got == pytest.approx(min(1.0, 2 * min(greater, less)), abs=1e-12), observed
    assert stats.sign_flip_test(np.zeros((1, 8)))[0] == 1.0


def test_degenerate_cells_say_how_their_interval_was_made():
    rng = np.random.default_rng(0)
    nearly = np.zeros(20)
    nearly[3] = 1.0  # BCa's acceleration is undefined for a single non-zero value
    rows = np.stack([np.full(20, 0.25), nearly, rng.normal(size=20)])
    low, high, methods = stats.bootstrap_interval(rows, resamples=999, rng=np.random.default_rng(0))
    assert methods[0] == stats.CI_CONSTANT and low[0] == high[0] == 0.25
    assert methods[2] == stats.CI_BCA
    assert methods[1] in (stats.CI_BCA, stats.CI_PERCENTILE) and low[1] <= 0.05 <= high[1]
    effects = stats.paired_effects(rows, np.zeros(20), resamples=999)
    assert effects[0]["p_value"] <= 2 / 1000 and effects[0]["effect_size"] is None  # constant: d_z undefined
    d = rows[2]
    assert effects[2]["effect_size"] == pytest.approx(d.mean() / d.std(ddof=1))
    assert effects[2]["mean"] == pytest.approx(d.mean())


def test_a_summary_matches_scipy_called_directly():
    rng = np.random.default_rng(11)
    differences = rng.normal(0.2, 1.0, size=25)
    ours = stats.paired_effects(differences[None] + 1.0, np.ones(25), resamples=1999, rng=np.random.default_rng(4))[0]
    reference_rng = np.random.default_rng(4)
    ci = sps.bootstrap(
        (differences[None],),
        lambda x, axis: x.mean(axis=axis),
        method="BCa",
        n_resamples=1999,
        axis=-1,
        vectorized=True,
        random_state=reference_rng,
    ).confidence_interval
    assert ours["ci_low"] == pytest.approx(float(ci.low[0]), abs=1e-12)
    assert ours["ci_high"] == pytest.approx(float(ci.high[0]), abs=1e-12)
