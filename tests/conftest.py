"""Shared fixtures: tiny in-process models (fast) and the real SmolLM2 model, loaded once per session;
plain-HF twins of them; and, after every test, a check that each model it used has no hook left."""

from __future__ import annotations

import pytest
import torch

from workbench.models import load_model
from workbench.run import hook_count

PROMPT = "I'm generating a random number between [0, 9]. The number is "


@pytest.fixture(scope="session")
def tiny_qwen2():
    return load_model("tiny-qwen2")


@pytest.fixture(scope="session")
def tiny_llama():
    return load_model("tiny-llama")


@pytest.fixture(scope="session", params=["tiny-qwen2", "tiny-llama"])
def tiny_model(request):
    return load_model(request.param)


@pytest.fixture(scope="session")
def smollm2():
    return load_model("smollm2")


MODEL_FIXTURES = ("tiny_model", "tiny_qwen2", "tiny_llama", "smollm2")
_reference_logits: dict[str, torch.Tensor] = {}


def _twin(model):
    """A second copy of ``model``'s weights as a plain transformers model (eager attention)."""
    name = model.facts.name
    if name.startswith("tiny-"):
        from workbench.tiny import build_tiny_model

        hf, _ = build_tiny_model(name)
    else:
        from transformers import AutoModelForCausalLM

        from workbench.models import gguf_cache_dir, smollm2_gguf_path

        gguf = smollm2_gguf_path()
        folder = gguf_cache_dir(gguf, torch.float32)
        if (folder / "done.json").is_file():  # the de-quantized copy the smollm2 fixture wrote
            hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        else:
            hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    hf.set_attn_implementation("eager")
    return hf.eval()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny matrices gain nothing from threads, and on a shared 2-core machine threads spin: 10× slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def hf_twins():
    """``twin(model)``: the plain-HF copy of a model, built once per session."""
    cache = {}

    def twin(model):
        if model.facts.name not in cache:
            cache[model.facts.name] = _twin(model)
        return cache[model.facts.name]

    return twin


@pytest.fixture(autouse=True)
def model_left_clean(request):
    """Every test leaves every model it used without hooks, and tiny models give the same logits as before."""
    yield
    for fixture in MODEL_FIXTURES:
        if fixture not in request.fixturenames:
            continue
        model = request.getfixturevalue(fixture)
        assert hook_count(model) == 0, f"{fixture}: hooks left on the bridge after {request.node.name}"
        if model.facts.name.startswith("tiny-"):
            with torch.no_grad():
                logits = model.bridge(model.to_tokens(PROMPT))
            reference = _reference_logits.setdefault(model.facts.name, logits)
            assert torch.equal(logits, reference), f"{fixture}: logits changed after {request.node.name}"


# CI prints where its time goes: seconds per test folder (setup, call and teardown of every test in it) and the
# slowest tests, so a suite that grows past its budget shows which part grew.
_folder_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report):
    parts = report.nodeid.split("/")
    folder = parts[1] if len(parts) > 2 and parts[0] == "tests" else parts[0].split("::")[0]
    _folder_seconds[folder] = _folder_seconds.get(folder, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if not _folder_seconds:
        return
    terminalreporter.section("time per test folder")
    for folder, seconds in sorted(_folder_seconds.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"{seconds:8.1f} s  tests/{folder}")
    terminalreporter.write_line(f"{sum(_folder_seconds.values()):8.1f} s  in all")
