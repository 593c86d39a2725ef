"""Layout-specific facts of the decoder families in the architecture table,
beyond the engine tests every family in conftest.CONFIGS runs
(tests/test_engine.py): parallel blocks, learned positions with multi-query
attention, additive per-head masks (how ALiBi reaches an SDPA call), OPT's
offset positions, flattened MLP and refused configs, and the attribution / QK
tests re-run on the new families."""

from __future__ import annotations

import math

import pytest
import torch
import transformers as tf

import nbinterp as ni
from conftest import PROMPT, VOCAB, random_model
from nbinterp.analysis.attribution import compute_attribution
from nbinterp.analysis.qk import qk
from nbinterp.engine.attention_math import attention_output, attention_probabilities

# The attribution and QK tests, collected here again with this module's fixtures
# (below), so they run on the families added with learned positions / parallel blocks.
from test_attribution import (  # noqa: F401
    test_batched_knockouts_and_ablations_equal_one_run_each,
    test_candidate_recall_counts_the_true_top_k_in_the_estimated_pool,
    test_clear_errors,
    test_exhaustive_knockout_is_the_reference_and_the_qk_fix_beats_linear,
    test_head_estimate_is_minus_gradient_times_output,
    test_hybrid_measures_each_rows_dominant_edges_exactly,
    test_hybrid_measures_every_head_ablation_exactly,
    test_qk_fix_is_the_gradient_times_the_exact_change_of_the_row,
    test_top_edges_are_sorted_by_magnitude_and_well_formed,
    test_verify_top_k_measures_the_estimated_top_edges,
    test_without_a_foil_the_metric_is_the_target_logit,
)
from test_qk import test_components_add_up_to_the_residual_stream, test_parts_sum_to_the_score_hf_computes  # noqa: F401

PARALLEL = ["phi", "gptj", "gpt_neox"]  # GPT-NeoX's default use_parallel_residual=True
SEQUENTIAL = ["gpt2", "gpt_bigcode", "opt"]
CORRUPTED = "w6 w17 w3 w42 w9 w5 w17 w3 w28 w11"
ATOL = 1e-5  # float32 activations of order 1


@pytest.fixture(scope="module", params=["gpt_bigcode", "phi", "gptj", "opt"])
def attribution(request, tokenizer):
    model = ni.load(random_model(request.param), tokenizer=tokenizer)
    return compute_attribution(model, PROMPT, target="w5", foil="w9")


@pytest.fixture(scope="module", params=["phi"])
def model_and_run(request, tokenizer):
    model = ni.load(random_model(request.param), tokenizer=tokenizer)
    return model, model.run(PROMPT)


def load(name, tokenizer):
    return ni.load(random_model(name), tokenizer=tokenizer)


