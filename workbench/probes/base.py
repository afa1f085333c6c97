"""The ``Probe``: the one abstraction a researcher learns.

A probe declares the TransformerLens hooks it needs (``hooks``), reads or edits activations through
them, and turns what it saved into a :class:`~workbench.results.Result` (``result``). Observers only
read; interventions (``intervenes = True``) edit. :func:`workbench.run.run` composes any set of probes
into one forward pass and removes every hook afterwards.

To write a new probe, subclass :class:`Probe`, give it a ``name``, and implement ``hooks`` and
``result``; ``prepare`` is for work that must happen before the pass (locating tokens, running a
source prompt, validating options). ``workbench/probes/logit_lens.py`` is a complete example.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from jaxtyping import Float, Int

from workbench.models import Model

HookFn = Callable[[torch.Tensor, Any], torch.Tensor | None]
Hook = tuple[str, HookFn]

CLEAN, INTERVENED = "clean", "intervened"


@dataclass
class RunContext:
    """What a probe sees while hooks are built: the model, the prompts, and its own save slot."""

    model: Model
    prompts: list[str]
    tokens: Int[torch.Tensor, "batch pos"]
    str_tokens: list[list[str]]
    readout: int
    target_ids: list[int]
    target_labels: list[str]
    phase: str = CLEAN
    saved: dict[str, Any] = field(default_factory=dict)

    @property
    def facts(self):
        return self.model.facts

    @property
    def n_positions(self) -> int:
        return int(self.tokens.shape[-1])

    def save(self, key: str, value: torch.Tensor) -> None:
        """Keep a detached copy of an activation for ``result`` (only what the probe asks for is kept)."""
        self.saved[key] = value.detach().clone()


@dataclass
class ProbeRecord:
    """What a probe gets back after the run: its saved tensors and the output logits, per phase.

    Phases are ``clean`` (no intervention) and, when any intervention ran, ``intervened``.
    Logits are the model's own output at every position: ``[batch, pos, vocab]``.
    """

    context: RunContext
    saved: dict[str, dict[str, Any]]
    logits: dict[str, Float[torch.Tensor, "batch pos vocab"]]
    interventions: list[str]

    @property
    def phases(self) -> list[str]:
        return list(self.logits)

    @property
    def last_phase(self) -> str:
        return self.phases[-1]

    def readout_logits(self, phase: str) -> Float[torch.Tensor, "batch vocab"]:
        return self.logits[phase][:, self.context.readout]


class Probe(ABC):
    """Base class of every probe. Subclasses set ``name`` and implement ``hooks`` and ``result``."""

    name: ClassVar[str] = ""
    intervenes: ClassVar[bool] = False

    def prepare(self, ctx: RunContext) -> None:
        """Validate options and do work needed before the forward pass (default: nothing)."""

    @abstractmethod
    def hooks(self, ctx: RunContext) -> list[Hook]:
        """``(hook_name, fn)`` pairs; ``fn(activation, hook)`` may return a replacement (interventions only)."""

    @abstractmethod
    def result(self, record: ProbeRecord):
        """Turn what the hooks saved into a Result."""

    def describe(self) -> str:
        """One line saying what the probe does with its current options (used in figures and reports)."""
        return self.name

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip().splitlines()
        return doc[0] if doc else cls.__name__
