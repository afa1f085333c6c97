"""The fast path: run many edited copies of one prompt through the decoder blocks, reusing the clean run.

A sweep is many runs of one prompt, each with one edit (a *cell*). Three facts make them cheap:

- an edit in block ``L`` leaves blocks ``0…L-1`` unchanged, so a cell starts at block ``L`` from the
  clean residual stream cached there (``start``);
- with causal attention an edit at position ``p`` leaves positions ``< p`` unchanged in every block,
  so a cell recomputes only positions ``p…n-1`` (``suffix``), attending to the clean keys and values
  cached for the earlier positions (a KV prefix, as in generation);
- only the readout position is unembedded.

Cells are batched (the batch dimension is different edits): rows that share a suffix share one tensor,
and a row joins the batch at its start block. Batches are sized from free memory.

The blocks are run from their weights, not through the bridge, so hook points do not fire here; the
tests check every sweep against the hook-based one-forward-per-cell path (:mod:`workbench.sweeps.naive`).
Supported: decoder blocks of the Llama family (``llama``, ``qwen2``, ``mistral``: RMSNorm, rotary
attention with grouped key/value heads, gated MLP).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from jaxtyping import Float

from workbench.errors import ProbeError
from workbench.memory import memory_budget

SUPPORTED_FAMILIES = ("llama", "qwen2", "mistral")
SITES = ("resid_pre", "q", "k", "v", "z", "attn_out", "resid_mid", "mlp_out", "resid_post")

Edit = Callable[[torch.Tensor], torch.Tensor]


def _raw(module):
    """The plain torch module under TransformerLens' bridge wrappers."""
    while hasattr(module, "_original_component") and module._original_component is not None:
        module = module._original_component
    return module


def _linear(module) -> tuple[torch.Tensor, torch.Tensor | None]:
    module = _raw(module)
    return module.weight, module.bias


@dataclass
class Cell:
    """One edited run. ``edits[(block, site)]`` maps the row's activation there (positions ``suffix…``)
    to the edited one. ``init`` replaces the clean residual entering ``start`` (positions ``suffix…``).
    ``key_mask`` ``[query, key]`` (all positions) is set to −∞ before softmax in ``mask_blocks``."""

    start: int
    suffix: int = 0
    edits: dict[tuple[int, str], Edit] = field(default_factory=dict)
    init: torch.Tensor | None = None
    key_mask: torch.Tensor | None = None
    mask_blocks: range = range(0)


@dataclass
class _Layer:
    ln1: torch.Tensor
    ln2: torch.Tensor
    eps1: float
    eps2: float
    q: tuple
    k: tuple
    v: tuple
    o: tuple
    gate: tuple
    up: tuple
    down: tuple
    act: Callable


def supports(model) -> bool:
    return getattr(model.bridge.original_model.config, "model_type", None) in SUPPORTED_FAMILIES


