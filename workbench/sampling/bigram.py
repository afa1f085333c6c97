"""A bigram (first-order Markov chain) language model: P(next | previous token) from pair counts.

The simplest next-token model, and the classic contrast to a transformer: its context window is one
token, so "between [0, 9]. The number is " is, to it, just "what follows a space". It satisfies
:class:`~workbench.sampling.lm.NextTokenModel`, so samplers, generation, monitors and the randomness
audit run on it unchanged.

Tokens are either words (a regex: single digits, letter runs, whitespace runs, single punctuation
marks) or, with ``tokenizer=``, a real model's tokens, which puts the bigram on the model's vocabulary.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int

from workbench.errors import SamplingError

WORD_PATTERN = re.compile(r"\d|[^\W\d]+|\s+|[^\w\s]")
UNK = "<unk>"
EOS = "<eos>"


class BigramModel:
    """Counts of token pairs turned into next-token logits ``log(count + alpha)``.

    A context never seen in the corpus falls back to the unigram distribution (so every prompt gets
    a distribution). ``alpha`` is add-α smoothing: 0 keeps unseen pairs at probability 0 (logit −inf).
    """

    def __init__(
        self,
        pair_counts: dict[int, Counter],
        unigram_counts: Counter,
        vocab: list[str] | None = None,
        tokenizer: Any = None,
        alpha: float = 0.0,
        name: str = "bigram",
        eos_token_id: int | None = None,
    ):
        if alpha < 0 or not math.isfinite(alpha):
            raise SamplingError(f"alpha is {alpha}: pass a finite add-α smoothing ≥ 0 (0 means none).")
        if vocab is None and tokenizer is None:
            raise SamplingError("A bigram needs a vocabulary or a tokenizer: build it with BigramModel.from_text(...).")
        self.pair_counts = pair_counts
        self.unigram_counts = unigram_counts
        self.vocab = vocab
        self.tokenizer = tokenizer
        self.alpha = float(alpha)
        self.name = name
        self.d_vocab = len(vocab) if vocab is not None else len(tokenizer)
        self.eos_token_id = eos_token_id
        self._index = {t: i for i, t in enumerate(vocab)} if vocab is not None else None
        self._unigram = self._row(unigram_counts)

    @classmethod
    def from_text(
        cls, corpus: str | Iterable[str], tokenizer: Any = None, alpha: float = 0.0, name: str | None = None
    ) -> BigramModel:
        """Count pairs in ``corpus`` (a string, or lines/documents each ending in an end-of-text token)."""
        documents = [corpus] if isinstance(corpus, str) else list(corpus)
        if not any(d.strip() for d in documents):
            raise SamplingError("The corpus is empty: pass some text to count token pairs in.")
        if tokenizer is None:
            words = sorted({w for d in documents for w in WORD_PATTERN.findall(d)} | set("0123456789"))
            vocab = [UNK, EOS, *words]
            index = {w: i for i, w in enumerate(vocab)}
            encoded = [[index[w] for w in WORD_PATTERN.findall(d)] for d in documents]
            eos = index[EOS]
        else:
            vocab = None
            encoded = [list(tokenizer.encode(d, add_special_tokens=False)) for d in documents]
            eos = tokenizer.eos_token_id
        pairs: dict[int, Counter] = defaultdict(Counter)
        unigrams: Counter = Counter()
        for ids in encoded:
            seq = ids + ([eos] if eos is not None and len(documents) > 1 else [])
            unigrams.update(seq)
            for a, b in zip(seq, seq[1:], strict=False):
                pairs[a][b] += 1
        label = name or ("bigram (words)" if tokenizer is None else "bigram (model tokens)")
        return cls(dict(pairs), unigrams, vocab=vocab, tokenizer=tokenizer, alpha=alpha, name=label, eos_token_id=eos)

    def encode(self, text: str) -> list[int]:
        return self.encode_continuation(text)

    def encode_continuation(self, text: str) -> list[int]:
        if self.tokenizer is not None:
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        assert self._index is not None, "__init__ refuses a bigram with neither a tokenizer nor a vocabulary"
        return [self._index.get(w, 0) for w in WORD_PATTERN.findall(text)]

    def decode(self, ids: Sequence[int]) -> str:
        if self.tokenizer is not None:
            return self.tokenizer.decode(list(ids))
        vocab = self.vocab
        assert vocab is not None, "__init__ refuses a bigram with neither a tokenizer nor a vocabulary"
        return "".join("" if i in (0, 1) else vocab[i] for i in (int(x) for x in ids))

    def _row(self, counts: Counter) -> Float[torch.Tensor, " vocab"]:
        row = torch.full((self.d_vocab,), self.alpha, dtype=torch.float64)
        if counts:
            ids = torch.tensor(list(counts.keys()), dtype=torch.long)
            row[ids] += torch.tensor(list(counts.values()), dtype=torch.float64)
        return row.log().float()

    def next_token_logits(self, tokens: Int[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "batch vocab"]:
        """log(count(previous, next) + α) for the last token of every row (unigram if never seen)."""
        last = torch.as_tensor(tokens).reshape(-1, torch.as_tensor(tokens).shape[-1])[:, -1].tolist()
        rows = [self._row(self.pair_counts[t]) if t in self.pair_counts else self._unigram for t in last]
        return torch.stack(rows)

    def probs(self, previous: int) -> Float[torch.Tensor, " vocab"]:
        return self.next_token_logits(torch.tensor([[previous]]))[0].softmax(dim=-1)

    @property
    def n_pairs(self) -> int:
        return sum(sum(c.values()) for c in self.pair_counts.values())

    def __repr__(self) -> str:
        return (
            f"BigramModel({self.name!r}: vocab {self.d_vocab}, {len(self.pair_counts)} contexts, "
            f"{self.n_pairs} pairs, α={self.alpha:g})"
        )
