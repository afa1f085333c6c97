"""Model facts of every family, checked against its transformers config and against its behaviour.

The key/value groups and parallel blocks are derived by editing the plain transformers model (which
query heads move when one key/value head's keys change; whether the MLP's input moves when attention
is silenced), not read from a config field, so a family that names things its own way cannot fool them.
"""

from __future__ import annotations

import json

import pytest
import torch

from workbench.tiny import TINY_FAMILIES

from .conftest import PROMPT
from .hf_sites import attention, forward_hooks, hf_layers, kv_columns, mlp_entry, output_of, with_output

pytestmark = pytest.mark.column("facts")


def test_shape_and_family_match_the_config(family, model, hf):
    spec, config, facts = TINY_FAMILIES[family.name], hf.config, model.facts
    assert facts.architecture == spec.family
    assert (facts.n_layers, facts.n_heads, facts.n_kv_heads) == (spec.n_layers, spec.n_heads, spec.n_kv_heads)
    assert facts.n_layers == config.num_hidden_layers == len(hf_layers(hf))
    assert facts.n_heads == config.num_attention_heads
    assert facts.d_model == config.hidden_size == hf.get_input_embeddings().weight.shape[1]
    assert facts.d_head == (getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    assert facts.d_vocab == config.vocab_size == hf.get_output_embeddings().weight.shape[0]
    # ALiBi (BLOOM) has no position table; the bridge then assumes BLOOM's training length.
    assert facts.n_ctx == (getattr(config, "max_position_embeddings", None) or 2048)
    assert facts.tied_embeddings == config.tie_word_embeddings == spec.tied


def test_bos_is_the_family_convention_as_transformer_lens_applies_it(family, model, tokenizer):
    tokens = model.to_tokens(PROMPT)[0].tolist()
    plain = tokenizer(PROMPT, add_special_tokens=False).input_ids
    assert model.facts.prepend_bos == bool(model.bridge.cfg.default_prepend_bos)
    if model.facts.prepend_bos:
        assert tokens == [model.tokenizer.bos_token_id, *plain]
    else:
        assert tokens == plain
    if TINY_FAMILIES[family.name].tokenizer_bos:  # the tokenizer adds it itself: no second BOS
        assert tokens == tokenizer(PROMPT).input_ids


def test_head_to_group_is_which_query_heads_read_each_key_value_head(family, model, hf):
    """Perturb one key/value head's keys in block 0: exactly the query heads of its group change."""
    facts = model.facts
    ids = model.to_tokens(PROMPT).cpu()
    module, columns = kv_columns(family.kv, hf_layers(hf)[0], facts.n_heads, facts.n_kv_heads, facts.d_head)["k"]
    with torch.no_grad():
        before = hf(ids, output_attentions=True).attentions[0][0]
        groups = []
        for kv_head in range(facts.n_kv_heads):

            def shift(mod, args, kwargs, output, cols=columns[kv_head]):
                out = output_of(output).clone()
                out[..., cols] += torch.randn(out[..., cols].shape, generator=torch.Generator().manual_seed(1))
                return with_output(output, out)

            with forward_hooks((module, shift)):
                after = hf(ids, output_attentions=True).attentions[0][0]
            groups.append([h for h in range(facts.n_heads) if not torch.allclose(before[h], after[h])])
    derived = tuple(next(g for g, heads in enumerate(groups) if h in heads) for h in range(facts.n_heads))
    assert derived == facts.head_to_group
    assert sorted(sum(groups, [])) == list(range(facts.n_heads))  # every head reads exactly one group
    assert facts.heads_per_group * facts.n_kv_heads == facts.n_heads


def test_parallel_blocks_means_the_mlp_does_not_read_attention(family, model, hf):
    """Silence block 0's attention: in a parallel block the MLP's input stays the same."""
    layer = hf_layers(hf)[0]
    seen = []

    def keep(module, args, kwargs, output=None):
        seen.append((args[0] if args else next(iter(kwargs.values()))).clone())

    def silence(module, args, kwargs, output):
        return with_output(output, torch.zeros_like(output_of(output)))

    ids = model.to_tokens(PROMPT).cpu()
    with torch.no_grad():
        with forward_hooks((mlp_entry(layer), keep, "pre")):
            hf(ids)
        with forward_hooks((mlp_entry(layer), keep, "pre"), (attention(layer), silence)):
            hf(ids)
    assert model.facts.parallel_blocks == torch.equal(seen[0], seen[1])


def test_models_info_prints_these_facts(family, model):
    from typer.testing import CliRunner

    from workbench.cli import _register, app

    _register()
    result = CliRunner().invoke(app, ["models", "info", family.name, "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads(json.dumps(model.facts.to_dict()))
