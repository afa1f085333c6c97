"""Toy next-token models whose distributions are known exactly, for the sampling tests."""

from __future__ import annotations

import pytest
import torch

from workbench.sampling import BigramModel


class FixedModel:
    """A next-token model that returns the same logits after any context: its law is known by construction.

    Vocabulary: the characters of ``alphabet``, one token each (digits are single tokens).
    """

    def __init__(self, logits, alphabet="0123456789;x"):
        self.alphabet = alphabet
        self.fixed = torch.as_tensor(logits, dtype=torch.float32)
        assert self.fixed.numel() == len(alphabet)
        self.name = "fixed"
        self.d_vocab = len(alphabet)
        self.eos_token_id = None

    def encode(self, text):
        return [self.alphabet.index(c) for c in text]

    def decode(self, ids):
        return "".join(self.alphabet[int(i)] for i in ids)

    def next_token_logits(self, tokens):
        return self.fixed.expand(tokens.shape[0], -1).clone()


@pytest.fixture
def skewed_digits():
    """P(digit d) ∝ 2^-d for d = 0…9 (conditional law known), plus 20 % mass on the non-digit 'x'."""
    weights = torch.tensor([2.0**-d for d in range(10)])
    weights = weights / weights.sum() * 0.8
    probs = torch.cat([weights, torch.tensor([0.0, 0.2])])
    return FixedModel(probs.log()), (weights / weights.sum()).tolist()


@pytest.fixture
def uniform_digits():
    return FixedModel(torch.tensor([0.0] * 10 + [float("-inf"), float("-inf")]))


@pytest.fixture
def counted_bigram():
    """After '=' the next token is 7 (3/5), 3 (1/5) or 1 (1/5); every digit is followed by ';'."""
    return BigramModel.from_text("=7;=7;=7;=3;=1;")
