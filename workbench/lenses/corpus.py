"""The text a lens is fitted on: a user's file, or text sampled from the model itself with a fixed seed.

Either way it becomes equal-length token rows (each starting with the model's BOS when it prepends one),
and a :class:`Corpus` says where they came from and hashes exactly the tokens used, so a lens records its
data. Sampling is the default because it needs nothing but the model, and the model's own text is the
distribution the tuned-lens paper trains on when no dataset is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from tqdm.auto import tqdm

from workbench.errors import LensError
from workbench.memory import require_within_budget, rows_per_batch
from workbench.provenance import sha256_file, tensor_hash, text_hash

FILE_ROW_TOKENS = 128  # tokens per row cut from a file
SAMPLED_ROW_TOKENS = 64  # tokens per sampled row
SAMPLE_BLOCK_ROWS = 64  # rows drawn together, each block with its own derived seed (same text on any machine)


@dataclass(frozen=True)
class Corpus:
    """Token rows plus where they came from (``source``) and a hash of exactly these tokens."""

    rows: Int[torch.Tensor, "row pos"]
    source: str
    settings: dict[str, Any]

    @property
    def n_tokens(self) -> int:
        return int(self.rows.numel())

    @property
    def sha256(self) -> str:
        return tensor_hash(self.rows.to(torch.int64))

    def split(self, fractions: tuple[float, ...], seed: int = 0) -> list[Int[torch.Tensor, "row pos"]]:
        """Rows shuffled with ``seed`` and cut in parts of about the given fractions, each at least one row
        (the first part takes what the others leave)."""
        n = self.rows.shape[0]
        counts = [max(1, round(fraction * n)) for fraction in fractions[1:]]
        if n - sum(counts) < 1:
            raise LensError(
                f"{self.source} has {n} rows, too few to split into {len(fractions)} parts: "
                "pass a longer corpus or more tokens."
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        parts, begin = [], 0
        for count in [n - sum(counts), *counts]:
            parts.append(self.rows[order[begin : begin + count]])
            begin += count
        return parts

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "sha256": self.sha256,
            "rows": int(self.rows.shape[0]),
            "row_tokens": int(self.rows.shape[1]),
            "tokens": self.n_tokens,
            **self.settings,
        }


def start_token(model) -> int:
    """The token every row starts with: BOS, or the document separator (EOS) of models without one."""
    tokenizer = model.tokenizer
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise LensError(
        f"{model.facts.name}'s tokenizer has neither a BOS nor an EOS token to start sampled text: "
        "pass a text file with --corpus."
    )


def corpus_from_text(
    model,
    text: str,
    *,
    tokens: int,
    source: str,
    row_tokens: int = FILE_ROW_TOKENS,
    settings: dict[str, Any] | None = None,
) -> Corpus:
    """Cut ``text`` into rows of ``row_tokens`` (BOS first when the model prepends one), up to ``tokens`` in all."""
    if row_tokens < 2:
        raise LensError(f"Rows of {row_tokens} tokens are too short for a lens: use at least 2.")
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    head = (
        [int(model.tokenizer.bos_token_id)]
        if model.facts.prepend_bos and model.tokenizer.bos_token_id is not None
        else []
    )
    body = row_tokens - len(head)
    n_rows = min(len(ids) // body, math.ceil(tokens / row_tokens))
    if n_rows < 3:
        raise LensError(
            f"{source} holds {len(ids)} tokens, {3 * body} at least are needed (three rows of "
            f"{row_tokens}, to train, validate and test): pass a longer text."
        )
    rows = torch.tensor([head + ids[i * body : (i + 1) * body] for i in range(n_rows)], dtype=torch.long)
    return Corpus(rows=rows, source=source, settings=settings or {})


def corpus_from_file(model, path: str | Path, *, tokens: int, row_tokens: int = FILE_ROW_TOKENS) -> Corpus:
    """A UTF-8 text file as corpus; the lens records its path and SHA-256."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LensError(
            f"No corpus file at {path}: pass a UTF-8 text file, or leave --corpus out to sample text from the model."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LensError(f"{path} is not UTF-8 text (byte {exc.start}): convert it or pass another file.") from None
    return corpus_from_text(
        model,
        text,
        tokens=tokens,
        source=f"file:{path.resolve()}",
        row_tokens=row_tokens,
        settings={"file_sha256": sha256_file(path)},
    )


def block_seed(seed: int, block: int) -> int:
    """An independent seed for each block of sampled rows, the same on every machine."""
    return int(text_hash(f"workbench.lenses.corpus:{seed}:{block}")[:12], 16)


