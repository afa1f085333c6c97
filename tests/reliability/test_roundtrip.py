"""Results that reload: ``Result.save(x.json)`` → :func:`load_result` and :func:`save_run` → :func:`load_run`
give back equal objects of the same types: the class, every array's container, dtype, shape and
values (NaN and ±inf included), string and integer arrays, labels, metadata and the baseline.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from workbench import load_result, load_run, save_run
from workbench.errors import ExportError
from workbench.probes import ActivationPatch, AttentionCapture, AttentionMask, BlockReplacement, LogitLens
from workbench.results import Comparison, LazyArrays, Named, Result
from workbench.run import run
from workbench.serialization import INLINE_LIMIT, decode, encode

PROMPT = "I'm generating a random number between [0, 9]. The number is "
SOURCE = PROMPT.replace("[0, 9]", "[0, 5]")
PROBES = ["logit_lens", "attention", "block_replacement", "attention_mask", "patch"]


def assert_same_value(a, b, where="value"):
    """Equal and of the same types all the way down (NaN equals NaN)."""
    # arrays computed on first read (LazyArrays) compare as the dict they compute
    a, b = (dict(x) if isinstance(x, LazyArrays) else x for x in (a, b))
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or a == b, where
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_value(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same_value(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        if a.dtype.kind == "O":
            assert a.tolist() == b.tolist(), where
        else:
            np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and (a == b or (np.isnan(a) and np.isnan(b))), where
    elif isinstance(a, Named):
        assert a.dims == b.dims, where
        assert_same_value(a.coords, b.coords, f"{where}.coords")
        assert_same_value(a.values, b.values, f"{where}.values")
    elif isinstance(a, Result):
        assert_same_result(a, b, where)
    else:
        assert a == b, where


def assert_same_result(a: Result, b: Result, where: str = "result") -> None:
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    for field in dataclasses.fields(a):
        assert_same_value(getattr(a, field.name), getattr(b, field.name), f"{where}.{field.name}")


@pytest.fixture(scope="module")
def every_probe(tiny_qwen2):
    """Every built-in probe in one run (observers carry a clean baseline; interventions their before/after)."""
    return run(
        tiny_qwen2,
        PROMPT,
        [
            LogitLens(k=3),
            AttentionCapture(blocks=[0, 2]),
            BlockReplacement(blocks=[1]),
            AttentionMask(keys="9", blocks=[2, 3]),
            ActivationPatch(source=SOURCE, blocks=[1]),
        ],
    )


@pytest.mark.parametrize("probe", PROBES)
def test_every_built_in_result_round_trips_exactly(every_probe, probe, tmp_path):
    result = every_probe[probe]
    loaded = load_result(result.save(tmp_path / f"{probe}.json"))
    assert_same_result(result, loaded)
    if probe in ("logit_lens", "attention"):
        assert loaded.baseline is not None
    # The reloaded result still works: its summary and every figure are the same as the original's.
    assert loaded.summary() == result.summary()
    for key, fig in result.figures().items():
        assert loaded.figures()[key].to_json() == fig.to_json(), key


def test_what_the_arrays_hold_is_kept(every_probe, tmp_path):
    lens = load_result(every_probe["logit_lens"].save(tmp_path / "lens.json"))
    assert lens["top_tokens"].values.dtype.kind in "OU" and isinstance(lens["target_ranks"].values, torch.Tensor)
    assert lens["target_ranks"].values.dtype == torch.int64
    attention = load_result(every_probe["attention"].save(tmp_path / "attention.json"))
    assert attention.meta["head_to_group"] == every_probe["attention"].meta["head_to_group"]
    assert all(isinstance(k, int) for k in attention.meta["head_to_group"])  # int keys stay ints


def test_nan_and_infinities_come_back(tiny_qwen2, tmp_path):
    # A group mean over a group with no captured head is NaN.
    result = run(tiny_qwen2, PROMPT, AttentionCapture(blocks=[0], heads=[0]))["attention"]
    assert torch.isnan(result["group_mean"].values).any()
    result.arrays["extremes"] = Named(torch.tensor([[math.inf, -math.inf], [math.nan, 1.5]]), ("a", "b"))
    result.meta["worst"] = -math.inf
    path = result.save(tmp_path / "a.json")
    text = path.read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))  # strict JSON, readable anywhere
    assert json.loads(text)["arrays"]["group_mean"]["values"][0][0][1][0][0] is None  # NaN shows as null
    assert_same_result(result, load_result(path))


def test_every_kind_of_array_and_metadata(tmp_path):
    big = torch.randn(INLINE_LIMIT + 7)
    big[[3, 10, 40000]] = torch.tensor([math.nan, math.inf, -math.inf])
    arrays = {
        "float32": Named(torch.tensor([[0.1, 1e-30], [3.4e38, -0.0]]), ("x", "y"), {"x": ["a", "b"], "y": [0, 1]}),
        "int64": Named(torch.tensor([0, -5, 2**62]), ("i",)),
        "bool tensor": Named(torch.tensor([True, False]), ("flag",)),
        "float64 array": Named(np.array([1 / 3, math.nan]), ("i",)),
        "int8 array": Named(np.array([[-128, 127]], dtype=np.int8), ("a", "b")),
        "unicode": Named(np.array(["␣9", "é", ""]), ("token",)),
        "object strings": Named(np.array([["a", "bb"]], dtype=object), ("row", "rank")),
        "big with NaN": Named(big, ("i",)),
        "scalar": Named(torch.tensor(2.5), ()),
        "empty": Named(torch.zeros(0, 3), ("a", "b")),
    }
    meta = {
        "tuple": (1, "two", (3.0,)),
        "int keys": {0: "a", 5: [1, 2]},
        "nan": math.nan,
        "none": None,
        "numpy": np.float32(0.25),
        "tensor": torch.arange(3, dtype=torch.int32),
        "bf16": torch.tensor([1.5], dtype=torch.bfloat16),
        "nested": {"list": [{"__workbench__": "a user's own key"}]},
        "bool": True,
        "text": "ok",
    }
    result = Result(probe="custom", model="m", prompts=["p"], tokens=[["p"]], arrays=arrays, meta=meta)
    path = result.save(tmp_path / "custom.json")
    assert "data" in json.loads(path.read_text())["arrays"]["big with NaN"]  # base64 above INLINE_LIMIT
    assert_same_result(result, load_result(path))
    assert_same_value(decode(json.loads(json.dumps(encode(meta)))), meta)


def test_comparisons_and_sweeps_keep_their_class(every_probe, tiny_qwen2, tmp_path):
    from workbench.sweeps import block_sweep

    delta = every_probe["logit_lens"].compare(every_probe["logit_lens"].baseline)
    assert type(delta) is Comparison
    assert_same_result(delta, load_result(delta.save(tmp_path / "delta.json")))
    sweep = block_sweep(tiny_qwen2, PROMPT, modes=["identity"], metric="digits_above:5")
    loaded = load_result(sweep.save(tmp_path / "sweep.json"))
    assert_same_result(sweep, loaded)
    assert loaded.top_cells(3) == sweep.top_cells(3)


@dataclass(repr=False)
class NotebookResult(Result):
    """A subclass with a field of its own, as a user would write in a notebook."""

    note: str = "mine"


def test_a_subclass_with_its_own_field(tmp_path):
    result = NotebookResult(
        probe="nb", model="m", prompts=["p"], tokens=[["p"]], arrays={"x": Named(torch.ones(2), ("i",))}, note="kept"
    )
    loaded = load_result(result.save(tmp_path / "nb.json"))
    assert type(loaded) is NotebookResult and loaded.note == "kept"


def test_only_result_classes_are_accepted(tmp_path, capfd):
    result = Result(probe="x", model="m", prompts=["p"], tokens=[["p"]], arrays={"x": Named(torch.ones(1), ("i",))})
    path = result.save(tmp_path / "x.json")
    data = json.loads(path.read_text())
    for hostile in ("os:system", "builtins:dict", "subprocess:Popen"):
        path.write_text(json.dumps(data | {"class": hostile}))
        with pytest.raises(ExportError, match=f"The saved class {hostile} is not a workbench Result"):
            load_result(path)
    path.write_text(json.dumps(data | {"class": "some_uninstalled_package.results:Special"}))
    loaded = load_result(path)  # the numbers still load, as a plain Result, with one warning
    assert type(loaded) is Result and torch.equal(loaded["x"].values, torch.ones(1))
    assert "is not available: loaded as a plain Result" in capfd.readouterr().err
    import sys

    assert "some_uninstalled_package" not in sys.modules


def test_load_result_refuses_what_is_not_a_saved_result(every_probe, tmp_path):
    with pytest.raises(ExportError, match="No file at"):
        load_result(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(ExportError, match="is not valid JSON"):
        load_result(tmp_path / "bad.json")
    (tmp_path / "plain.json").write_text('{"probe": "x"}')
    with pytest.raises(ExportError, match="not written by this version of the workbench, not a saved result"):
        load_result(tmp_path / "plain.json")
    save_run(every_probe, tmp_path / "run.json")
    with pytest.raises(ExportError, match="is a workbench run file, not a saved result"):
        load_result(tmp_path / "run.json")
    with pytest.raises(ExportError, match="is a folder"):
        load_result(tmp_path)


def test_a_whole_run_round_trips(every_probe, tmp_path):
    loaded = load_run(save_run(every_probe, tmp_path / "run.json"))
    assert list(loaded) == list(every_probe)
    for name in every_probe:
        assert_same_result(every_probe[name], loaded[name], name)
    assert_same_value(every_probe.logits, loaded.logits, "logits")
    ctx, again = every_probe.context, loaded.context
    for field in ("prompts", "tokens", "str_tokens", "readout", "target_ids", "target_labels", "phase"):
        assert_same_value(getattr(ctx, field), getattr(again, field), field)
    assert again.facts == ctx.facts and again.model.bridge is None
    assert torch.equal(loaded.probs(), every_probe.probs())
    assert loaded.target_probs() == every_probe.target_probs()


@pytest.mark.real
def test_every_result_of_smollm2_round_trips(smollm2, tmp_path):
    out = run(
        smollm2,
        PROMPT,
        [
            LogitLens(),
            AttentionCapture(),
            BlockReplacement(blocks=[21]),
            AttentionMask(keys="9", blocks=list(range(13, 30))),
            ActivationPatch(source=SOURCE, blocks=[6, 14], positions="9"),
        ],
    )
    loaded = load_run(save_run(out, tmp_path / "run.json"))
    for name in out:
        assert_same_result(out[name], loaded[name], name)
        assert_same_result(out[name], load_result(out[name].save(tmp_path / f"{name}.json")), name)
    assert_same_value(out.logits, loaded.logits, "logits")


def test_every_result_class_in_the_package_is_registered():
    """Saved classes are looked up in a registry, never imported from the file: every Result subclass the
    workbench's source defines must be reachable from serialization.BUILT_IN_RESULT_MODULES."""
    import ast
    import importlib
    from pathlib import Path

    import workbench
    from workbench.serialization import class_key, result_classes

    package = Path(workbench.__file__).parent
    registered = result_classes()
    found = []
    for source in sorted(package.rglob("*.py")):
        module = ".".join(source.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.bases and module != "workbench.__main__":
                cls = getattr(importlib.import_module(module), node.name, None)
                if isinstance(cls, type) and issubclass(cls, Result):
                    found.append(class_key(cls))
    assert len(found) >= 8  # Result, Comparison, the probes' four, sweeps' two at least
    assert sorted(set(found) - set(registered)) == []
