"""Models placed by a device map (accelerate's hooks on every module, here all on the CPU): the same logits,
probes, sweeps and experiment results as the model on one device; the fast sweep engine refuses a model
split over several devices and the sweep falls back with a warning; placement errors are one line."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from workbench import interventions as iv
from workbench.errors import ModelSpecError, SweepError
from workbench.experiments import Experiment, run_experiment
from workbench.models import Model, load_model
from workbench.probes import ActivationPatch, AttentionCapture, AttentionMask, BlockReplacement, LogitLens
from workbench.run import hook_count, run
from workbench.sweeps import intervention_sweep, patch_sweep

from .helpers import rows

PROMPT = "I'm generating a random number between [0, 9]. The number is "
SOURCE = "I'm generating a random number between [0, 5]. The number is "
CPU_MAP = {
    "model.embed_tokens": "cpu",
    **{f"model.layers.{i}": "cpu" for i in range(4)},
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "cpu",
}


@pytest.fixture(scope="module")
def mapped():
    return load_model("tiny-qwen2", device_map=CPU_MAP)


def test_a_device_map_places_every_module_and_changes_no_logit(mapped, tiny_qwen2):
    hf = mapped.bridge.original_model
    assert hf.hf_device_map == CPU_MAP and mapped.facts.devices == ("cpu",) and mapped.facts.device == "cpu"
    assert all(hasattr(layer, "_hf_hook") for layer in hf.model.layers)  # accelerate moves tensors per module
    tokens = tiny_qwen2.to_tokens(PROMPT)
    torch.testing.assert_close(mapped.logits(tokens), tiny_qwen2.logits(tokens), atol=1e-6, rtol=0)
    assert load_model("tiny-qwen2", device_map="auto").facts.devices == ("cpu",)


def test_probes_and_interventions_agree_with_one_device(mapped, tiny_qwen2):
    def probes():
        return [
            LogitLens(k=3),
            AttentionCapture(blocks=[0, 3]),
            BlockReplacement(blocks=1),
            AttentionMask(keys="9", blocks=[2, 3]),
            ActivationPatch(source=SOURCE, site="kv", blocks=[0, 1]),
        ]

    split = run(mapped, PROMPT, probes(), separate=True, targets=["5", "9"])
    single = run(tiny_qwen2, PROMPT, probes(), separate=True, targets=["5", "9"])
    for name in ("block_replacement", "attention_mask", "patch"):
        torch.testing.assert_close(
            split.conditions[name].logits["intervened"], single.conditions[name].logits["intervened"], atol=1e-6, rtol=0
        )
    for name, array in (("logit_lens", "target_probs"), ("attention", "pattern")):
        torch.testing.assert_close(split[name][array].values, single[name][array].values, atol=1e-6, rtol=0)
    steer = iv.add("resid_pre", torch.ones(mapped.facts.d_model), blocks=2, coefficient=0.5)
    torch.testing.assert_close(
        run(mapped, PROMPT, steer).logits["intervened"],
        run(tiny_qwen2, PROMPT, steer).logits["intervened"],
        atol=1e-6,
        rtol=0,
    )
    assert hook_count(mapped) == 0


def test_an_experiment_on_a_mapped_model_equals_one_device(mapped, tiny_qwen2):
    def experiment():
        return Experiment(
            dataset=rows(bounds=("9",)),
            model="tiny-qwen2",
            resamples=999,
            metrics=["kl", "prob:{bound}"],
            conditions={
                "identity": iv.identity(1),
                "patch": iv.patch("kv", "{source}", blocks=[0], positions="{bound}"),
            },
        )

    a = run_experiment(experiment(), model=mapped).frame()
    b = run_experiment(experiment(), model=tiny_qwen2).frame()
    assert (a["value"] - b["value"]).abs().max() <= 1e-6
    sweep = patch_sweep(mapped, PROMPT, SOURCE, site="resid_pre", metric="kl")
    assert sweep.meta["method"] == "fast"  # one device: the engine runs
    torch.testing.assert_close(
        sweep["metric"].values,
        patch_sweep(tiny_qwen2, PROMPT, SOURCE, site="resid_pre", metric="kl")["metric"].values,
        atol=1e-5,
        rtol=0,
    )


def test_the_fast_engine_refuses_a_split_model_and_the_sweep_falls_back(tiny_qwen2):
    split = Model(bridge=tiny_qwen2.bridge, facts=dataclasses.replace(tiny_qwen2.facts, devices=("cuda:0", "cuda:1")))
    template = iv.scale("z", 0.0)
    with pytest.warns(RuntimeWarning, match="split over cuda:0, cuda:1"):
        fallback = intervention_sweep(split, PROMPT, template, over=("block", "head"), metric="kl")
    assert fallback.meta["method"] == "naive" and "split over" in fallback.meta["note"]
    naive = intervention_sweep(tiny_qwen2, PROMPT, template, over=("block", "head"), metric="kl", method="naive")
    torch.testing.assert_close(fallback["metric"].values, naive["metric"].values, atol=0, rtol=0)
    with pytest.raises(SweepError, match="refuses"):
        intervention_sweep(split, PROMPT, template, over=("block",), metric="kl", method="fast")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(device="cpu", device_map="auto"), "pass one of them"),
        (dict(n_devices=2), "this machine has"),
        (dict(device_map="everywhere"), "use one of auto, balanced"),
        (dict(max_memory={"cpu": "1GiB"}), "only applies to a split model"),
        (dict(device_map={"model.embed_tokens": "cpu"}), "does not fit tiny-qwen2"),
        (dict(device_map={**CPU_MAP, "lm_head": "disk"}), "Disk and meta offload are not supported"),
    ],
)
def test_placement_errors_are_one_line(kwargs, message):
    if kwargs.get("n_devices") and torch.cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs")
    with pytest.raises(ModelSpecError, match=message) as info:
        load_model("tiny-qwen2", **kwargs)
    assert "\n" not in str(info.value)


def test_the_cli_passes_a_device_map_to_the_model(tmp_path, capsys):
    from workbench.cli import main

    from .test_resume import SMALL, make_spec

    spec = make_spec(tmp_path / "spec", SMALL.replace('device = "cpu"\n', ""))
    try:
        main(["experiment", "run", str(spec), "--out", str(tmp_path / "out"), "--device-map", json.dumps(CPU_MAP)])
    except SystemExit as exc:
        assert not exc.code, capsys.readouterr().err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["model_options"]["device_map"] == CPU_MAP and manifest["model"]["device"] == "cpu"
