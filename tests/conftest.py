"""Shared fixtures: tiny in-process models (fast) and the real SmolLM2 model, loaded once per session."""
import pytest
from workbench.models import load_model

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