@pytest.mark.parametrize("name", PARALLEL + SEQUENTIAL)
def test_the_block_output_is_its_input_plus_attention_plus_mlp(name, tokenizer):
    """resid_pre(l + 1) = resid_pre(l) + attn_out(l) + mlp_out(l), parallel or not:
    the captures are the block's input and its two writes to the stream."""
    run = load(name, tokenizer).run(PROMPT)
    total = run.residual(0) + run.attention_out(0) + run.mlp_out(0)
    torch.testing.assert_close(run.residual(1), total, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", PARALLEL + SEQUENTIAL)
def test_in_parallel_blocks_the_mlp_reads_the_block_input_not_the_attention_output(name, tokenizer):
    """Patching attn_out of layer 0 changes that layer's MLP only in sequential blocks."""
    model = load(name, tokenizer)
    clean = model.run(PROMPT)
    patched = model.run(CORRUPTED, patch_from=clean, patch=[("attn_out", 0, None)])
    corrupted = model.run(CORRUPTED)
    torch.testing.assert_close(patched.attention_out(0), clean.attention_out(0), atol=ATOL, rtol=0)
    change = (patched.mlp_out(0) - corrupted.mlp_out(0)).abs().max()
    if name in PARALLEL:
        assert change < ATOL
    else:
        assert change > 1e-3


def test_multi_query_attention_has_one_key_value_head(tokenizer):
    model = load("gpt_bigcode", tokenizer)
    assert (model.n_heads, model.n_kv_heads, model.head_dim) == (4, 1, 8)
    inputs = model.run(PROMPT).captured("qkv", 1)
    query, key, value = inputs.query, inputs.key, inputs.value
    assert query.shape == (4, 10, 8) and key.shape == value.shape == (1, 10, 8)


@pytest.mark.parametrize("name", ["gpt_bigcode", "gptj"])
def test_qk_decomposition_refuses_layouts_it_does_not_read(name, tokenizer):
    # GPT-BigCode fuses a multi-query q/k/v in one Linear; GPT-J rotates interleaved pairs.
    with pytest.raises(ni.UnsupportedArchitectureError, match=repr(name)):
        qk(load(name, tokenizer), PROMPT, 1, 0, 5, 3)


def test_an_alibi_bias_folded_into_a_per_head_mask_equals_torch_sdpa():
    """How ALiBi reaches an SDPA call (Falcon builds it so): an additive float
    mask [B, H, T, T] holding slope_h * key position where allowed and the
    dtype's minimum elsewhere. The recompute must apply it per head."""
    torch.manual_seed(0)
    heads, tokens, head_dim = 4, 9, 8
    query, key, value = (torch.randn(1, heads, tokens, head_dim) for _ in range(3))
    slopes = torch.tensor([2 ** (-8 * (h + 1) / heads) for h in range(heads)])  # Press et al. 2022
    bias = slopes[:, None, None] * torch.arange(tokens)[None, None, :] / math.sqrt(head_dim)
    causal = torch.ones(tokens, tokens, dtype=torch.bool).tril()
    mask = bias.expand(heads, tokens, tokens).masked_fill(~causal, torch.finfo(torch.float32).min)[None]
    probs = attention_probabilities(query, key, mask, head_dim**-0.5)
    expected = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    torch.testing.assert_close(attention_output(probs, value), expected.transpose(1, 2), atol=ATOL, rtol=0)
    # the bias matters: without it the heads differ from the reference
    plain = attention_probabilities(query, key, None, head_dim**-0.5)
    assert (plain - probs).abs().max() > 1e-2


def test_opt_positions_are_its_table_offset_by_two(tokenizer):
    """OPT's learned positions read row position + 2 of embed_positions (HF's
    offset): the embed capture holds exactly those rows, and with the token
    embeddings they make the stream entering layer 0."""
    model = load("opt", tokenizer)
    run = model.run(PROMPT, capture=["embed", "resid_pre"])
    embeddings = run.captured("embed", 0)
    tokens, positions = embeddings.tokens, embeddings.positions
    decoder = model.hf.model.decoder
    n_tokens = len(run)
    torch.testing.assert_close(positions, decoder.embed_positions.weight[2 : 2 + n_tokens].detach(), atol=0, rtol=0)
    torch.testing.assert_close(tokens, decoder.embed_tokens.weight[run.input_ids[0]].detach(), atol=0, rtol=0)
    torch.testing.assert_close(run.residual(0), tokens + positions, atol=ATOL, rtol=0)
    # the offset matters: rows 0.. are other vectors
    assert (positions - decoder.embed_positions.weight[:n_tokens]).abs().max() > 1e-3


def test_opt_padded_batch_rows_equal_their_single_runs(tokenizer):
    """OPT flattens a batch's tokens to [B*T, d] before its MLP and counts
    positions from the attention mask: each row of a right-padded batch gives
    that prompt's own captures (the MLP's write and neurons per row, not per
    flattened token)."""
    model = load("opt", tokenizer)
    prompts = [PROMPT, "w7 w8 w9 w10"]
    layers = {"resid_pre": {1}, "mlp_out": {0, 1}, "neurons": {1}}
    captured, mask = model.capture_batch([model.tokenize(p)[0] for p in prompts], layers)
    assert mask.sum(1).tolist() == [10, 4]
    for row, prompt in enumerate(prompts):
        single = model.run(prompt, capture=["resid_pre", "mlp_out", "neurons"])
        n = len(single)
        torch.testing.assert_close(captured["resid_pre"][1][row, :n], single.residual(1), atol=ATOL, rtol=0)
        for layer in (0, 1):
            torch.testing.assert_close(captured["mlp_out"][layer][row, :n], single.mlp_out(layer), atol=ATOL, rtol=0)
        torch.testing.assert_close(captured["neurons"][1][row, :n], single.captured("neurons", 1), atol=ATOL, rtol=0)


@pytest.mark.parametrize("flags, named", [
    (dict(do_layer_norm_before=False), "do_layer_norm_before=False"),  # post-norm blocks (opt-350m)
    (dict(word_embed_proj_dim=16), "word_embed_proj_dim=16"),  # project_in / project_out
    (dict(do_layer_norm_before=False, word_embed_proj_dim=16), "do_layer_norm_before=False"),  # opt-350m's shape
    (dict(_remove_final_layer_norm=True), "_remove_final_layer_norm=True"),
])
def test_opt_configs_the_engine_would_misread_are_refused_naming_the_flag(flags, named, tokenizer):
    config = tf.OPTConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, ffn_dim=64,
                          vocab_size=VOCAB, max_position_embeddings=48, **flags)
    hf = tf.AutoModelForCausalLM.from_config(config).eval()
    with pytest.raises(ni.UnsupportedArchitectureError, match=f"'opt' config: {named}"):
        ni.load(hf, tokenizer=tokenizer)


def test_opt_neuron_directions_and_direct_logit_effects_read_fc2_and_the_final_norm(tokenizer):
    """OPT's MLP is fc2 itself: a neuron's direction is its fc2 column, and its
    direct logit effect goes through decoder.final_layer_norm and lm_head
    (checked against a float64 central difference of those HF modules)."""
    import copy

    from nbinterp.representations.directions import direct_logit_effect, neuron_directions

    model = load("opt", tokenizer)
    decoder = model.hf.model.decoder
    torch.testing.assert_close(neuron_directions(model, 1), decoder.layers[1].fc2.weight.detach().T, atol=0, rtol=0)
    final = model.run(PROMPT, capture=["resid_final"]).captured("resid_final", model.n_layers)[-1]
    direction = neuron_directions(model, 1)[5]
    got = direct_logit_effect(model, direction, final)
    norm, unembed = copy.deepcopy(decoder.final_layer_norm).double(), copy.deepcopy(model.hf.lm_head).double()
    step = 1e-4
    with torch.no_grad():
        x, d = final.double(), direction.double()
        expected = (unembed(norm(x + step * d)) - unembed(norm(x - step * d))) / (2 * step)
    # float32 jvp against a float64 difference (truncation ~step^2): float32 rounding of the terms
    scale = float(expected.abs().max())
    assert scale > 1e-3
    torch.testing.assert_close(got.double(), expected, atol=1e-5 * scale, rtol=1e-4)