class Engine:
    """Weights of one Llama-family model, the clean run of one prompt, and a batched cell runner."""

    def __init__(self, model, tokens: torch.Tensor):
        hf = model.bridge.original_model
        cfg = hf.config
        if cfg.model_type not in SUPPORTED_FAMILIES:
            raise ProbeError(f"The fast sweep path supports {', '.join(SUPPORTED_FAMILIES)}, not {cfg.model_type!r}: "
                             "pass method='naive' (one hooked forward per cell).")
        self.model = model
        self.device = model.device
        self.n_heads = model.facts.n_heads
        self.n_kv = model.facts.n_kv_heads
        self.d_head = model.facts.d_head
        self.layers = []
        for block in hf.model.layers:
            layer = _raw(block)
            attn, mlp = _raw(layer.self_attn), _raw(layer.mlp)
            n1, n2 = _raw(layer.input_layernorm), _raw(layer.post_attention_layernorm)
            self.layers.append(_Layer(
                ln1=n1.weight, ln2=n2.weight, eps1=n1.variance_epsilon, eps2=n2.variance_epsilon,
                q=_linear(attn.q_proj), k=_linear(attn.k_proj), v=_linear(attn.v_proj), o=_linear(attn.o_proj),
                gate=_linear(mlp.gate_proj), up=_linear(mlp.up_proj), down=_linear(mlp.down_proj), act=mlp.act_fn,
            ))
        self.scaling = float(getattr(_raw(hf.model.layers[0].self_attn), "scaling", self.d_head ** -0.5))
        norm = _raw(hf.model.norm)
        self.final_norm, self.final_eps = norm.weight, norm.variance_epsilon
        self.unembed = _linear(hf.lm_head)
        self.embed = _raw(hf.model.embed_tokens)
        self.tokens = tokens.to(self.device)
        self.n = int(tokens.shape[-1])
        positions = torch.arange(self.n, device=self.device)[None]
        dummy = torch.zeros(1, self.n, self.d_head, device=self.device, dtype=self.final_norm.dtype)
        cos, sin = _raw(hf.model.rotary_emb)(dummy, positions)
        self.cos, self.sin = cos[0], sin[0]  # [pos, d_head]
        causal = torch.ones(self.n, self.n, dtype=torch.bool, device=self.device).triu(1)
        self.causal = causal  # True where a query may not see a key
        self.prefix: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.clean: dict[str, list[torch.Tensor]] = {}
        self.clean_logits: torch.Tensor | None = None

    # ----- the clean run -------------------------------------------------------------------------------
    @torch.no_grad()
    def run_clean(self, sites: tuple[str, ...] = ("resid_pre",), readout: int = -1) -> None:
        """Run the prompt once, keeping its keys/values (the prefix every cell reuses), the residual
        entering each block and the activations at ``sites`` (``[pos, ...]`` per block)."""
        keep = {"resid_pre", *sites}
        captured, logits = self.capture(self.tokens, keep, readout)
        self.prefix = list(zip(captured.pop("k_rot"), captured.pop("v")))
        self.clean = captured
        self.clean_logits = logits

    def capture(self, tokens: torch.Tensor, sites, readout: int = -1, grad: bool = False):
        """One full run of ``tokens`` keeping every block's activation at ``sites`` (and ``k_rot``/``v``).

        With ``grad`` the kept tensors stay in the autograd graph (``retain_grad``) for attribution."""
        kept: dict[str, list[torch.Tensor]] = defaultdict(list)
        h = self.embed(tokens.to(self.device))[0][None]
        for l in range(len(self.layers)):
            h = self._block(l, h, 0, [Cell(start=0)], capture=(kept, set(sites) | {"k_rot", "v"}, grad))
        kept["resid_final"] = [h if grad else h[0]]
        logits = self.readout(h[:, readout % self.n])
        return {k: v for k, v in kept.items()}, logits

    # ----- cells ----------------------------------------------------------------------------------------
    def max_tokens(self) -> int:
        """Row-positions one batch may hold, from the memory budget and the per-position activation size."""
        d, d_mlp = self.layers[0].gate[0].shape[1], self.layers[0].gate[0].shape[0]
        per_token = self.final_norm.element_size() * (8 * d + 4 * d_mlp + 3 * self.n_heads * self.n)
        cap = 1 << 30 if self.device.type == "cuda" else 16384
        return max(self.n, min(cap, memory_budget(self.device) // per_token))

    @torch.no_grad()
    def run_cells(self, cells: list[Cell], readout: int = -1) -> Float[torch.Tensor, "cell vocab"]:
        """Readout logits of every cell, batched under the memory budget."""
        readout %= self.n
        out = torch.empty(len(cells), self.unembed[0].shape[0], device=self.device)
        order = sorted(range(len(cells)), key=lambda i: (cells[i].start, cells[i].suffix))
        todo = []
        for i in order:
            if cells[i].suffix > readout:
                out[i] = self.clean_logits[0]  # an edit after the readout cannot reach it
            else:
                todo.append(i)
        budget, batch, used = self.max_tokens(), [], 0
        for i in todo:
            size = self.n - cells[i].suffix
            if batch and used + size > budget:
                out[batch] = self._run_batch([cells[j] for j in batch], readout)
                batch, used = [], 0
            batch.append(i)
            used += size
        if batch:
            out[batch] = self._run_batch([cells[j] for j in batch], readout)
        return out

    def _run_batch(self, cells: list[Cell], readout: int) -> torch.Tensor:
        groups: dict[int, list[int]] = defaultdict(list)  # suffix → cell indices, in join order
        states: dict[int, torch.Tensor] = {}
        n_layers = len(self.layers)
        first = min(c.start for c in cells)
        for l in range(first, n_layers + 1):
            for i, cell in enumerate(cells):
                if cell.start == l:
                    p = cell.suffix
                    h = cell.init if cell.init is not None else self.clean["resid_pre"][l][p:] if l < n_layers \
                        else self.clean["resid_final"][0][p:]
                    groups[p].append(i)
                    states[p] = h[None] if p not in states else torch.cat([states[p], h[None]])
            if l == n_layers:
                break
            for p in states:
                states[p] = self._block(l, states[p], p, [cells[i] for i in groups[p]])
        logits = torch.empty(len(cells), self.unembed[0].shape[0], device=self.device)
        for p, rows in groups.items():
            logits[rows] = self.readout(states[p][:, readout - p])
        return logits

    def readout(self, h: Float[torch.Tensor, "batch d_model"]) -> Float[torch.Tensor, "batch vocab"]:
        w, b = self.unembed
        return torch.nn.functional.linear(_rms(h, self.final_norm, self.final_eps), w, b).float()

    # ----- one block --------------------------------------------------------------------------------------
    def _block(self, l: int, h: torch.Tensor, p: int, cells: list[Cell], capture=None) -> torch.Tensor:
        """Block ``l`` on rows ``h`` ``[row, pos - p, d_model]`` (positions ``p…``), one cell per row."""
        w = self.layers[l]
        R, m, _ = h.shape
        edits = defaultdict(list)
        for r, cell in enumerate(cells):
            for (block, site), fn in cell.edits.items():
                if block == l:
                    edits[site].append((r, fn))

        def at(site: str, act: torch.Tensor) -> torch.Tensor:
            if site in edits:
                act = act.clone()
                for r, fn in edits[site]:
                    act[r] = fn(act[r])
            if capture is not None and site in capture[1]:
                kept, _, grad = capture
                if grad and act.requires_grad:
                    act.retain_grad()
                kept[site].append(act if grad else act[0].detach().clone())
            return act

        h = at("resid_pre", h)
        x = _rms(h, w.ln1, w.eps1)
        q = at("q", _proj(x, w.q).view(R, m, self.n_heads, self.d_head))
        k = at("k", _proj(x, w.k).view(R, m, self.n_kv, self.d_head))
        v = at("v", _proj(x, w.v).view(R, m, self.n_kv, self.d_head))
        cos, sin = self.cos[p:][:, None], self.sin[p:][:, None]
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if capture is not None:
            at("k_rot", k)
        if p:
            pk, pv = self.prefix[l]
            k = torch.cat([pk[None, :p].expand(R, -1, -1, -1), k], 1)
            v = torch.cat([pv[None, :p].expand(R, -1, -1, -1), v], 1)
        rep = self.n_heads // self.n_kv
        k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
        scores = torch.einsum("rqhd,rkhd->rhqk", q, k) * self.scaling
        scores = scores.masked_fill(self.causal[p:], float("-inf"))
        masked = [(r, c.key_mask[p:]) for r, c in enumerate(cells) if c.key_mask is not None and l in c.mask_blocks]
        if masked:
            full = torch.zeros(R, 1, m, self.n, dtype=torch.bool, device=h.device)
            for r, mask in masked:
                full[r, 0] = mask
            scores = scores.masked_fill(full, float("-inf"))
        pattern = scores.softmax(-1, dtype=torch.float32).to(q.dtype)
        z = at("z", torch.einsum("rhqk,rkhd->rqhd", pattern, v))
        attn_out = at("attn_out", _proj(z.reshape(R, m, -1), w.o))
        mid = at("resid_mid", h + attn_out)
        y = _rms(mid, w.ln2, w.eps2)
        mlp_out = at("mlp_out", _proj(w.act(_proj(y, w.gate)) * _proj(y, w.up), w.down))
        return at("resid_post", mid + mlp_out)


def _proj(x: torch.Tensor, wb: tuple) -> torch.Tensor:
    return torch.nn.functional.linear(x, wb[0], wb[1])


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as the HF Llama family computes it (in float32, then back)."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), -1)
