"""A shard — prompts of one token length batched, clean rows plus one row block per condition, one forward —
gives every (item, condition, metric) the value of that prompt run alone with the condition's edit written
out by hand (no templates), measured by hand; whatever the memory budget cuts the shards into."""

from __future__ import annotations

import pytest
import torch

from workbench import interventions as iv
from workbench.errors import ExperimentError
from workbench.experiments import Experiment, Grid, run_experiment
from workbench.experiments.runner import Work, plan_shards
from workbench.interventions import compile_hooks, resolve
from workbench.tokens import single_token_id, to_tokens

from .helpers import rows

TOL = 1e-5


def experiment(model, data, **kw) -> Experiment:
    conditions = {
        "identity": iv.identity(2),
        "mask_bound": iv.mask_keys("{bound}", blocks=[1, 2]),
        "patch_bound": iv.patch("kv", "{source}", blocks=[0, 1], positions="{bound}"),
        "patch_and_mask": [
            iv.patch("kv", "{source}", blocks=[0], positions="{bound}"),
            iv.mask_keys("{bound}", blocks=[2]),
        ],
    }
    grids = [Grid("z_zero", iv.zero("z", positions="{bound}"), over=("block", "head"), blocks=(1, 2), heads=(0, 1))]
    return Experiment(
        dataset=data,
        conditions=conditions,
        grids=grids,
        model=model.facts.name,
        metrics=["kl", "prob:{bound}", "digits_above:{source_bound}", "logit_diff:9,5"],
        resamples=999,
        **kw,
    )


def by_hand(model, row: dict) -> dict[str, list[iv.Intervention]]:
    """The same conditions with each row's own text written in: no templates, no batching."""
    return {
        "clean": [],
        "identity": [iv.identity(2)],
        "mask_bound": [iv.mask_keys(row["bound"], blocks=[1, 2])],
        "patch_bound": [iv.patch("kv", row["source"], blocks=[0, 1], positions=row["bound"])],
        "patch_and_mask": [
            iv.patch("kv", row["source"], blocks=[0], positions=row["bound"]),
            iv.mask_keys(row["bound"], blocks=[2]),
        ],
        **{
            f"z_zero[block={b},head={h}]": [iv.zero("z", blocks=b, heads=h, positions=row["bound"])]
            for b in (1, 2)
            for h in (0, 1)
        },
    }


@torch.no_grad()
def alone(model, prompt: str, interventions) -> torch.Tensor:
    tokens = to_tokens(model, prompt)
    hooks = compile_hooks([resolve(i, model, [prompt], tokens) for i in interventions]) if interventions else []
    with model.bridge.hooks(fwd_hooks=hooks):
        return model.bridge(tokens)[0, -1].double()


def measured(model, row, logits, clean) -> dict[str, float]:
    logp, clean_logp = logits.log_softmax(-1), clean.log_softmax(-1)
    digits = [single_token_id(model, str(d)) for d in range(int(row["source_bound"]) + 1, 10)]
    return {
        "kl": float((clean_logp.exp() * (clean_logp - logp)).sum()),
        "prob:{bound}": float(logp.exp()[single_token_id(model, row["bound"])]),
        "digits_above:{source_bound}": float(logp.exp()[digits].sum()),
        "logit_diff:9,5": float(logits[single_token_id(model, "9")] - logits[single_token_id(model, "5")]),
    }


def check_against_alone(model, result, data):
    frame = result.frame()
    ids = list(dict.fromkeys(frame["item"]))
    assert len(ids) == len(data)
    for item_id, row in zip(ids, data, strict=True):
        clean = alone(model, row["prompt"], [])
        for condition, interventions in by_hand(model, row).items():
            expected = measured(model, row, alone(model, row["prompt"], interventions), clean)
            got = frame[(frame["item"] == item_id) & (frame["condition"] == condition)].set_index("metric")["value"]
            for metric, value in expected.items():
                assert abs(got[metric] - value) <= TOL * max(1.0, abs(value)), (row["prompt"], condition, metric)


def test_grouped_batches_equal_each_prompt_alone(tiny_model):
    data = rows()
    result = run_experiment(experiment(tiny_model, data), model=tiny_model)
    lengths = {to_tokens(tiny_model, r["prompt"]).shape[-1] for r in data}
    assert len(lengths) == 4 and len(result.manifest["analysis"]["conditions"]) == 4
    assert result.results.num_rows == len(data) * (1 + 4 + 4) * 4
    check_against_alone(tiny_model, result, data)


def test_a_small_memory_budget_cuts_shards_and_changes_no_number(tiny_qwen2, monkeypatch):
    data = rows(bounds=("9", "8"))
    big = run_experiment(experiment(tiny_qwen2, data), model=tiny_qwen2)
    monkeypatch.setenv("WORKBENCH_MEMORY_BUDGET", "600K")  # a few rows per forward: conditions split across shards
    exp = experiment(tiny_qwen2, data)
    work = Work.build(tiny_qwen2, exp, exp.load_dataset())
    shards = plan_shards(tiny_qwen2, work, "key")
    assert len(shards) > 8 and any(0 not in s.conditions for s in shards)
    assert sorted((i, c) for s in shards for i in s.items for c in s.conditions) == sorted(
        (i, c) for i in range(len(data)) for c in range(len(work.conditions))
    )  # every pair exactly once
    small = run_experiment(exp, model=tiny_qwen2)
    a, b = big.frame(), small.frame()
    assert a.drop(columns="value").equals(b.drop(columns="value"))
    assert (a["value"] - b["value"]).abs().max() <= TOL


def test_noop_edits_are_marked_and_the_clean_run_is_named(tiny_qwen2):
    data = rows(bounds=("9",))
    data[0]["source"] = data[0]["prompt"]  # patching from itself changes nothing
    exp = Experiment(
        dataset=data,
        model="tiny-qwen2",
        resamples=999,
        metrics=["kl"],
        conditions={"baseline": [], "patch": iv.patch("kv", "{source}", blocks=[0], positions="{bound}")},
    )
    result = run_experiment(exp, model=tiny_qwen2)
    frame = result.frame()
    assert set(frame["condition"]) == {"baseline", "patch"}
    patch = frame[frame["condition"] == "patch"]
    assert patch["noop"].tolist() == [True] + [False] * (len(data) - 1)
    assert patch["value"].iloc[0] == 0.0
    assert result.summary["conditions"]["patch"]["kl"]["noop_items"] == 1


def test_batch_dependent_edits_are_refused():
    with pytest.raises(ExperimentError, match="average over whichever rows share a batch"):
        Experiment(dataset=rows(), conditions={"mean": iv.mean("attn_out", blocks=1)})
    with pytest.raises(ExperimentError, match="names one metric twice"):
        Experiment(dataset=rows(), metrics=["kl", "kl"])
    with pytest.raises(ExperimentError, match="sweeps positions: list them"):
        Grid("g", iv.zero("resid_pre"), over=("block", "position"))
    with pytest.raises(ExperimentError, match="all empty"):
        Experiment(dataset=rows(), conditions={"a": [], "b": None})
