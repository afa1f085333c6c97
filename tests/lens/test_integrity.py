"""Lens files verify themselves: the header records a SHA-256 of each tensor (checked on load, so a flipped
bit is refused, not read), a fingerprint of the fitted model is required, NaN/inf weights are refused at
save and at load, and a tampered header is one LensError — never an internal error."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from workbench.errors import LensError
from workbench.lenses import Lens
from workbench.lenses.lens import HEADER_KEY, LENS_FORMAT


def safetensors_parts(path):
    """(header JSON, offset of the tensor data) of a safetensors file, read by hand (its documented layout:
    an 8-byte little-endian length, that many bytes of JSON, then the raw tensor bytes)."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), 8 + length


def write_lens(path, weight, bias, header):
    """A lens file written without Lens.save: as an older workbench or a hand-edited file would be."""
    save_file({"weight": weight, "bias": bias}, str(path), metadata={HEADER_KEY: json.dumps(header)})
    return path


def test_the_header_records_each_tensors_sha256(tiny_qwen2, tmp_path):
    lens = Lens.identity(tiny_qwen2)
    path = lens.save(tmp_path / "id.lens")
    meta, data_start = safetensors_parts(path)
    header = json.loads(meta["__metadata__"][HEADER_KEY])
    raw = path.read_bytes()
    for name in ("weight", "bias"):
        begin, end = meta[name]["data_offsets"]
        tensor = getattr(lens, name)
        # The recorded hash is over name-less dtype|shape|bytes (provenance.tensor_hash): recomputed here from
        # the file's own bytes with hashlib, not through the workbench.
        digest = hashlib.sha256(f"|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(raw[data_start + begin : data_start + end])
        assert header["tensors"][name] == digest.hexdigest()
    assert Lens.load(path, tiny_qwen2).header["tensors"] == header["tensors"]


def test_a_flipped_bit_in_a_tensor_is_refused(tiny_qwen2, tmp_path):
    lens = Lens.identity(tiny_qwen2)
    lens.bias[3, 5] = 0.25  # a lens that is not all zeros, so the flipped bit changes a value that matters
    path = lens.save(tmp_path / "flip.lens")
    meta, data_start = safetensors_parts(path)
    raw = bytearray(path.read_bytes())
    begin, _ = meta["bias"]["data_offsets"]
    raw[data_start + begin + 4 * (3 * tiny_qwen2.facts.d_model + 5) + 1] ^= 0x01  # one mantissa bit of bias[3, 5]
    path.write_bytes(bytes(raw))
    with pytest.raises(LensError, match=r"bias tensor\(s\) do not match the SHA-256") as info:
        Lens.load(path, tiny_qwen2)
    assert "\n" not in str(info.value)


def test_a_lens_without_a_fingerprint_is_refused(tiny_qwen2, tmp_path):
    lens = Lens.identity(tiny_qwen2)
    header = {"format": LENS_FORMAT, **lens.header}
    del header["fingerprint"]
    path = write_lens(tmp_path / "old.lens", lens.weight, lens.bias, header)
    with pytest.raises(LensError, match="no valid fingerprint.*fit it again"):
        Lens.load(path, tiny_qwen2)
    with pytest.raises(LensError, match="no valid fingerprint"):
        Lens.load(path)  # without a model too: the file could never be checked
    bare = Lens(lens.weight, lens.bias)  # built in code, no header
    with pytest.raises(LensError, match="no fingerprint of the model"):
        bare.check_model(tiny_qwen2)
    with pytest.raises(LensError, match="no model fingerprint"):
        bare.save(tmp_path / "bare.lens")
    assert not (tmp_path / "bare.lens").exists()
    # The file is still recognised as the workbench's own: a refit may write over it.
    Lens.identity(tiny_qwen2).save(path)
    Lens.load(path, tiny_qwen2)


def test_a_lens_written_before_tensor_hashes_still_loads(tiny_qwen2, tmp_path):
    lens = Lens.identity(tiny_qwen2)
    path = write_lens(tmp_path / "older.lens", lens.weight, lens.bias, {"format": LENS_FORMAT, **lens.header})
    loaded = Lens.load(path, tiny_qwen2)
    assert torch.equal(loaded.weight, lens.weight) and "tensors" not in loaded.header


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_at_save_and_at_load(tiny_qwen2, tmp_path, value):
    lens = Lens.identity(tiny_qwen2)
    lens.weight[1, 2, 3] = value
    with pytest.raises(LensError, match=r"1 NaN or infinite value\(s\) in its weight"):
        lens.save(tmp_path / "bad.lens")
    assert not (tmp_path / "bad.lens").exists() and not list(tmp_path.iterdir())
    path = write_lens(tmp_path / "old.lens", lens.weight, lens.bias, {"format": LENS_FORMAT, **lens.header})
    with pytest.raises(LensError, match=r"NaN or infinite value\(s\) in its weight"):
        Lens.load(path, tiny_qwen2)


TAMPERED = {
    "not JSON": "{not json",
    "a list": "[1, 2]",
    "model is text": {"model": "tiny-qwen2"},
    "fingerprint is a number": {"fingerprint": 5},
    "fingerprint is not a hash": {"fingerprint": {"sha256": "abc"}},
    "tensors is a list": {"tensors": ["x"]},
    "tensor hash edited": {"tensors": {"weight": "0" * 64, "bias": "0" * 64}},
    "heldout_kl is text": {"heldout_kl": "low"},
    "heldout_kl too short": {"heldout_kl": {"lens": [0.1], "logit": [0.2]}},
    "heldout_kl not numbers": {"heldout_kl": {"lens": "x"}},
    "method is a number": {"method": 3},
    "model name is a list": {"model": {"name": ["a"]}},
    "tokens is a list": {"tokens": [1]},
    "model has no spec": {"model": {"name": "tiny-qwen2"}},
    "fingerprint has no kind": {"fingerprint": {"sha256": "a" * 64}},
    "ridge alpha is text": {"ridge": {"alpha": "big"}},
    "ridge alpha holds true": {"ridge": {"alpha": [True]}},
    "tuned steps is text": {"tuned": {"steps": "many"}},
    "fit_seconds is text": {"fit_seconds": "slow"},
    "model is null": {"model": None},
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_a_tampered_header_is_one_lens_error(tiny_qwen2, tmp_path, case):
    lens = Lens.identity(tiny_qwen2)
    path = lens.save(tmp_path / "t.lens")
    header = json.loads(safetensors_parts(path)[0]["__metadata__"][HEADER_KEY])
    change = TAMPERED[case]
    text = change if isinstance(change, str) else json.dumps({**header, **change})
    save_file({"weight": lens.weight, "bias": lens.bias}, str(path), metadata={HEADER_KEY: text})
    with pytest.raises(LensError) as info:
        Lens.load(path, tiny_qwen2)
    assert "\n" not in str(info.value) and "fit it again" in str(info.value)
    with pytest.raises(LensError):  # what `workbench lens info` reads: refused before any field is printed
        Lens.load(path)


def test_lens_info_reads_every_field_a_good_header_has(tiny_qwen2, tiny_linear, tmp_path, capsys):
    """The schema covers what `workbench lens info` prints: a fitted lens passes it and prints."""
    from workbench.cli.lens import _print_lens

    path = tiny_linear(tiny_qwen2).save(tmp_path / "fitted.lens")
    _print_lens(Lens.load(path))
    out = capsys.readouterr().out
    assert "ridge α per layer" in out and "held-out KL" in out


def test_extra_or_missing_tensors_are_refused(tiny_qwen2, tmp_path):
    lens = Lens.identity(tiny_qwen2)
    header = {"format": LENS_FORMAT, **lens.header}
    path = tmp_path / "extra.lens"
    save_file(
        {"weight": lens.weight, "bias": lens.bias, "other": torch.zeros(1)},
        str(path),
        metadata={HEADER_KEY: json.dumps(header)},
    )
    with pytest.raises(LensError, match="not a lens' weight and bias"):
        Lens.load(path)
    save_file({"weight": lens.weight}, str(path), metadata={HEADER_KEY: json.dumps(header)})
    with pytest.raises(LensError, match="not a lens' weight and bias"):
        Lens.load(path)
