"""The QK decomposition sums to the pre-softmax score HF's own eager
attention computes (recorded with no nbinterp code involved), and its parts
are what they claim to be."""

from __future__ import annotations

import importlib

import pytest
import torch

import nbinterp as ni
from conftest import PROMPT, eager_copy, random_model
from nbinterp.analysis.qk import qk, residual_components

EPS = torch.finfo(torch.float32).eps

SUPPORTED = ["gpt2", "gpt_neox", "llama", "qwen2", "mistral", "opt"]
LEARNED_POSITIONS = ("gpt2", "opt")
CELLS = [(0, 1, 7, 3), (1, 2, 9, 6), (1, 3, 5, 5), (1, 0, 8, 0)]


@pytest.fixture(scope="module", params=SUPPORTED)
def model_and_run(request, tokenizer):
    model = ni.load(random_model(request.param), tokenizer=tokenizer)
    return model, model.run(PROMPT)


def hf_eager_scores(hf, input_ids):
    """Per layer, from an eager copy of the model with no nbinterp code involved:
    the [heads, T, T] tensor HF's eager attention hands to softmax (scaled q.k plus
    the additive mask), and the [heads, T, T] magnitude of its terms,
    scaling x sum_d |q_d k_d| (what float32 rounding of the dot product scales with)."""
    reference = eager_copy(hf)
    modeling = importlib.import_module(type(reference).__module__)
    original, softmax = modeling.eager_attention_forward, torch.nn.functional.softmax
    scores, magnitudes = [], []

    def recording(module, query, key, value, attention_mask, *args, **kwargs):
        def record(x, *a, **k):
            scores.append(x[0].detach().double())
            return softmax(x, *a, **k)

        q, k = query[0].detach().double(), key[0].detach().double()
        k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)  # grouped-query heads
        scaling = kwargs.get("scaling") or q.shape[-1] ** -0.5
        magnitudes.append(scaling * torch.einsum("hqd,hkd->hqk", q.abs(), k.abs()))
        torch.nn.functional.softmax = record
        try:
            return original(module, query, key, value, attention_mask, *args, **kwargs)
        finally:
            torch.nn.functional.softmax = softmax

    modeling.eager_attention_forward = recording
    try:
        with torch.no_grad():
            reference(input_ids)
    finally:
        modeling.eager_attention_forward = original
    assert len(scores) == len(magnitudes) == hf.config.num_hidden_layers, "one softmax per layer's attention"
    return scores, magnitudes


def test_parts_sum_to_the_score_hf_computes(model_and_run):
    model, run = model_and_run
    scores, magnitudes = hf_eager_scores(model.hf, run.input_ids)
    for layer, head, query, key in CELLS:
        if model.hf.config.model_type == "mistral" and query - key >= 5:
            continue  # outside the sliding window
        d = qk(model, run, layer, head, query, key)
        actual = float(scores[layer][head, query, key])
        # HF's score is a float32 dot product and the parts are float32 activations summed
        # in float64: both round at ~EPS x the magnitude of the dot product's terms (not of
        # the score, which may cancel to ~0). Measured worst here: ~3 x EPS x that; 64 leaves
        # room for other kernels while a missing component (>1e-3 of the score) still shows.
        tol = 64 * EPS * float(magnitudes[layer][head, query, key])
        assert float(d.contributions.sum()) == pytest.approx(actual, abs=tol), (layer, head, query, key)
        assert abs(d.remainder) <= tol and d.score == pytest.approx(actual, abs=tol)
        assert d.contributions.shape == (len(d.query_labels), len(d.key_labels))
        assert abs(d.contributions).sum() > 0.1 * abs(actual)


def test_components_add_up_to_the_residual_stream(model_and_run):
    model, run = model_and_run
    labels, parts = residual_components(model, run, 1, [2, 9])
    torch.testing.assert_close(parts.sum(0), run.residual(1)[[2, 9]].double(), atol=1e-5, rtol=1e-5)
    heads = [f"L0.H{h}" for h in range(model.n_heads)]
    assert labels[0] == "embed" and all(h in labels for h in heads) and "L0.mlp" in labels
    assert ("pos_embed" in labels) == (model.hf.config.model_type in LEARNED_POSITIONS)


def test_a_key_component_through_the_models_own_modules(tokenizer):
    # GPT-2: head L0.H2's key-side total is scale * <captured query, c_attn(frozen ln_1(its write))>
    # computed with HF's c_attn and the engine's captured query, not the decomposition's code.
    model = ni.load(random_model("gpt2"), tokenizer=tokenizer)
    run = model.run(PROMPT)
    layer, head, query, key = 1, 2, 9, 6
    d = qk(model, run, layer, head, query, key)
    block = model.hf.transformer.h[layer]
    write = run.head_outputs(0)[2, key]
    resid = run.residual(layer)[key]
    frozen = (write - write.mean()) / (resid.var(unbiased=False) + block.ln_1.eps).sqrt() * block.ln_1.weight
    with torch.no_grad():
        k_part = (block.attn.c_attn(frozen) - block.attn.c_attn(torch.zeros_like(frozen)))
    width = model.n_heads * model.head_dim
    k_head = k_part[width + head * model.head_dim : width + (head + 1) * model.head_dim]
    q_captured = run.captured("qkv", layer).query[head, query]
    expected = float(q_captured @ k_head) * model.head_dim ** -0.5
    assert d.by_key_component()["L0.H2"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert sum(d.by_query_component().values()) == pytest.approx(sum(d.by_key_component().values()))
    assert abs(d.top(3)[0][2]) == pytest.approx(float(d.contributions.abs().max()))


def test_layer_0_has_only_embeddings_and_bias(model_and_run):
    model, run = model_and_run
    d = qk(model, run, 0, 1, 7, 3)
    expected = ["embed", "pos_embed", "bias"] if model.hf.config.model_type in LEARNED_POSITIONS else ["embed", "bias"]
    assert d.query_labels == expected == d.key_labels


def test_clear_errors(model_and_run, tokenizer):
    model, run = model_and_run
    with pytest.raises(ni.NbinterpError, match="masked"):
        qk(model, run, 1, 0, 3, 5)
    with pytest.raises(ni.NbinterpError, match="outside the prompt"):
        qk(model, run, 1, 0, 30, 5)
    gemma = ni.load(random_model("gemma2"), tokenizer=tokenizer)
    with pytest.raises(ni.UnsupportedArchitectureError, match="supports GPT-2"):
        qk(gemma, PROMPT, 1, 0, 5, 3)
