"""Results into xarray: the same dims, labels and values as the named arrays, for every probe's result."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from workbench import LogitLens, run
from workbench.errors import ExportError
from workbench.probes import ActivationPatch, AttentionCapture, AttentionMask, BlockReplacement
from workbench.results import Named, Result, to_jsonable

xr = pytest.importorskip("xarray")

PROMPT = "I'm generating a random number between [0, 9]. The number is "
SOURCE = PROMPT.replace("9]", "5]")


def assert_same(variable, array: Named, dims: tuple[str, ...] | None = None) -> None:
    """``variable`` holds exactly ``array``: values, dtype kind, dims (maybe renamed) and every label."""
    dims = dims or array.dims
    assert variable.dims == dims
    expected = array.numpy()
    assert variable.dtype.kind == expected.dtype.kind
    np.testing.assert_array_equal(variable.values, expected)
    for name, dim in zip(dims, array.dims, strict=True):
        assert variable.coords[name].values.tolist() == array.coords[dim]


def test_named_to_xarray_keeps_values_dims_and_labels():
    array = Named(
        torch.arange(24.0).reshape(2, 3, 4),
        ("prompt", "layer", "key"),
        {"layer": ["embeddings", "after block 0", "final"], "key": ["<s>", "9", "9", "]"]},
    )
    variable = array.to_xarray("lens")
    assert isinstance(variable, xr.DataArray) and variable.name == "lens"
    assert_same(variable, array)
    # labels work as xarray labels: the same selection two ways
    np.testing.assert_array_equal(variable.sel(layer="final").values, array.sel(layer="final").numpy())
    strings = Named(np.array([["a", "b"], ["c", "d"]], dtype=object), ("layer", "rank"))
    assert_same(strings.to_xarray(), strings)
    assert strings.to_xarray().values.tolist() == [["a", "b"], ["c", "d"]]


def test_every_probe_result_becomes_one_dataset(tiny_qwen2):
    observed = run(tiny_qwen2, PROMPT, [LogitLens(k=3), AttentionCapture(blocks=[1, 2]), BlockReplacement(blocks=[2])])
    edited = run(tiny_qwen2, PROMPT, [AttentionMask(keys="9"), ActivationPatch(source=SOURCE)])
    for result in [*observed.values(), *edited.values()]:
        dataset = result.to_xarray()
        assert isinstance(dataset, xr.Dataset) and set(dataset.data_vars) == set(result.arrays)
        for name, array in result.arrays.items():
            assert_same(dataset[name], array)  # these probes' arrays agree on shared dims: names stay
        assert dataset.attrs["probe"] == result.probe and dataset.attrs["model"] == result.model
        assert json.loads(dataset.attrs["prompts"]) == result.prompts
        assert json.loads(dataset.attrs["tokens"]) == result.tokens
        assert json.loads(dataset.attrs["meta"]) == json.loads(json.dumps(to_jsonable(result.meta)))


def test_the_dataset_agrees_with_to_dataframe(tiny_qwen2):
    lens = run(tiny_qwen2, PROMPT, LogitLens(k=3))["logit_lens"]
    ours = lens.to_dataframe("kl_to_final")
    theirs = lens.to_xarray()["kl_to_final"].to_dataframe().reset_index()
    for column in ("prompt", "layer", "position", "kl_to_final"):
        np.testing.assert_array_equal(theirs[column].to_numpy(), ours[column].to_numpy())


def test_arrays_that_disagree_on_a_dim_get_their_own(tiny_qwen2):
    a = Named(torch.rand(2, 3), ("block", "position"), {"block": [0, 1], "position": ["a", "b", "a"]})
    b = Named(np.array([["x", "y", "z"]]), ("block", "position"), {"block": [5], "position": ["a", "b", "a"]})
    c = Named(torch.rand(2), ("block",), {"block": [0, 1]})
    result = Result(probe="p", model="m", prompts=["q"], tokens=[["a", "b", "a"]], arrays={"a": a, "b": b, "c": c})
    dataset = result.to_xarray()
    assert set(dataset.dims) == {"a.block", "b.block", "c.block", "position"}
    assert_same(dataset["a"], a, ("a.block", "position"))
    assert_same(dataset["b"], b, ("b.block", "position"))
    assert_same(dataset["c"], c, ("c.block",))


def test_a_dataset_with_strings_and_a_nan_survives_netcdf(tiny_qwen2, tmp_path):
    dataset = run(tiny_qwen2, PROMPT, LogitLens(k=3))["logit_lens"].to_xarray()
    dataset["kl_to_final"][0, 0, 0] = np.nan
    path = tmp_path / "lens.nc"
    dataset.to_netcdf(path, engine="scipy")
    with xr.open_dataset(path, engine="scipy") as back:
        xr.testing.assert_identical(back.load(), dataset)


@pytest.mark.real
def test_real_logit_lens_dataset_selects_like_the_result(smollm2):
    lens = run(smollm2, PROMPT, LogitLens(positions=[-1]), targets=[str(d) for d in range(10)])["logit_lens"]
    dataset = lens.to_xarray()
    final = dataset["target_probs"].sel(layer="final", prompt=0).squeeze("position")
    expected = lens["target_probs"].sel(layer="final", prompt=0).numpy()[0]
    np.testing.assert_array_equal(final.values, expected)
    assert final.coords["target"].values.tolist() == [str(d) for d in range(10)]
    assert pd.Index(dataset.coords["layer"].values).equals(pd.Index(lens["target_probs"].coords["layer"]))


def test_without_xarray_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "xarray", None)
    with pytest.raises(ExportError, match=r"pip install 'workbench\[xarray\]'"):
        Named(torch.zeros(2), ("layer",)).to_xarray()
