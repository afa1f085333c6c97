"""Sizes and types refused up front: the statistics run in batches within the memory budget (and give the
numbers one unbatched scipy call gives), what cannot fit is refused with its estimate before the first
shard, every spec field of the wrong type is one line before anything runs, and an unreachable Ray
cluster is one line instead of a hang."""

from __future__ import annotations

import socket
import tracemalloc

import numpy as np
import pytest
from scipy import stats as sps

from workbench import stats
from workbench.cli import main
from workbench.errors import BudgetError, ExperimentError, RayConnectionError
from workbench.experiments import Experiment, run_experiment

from .test_resume import SMALL, make_spec

# --- the statistics, batched -----------------------------------------------------------------------------


def _data(rows: int = 6, n: int = 40) -> np.ndarray:
    rng = np.random.default_rng(3)
    data = rng.normal(0.1, 1.0, (rows, n))
    data[2] = 0.0  # constant: no interval to draw
    data[4, 1:] = 0.5  # nearly constant
    return data


@pytest.mark.parametrize("budget", [30_000, 60_000, 200_000, 1 << 30])
def test_batched_intervals_equal_one_unbatched_scipy_call(budget):
    data = _data()
    low, high, methods = stats.bootstrap_interval(data, 0.95, 999, np.random.default_rng(5), budget=budget)
    todo = [0, 1, 3, 4, 5]  # the rows that are not constant
    reference = sps.bootstrap(
        (data[todo],),
        lambda x, axis: x.mean(axis=axis),
        n_resamples=999,
        method="BCa",
        axis=-1,
        vectorized=True,
        random_state=np.random.default_rng(5),
    ).confidence_interval
    bca = np.isfinite(reference.low) & np.isfinite(reference.high)
    # Row groups and batches change only the order in which numpy sums a resample's mean: the last bit or two
    # of a value near 1 (about 1e-16), so 1e-12 holds on any CPU.
    np.testing.assert_allclose(low[todo][bca], reference.low[bca], rtol=0, atol=1e-12)
    np.testing.assert_allclose(high[todo][bca], reference.high[bca], rtol=0, atol=1e-12)
    assert methods[2] == stats.CI_CONSTANT and low[2] == high[2] == 0.0
    assert [methods[r] for r in todo] == [stats.CI_BCA if ok else stats.CI_PERCENTILE for ok in bca]
    assert np.isfinite(low[todo]).all() and np.isfinite(high[todo]).all()


@pytest.mark.parametrize("budget", [30_000, 60_000, 200_000])
def test_batched_p_values_are_the_unbatched_ones_exactly(budget):
    data = _data()
    whole = stats.sign_flip_test(data, 999, np.random.default_rng(5), budget=1 << 30)
    batched = stats.sign_flip_test(data, 999, np.random.default_rng(5), budget=budget)
    np.testing.assert_array_equal(batched, whole)  # counts of sign patterns: integers, no rounding to differ


def test_the_draws_after_the_statistics_do_not_depend_on_the_budget():
    data, clean = _data(), np.zeros(40)
    a, b = np.random.default_rng(9), np.random.default_rng(9)
    stats.paired_effects(data, clean, resamples=999, rng=a, budget=1 << 30)
    stats.paired_effects(data, clean, resamples=999, rng=b, budget=40_000)
    assert a.random() == b.random()


def test_the_bootstrap_of_many_items_stays_within_the_budget():
    """The BCa jackknife used to build n × n arrays (100k items: a 9.3 GiB allocation); batched, numpy's peak
    allocation (traced) stays near the budget. Unbatched, these 4000 items peak at about 13 MiB."""
    n, budget = 4000, 4 << 20
    data = np.random.default_rng(0).normal(size=(2, n))
    tracemalloc.start()
    try:
        stats.bootstrap_interval(data, 0.95, 99, np.random.default_rng(1), budget=budget)
        _, bootstrap_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        stats.sign_flip_test(data, 99, np.random.default_rng(1), budget=budget)
        _, test_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Measured: 2.3 MiB and 6.0 MiB. The bounds leave room for numpy's temporaries (which the estimate counts
    # only roughly) while failing the unbatched 13 MiB; allocation sizes do not depend on the CPU.
    assert bootstrap_peak < 2 * budget, bootstrap_peak
    assert test_peak < 3 * budget, test_peak


def test_statistics_that_cannot_fit_one_cell_are_refused_with_the_estimate():
    with pytest.raises(BudgetError, match=r"one cell \(100000 items, 999999 resamples\) need about .* memory budget"):
        stats.require_stats_budget(100_000, 999_999, budget=1 << 20)


# --- sizes refused before the first shard ----------------------------------------------------------------


def test_a_results_table_too_big_for_memory_is_refused_before_any_shard(tmp_path, tiny_qwen2, monkeypatch):
    import workbench.memory

    spec = make_spec(tmp_path / "spec", SMALL)
    monkeypatch.setattr(workbench.memory, "available_ram", lambda: 20_000)
    with pytest.raises(BudgetError, match=r"The results table \(16 items × 3 conditions × 2 metrics = 96 rows\)"):
        run_experiment(spec, tmp_path / "out", model=tiny_qwen2)
    assert not (tmp_path / "out").exists()


