"""Fixtures for the lens tests: a fixed text corpus, lenses fitted once per module, a clean model after each test."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from workbench.lenses import corpus_from_text, fit_lens
from workbench.run import hook_count

PROMPT = "I'm generating a random number between [0, 9]. The number is "
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "his",
    "her",
    "it",
    "an",
    "are",
    "were",
    "this",
    "which",
    "be",
    "or",
    "had",
    "not",
    "but",
    "have",
    "one",
    "all",
    "their",
    "they",
    "there",
    "been",
    "has",
    "new",
    "more",
    "two",
    "also",
    "who",
    "when",
    "would",
    "after",
    "first",
    "into",
    "other",
    "time",
    "only",
    "its",
    "can",
    "about",
    "over",
    "these",
    "may",
    "some",
    "out",
    "than",
    "most",
    "number",
    "random",
    "between",
    "seven",
    "nine",
    "three",
    "five",
]
DOCS = Path(__file__).resolve().parents[2] / "docs"


def word_text(n_words: int = 12000, seed: int = 0) -> str:
    """Seeded word salad: enough varied tokens for the tiny models, the same on every machine."""
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def docs_text() -> str:
    """English prose for the real model: this repository's own documentation."""
    return "\n\n".join(path.read_text(encoding="utf-8") for path in sorted(DOCS.rglob("*.md")))


@pytest.fixture(scope="session")
def words_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "words.txt"
    path.write_text(word_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_corpus():
    """``corpus(model, tokens)``: the word text cut into rows for ``model``."""
    return lambda model, tokens=3072: corpus_from_text(model, word_text(), tokens=tokens, source="words")


@pytest.fixture(scope="session")
def tiny_linear(tiny_corpus):
    """``lens(model)``: a linear lens per tiny model, fitted once per session."""
    cache = {}

    def lens(model):
        if model.facts.name not in cache:
            cache[model.facts.name] = fit_lens(model, tiny_corpus(model), method="linear")
        return cache[model.facts.name]

    return lens


@pytest.fixture(autouse=True)
def model_left_clean(request):
    """Every test leaves its models without hooks and with their parameters' requires_grad as before."""
    models = [
        request.getfixturevalue(name)
        for name in ("tiny_model", "tiny_qwen2", "tiny_llama", "smollm2")
        if name in request.fixturenames
    ]
    before = [[p.requires_grad for p in m.bridge.parameters()] for m in models]
    yield
    for model, flags in zip(models, before, strict=True):
        assert hook_count(model) == 0, f"hooks left on {model.facts.name} after {request.node.name}"
        assert [p.requires_grad for p in model.bridge.parameters()] == flags, "requires_grad changed"
