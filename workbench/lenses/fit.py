"""Fitting a lens: ``linear`` (ridge regression in closed form) and ``tuned`` (the KL objective, from the linear start).

Both predict the last residual row ``y`` (after the last block, which the final norm and unembedding turn
into the output) from each row ``x``, through ``x + A x + b``.

**linear** (Din et al. 2023, "Jump to Conclusions", arXiv 2303.09435: linear shortcuts fitted by least
squares) minimises, per row, the mean of ``‖(I + A) x_t + b − y_t‖²`` over tokens plus ``λ ‖A‖²``: a ridge
that shrinks towards the identity, i.e. towards the logit lens, never towards zero. With means ``x̄, ȳ``
and covariances ``Σ_xx, Σ_xy`` the solution is ``Aᵀ = (Σ_xx + λ I)⁻¹ (Σ_xy − Σ_xx)`` and
``b = ȳ − x̄ − A x̄``; the last row has ``x = y`` and gets the identity. The moments are accumulated over
the corpus in float64, so memory does not grow with the token count. ``λ = α · tr(Σ_xx) / d`` with ``α``
chosen per row from :data:`RIDGE_GRID` by the KL on validation tokens (never the test tokens the lens
reports). Each row's first position is left out (see :func:`~workbench.lenses.collect.residual_batches`).

**tuned** (Belrose et al. 2023, "Eliciting Latent Predictions from Transformers with the Tuned Lens",
arXiv 2303.08112) minimises the mean ``KL(final ‖ lens_l)`` over tokens for every row, the output
distribution of the model itself as target (their default loss), with their optimiser: SGD with Nesterov
momentum 0.9, learning rate ``lr · (1 − 0.9)``, weight decay 1e-3 (towards the identity), gradient norm
clipped to 1, learning rate decayed linearly to 0; or Adam (amsgrad, lr 1e-3, linear warm-up over the
first fifth). Each step reads fresh corpus rows through the model, as the paper streams its data; a
checkpoint every ``checkpoint_every`` steps holds everything needed to resume bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from workbench.errors import LensError
from workbench.lenses.collect import collect_residuals, residual_batches, residual_stack
from workbench.lenses.corpus import Corpus, make_corpus
from workbench.lenses.lens import Lens, check_lens_path, kl_per_layer, model_header, unembed
from workbench.memory import require_within_budget, rows_per_batch
from workbench.outputs import write_through

RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
SPLIT = (0.8, 0.1, 0.1)  # train, validation (ridge choice), test (the KL a lens reports)
MAX_VALIDATION_TOKENS = 512
CHECKPOINT_FORMAT = "workbench.lens-checkpoint/1"
LENS_METHODS = ("linear", "tuned")


@dataclass(frozen=True)
class TunedSettings:
    """The tuned lens' optimisation (defaults: the paper's optimiser, a CPU-sized budget)."""

    steps: int = 100
    tokens_per_step: int = 256
    optimizer: str = "sgd"
    lr: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 1e-3
    clip: float = 1.0
    checkpoint_every: int = 10

    def validate(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise LensError(f"Unknown optimizer {self.optimizer!r}: use sgd (the paper's default) or adam.")
        for name in ("steps", "tokens_per_step", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise LensError(f"{name} is {getattr(self, name)}: pass a positive number.")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise LensError(f"lr is {self.lr}: pass a positive learning rate.")


@dataclass(frozen=True)
class Splits:
    """Corpus rows for fitting, choosing the ridge, and reporting held-out KL."""

    train: torch.Tensor
    validation: torch.Tensor
    test: torch.Tensor

    @classmethod
    def of(cls, corpus: Corpus, seed: int) -> Splits:
        return cls(*corpus.split(SPLIT, seed=seed))

    def tokens(self, skip_first: bool) -> dict[str, int]:
        return {
            name: int(rows.shape[0] * (rows.shape[1] - int(skip_first)))
            for name, rows in (("train", self.train), ("validation", self.validation), ("test", self.test))
        }


def fit_lens(
    model,
    corpus: str | Path | Corpus | None = None,
    *,
    method: str = "linear",
    tokens: int = 8192,
    seed: int = 0,
    tuned: TunedSettings | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    out: str | Path | None = None,
    progress: bool = False,
    callback: Callable[[int, float], None] | None = None,
    device: str | None = None,
) -> Lens:
    """Fit a lens on ``corpus`` (a text file, a :class:`Corpus`, or ``None``: text sampled from the model).

    ``method`` is ``linear`` or ``tuned`` (linear first, then the KL objective). ``tokens`` is the corpus
    size; ``seed`` fixes the sampled text and the train/validation/test split. A tuned fit writes
    ``checkpoint`` (default ``OUT.ckpt`` when ``out`` is given) and continues from it with ``resume``.
    ``out`` is checked before any work and written at the end. ``model`` is a loaded model or a spec
    (loaded on ``device`` after the checks; the lens then records the spec as given).
    """
    from workbench.models import load_model

    spec = model if isinstance(model, str) else None
    if method not in LENS_METHODS:
        raise LensError(f"Unknown lens method {method!r}: use linear or tuned.")
    if tokens < 16:
        raise LensError(f"--tokens {tokens} is too few to fit a lens: pass at least a few thousand.")
    out = check_lens_path(out) if out is not None else None
    settings = tuned or TunedSettings()
    ckpt: Path | None = None  # only a tuned fit has a checkpoint
    if method == "tuned":
        settings.validate()
        ckpt = Path(checkpoint) if checkpoint is not None else (Path(f"{out}.ckpt") if out else None)
        _check_checkpoint(ckpt, resume)
    model = load_model(model, device=device)
    started = time.perf_counter()
    state = None
    if method == "tuned" and resume:
        assert ckpt is not None, "_check_checkpoint refuses resume without a checkpoint"
        state = _read_checkpoint(ckpt, model)
    if state is not None:
        corpus = Corpus(rows=state["rows"], source=state["corpus"]["source"], settings=state["corpus_settings"])
        seed = int(state["seed"])
    else:
        corpus = make_corpus(model, corpus, tokens=tokens, seed=seed, progress=progress)
    splits = Splits.of(corpus, seed)
    header = {
        **model_header(model, spec),
        "corpus": corpus.to_dict(),
        "seed": seed,
        "tokens": splits.tokens(skip_first=True),
        "skip_first": True,
    }
    if state is not None:
        start = Lens(state["start_weight"], state["start_bias"], state["start_header"])
    else:
        start = fit_linear(model, splits, header=header, progress=progress)
    lens = start
    if method == "tuned":
        lens = fit_tuned(
            model,
            splits,
            start,
            settings,
            header=header,
            checkpoint=ckpt,
            state=state,
            corpus=corpus,
            seed=seed,
            progress=progress,
            callback=callback,
        )
    lens.header["fit_seconds"] = round(time.perf_counter() - started, 2)
    if out is not None:
        lens.save(out)
        if ckpt is not None:
            ckpt.unlink(missing_ok=True)
    return lens


# --- linear ----------------------------------------------------------------------------------------


@dataclass
class Moments:
    """Token count and first and second moments of every row ``x`` against the last row ``y``, in float64."""

    count: torch.Tensor
    sum_x: torch.Tensor
    sum_y: torch.Tensor
    sum_xx: torch.Tensor
    sum_xy: torch.Tensor

    @classmethod
    def zeros(cls, n_rows: int, d: int) -> Moments:
        z = torch.zeros
        return cls(
            z((), dtype=torch.float64),
            z(n_rows, d, dtype=torch.float64),
            z(d, dtype=torch.float64),
            z(n_rows, d, d, dtype=torch.float64),
            z(n_rows, d, d, dtype=torch.float64),
        )

    def add(self, stack: Float[torch.Tensor, "layer token d_model"]) -> None:
        x = stack.to("cpu", torch.float64)
        y = x[-1]
        self.count += x.shape[1]
        self.sum_x += x.sum(1)
        self.sum_y += y.sum(0)
        self.sum_xx += x.transpose(1, 2) @ x
        self.sum_xy += x.transpose(1, 2) @ y

    def solve(self, alphas: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """``A`` ``[alpha, layer, d, d]`` and ``b`` ``[alpha, layer, d]`` for every ridge strength (float64)."""
        n = self.count
        mean_x, mean_y = self.sum_x / n, self.sum_y / n
        cov_xx = self.sum_xx / n - mean_x[:, :, None] * mean_x[:, None, :]
        cov_xy = self.sum_xy / n - mean_x[:, :, None] * mean_y[None, None, :]
        cov_xx = (cov_xx + cov_xx.transpose(1, 2)) / 2
        target = cov_xy - cov_xx
        eigenvalues, vectors = torch.linalg.eigh(cov_xx)
        scale = eigenvalues.clamp_min(0).mean(-1)
        rotated = vectors.transpose(1, 2) @ target
        weights, biases = [], []
        for alpha in alphas:
            inverse = 1.0 / (eigenvalues.clamp_min(0) + alpha * scale[:, None] + 1e-30)
            a_t = vectors @ (inverse[:, :, None] * rotated)
            a = a_t.transpose(1, 2)
            weights.append(a)
            biases.append(mean_y[None] - mean_x - (a @ mean_x[:, :, None])[..., 0])
        return torch.stack(weights), torch.stack(biases)


def fit_linear(
    model,
    splits: Splits,
    *,
    header: dict[str, Any] | None = None,
    alphas: tuple[float, ...] = RIDGE_GRID,
    progress: bool = False,
) -> Lens:
    """Ridge regression of every row onto the last, ridge strength per row chosen by validation KL."""
    f = model.facts
    require_within_budget(
        2 * 8 * (f.n_layers + 1) * f.d_model**2,
        "The linear lens' moment matrices",
        "fit a lens on a smaller model or raise WORKBENCH_MEMORY_BUDGET",
        "cpu",
    )
    started = time.perf_counter()
    moments = Moments.zeros(f.n_layers + 1, f.d_model)
    for stack in residual_batches(
        model,
        splits.train,
        progress=progress,
        desc="linear lens: moments",
        extra_bytes_per_token=2 * 8 * (f.n_layers + 1) * f.d_model,
    ):
        moments.add(stack)
    weights, biases = moments.solve(alphas)
    validation = collect_residuals(
        model, _cap_rows(splits.validation, MAX_VALIDATION_TOKENS), progress=progress, desc="validation residuals"
    )
    kls = torch.stack(
        [
            kl_per_layer(model, validation, Lens(w.float(), b.float()))
            for w, b in tqdm(
                zip(weights, biases, strict=True),
                total=len(alphas),
                desc="ridge strength",
                disable=not progress,
                leave=False,
            )
        ]
    )
    best = kls.argmin(0)
    rows = torch.arange(f.n_layers + 1)
    lens = Lens(weights[best, rows].float(), biases[best, rows].float(), dict(header or model_header(model)))
    lens.header.update(
        method="linear",
        ridge={
            "alpha_grid": list(alphas),
            "alpha": [alphas[i] for i in best.tolist()],
            "validation_kl": kls.T.tolist(),
            "towards": "identity",
        },
        linear_seconds=round(time.perf_counter() - started, 2),
    )
    _record_heldout(model, lens, splits, progress)
    return lens


def _cap_rows(rows: torch.Tensor, max_tokens: int) -> torch.Tensor:
    return rows[: max(1, max_tokens // max(1, rows.shape[1] - 1))]


def _record_heldout(model, lens: Lens, splits: Splits, progress: bool) -> None:
    """Held-out KL per row on the test rows, for this lens and for the logit lens (same tokens)."""
    test = collect_residuals(model, splits.test, progress=progress, desc="test residuals")
    lens.header["heldout_kl"] = {
        "lens": kl_per_layer(model, test, lens).tolist(),
        "logit": kl_per_layer(model, test, None).tolist(),
    }


# --- tuned -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _frozen(module: torch.nn.Module):
    """The model's parameters take no gradient while the lens trains (restored afterwards)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def step_rows(train: torch.Tensor, step: int, rows_per_step: int, seed: int) -> torch.Tensor:
    """The training rows of ``step``: epochs of seeded permutations, read in order (the same on resume)."""
    n = train.shape[0]
    picked = []
    for index in range(step * rows_per_step, (step + 1) * rows_per_step):
        epoch, offset = divmod(index, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        picked.append(int(order[offset]))
    return train[picked]


def _optimizer(params: list[torch.Tensor], settings: TunedSettings):
    if settings.optimizer == "sgd":
        # torch's SGD momentum scales the step by 1 / (1 - β); the paper undoes it so lr = 1 is the natural unit.
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params,
            lr=settings.lr * (1 - settings.momentum),
            momentum=settings.momentum,
            nesterov=True,
            weight_decay=settings.weight_decay,
        )
        warmup = 0
    else:
        opt = torch.optim.Adam(
            params,
            lr=settings.lr * 1e-3,
            betas=(settings.momentum, 0.999),
            amsgrad=True,
            weight_decay=settings.weight_decay,
        )
        warmup = min(1000, settings.steps // 5)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (settings.steps - step) / max(1, settings.steps - warmup))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def fit_tuned(
    model,
    splits: Splits,
    start: Lens,
    settings: TunedSettings,
    *,
    header: dict[str, Any],
    checkpoint: Path | None = None,
    state: dict[str, Any] | None = None,
    corpus: Corpus | None = None,
    seed: int = 0,
    progress: bool = False,
    callback: Callable[[int, float], None] | None = None,
) -> Lens:
    """Train every row's translator but the last (exact already) on the mean KL to the output."""
    f = model.facts
    trained = list(range(f.n_layers))
    weights = [start.weight[i].clone().requires_grad_(True) for i in trained]
    biases = [start.bias[i].clone().requires_grad_(True) for i in trained]
    opt, scheduler = _optimizer(weights + biases, settings)
    row_tokens = splits.train.shape[1] - 1
    rows_per_step = max(1, math.ceil(settings.tokens_per_step / row_tokens))
    first_step, losses = 0, []
    if state is not None:
        _check_same_run(state, settings)
        with torch.no_grad():
            for i in trained:
                weights[i].copy_(state["weight"][i])
                biases[i].copy_(state["bias"][i])
        opt.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        first_step, losses = int(state["step"]), list(state["losses"])
    chunk = rows_per_batch(4 * 4 * f.d_vocab, model.device, cap=rows_per_step * row_tokens)
    started = time.perf_counter()
    bar = tqdm(
        total=settings.steps, initial=first_step, desc="tuned lens", unit="step", disable=not progress, leave=False
    )
    with _frozen(model.bridge):
        for step in range(first_step, settings.steps):
            stack = residual_stack(model, step_rows(splits.train, step, rows_per_step, seed))[:, :, 1:]
            stack = stack.reshape(stack.shape[0], -1, stack.shape[-1])
            opt.zero_grad(set_to_none=False)
            total = 0.0
            n_tokens = stack.shape[1]
            for begin in range(0, n_tokens, chunk):
                part = stack[:, begin : begin + chunk]
                with torch.no_grad():
                    target = unembed(model, part[-1]).log_softmax(-1)
                    p = target.exp()
                for i in trained:
                    h = part[i]
                    moved = (h + h @ weights[i].T + biases[i]).to(h.dtype)
                    logq = unembed(model, moved).log_softmax(-1)
                    loss = (p * (target - logq)).sum() / (n_tokens * len(trained))
                    loss.backward()
                    total += loss.item()
            torch.nn.utils.clip_grad_norm_(weights + biases, settings.clip)
            opt.step()
            scheduler.step()
            losses.append(total)
            bar.update(1)
            bar.set_postfix(kl=f"{total:.4f}")
            if callback is not None:
                callback(step + 1, total)
            if checkpoint is not None and ((step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.steps):
                _write_checkpoint(
                    checkpoint,
                    {
                        "format": CHECKPOINT_FORMAT,
                        "step": step + 1,
                        "losses": losses,
                        "seed": seed,
                        "settings": asdict(settings),
                        "fingerprint": header["fingerprint"]["sha256"],
                        "weight": torch.stack([w.detach() for w in weights]),
                        "bias": torch.stack([b.detach() for b in biases]),
                        "optimizer": opt.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "start_weight": start.weight,
                        "start_bias": start.bias,
                        "start_header": start.header,
                        "rows": corpus.rows if corpus is not None else splits.train,
                        "corpus": {"source": corpus.source if corpus is not None else "?"},
                        "corpus_settings": corpus.settings if corpus is not None else {},
                    },
                )
    bar.close()
    weight, bias = start.weight.clone(), start.bias.clone()
    with torch.no_grad():
        for i in trained:
            weight[i] = weights[i].detach()
            bias[i] = biases[i].detach()
    lens = Lens(weight, bias, dict(header))
    lens.header.update(
        method="tuned",
        ridge=start.header.get("ridge"),
        linear_heldout_kl=start.header.get("heldout_kl", {}).get("lens"),
        tuned={
            **asdict(settings),
            "rows_per_step": rows_per_step,
            "tokens_seen": settings.steps * rows_per_step * row_tokens,
            "train_kl": losses,
            "tuned_seconds": round(time.perf_counter() - started, 2),
        },
    )
    _record_heldout(model, lens, splits, progress)
    before, after = sum(start.header["heldout_kl"]["lens"]), sum(lens.header["heldout_kl"]["lens"])
    lens.header["tuned"]["improved"] = after < before
    if after >= before:
        lens.header["tuned"]["note"] = (
            f"the tuned lens did not improve on its linear start on the test tokens "
            f"(summed KL {after:.4f} vs {before:.4f} nats): more steps or tokens may help"
        )
    return lens


def _check_same_run(state: dict[str, Any], settings: TunedSettings) -> None:
    saved = state["settings"]
    if saved != asdict(settings):
        changed = ", ".join(f"{k} {saved.get(k)} → {v}" for k, v in asdict(settings).items() if saved.get(k) != v)
        raise LensError(
            f"The checkpoint was written with other settings ({changed}): resume with the same "
            "settings, or delete the checkpoint to start again."
        )


def _check_checkpoint(checkpoint: Path | None, resume: bool) -> None:
    if resume and (checkpoint is None or not checkpoint.is_file()):
        raise LensError(f"Nothing to resume: no checkpoint at {checkpoint}. Run without --resume to start the fit.")
    if not resume and checkpoint is not None and checkpoint.exists():
        raise LensError(
            f"A checkpoint already exists at {checkpoint}: pass --resume to continue that fit, "
            "or delete it to start again."
        )


def _read_checkpoint(checkpoint: Path, model) -> dict[str, Any]:
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LensError(
            f"{checkpoint} is not a readable lens checkpoint ({type(exc).__name__}): delete it and start again."
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise LensError(f"{checkpoint} is not a workbench lens checkpoint: delete it or choose another --out.")
    from workbench.provenance import model_fingerprint

    if state["fingerprint"] != model_fingerprint(model)["sha256"]:
        raise LensError(f"{checkpoint} was written for another model: resume with the same --model.")
    return state


def _write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    write_through(path, lambda tmp: torch.save(state, tmp))
