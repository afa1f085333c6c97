"""Tuned lens on a tiny model: it improves on its linear start, and a resumed fit equals an uninterrupted one."""

from __future__ import annotations

import pytest
import torch

from workbench.errors import LensError
from workbench.lenses import Lens, TunedSettings, fit_lens

SETTINGS = TunedSettings(steps=6, tokens_per_step=128, checkpoint_every=2)


class Interrupt(Exception):
    pass


def stop_at(step: int):
    def callback(done: int, loss: float) -> None:
        if done == step:
            raise Interrupt

    return callback


def test_tuned_training_lowers_the_heldout_kl_of_its_linear_start(tiny_qwen2, tiny_corpus):
    lens = fit_lens(
        tiny_qwen2, tiny_corpus(tiny_qwen2), method="tuned", tuned=TunedSettings(steps=20, tokens_per_step=256)
    )
    linear, tuned = lens.header["linear_heldout_kl"], lens.header["heldout_kl"]["lens"]
    assert sum(tuned) < sum(linear)
    assert all(t <= lin + 1e-3 for t, lin in zip(tuned, linear, strict=True))
    assert lens.header["tuned"]["improved"] is True
    train = lens.header["tuned"]["train_kl"]
    assert len(train) == 20 and all(0 < kl < 10 for kl in train)  # per-batch KL: noisy, so only sane
    assert lens.weight[-1].abs().max() < 1e-6  # the last row keeps its exact linear solution, the identity


def test_resume_equals_an_uninterrupted_run(tiny_llama, tiny_corpus, tmp_path):
    corpus = tiny_corpus(tiny_llama, 2048)
    whole = fit_lens(tiny_llama, corpus, method="tuned", tuned=SETTINGS, out=tmp_path / "whole.lens")
    assert not (tmp_path / "whole.lens.ckpt").exists()  # removed once the lens is written
    out = tmp_path / "resumed.lens"
    with pytest.raises(Interrupt):
        fit_lens(tiny_llama, corpus, method="tuned", tuned=SETTINGS, out=out, callback=stop_at(3))
    assert (tmp_path / "resumed.lens.ckpt").is_file() and not out.exists()
    with pytest.raises(LensError, match="checkpoint already exists"):
        fit_lens(tiny_llama, corpus, method="tuned", tuned=SETTINGS, out=out)
    with pytest.raises(LensError, match="other settings"):
        fit_lens(
            tiny_llama,
            None,
            method="tuned",
            tuned=TunedSettings(steps=7, tokens_per_step=128, checkpoint_every=2),
            out=out,
            resume=True,
        )
    resumed = fit_lens(tiny_llama, None, method="tuned", tuned=SETTINGS, out=out, resume=True)
    assert torch.equal(resumed.weight, whole.weight) and torch.equal(resumed.bias, whole.bias)
    assert resumed.header["tuned"]["train_kl"] == whole.header["tuned"]["train_kl"]
    assert resumed.header["heldout_kl"] == whole.header["heldout_kl"]
    assert torch.equal(Lens.load(out, tiny_llama).weight, whole.weight)


def test_resume_needs_a_checkpoint(tiny_llama, tmp_path):
    with pytest.raises(LensError, match="Nothing to resume"):
        fit_lens(tiny_llama, None, method="tuned", out=tmp_path / "x.lens", resume=True)
    with pytest.raises(LensError, match="Unknown optimizer"):
        fit_lens(tiny_llama, None, method="tuned", tuned=TunedSettings(optimizer="lbfgs"))
    with pytest.raises(LensError, match="Unknown lens method"):
        fit_lens(tiny_llama, None, method="exact")