def sample_corpus(
    model,
    *,
    tokens: int,
    seed: int = 0,
    row_tokens: int = SAMPLED_ROW_TOKENS,
    temperature: float = 1.0,
    progress: bool = False,
) -> Corpus:
    """Text sampled from the model at ``temperature``: rows of ``row_tokens`` from its start token.

    Each token is drawn by a seeded :func:`workbench.sampling.make_sampler` from the model's next-token
    logits, read with a key/value cache by a plain transformers copy sharing the model's weights (checked
    against the bridge's logits first): :func:`workbench.sampling.generate` reruns the whole prefix at
    every step, ~30× the cost for rows of 64 tokens, and is the fallback when no such copy can be made.
    Rows are drawn :data:`SAMPLE_BLOCK_ROWS` at a time, each block seeded from ``seed`` and its index,
    so the corpus does not depend on the machine's memory.
    """
    from workbench.sampling import make_sampler

    if row_tokens < 2:
        raise LensError(f"Rows of {row_tokens} tokens are too short for a lens: use at least 2.")
    n_rows = max(3, math.ceil(tokens / row_tokens))
    new_tokens = row_tokens - 1
    f = model.facts
    # One step's logits and sampler work per row, plus the rows' key/value cache (at most d_model per layer).
    per_block = SAMPLE_BLOCK_ROWS * (f.d_vocab * 4 * 4 + row_tokens * f.n_layers * 2 * f.d_model * 4)
    require_within_budget(
        per_block, f"Sampling {SAMPLE_BLOCK_ROWS} rows of {row_tokens} tokens", "sample shorter rows", model.device
    )
    start = torch.full((1, 1), start_token(model), dtype=torch.long, device=model.device)
    plain = kv_copy(model, start)
    blocks = []
    with tqdm(total=n_rows, desc="sampling corpus", unit="row", disable=not progress, leave=False) as bar:
        for block, begin in enumerate(range(0, n_rows, SAMPLE_BLOCK_ROWS)):
            count = min(SAMPLE_BLOCK_ROWS, n_rows - begin)
            sampler = make_sampler(temperature=temperature, seed=block_seed(seed, block))
            prompt = start.expand(count, 1)
            blocks.append(
                (
                    sample_with_cache(plain, prompt, new_tokens, sampler)
                    if plain is not None
                    else _sample_with_generate(model, prompt, new_tokens, sampler)
                ).cpu()
            )
            bar.update(count)
    return Corpus(
        rows=torch.cat(blocks),
        source=f"sampled from the model (seed {seed}, temperature {temperature:g})",
        settings={
            "seed": seed,
            "temperature": temperature,
            "row_tokens": row_tokens,
            "sampling": "kv-cache copy" if plain is not None else "generate",
        },
    )


def _sample_with_generate(model, prompt, new_tokens: int, sampler) -> Int[torch.Tensor, "row pos"]:
    from workbench.sampling import generate

    per_row = prompt.shape[1] + new_tokens
    rows = rows_per_batch(per_row * model.facts.d_vocab * 4 * 2, model.device)  # every position's logits, each step
    out = generate(model, prompt, sampler, max_new_tokens=new_tokens, stop_at_eos=False, batch_size=rows)
    return torch.cat([out.prompt_tokens, out.tokens], dim=1)


def kv_copy(model, check: Int[torch.Tensor, "batch pos"]):
    """A plain transformers model sharing ``model``'s weights, for KV-cached sampling; None if none can be made.

    The bridge wraps each HF module in place (its ``_original_component``) and its own cached forward does
    not update the cache, so generation through it needs the full prefix each step. The copy is a fresh
    module of the same class whose parameters are the bridge's tensors (no new memory), used only if its
    logits equal the bridge's on ``check`` (to 1e-4 of their scale).
    """
    hf = model.bridge.original_model
    try:
        weights: dict[str, torch.Tensor] = {}
        for name, tensor in hf.state_dict().items():
            weights.setdefault(name.replace("._original_component", ""), tensor)
        plain = type(hf)(hf.config)
        plain.load_state_dict({name: weights[name] for name in plain.state_dict()}, assign=True, strict=True)
        plain.to(model.device).eval()
        with torch.no_grad():
            ours, theirs = plain(check).logits.float(), model.bridge(check).float()
    except Exception:  # any architecture or naming this does not cover: use generate
        return None
    if (ours - theirs).abs().max() > 1e-4 * theirs.abs().max().clamp_min(1.0):
        return None
    return plain


@torch.no_grad()
def sample_with_cache(
    plain, prompt: Int[torch.Tensor, "row pos"], new_tokens: int, sampler
) -> Int[torch.Tensor, "row longer"]:
    """``prompt`` continued by ``new_tokens`` drawn by ``sampler``, reading ``plain`` with its KV cache."""
    import inspect

    cache_kwarg = "cache" if "cache" in inspect.signature(type(plain).forward).parameters else "past_key_values"
    rows = prompt.clone()
    generators = sampler.sample_generators(range(rows.shape[0]), rows.device)  # row i: generate()'s sample i
    out = plain(rows, use_cache=True)
    for step in range(new_tokens):
        token = sampler.sample_rows(out.logits[:, -1].float(), input_ids=rows, generators=generators)
        rows = torch.cat([rows, token[:, None]], dim=1)
        if step + 1 < new_tokens:
            cache = out.get("cache", None)
            cache = out.get("past_key_values", None) if cache is None else cache
            out = plain(token[:, None], use_cache=True, **{cache_kwarg: cache})
    return rows


def make_corpus(
    model, corpus: str | Path | Corpus | None = None, *, tokens: int, seed: int = 0, progress: bool = False
) -> Corpus:
    """A corpus from a :class:`Corpus`, a text file path, or (``None``) sampled from the model."""
    if isinstance(corpus, Corpus):
        return corpus
    if corpus is None:
        return sample_corpus(model, tokens=tokens, seed=seed, progress=progress)
    return corpus_from_file(model, corpus, tokens=tokens)
