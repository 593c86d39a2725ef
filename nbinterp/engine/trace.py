"""The one nnsight trace every run goes through: it reads what was asked for
and applies the interventions (head / MLP / neuron scaling, mean ablation,
attention-edge knockout, activation patching), and takes gradients of a metric
in the same forward + one backward.

The trace body uses torch ops on tensors prepared beforehand, so the same
request runs locally, through nnsight's `remote="local"` serialisation check,
or on NDIF.
"""

from __future__ import annotations

from typing import Any

import torch

from nbinterp.engine.architectures import Architecture, ModelShape, attention_call, get_path
from nbinterp.engine.attention_math import attention_output, attention_probabilities
from nbinterp.engine.plan import Metric, Plan

# What a run can capture per layer.
CAPTURES = ("qkv", "z", "resid_pre", "attn_out", "mlp_out")


def softcap_logits(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """The model's final logit soft-cap (Gemma2), applied after the unembedding as HF does."""
    return logits if cap is None else torch.tanh(logits / cap) * cap


def execute(
    nn_model: Any,
    arch: Architecture,
    shape: ModelShape,
    input_ids: torch.Tensor,
    plan: Plan,
    capture: dict[str, set[int]],
    metric: Metric | None = None,
    remote: bool | str = False,
    gradients: bool | None = None,
) -> dict[str, Any]:
    """Run one forward (and, with gradients, one backward) and return plain tensors.

    `capture` maps each name in CAPTURES to the layers to read (batch row 0).
    Returns a dict: "logits" [T, V], per-capture {layer: tensor} (detached),
    and with a metric: "metric" ([B] when the batch has several rows: then
    only the metric's position is unembedded and no logits are returned);
    with gradients (the default when a metric is given to a one-row batch):
    per-layer lists "grad_probs" [H, T, T], "grad_z" [T, H*D] and
    "grad_out_proj" [T, d_model].
    """
    layers = get_path(nn_model, arch.layers)
    n_layers = shape.n_layers
    rows = input_ids.shape[0]
    want_grads = metric is not None and rows == 1 if gradients is None else gradients
    metric_rows = metric is not None and not want_grads
    override = set(plan.knockout) | (set(range(n_layers)) if want_grads else set())
    read_attention_inputs = override | capture.get("qkv", set())
    calls = {l: attention_call(get_path(layers[l], arch.attention)) for l in read_attention_inputs}
    unembed = get_path(nn_model, arch.unembed)

    with torch.set_grad_enabled(want_grads), nn_model.trace(input_ids, remote=remote):
        saved = {name: {} for name in CAPTURES}
        probs_for_grad, z_for_grad, proj_for_grad = [], [], []
        for l in range(n_layers):
            block = layers[l]
            if l in plan.patch_resid or l in capture.get("resid_pre", ()):
                resid = block.input
                if l in plan.patch_resid:
                    where, values = plan.patch_resid[l]
                    resid = torch.where(where.to(resid.device), values.to(resid), resid)
                    block.input = resid
                if l in capture.get("resid_pre", ()):
                    saved["resid_pre"][l] = resid[0].detach()
            attention = get_path(block, arch.attention)
            if l in read_attention_inputs:
                call = calls[l]
                args, kwargs = call.inputs
                query, key, value, mask = args[1], args[2], args[3], args[4]
                if l in override:
                    knock = plan.knockout.get(l)
                    probs = attention_probabilities(
                        query, key, mask,
                        kwargs.get("scaling") or query.shape[-1] ** -0.5,
                        kwargs.get("softcap"), kwargs.get("sliding_window"),
                        None if knock is None else knock.to(query.device),
                    )
                    call.output = (attention_output(probs, value), probs)
                    probs_for_grad.append(probs)
                if l in capture.get("qkv", ()):
                    saved["qkv"][l] = (
                        query[0].detach(), key[0].detach(), value[0].detach(),
                        None if mask is None else mask[0].detach(),
                        {k: kwargs.get(k) for k in ("scaling", "softcap", "sliding_window")},
                    )
            needs_z = (
                want_grads or l in plan.z_scale or l in plan.patch_z or l in capture.get("z", ())
            )
            if needs_z:
                out_proj = get_path(attention, arch.out_proj)
                z = out_proj.input
                if l in plan.patch_z:
                    where, values = plan.patch_z[l]
                    z = torch.where(where.to(z.device), values.to(z), z)
                if l in plan.z_scale:
                    baseline = plan.z_baseline[l].to(z)
                    z = baseline + plan.z_scale[l].to(z) * (z - baseline)
                if l in plan.patch_z or l in plan.z_scale:
                    out_proj.input = z
                if l in capture.get("z", ()):
                    saved["z"][l] = z[0].detach()
                if want_grads:
                    z_for_grad.append(z)
                    proj_for_grad.append(out_proj.output)
            if l in plan.patch_attn or l in capture.get("attn_out", ()):
                attn_out = attention.output[0]
                if l in plan.patch_attn:
                    where, values = plan.patch_attn[l]
                    attn_out = torch.where(where.to(attn_out.device), values.to(attn_out), attn_out)
                    attention.output = (attn_out, *attention.output[1:])
                if l in capture.get("attn_out", ()):
                    saved["attn_out"][l] = attn_out[0].detach()
            mlp = get_path(block, arch.mlp)
            if l in plan.neuron_scale:
                down = get_path(mlp, arch.mlp_down)
                down.input = down.input * plan.neuron_scale[l].to(down.input)
            if l in plan.mlp_scale or l in plan.patch_mlp or l in capture.get("mlp_out", ()):
                mlp_out = mlp.output
                if l in plan.patch_mlp:
                    where, values = plan.patch_mlp[l]
                    mlp_out = torch.where(where.to(mlp_out.device), values.to(mlp_out), mlp_out)
                if l in plan.mlp_scale:
                    mlp_out = mlp_out * plan.mlp_scale[l]
                if l in plan.mlp_scale or l in plan.patch_mlp:
                    mlp.output = mlp_out
                if l in capture.get("mlp_out", ()):
                    saved["mlp_out"][l] = mlp_out[0].detach()
        if metric_rows:
            # Only the metric's position is read: unembed just that one (a large
            # vocabulary makes the unembedding a third of a small model's cost).
            unembed.input = unembed.input[:, metric.position : metric.position + 1]
            last = softcap_logits(unembed.output[:, 0].float(), shape.final_logit_softcap)
            value = last[:, metric.target]
            if metric.foil is not None:
                value = value - last[:, metric.foil]
            saved["metric"] = value.detach()
        else:
            logits = softcap_logits(unembed.output[0], shape.final_logit_softcap)
            saved["logits"] = logits.detach().float()
        if want_grads:
            value = logits[metric.position, metric.target]
            if metric.foil is not None:
                value = value - logits[metric.position, metric.foil]
            grads = torch.autograd.grad(value, probs_for_grad + z_for_grad + proj_for_grad)
            grads = [g[0].detach().float() for g in grads]
            saved["metric"] = value.detach().float()
            saved["grad_probs"] = grads[:n_layers]
            saved["grad_z"] = grads[n_layers : 2 * n_layers]
            saved["grad_out_proj"] = grads[2 * n_layers :]
        saved = saved.save()
    return saved
