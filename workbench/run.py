"""Run any set of probes on a model, and always leave the model clean.

``run`` owns the framework work so probes stay small:

- a *clean* pass with the observers' hooks; when any intervention is among the probes, an
  *intervened* pass with every intervention applied together (their joint effect) and the observers
  again, so each observer's result has a clean ``baseline``;
- with ``separate=True``, the clean prompts and one copy per intervention probe ride different rows
  of ONE batched forward (as nnsight's invokes do): each intervention's individual effect, for about
  the cost of one pass;
- the result metadata (probe name, model, prompts, tokens) and removing every hook afterwards (also
  when a hook raises), with TransformerLens' ``hooks()`` context manager.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Float

from workbench.errors import ProbeError
from workbench.interventions import Binding, Intervention, compile_hooks, resolve
from workbench.models import Model, load_model
from workbench.probes.base import CLEAN, INTERVENED, Probe, ProbeRecord, RunContext
from workbench.probes.intervene import Intervene
from workbench.tokens import context_overflow, resolve_readout, target_ids, to_tokens

DEFAULT_TOP_TARGETS = 10


@dataclass
class RunResult(Mapping):
    """The results of one run, by probe name, plus the output logits of each pass.

    After ``run(..., separate=True)``, ``conditions[name]`` is the run as the intervention ``name``
    alone would have given it (its result, every observer under it with a clean baseline, and its
    logits); the top-level results are the interventions' results and the observers' clean results.
    """

    results: dict
    logits: dict[str, Float[torch.Tensor, "batch pos vocab"]]
    context: RunContext
    conditions: dict[str, RunResult] = field(default_factory=dict)

    def __getitem__(self, name: str):
        try:
            return self.results[name]
        except KeyError:
            raise ProbeError(f"No result named {name!r}; this run has {sorted(self.results)}.") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def probs(self, phase: str | None = None) -> Float[torch.Tensor, "batch vocab"]:
        """Next-token probabilities at the readout position (the last pass by default)."""
        phase = phase or list(self.logits)[-1]
        return self.logits[phase][:, self.context.readout].float().softmax(-1)

    def target_probs(self, phase: str | None = None) -> dict[str, float]:
        """Probability of each target token for the first prompt."""
        probs = self.probs(phase)[0]
        return {
            label: float(probs[i]) for label, i in zip(self.context.target_labels, self.context.target_ids, strict=True)
        }


def hook_count(model: Model) -> int:
    """How many hooks are attached to the bridge's hook points (0 after every run).

    The bridge's own internal pre-hooks on wrapped HF modules are not hook points and are not counted.
    """
    points = {id(hp): hp for hp in model.bridge.hook_dict.values()}.values()
    return sum(len(hp._forward_hooks) + len(hp._forward_pre_hooks) + len(hp._backward_hooks) for hp in points)


def resolve_targets(
    model: Model, targets, clean_readout_logits: torch.Tensor | None = None
) -> tuple[list[int], list[str]]:
    """The tokens results report on: the named ``targets``, or the clean run's most likely tokens at the
    readout of the first prompt (never a default that only fits one study)."""
    if targets is not None:
        return target_ids(model, targets)
    if clean_readout_logits is None:
        return [], []
    ids = clean_readout_logits.float().topk(min(DEFAULT_TOP_TARGETS, clean_readout_logits.shape[-1])).indices.tolist()
    return ids, [model.tokenizer.decode([i]) for i in ids]


def run(
    model: Model | str,
    prompts: str | list[str],
    probes: Probe | Intervention | Iterable[Probe | Intervention],
    *,
    readout: int = -1,
    targets: str | Iterable[str] | None = None,
    clean_logits: Float[torch.Tensor, "batch pos vocab"] | None = None,
    separate: bool = False,
    truncate: bool = False,
) -> RunResult:
    """Run ``probes`` (probes, or raw :class:`~workbench.interventions.Intervention` descriptions) on
    ``prompts`` (one string or a batch of equal token length).

    ``readout`` is the position whose next-token distribution interventions report (the last by
    default); ``targets`` the tokens they report on (default: the clean run's 10 most likely tokens).
    ``separate=False`` applies every intervention together (their joint effect); ``separate=True`` gives
    each its own batch row in one forward (their individual effects; see :class:`RunResult`).
    ``clean_logits`` (from an earlier run on the same prompts) skips the clean pass when every probe is
    an intervention. A prompt longer than the model's context is refused unless ``truncate=True``, which
    keeps its last tokens and says so in every result's ``meta["truncated"]``.
    """
    model = load_model(model)
    probes = _as_probes(probes)
    prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
    tokens = to_tokens(model, prompt_list, truncate=truncate)
    dropped = context_overflow(model, prompt_list) if truncate else [0] * len(prompt_list)
    base = RunContext(
        model=model,
        prompts=prompt_list,
        tokens=tokens,
        str_tokens=[[model.tokenizer.decode([t]) for t in row] for row in tokens.tolist()],
        readout=resolve_readout(tokens.shape[-1], readout),
        target_ids=[],
        target_labels=[],
    )
    names = _unique_names(probes)
    contexts, resolved = {}, {}
    captures: dict = {}  # probes patching from the same source share its clean forward
    for probe in probes:
        ctx = replace(base, saved={})
        ctx.plan = probe.prepare(ctx)
        contexts[id(probe)] = ctx
        resolved[id(probe)] = (
            [resolve(iv, model, prompt_list, tokens, captures=captures) for iv in probe.interventions(ctx)]
            if probe.intervenes
            else []
        )
    interventions = [p for p in probes if p.intervenes]
    descriptions = [_describe(p, contexts[id(p)].plan) for p in interventions]
    if clean_logits is not None and (any(not p.intervenes for p in probes) or clean_logits.shape[:2] != tokens.shape):
        raise ProbeError(
            "clean_logits can only replace the clean pass of interventions on the same prompts "
            f"(logits of shape {tuple(tokens.shape)} + vocab, no observer): drop it or the observers."
        )
    if separate and interventions:
        return _run_separate(model, base, probes, names, contexts, resolved, targets, dropped)
    saved: dict[str, dict[str, dict]] = {names[id(p)]: {} for p in probes}
    logits: dict[str, torch.Tensor] = {}
    phases = [CLEAN, INTERVENED] if interventions else [CLEAN]
    if clean_logits is not None:
        logits[CLEAN] = clean_logits
        phases = [INTERVENED]
    for phase in phases:
        hooks = []
        if phase == INTERVENED:
            # Interventions' hooks go first so observers at the same hook point see the edit.
            items = [item for p in interventions for item in resolved[id(p)]]
            hooks += compile_hooks(items) if items else []
            for probe in interventions:
                hooks += _phase_hooks(probe, contexts[id(probe)], phase, saved[names[id(probe)]])
        for probe in probes:
            if not probe.intervenes:
                hooks += _phase_hooks(probe, contexts[id(probe)], phase, saved[names[id(probe)]])
        logits[phase] = _forward(model, tokens, hooks)
    base.target_ids, base.target_labels = resolve_targets(model, targets, logits[CLEAN][0, base.readout])
    results = {}
    for probe in probes:
        name = names[id(probe)]
        ctx = replace(contexts[id(probe)], target_ids=base.target_ids, target_labels=base.target_labels)
        record = ProbeRecord(
            context=ctx,
            saved=saved[name],
            logits=logits,
            interventions=descriptions,
            plan=ctx.plan,
            resolved=resolved[id(probe)],
        )
        results[name] = _build(probe, name, record, base, dropped)
    return RunResult(results=results, logits=logits, context=base)


def _run_separate(model, base: RunContext, probes, names, contexts, resolved, targets, dropped) -> RunResult:
    """Clean rows plus one block of rows per intervention probe, in one forward."""
    interventions = [p for p in probes if p.intervenes]
    observers = [p for p in probes if not p.intervenes]
    legacy = [names[id(p)] for p in interventions if _phase_hooks(p, contexts[id(p)], INTERVENED, {})]
    if legacy:
        raise ProbeError(
            f"{', '.join(legacy)} edit through raw hooks, which cannot be given their own rows: "
            "describe the edits as interventions, or run with separate=False."
        )
    n_prompts = len(base.prompts)
    blocks = len(interventions) + 1
    tokens = base.tokens.repeat(blocks, 1)
    items, rows = [], []
    for i, probe in enumerate(interventions, start=1):
        for item in resolved[id(probe)]:
            items.append(item)
            rows.append([(i * n_prompts + p, p) for p in range(n_prompts)])
    hooks = compile_hooks(items, Binding(rows)) if items else []
    saved: dict[str, dict] = {names[id(p)]: {} for p in observers}
    for probe in observers:
        hooks += _phase_hooks(probe, replace(contexts[id(probe)], tokens=tokens), "batch", saved[names[id(probe)]])
    everything = _forward(model, tokens, hooks)
    chunk = lambda value, i: value[i * n_prompts : (i + 1) * n_prompts]  # noqa: E731
    clean = chunk(everything, 0)
    base.target_ids, base.target_labels = resolve_targets(model, targets, clean[0, base.readout])
    results, conditions = {}, {}

    def observer_results(phase_rows: dict[str, int]) -> dict:
        out = {}
        for probe in observers:
            name = names[id(probe)]
            ctx = replace(contexts[id(probe)], target_ids=base.target_ids, target_labels=base.target_labels)
            per_phase = {
                phase: {k: chunk(v, i) for k, v in saved[name].get("batch", {}).items()}
                for phase, i in phase_rows.items()
            }
            logits = {phase: chunk(everything, i) for phase, i in phase_rows.items()}
            record = ProbeRecord(context=ctx, saved=per_phase, logits=logits, interventions=[], plan=ctx.plan)
            out[name] = _build(probe, name, record, base, dropped)
        return out

    results.update(observer_results({CLEAN: 0}))
    for i, probe in enumerate(interventions, start=1):
        name = names[id(probe)]
        ctx = replace(contexts[id(probe)], target_ids=base.target_ids, target_labels=base.target_labels)
        logits = {CLEAN: clean, INTERVENED: chunk(everything, i)}
        description = _describe(probe, ctx.plan)
        record = ProbeRecord(
            context=ctx,
            saved={CLEAN: {}, INTERVENED: {}},
            logits=logits,
            interventions=[description],
            plan=ctx.plan,
            resolved=resolved[id(probe)],
        )
        results[name] = _build(probe, name, record, base, dropped)
        conditions[name] = RunResult(
            results={name: results[name], **observer_results({CLEAN: 0, INTERVENED: i})}, logits=logits, context=base
        )
    return RunResult(results=results, logits={CLEAN: clean}, context=base, conditions=conditions)


def _as_probes(probes) -> list[Probe]:
    items = [probes] if isinstance(probes, (Probe, Intervention)) else list(probes)
    if not items:
        raise ProbeError("No probe given: pass at least one probe, e.g. LogitLens(), or an Intervention.")
    out = []
    for item in items:
        if isinstance(item, Intervention):
            out.append(Intervene(item))
        elif isinstance(item, Probe):
            out.append(item)
        else:
            raise ProbeError(
                f"{item!r} is neither a Probe nor an Intervention: pass probe objects such as LogitLens()."
            )
    return out


def _phase_hooks(probe: Probe, ctx: RunContext, phase: str, slot: dict) -> list:
    """The probe's own hooks for one pass, saving into a fresh slot for that pass."""
    phase_ctx = replace(ctx, phase=phase, saved={})
    hooks = probe.hooks(phase_ctx)
    if hooks:
        slot[phase] = phase_ctx.saved
    return hooks


def _build(probe: Probe, name: str, record: ProbeRecord, base: RunContext, dropped: list[int]):
    """The probe's result with the framework's metadata, and an observer's clean baseline."""
    result = probe.result(record)
    if hasattr(result, "arrays"):
        _fill_metadata(result, name, base, dropped)
        if not probe.intervenes and len(record.phases) > 1 and getattr(result, "baseline", None) is None:
            clean = replace(record, saved={CLEAN: record.saved.get(CLEAN, {})}, logits={CLEAN: record.logits[CLEAN]})
            result.baseline = probe.result(clean)
            _fill_metadata(result.baseline, name, base, dropped)
    return result


def _fill_metadata(result, name: str, base: RunContext, dropped: list[int]) -> None:
    result.probe = result.probe or name
    result.model = result.model or base.facts.name
    result.prompts = result.prompts or list(base.prompts)
    result.tokens = result.tokens or [list(t) for t in base.str_tokens]
    result.meta.setdefault("readout", base.readout)
    if any(dropped):
        result.meta["truncated"] = {"dropped_tokens": dropped, "note": "prompts cut to their last n_ctx tokens"}


def _describe(probe: Probe, plan: Any) -> str:
    try:
        accepts_plan = len(inspect.signature(probe.describe).parameters) >= 1
    except (TypeError, ValueError):
        accepts_plan = False
    return probe.describe(plan) if accepts_plan else probe.describe()


def _forward(model: Model, tokens, hooks) -> torch.Tensor:
    # The context manager removes exactly the hooks it added, also when a hook raises.
    with torch.no_grad(), model.bridge.hooks(fwd_hooks=hooks):
        return model.bridge(tokens).detach()


def _unique_names(probes: list[Probe]) -> dict[int, str]:
    names, seen = {}, {}
    for probe in probes:
        base = probe.name or type(probe).__name__
        count = seen.get(base, 0)
        seen[base] = count + 1
        names[id(probe)] = base if count == 0 else f"{base}_{count}"
    return names
