"""The ``Probe``: the one abstraction a researcher learns.

A probe is either an *observer* (it declares TransformerLens hooks that read activations, ``hooks``)
or an *intervention* (``intervenes = True``: it describes its edits as data, ``interventions``, which
:mod:`workbench.interventions` compiles to hooks or to fast-engine cells). ``prepare`` validates the
options and returns the probe's per-run *plan* — never stored on the probe, so one probe object can be
reused and run concurrently; the plan reaches ``hooks``/``interventions`` as ``ctx.plan`` and
``result`` as ``record.plan``. :func:`workbench.run.run` owns the framework work: the clean and edited
passes, every observer's clean baseline, the result's metadata (probe, model, prompts, tokens) and
removing every hook afterwards.

To write an observer, subclass :class:`Probe`, set ``name``, implement ``hooks`` and ``result``
(``workbench/probes/logit_lens.py`` is a complete example). To write an intervention, set
``intervenes = True`` and implement ``interventions`` (``workbench/probes/block_replacement.py``); a
new kind of edit is an :class:`~workbench.interventions.Operation` (see ``docs/plugins.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from jaxtyping import Float, Int

from workbench.errors import ProbeError
from workbench.models import Model

HookFn = Callable[[torch.Tensor, Any], torch.Tensor | None]
Hook = tuple[str, HookFn]

CLEAN, INTERVENED = "clean", "intervened"


@dataclass
class RunContext:
    """What a probe sees while it prepares and builds hooks: the model, the prompts, its plan and its
    own save slot. Saved tensors keep the batch dimension first (``run`` splits them by row)."""

    model: Model
    prompts: list[str]
    tokens: Int[torch.Tensor, "batch pos"]
    str_tokens: list[list[str]]
    readout: int
    target_ids: list[int]
    target_labels: list[str]
    phase: str = CLEAN
    saved: dict[str, Any] = field(default_factory=dict)
    plan: Any = None

    @property
    def facts(self):
        return self.model.facts

    @property
    def n_positions(self) -> int:
        return int(self.tokens.shape[-1])

    def save(self, key: str, value: torch.Tensor) -> None:
        """Keep a detached copy of an activation for ``result`` (only what the probe asks for is kept).
        The value's first axis must be the batch (one row per prompt)."""
        self.saved[key] = value.detach().clone()


@dataclass
class ProbeRecord:
    """What a probe gets back after the run: its saved tensors and the output logits, per phase, and its plan.

    Phases are ``clean`` (no intervention) and, when any intervention ran, ``intervened``. ``result``
    describes the last phase; ``run`` builds an observer's clean baseline from a clean-only record.
    Logits are the model's own output at every position: ``[batch, pos, vocab]``.
    """

    context: RunContext
    saved: dict[str, dict[str, Any]]
    logits: dict[str, Float[torch.Tensor, "batch pos vocab"]]
    interventions: list[str]
    plan: Any = None
    resolved: list = field(default_factory=list)  # this probe's resolved interventions (interventions only)

    @property
    def phases(self) -> list[str]:
        return list(self.logits)

    @property
    def last_phase(self) -> str:
        return self.phases[-1]

    def readout_logits(self, phase: str) -> Float[torch.Tensor, "batch vocab"]:
        return self.logits[phase][:, self.context.readout]


class Probe:
    """Base class of every probe. Subclasses set ``name``; observers implement ``hooks`` and ``result``,
    interventions set ``intervenes = True`` and implement ``interventions``."""

    name: ClassVar[str] = ""
    intervenes: ClassVar[bool] = False

    def prepare(self, ctx: RunContext) -> Any:
        """Validate options and return the per-run plan (default: none)."""
        return None

    def hooks(self, ctx: RunContext) -> list[Hook]:
        """Observers: ``(hook_name, fn)`` pairs; ``fn(activation, hook)`` reads (and saves) activations."""
        return []

    def interventions(self, ctx: RunContext) -> list:
        """Interventions: the edits as :class:`~workbench.interventions.Intervention` descriptions."""
        return []

    def result(self, record: ProbeRecord):
        """Turn what the pass left into a Result. Interventions get the before/after distribution by default."""
        if self.intervenes:
            from workbench.probes.intervention import intervention_result

            return intervention_result(record, self.describe(record.plan))
        raise ProbeError(f"{type(self).__name__} does not build a result: implement result(record).")

    def describe(self, plan: Any = None) -> str:
        """One line saying what the probe does with its options (used in figures and reports)."""
        return self.name

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip().splitlines()
        return doc[0] if doc else cls.__name__
