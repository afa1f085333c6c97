"""Run any set of probes on a model in one forward pass, and always leave the model clean.

When an intervention is among the probes, a clean pass (observers only) runs first, so every result
can show before vs after; observers in the intervened pass see the edited model. Hooks are attached
with TransformerLens' ``hooks()`` context manager and removed on exit, also when a hook raises.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace

import torch
from jaxtyping import Float

from workbench.errors import ProbeError, TokenError
from workbench.models import Model, load_model
from workbench.probes.base import CLEAN, INTERVENED, Probe, ProbeRecord, RunContext
from workbench.tokens import digit_token_ids, single_token_id, str_tokens, to_tokens


@dataclass
class RunResult(Mapping):
    """The results of one run, by probe name, plus the output logits of each pass."""

    results: dict
    logits: dict[str, Float[torch.Tensor, "batch pos vocab"]]
    context: RunContext

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
        """Probability of each target token (the digits by default) for the first prompt."""
        probs = self.probs(phase)[0]
        return {label: float(probs[i]) for label, i in zip(self.context.target_labels, self.context.target_ids)}


def hook_count(model: Model) -> int:
    """How many hooks are attached to the bridge's hook points (0 after every run).

    The bridge's own internal pre-hooks on wrapped HF modules are not hook points and are not counted.
    """
    points = {id(hp): hp for hp in model.bridge.hook_dict.values()}.values()
    return sum(len(hp._forward_hooks) + len(hp._forward_pre_hooks) + len(hp._backward_hooks) for hp in points)


def resolve_targets(model: Model, targets: Iterable[str] | None) -> tuple[list[int], list[str]]:
    """The token set results report on: the ten digits by default when they are single tokens."""
    if targets is None:
        try:
            return digit_token_ids(model), [str(d) for d in range(10)]
        except TokenError:
            return [], []
    labels = list(targets)
    return [single_token_id(model, t) for t in labels], labels


def run(
    model: Model | str,
    prompts: str | list[str],
    probes: Probe | Iterable[Probe],
    *,
    readout: int = -1,
    targets: Iterable[str] | None = None,
    clean_logits: Float[torch.Tensor, "batch pos vocab"] | None = None,
) -> RunResult:
    """Run ``probes`` on ``prompts`` (one string or a batch of equal token length).

    ``readout`` is the position whose next-token distribution interventions report (the last by
    default); ``targets`` the tokens they report on (the digits by default). ``clean_logits`` (from
    an earlier run on the same prompts) skips the clean pass when every probe is an intervention,
    which halves the cost of a loop over interventions.
    """
    model = load_model(model)
    probes = [probes] if isinstance(probes, Probe) else list(probes)
    if not probes:
        raise ProbeError("No probe given: pass at least one probe, e.g. LogitLens().")
    prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
    tokens = to_tokens(model, prompt_list)
    n_pos = tokens.shape[-1]
    if not -n_pos <= readout < n_pos:
        raise TokenError(f"Readout position {readout} is outside the prompt's {n_pos} tokens.")
    target_ids, target_labels = resolve_targets(model, targets)
    base = RunContext(
        model=model, prompts=prompt_list, tokens=tokens, str_tokens=[str_tokens(model, p) for p in prompt_list],
        readout=readout % n_pos, target_ids=target_ids, target_labels=target_labels,
    )
    names = _unique_names(probes)
    for probe in probes:
        probe.prepare(replace(base, saved={}))
    interventions = [p for p in probes if p.intervenes]
    phases = [CLEAN, INTERVENED] if interventions else [CLEAN]
    saved: dict[str, dict[str, dict]] = {name: {} for name in names.values()}
    logits: dict[str, torch.Tensor] = {}
    if clean_logits is not None:
        if any(not p.intervenes for p in probes) or clean_logits.shape[:2] != tokens.shape:
            raise ProbeError("clean_logits can only replace the clean pass of interventions on the same prompts "
                             f"(logits of shape {tuple(tokens.shape)} + vocab, no observer): drop it or the observers.")
        logits[CLEAN] = clean_logits
        phases = [INTERVENED]
    for phase in phases:
        active = [p for p in probes if not p.intervenes] + (interventions if phase == INTERVENED else [])
        # Interventions' hooks go first so observers at the same hook point see the edit.
        active.sort(key=lambda p: not p.intervenes)
        hooks = []
        for probe in active:
            name = names[id(probe)]
            ctx = replace(base, phase=phase, saved={})
            saved[name][phase] = ctx.saved
            hooks.extend(probe.hooks(ctx))
        logits[phase] = _forward(model, tokens, hooks)
    results = {}
    for probe in probes:
        name = names[id(probe)]
        record = ProbeRecord(context=base, saved=saved[name], logits=logits,
                             interventions=[p.describe() for p in interventions])
        results[name] = probe.result(record)
    return RunResult(results=results, logits=logits, context=base)


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