def spec_with(tmp_path, text: str):
    return make_spec(tmp_path / "spec", text)


@pytest.mark.parametrize(
    "change, says",
    [
        ('name = "resume test"', "name = 12345 is of the wrong type"),
        ("resamples = 999", "resamples = 30000000 is more than 1,000,000: each cell's statistics would hold about"),
        ("resamples = 999", "[stats] resamples = 30000000.0 must be a whole number"),
        ("resamples = 999", "[stats] confidence = 'high' must be a number"),
        ("resamples = 999", "[stats] alpha = [0.05] must be a number"),
        ('metrics = ["kl", "digits_above:{source_bound}"]', "metrics = [1, 2] is of the wrong type"),
        ('metrics = ["kl", "digits_above:{source_bound}"]', "readout = 'last' is of the wrong type"),
        ('metrics = ["kl", "digits_above:{source_bound}"]', "seed = 1.5 is of the wrong type"),
        ("shard_items = 1", "shard_items = '1' is of the wrong type"),
        ('spec = "tiny-qwen2"', "[model] spec = 5 is of the wrong type"),
        ('spec = "tiny-qwen2"', "[model] n_devices = 'two' must be a whole number"),
        ('path = "rows.jsonl"', "[dataset] path = 5 is of the wrong type"),
        ("[conditions]", "conditions = ["),
        ("[conditions]", "grids = [{"),
    ],
)
def test_a_spec_field_of_the_wrong_type_is_one_line_before_anything_runs(tmp_path, capsys, change, says):
    replacements = {
        "name = 12345 is of the wrong type": ('name = "resume test"', "name = 12345"),
        "resamples = 30000000 is more": ("resamples = 999", "resamples = 30000000"),
        "[stats] resamples = 30000000.0": ("resamples = 999", "resamples = 3e7"),
        "[stats] confidence": ("resamples = 999", 'resamples = 999\nconfidence = "high"'),
        "[stats] alpha": ("resamples = 999", "resamples = 999\nalpha = [0.05]"),
        "metrics = [1, 2]": (change, "metrics = [1, 2]"),
        "readout = 'last'": (change, change + '\nreadout = "last"'),
        "seed = 1.5": (change, change + "\nseed = 1.5"),
        "shard_items = '1'": ("shard_items = 1", 'shard_items = "1"'),
        "[model] spec = 5": ('spec = "tiny-qwen2"', "spec = 5"),
        "[model] n_devices": ('spec = "tiny-qwen2"', 'spec = "tiny-qwen2"\nn_devices = "two"'),
        "[dataset] path = 5": ('path = "rows.jsonl"', "path = 5"),
        "conditions = [": ("[conditions]", "[[conditions]]"),
        "grids = [{": ("[conditions]", '[[grids]]\nover = ["block"]\n\n[conditions]'),
    }
    old, new = next(v for k, v in replacements.items() if says.startswith(k))
    assert old in SMALL
    spec = spec_with(tmp_path, SMALL.replace(old, new, 1))
    with pytest.raises(ExperimentError) as info:
        Experiment.from_toml(spec)
    assert says in str(info.value) and "\n" not in str(info.value)
    out = tmp_path / "out"
    try:
        main(["experiment", "run", str(spec), "--out", str(out)])
        code = 0
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == ExperimentError.exit_code and err.count("\n") == 1 and says in err, err
    assert not out.exists()  # refused before the folder, the model or any shard


def test_a_template_grid_of_a_million_rows_is_refused_with_its_size(tmp_path):
    numbers = ", ".join(str(i) for i in range(1000))
    spec = spec_with(
        tmp_path,
        SMALL.replace(
            'path = "rows.jsonl"', f'template = "{{a}} and {{b}}"\ngrid = {{ a = [{numbers}], b = [{numbers}] }}'
        ),
    )
    with pytest.raises(ExperimentError, match=r"grid expands to 1,000,000 rows \(1000 × 1000\), more than 100,000"):
        Experiment.from_toml(spec)


# --- Ray ---------------------------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the socket is: nothing listens there


def test_an_unreachable_ray_address_is_one_line_before_the_model_loads(tmp_path, capsys):
    pytest.importorskip("ray")
    from workbench.experiments.executors import make_executor

    port = closed_port()
    with pytest.raises(RayConnectionError, match=rf"Cannot reach the Ray cluster at 127\.0\.0\.1:{port}"):
        make_executor("ray", address=f"127.0.0.1:{port}")
    with pytest.raises(RayConnectionError, match="is not a Ray address"):
        make_executor("ray", address="no-port-here")
    spec = make_spec(tmp_path / "spec", SMALL)
    try:
        main(
            [
                "experiment",
                "run",
                str(spec),
                "--out",
                str(tmp_path / "o"),
                "--executor",
                "ray",
                "--address",
                f"ray://127.0.0.1:{port}",
            ]
        )
        code = 0
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == RayConnectionError.exit_code and err.count("\n") == 1 and "Cannot reach" in err, err
    assert not (tmp_path / "o").exists()
