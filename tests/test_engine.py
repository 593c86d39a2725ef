"""The engine against independent references on every supported architecture:
HF eager `output_attentions`, plain torch hooks, and torch.autograd."""

from __future__ import annotations

import pytest
import torch

import nbinterp as ni
from conftest import PROMPT, eager_copy, random_model
from reference_hooks import (
    head_slice, hooks, knocked_out_eager, mlp, mlp_down, out_proj, scale_head_input,
)

ATOL = 1e-5  # probabilities and gradients
LOGIT_ATOL = 1e-4  # logits: float32 summation order differs between hook styles


def ids_of(run):
    return run.input_ids


def test_attention_equals_eager_output_attentions(arch_model):
    name, hf, model = arch_model
    run = model.run(PROMPT)
    with torch.no_grad():
        reference = eager_copy(hf)(ids_of(run), output_attentions=True)
    assert hf.config._attn_implementation == ("eager" if name == "gemma2" else "sdpa")
    for layer in range(model.n_layers):
        expected = reference.attentions[layer][0]
        assert run.attention(layer).shape == (model.n_heads, len(run), len(run))
        torch.testing.assert_close(run.attention(layer), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(run.logits, reference.logits[0].float(), atol=LOGIT_ATOL, rtol=0)


def test_head_outputs_sum_to_the_projection_output(arch_model):
    _, hf, model = arch_model
    run = model.run(PROMPT)
    captured = {}
    handle = out_proj(hf, 1).register_forward_hook(lambda m, a, out: captured.setdefault("out", out[0]))
    with hooks(handle), torch.no_grad():
        hf(ids_of(run))
    bias = out_proj(hf, 1).bias
    total = run.head_outputs(1).sum(0) + (0 if bias is None else bias)
    torch.testing.assert_close(total, captured["out"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.5])
def test_head_ablation_equals_a_plain_hook(arch_model, scale):
    _, hf, model = arch_model
    run = model.run(PROMPT, ablate={(1, 2): scale, "L0.H0": 0.0})
    with hooks(scale_head_input(hf, 1, 2, scale), scale_head_input(hf, 0, 0, 0.0)), torch.no_grad():
        expected = hf(ids_of(run)).logits[0]
    torch.testing.assert_close(run.logits, expected, atol=LOGIT_ATOL, rtol=0)
    assert (run.logits - model.run(PROMPT).logits).abs().max() > 1e-4  # it did something


def test_mean_ablation_uses_the_reference_mean(arch_model):
    _, hf, model = arch_model
    reference = ["w1 w2 w3 w4", "w7 w8 w9 w10 w11 w12"]
    zs = []
    handle = out_proj(hf, 0).register_forward_pre_hook(lambda m, args: zs.append(args[0][0].detach()))
    with hooks(handle), torch.no_grad():
        for prompt in reference:
            hf(model.tokenize(prompt))
    mean = torch.cat(zs).mean(0)
    run = model.run(PROMPT, ablate={(0, 1): 0.0}, ablation="mean", reference=reference)
    with hooks(scale_head_input(hf, 0, 1, 0.0, baseline=mean)), torch.no_grad():
        expected = hf(ids_of(run)).logits[0]
    torch.testing.assert_close(run.logits, expected, atol=LOGIT_ATOL, rtol=0)


def test_mlp_and_neuron_ablation_equal_plain_hooks(arch_model):
    _, hf, model = arch_model
    run = model.run(PROMPT, ablate={"L1.mlp": 0.5}, ablate_neurons={(0, 3): 0.0, (0, 7): 2.0})

    def scale_neurons(module, args):
        hidden = args[0].clone()
        hidden[..., 3] = 0.0
        hidden[..., 7] *= 2.0
        return (hidden,)

    handles = (
        mlp(hf, 1).register_forward_hook(lambda m, a, out: out * 0.5),
        mlp_down(hf, 0).register_forward_pre_hook(scale_neurons),
    )
    with hooks(*handles), torch.no_grad():
        expected = hf(ids_of(run)).logits[0]
    torch.testing.assert_close(run.logits, expected, atol=LOGIT_ATOL, rtol=0)


def test_edge_knockout_equals_zero_and_renormalise(arch_model):
    _, hf, model = arch_model
    edges = [(1, 0, 6, 1), (1, 3, 9, 2), (0, 2, 4, 4)]
    run = model.run(PROMPT, knockout=edges)
    reference = eager_copy(hf)
    with knocked_out_eager(reference, edges), torch.no_grad():
        expected = reference(ids_of(run), output_attentions=True)
    torch.testing.assert_close(run.logits, expected.logits[0].float(), atol=LOGIT_ATOL, rtol=0)
    for layer in range(model.n_layers):
        torch.testing.assert_close(run.attention(layer), expected.attentions[layer][0], atol=ATOL, rtol=0)
    assert run.attention(1)[0, 6, 1] == 0
    assert (run.logits - model.run(PROMPT).logits).abs().max() > 1e-4


def test_gradients_match_autograd_on_the_plain_model(arch_model):
    _, hf, model = arch_model
    run = model.run(PROMPT, target="w5", foil="w9", gradients=True)
    reference = eager_copy(hf)
    projection_outputs = []

    def keep_grad(module, args, out):
        out.retain_grad()
        projection_outputs.append(out)

    handles = [out_proj(reference, l).register_forward_hook(keep_grad) for l in range(model.n_layers)]
    with hooks(*handles):
        out = reference(ids_of(run), output_attentions=True)
        for attention in out.attentions:
            attention.retain_grad()
        metric = out.logits[0, -1, model.token_id("w5")] - out.logits[0, -1, model.token_id("w9")]
        metric.backward()
    assert run.metric == pytest.approx(metric.item(), abs=1e-5)
    for layer in range(model.n_layers):
        torch.testing.assert_close(run.grad_attention(layer), out.attentions[layer].grad[0], atol=ATOL, rtol=1e-4)
        grad_out = projection_outputs[layer].grad[0]
        for head in range(model.n_heads):
            torch.testing.assert_close(run.grad_head_outputs(layer)[head], grad_out, atol=ATOL, rtol=1e-4)
    # zero-ablation estimate per head = -<d metric / d out, head output>, summed over positions
    expected = -torch.stack([
        (run.head_outputs(l) * projection_outputs[l].grad[0]).sum(dim=(1, 2)) for l in range(model.n_layers)
    ])
    torch.testing.assert_close(run.head_attribution(), expected, atol=1e-4, rtol=1e-3)


def test_value_weighted_norms(arch_model):
    _, hf, model = arch_model
    run = model.run(PROMPT)
    layer, head, query, key = 1, 2, 7, 3
    # the norm of what head `head` moves from `key` to `query`, from first principles
    inputs = run.captured("qkv", layer)
    query_states, key_states, value = inputs.query, inputs.key, inputs.value
    n_rep = model.n_heads // model.n_kv_heads
    v = value[head // n_rep, key]
    # the head's rows of the output projection, read from the HF module itself
    weight = out_proj(hf, layer).weight.detach()
    w_in_out = weight if type(out_proj(hf, layer)).__name__ == "Conv1D" else weight.T
    w_o = w_in_out[head_slice(hf, head)]
    expected = run.attention(layer)[head, query, key] * (v @ w_o).norm()
    assert run.value_weighted(layer)[head, query, key].item() == pytest.approx(expected.item(), rel=1e-4)


def test_patching_every_residual_position_at_layer_0_recovers_the_source(arch_model):
    _, _, model = arch_model
    clean = model.run(PROMPT)
    corrupted = "w6 w17 w3 w42 w9 w5 w17 w3 w28 w11"
    patched = model.run(corrupted, patch_from=clean, patch=[("resid_pre", 0, None)])
    assert torch.equal(patched.logits, clean.logits)
    untouched = model.run(corrupted, patch_from=PROMPT, patch=[])
    assert torch.equal(untouched.logits, model.run(corrupted).logits)


def test_head_patching_equals_a_plain_hook(arch_model):
    _, hf, model = arch_model
    corrupted = "w6 w17 w3 w42 w9 w5 w17 w3 w28 w11"
    run = model.run(corrupted, patch_from=PROMPT, patch=[("head", 1, 3, 8), ("mlp_out", 0, None)])
    cols = head_slice(hf, 3)
    source = {}
    grab = [
        out_proj(hf, 1).register_forward_pre_hook(lambda m, a: source.setdefault("z", a[0].clone())),
        mlp(hf, 0).register_forward_hook(lambda m, a, out: source.setdefault("mlp", out.clone())),
    ]
    with hooks(*grab), torch.no_grad():
        hf(model.tokenize(PROMPT))

    def put_head(module, args):
        z = args[0].clone()
        z[0, 8, cols] = source["z"][0, 8, cols]
        return (z,)

    put = [
        out_proj(hf, 1).register_forward_pre_hook(put_head),
        mlp(hf, 0).register_forward_hook(lambda m, a, out: source["mlp"]),
    ]
    with hooks(*put), torch.no_grad():
        expected = hf(model.tokenize(corrupted)).logits[0]
    torch.testing.assert_close(run.logits, expected, atol=LOGIT_ATOL, rtol=0)


def test_runs_do_not_change_the_model(arch_model):
    _, hf, model = arch_model
    before = model.run(PROMPT).logits
    model.run(PROMPT, ablate={(0, 0): 0.0}, knockout=[(1, 1, 5, 2)], target="w5", gradients=True)
    assert torch.equal(model.run(PROMPT).logits, before)
    assert all(p.grad is None for p in hf.parameters())
