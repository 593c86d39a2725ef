"""Independent references: the same interventions written as plain torch
hooks / a patched eager attention, with no nbinterp code involved."""

from __future__ import annotations

import contextlib
import importlib

import torch

# module path of the output projection / MLP down projection, per model type
OUT_PROJ = {
    "gpt2": "attn.c_proj", "gpt_neox": "attention.dense", "gpt_bigcode": "attn.c_proj",
    "phi": "self_attn.dense", "gptj": "attn.out_proj", "opt": "self_attn.out_proj",
}
MLP_DOWN = {
    "gpt2": "mlp.c_proj", "gpt_neox": "mlp.dense_4h_to_h", "gpt_bigcode": "mlp.c_proj",
    "phi": "mlp.fc2", "gptj": "mlp.fc_out", "opt": "fc2",
}
MLP = {"opt": "fc2"}  # OPT's fc1 / fc2 sit on the block: fc2's output is the MLP's write
LAYERS = {"gpt2": "transformer.h", "gpt_neox": "gpt_neox.layers", "gpt_bigcode": "transformer.h", "gptj": "transformer.h",
          "opt": "model.decoder.layers"}


def blocks(hf):
    node = hf
    for part in LAYERS.get(hf.config.model_type, "model.layers").split("."):
        node = getattr(node, part)
    return node


def out_proj(hf, layer):
    return blocks(hf)[layer].get_submodule(OUT_PROJ.get(hf.config.model_type, "self_attn.o_proj"))


def mlp(hf, layer):
    return blocks(hf)[layer].get_submodule(MLP.get(hf.config.model_type, "mlp"))


def mlp_down(hf, layer):
    return blocks(hf)[layer].get_submodule(MLP_DOWN.get(hf.config.model_type, "mlp.down_proj"))


def head_slice(hf, head):
    n_heads = getattr(hf.config, "num_attention_heads", None) or hf.config.n_head
    d_model = getattr(hf.config, "hidden_size", None) or hf.config.n_embd
    head_dim = getattr(hf.config, "head_dim", None) or d_model // n_heads
    return slice(head * head_dim, (head + 1) * head_dim)


@contextlib.contextmanager
def hooks(*handles):
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def scale_head_input(hf, layer, head, scale, baseline=None):
    """Forward pre-hook on the output projection: z_h <- baseline + scale * (z_h - baseline)."""
    cols = head_slice(hf, head)

    def hook(module, args):
        z = args[0].clone()
        base = 0 if baseline is None else baseline[cols]
        z[..., cols] = base + scale * (z[..., cols] - base)
        return (z,) + args[1:]

    return out_proj(hf, layer).register_forward_pre_hook(hook)


@contextlib.contextmanager
def knocked_out_eager(hf, edges):
    """Patch the architecture's eager attention so that the given (layer, head, q, k)
    probabilities are zeroed and each row renormalised by its new sum."""
    module = importlib.import_module(type(hf).__module__)
    original = module.eager_attention_forward

    def patched(attn_module, query, key, value, attention_mask, **kwargs):
        _, weights = original(attn_module, query, key, value, attention_mask, **kwargs)
        keep = torch.ones_like(weights)
        for layer, head, q, k in edges:
            if attn_module.layer_idx == layer:
                keep[:, head, q, k] = 0
        weights = weights * keep
        weights = weights / weights.sum(-1, keepdim=True)
        n_rep = query.shape[1] // value.shape[1]
        value = value.repeat_interleave(n_rep, dim=1)
        return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights

    module.eager_attention_forward = patched
    try:
        yield
    finally:
        module.eager_attention_forward = original
