"""Steering edits (add a delta, project a direction out) at every edit site, and
the neuron capture, against plain torch hooks on the Hugging Face model."""

from __future__ import annotations

import pytest
import torch

import nbinterp as ni
from conftest import PROMPT, eager_copy
from reference_hooks import blocks, hooks, mlp_down

LOGIT_ATOL = 1e-4


def final_norm(hf):
    from nbinterp.engine.architectures import architecture_for, get_path

    return get_path(hf, architecture_for(hf).final_norm)


def mlp_module(hf, layer):
    from nbinterp.engine.architectures import architecture_for, get_path

    arch = architecture_for(hf)
    return get_path(blocks(hf)[layer], arch.mlp)


def attention_module(hf, layer):
    from nbinterp.engine.architectures import architecture_for, get_path

    arch = architecture_for(hf)
    return get_path(blocks(hf)[layer], arch.attention)


def test_add_and_project_equal_plain_hooks(arch_model):
    _, hf, model = arch_model
    n_tokens = len(model.tokenize(PROMPT)[0])
    generator = torch.Generator().manual_seed(0)
    delta_resid = torch.randn(n_tokens, model.d_model, generator=generator)
    delta_neurons = torch.randn(model.d_mlp, generator=generator)
    direction = torch.randn(model.d_model, generator=generator)
    unit = direction / direction.norm()
    got = model.run(PROMPT, capture=["logits"], add={("resid_pre", 1): delta_resid, ("neurons", 0): delta_neurons},
                    project_out={("mlp_out", 1): direction, ("resid_final", None): (direction, 0.5)})

    def add_to_input(delta):
        return lambda module, args: (args[0] + delta,) + tuple(args[1:])

    def project_output(scale):
        def hook(module, args, out):
            x = out[0] if isinstance(out, tuple) else out
            x = x - (1 - scale) * (x @ unit)[..., None] * unit
            return (x,) + tuple(out[1:]) if isinstance(out, tuple) else x
        return hook

    def project_input(scale):
        return lambda module, args: (args[0] - (1 - scale) * (args[0] @ unit)[..., None] * unit,) + tuple(args[1:])

    reference = eager_copy(hf)
    handles = [
        blocks(reference)[1].register_forward_pre_hook(add_to_input(delta_resid)),
        mlp_down(reference, 0).register_forward_pre_hook(add_to_input(delta_neurons)),
        mlp_module(reference, 1).register_forward_hook(project_output(0.0)),
        final_norm(reference).register_forward_pre_hook(project_input(0.5)),
    ]
    with hooks(*handles), torch.no_grad():
        expected = reference(got.input_ids).logits[0]
    plain = model.run(PROMPT, capture=["logits"]).logits
    assert (plain - expected).abs().max() > 100 * LOGIT_ATOL  # the edits change something
    torch.testing.assert_close(got.logits, expected, atol=LOGIT_ATOL, rtol=1e-4)


def test_neuron_capture_equals_the_down_projection_input(arch_model):
    _, hf, model = arch_model
    run = model.run(PROMPT, capture=["neurons", "resid_final"])
    seen = {}
    # OPT's block flattens the tokens to [B*T, d_mlp] before its MLP: view them as [B, T, d_mlp]
    handles = [mlp_down(hf, l).register_forward_pre_hook(
        lambda m, a, l=l: seen.__setitem__(l, a[0].reshape(*run.input_ids.shape, -1)[0].detach()))
        for l in range(model.n_layers)]
    handles.append(final_norm(hf).register_forward_pre_hook(lambda m, a: seen.__setitem__("final", a[0][0].detach())))
    with hooks(*handles), torch.no_grad():
        hf(run.input_ids)
    for layer in range(model.n_layers):
        torch.testing.assert_close(run.captured("neurons", layer), seen[layer], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(run.captured("resid_final", model.n_layers), seen["final"], atol=1e-5, rtol=1e-5)


def test_bad_edits_say_what_to_write(arch_model):
    _, _, model = arch_model
    with pytest.raises(ni.NbinterpError, match="edit site"):
        model.run(PROMPT, add={("resid_mid", 0): torch.zeros(model.d_model)})
    with pytest.raises(ni.NbinterpError, match=r"use \[10, "):
        model.run(PROMPT, add={("resid_pre", 0): torch.zeros(3, model.d_model)})
    with pytest.raises(ni.NbinterpError, match="non-zero direction"):
        model.run(PROMPT, project_out={("resid_pre", 0): torch.zeros(model.d_model)})
    with pytest.raises(ni.NbinterpError, match="out of range"):
        model.run(PROMPT, add={("mlp_out", 99): torch.zeros(model.d_model)})
