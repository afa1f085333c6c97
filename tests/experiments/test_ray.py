"""Ray: two local actors that each load the model compute the same results as the local executor, and a
shard whose actor dies (os._exit mid-shard) is retried on the other one."""

from __future__ import annotations

import json

import pytest

from workbench import interventions as iv
from workbench.experiments import Experiment, Grid, RayExecutor, run_experiment

from .helpers import rows

ray = pytest.importorskip("ray")


def test_two_ray_workers_equal_the_local_executor_even_when_one_dies(tmp_path, tiny_qwen2, monkeypatch):
    monkeypatch.setenv("WORKBENCH_MEMORY_BUDGET", "2M")
    experiment = Experiment(
        dataset=rows(bounds=("9", "8")),
        model="tiny-qwen2",
        metrics=["kl", "prob:{bound}"],
        resamples=999,
        conditions={"identity": iv.identity(1), "patch": iv.patch("kv", "{source}", blocks=[0], positions="{bound}")},
        grids=[Grid("heads", iv.scale("z", 0.0, positions="{bound}"), over=("block", "head"))],
        shard_items=2,
    )
    local = run_experiment(experiment, tmp_path / "local", model=tiny_qwen2)
    plan = json.loads((tmp_path / "local" / "plan.json").read_text())
    assert len(plan["shards"]) >= 6
    victim = plan["shards"][3]["id"]
    marker = tmp_path / "crashed"
    executor = RayExecutor(workers=2, crash_on=(victim, str(marker)))
    remote = run_experiment(experiment, tmp_path / "ray", executor=executor)
    assert marker.exists()  # an actor did die on that shard, and the run still finished
    assert remote.computed == len(plan["shards"])
    assert remote.manifest["sha256"] == local.manifest["sha256"]
    a, b = local.frame(), remote.frame()
    assert a.drop(columns="value").equals(b.drop(columns="value"))
    assert (a["value"] - b["value"]).abs().max() <= 1e-6
    assert json.loads((tmp_path / "ray" / "plan.json").read_text()) == plan
    assert not ray.is_initialized()
