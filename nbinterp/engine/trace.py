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

from nbinterp.engine.architectures import QK_PROJECTIONS, Architecture, ModelShape, attention_call, get_path
from nbinterp.engine.attention_math import attention_output, attention_probabilities
from nbinterp.engine.plan import Metric, Plan, apply_edits

# What a run can capture per layer (each name -> the layers to read, row 0 of the batch):
#   qkv        (query, key, value, mask, kwargs) at the attention call: what the
#              probabilities are recomputed from
#   z          the output projection's input [T, H*D] (every head's output before mixing)
#   w_o        the output projection's weight (read on the server for remote models)
#   resid_pre  the residual stream entering the block [T, d_model]
#   attn_out   the attention block's output [T, d_model]
#   mlp_out    the MLP's output [T, d_model]
#   embed      (layer 0) the token embedding's and, for learned positions, the
#              position embedding's outputs [T, d_model]
#   rotary     (layer 0) the rotary module's (cos, sin) [T, rotary dims]
#   qk_weights the input norm's (weight, bias) and the query/key projections'
#              (weight, bias) pairs (QK_PROJECTIONS): what the QK decomposition reads
#   neurons    the MLP's hidden activations [T, d_mlp] (the down projection's input)
#   resid_final (layer n_layers) the stream after the last block [T, d_model]
#   lens       the logit lens of the stream entering the block (and, as layer
#              n_layers, of the final stream): top token, its probability and the
#              lens target's probability per position, reduced inside the trace
CAPTURES = ("qkv", "z", "w_o", "resid_pre", "attn_out", "mlp_out", "neurons", "resid_final", "lens", "embed",
            "rotary", "qk_weights")


def softcap_logits(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """The model's final logit soft-cap (Gemma2), applied after the unembedding as HF does."""
    return logits if cap is None else torch.tanh(logits / cap) * cap


def _param(module: Any, name: str) -> torch.Tensor | None:
    """A module's parameter (read where the model lives: on the server for remote models), or None."""
    value = getattr(module, name, None)
    return None if value is None else value.detach()


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
    logits: str = "last",
    lens_target: int | None = None,
    attention_mask: torch.Tensor | None = None,
    all_rows: bool = False,
) -> dict[str, Any]:
    """Run one forward (and, with gradients, one backward) and return plain tensors.

    `capture` maps names in CAPTURES to the layers to read (batch row 0).
    `logits`: "last" returns the last position's logits [V] as "last_logits",
    "all" also every position's [T, V] as "logits", "none" neither.
    With a metric and several rows (or gradients=False), only the metric's
    position is unembedded and "metric" [B] comes back. With gradients (the
    default for a metric on a one-row batch): "metric", and per layer
    "grad_attn" [T, H, D] (d metric / d the attention call's output, from which
    d metric / d probability = grad_attn . v), "grad_z" [T, H*D] and
    "grad_out_proj" [T, d_model]; "qkv" and "z" are captured for every layer
    alongside. No probabilities are recomputed for gradients: the model keeps
    its own (SDPA) attention, so a forward + backward costs what it costs in
    plain torch.
    `attention_mask` [B, T] (1 = token, 0 = right padding) runs prompts of
    different lengths in one batch; `all_rows` keeps every row of the
    captures (z, resid_pre, attn_out, mlp_out) instead of row 0.
    """
    layers = get_path(nn_model, arch.layers)
    n_layers = shape.n_layers
    rows = input_ids.shape[0]
    want_grads = metric is not None and rows == 1 if gradients is None else gradients
    metric_rows = metric is not None and not want_grads
    capture = {name: set(layers_) for name, layers_ in capture.items()}
    if want_grads:
        for name in ("qkv", "z"):
            capture[name] = set(range(n_layers))
    override = set(plan.knockout)
    read_attention_inputs = override | capture.get("qkv", set())
    calls = {l: attention_call(get_path(layers[l], arch.attention)) for l in read_attention_inputs}
    unembed = get_path(nn_model, arch.unembed)
    final_norm = get_path(nn_model, arch.final_norm)
    lens_streams = capture.get("lens", set())
    cap = shape.final_logit_softcap
    row = slice(None) if all_rows else 0
    inputs = input_ids if attention_mask is None else {"input_ids": input_ids, "attention_mask": attention_mask}

    with torch.set_grad_enabled(want_grads), nn_model.trace(inputs, remote=remote):
        saved = {name: {} for name in CAPTURES}
        attn_for_grad, z_for_grad, proj_for_grad, lens_inputs = [], [], [], {}
        # reads follow the forward order: embeddings and rotary tables come first
        if capture.get("embed"):
            tokens = get_path(nn_model, arch.embed).output[0].detach()
            positions = None
            if arch.position_embedding is not None:
                positions = get_path(nn_model, arch.position_embedding).output
                positions = positions.reshape(-1, positions.shape[-1])[-input_ids.shape[1]:].detach()
            saved["embed"][0] = (tokens, positions)
        if capture.get("rotary"):
            saved["rotary"][0] = None
            if arch.rotary is not None:
                cos, sin = get_path(nn_model, arch.rotary).output
                saved["rotary"][0] = (cos[0].detach(), sin[0].detach())
        for l in range(n_layers):
            block = layers[l]
            if (l in plan.patch_resid or l in capture.get("resid_pre", ()) or l in lens_streams
                    or plan.edits("resid_pre", l)):
                resid = block.input
                if l in plan.patch_resid:
                    where, values = plan.patch_resid[l]
                    resid = torch.where(where.to(resid.device), values.to(resid), resid)
                if plan.edits("resid_pre", l):
                    resid = apply_edits(resid, plan, "resid_pre", l)
                if l in plan.patch_resid or plan.edits("resid_pre", l):
                    block.input = resid
                if l in capture.get("resid_pre", ()):
                    saved["resid_pre"][l] = resid[row].detach()
                if l in lens_streams:
                    lens_inputs[l] = resid[0:1].detach()
            attention = get_path(block, arch.attention)
            if l in read_attention_inputs or want_grads:
                call = calls[l]
                args, kwargs = call.inputs
                query, key, value, mask = args[1], args[2], args[3], args[4]
                if l in override:
                    probs = attention_probabilities(
                        query, key, mask,
                        kwargs.get("scaling") or query.shape[-1] ** -0.5,
                        kwargs.get("softcap"), kwargs.get("sliding_window"),
                        plan.knockout[l].to(query.device),
                    )
                    call.output = (attention_output(probs, value), probs)
                if want_grads:
                    attn_for_grad.append(call.output[0])
                if l in capture.get("qkv", ()):
                    saved["qkv"][l] = (
                        query[0].detach(), key[0].detach(), value[0].detach(),
                        None if mask is None else mask[0].detach(),
                        {k: kwargs.get(k) for k in ("scaling", "softcap", "sliding_window")},
                    )
            out_proj = get_path(attention, arch.out_proj)
            if l in capture.get("w_o", ()):
                bias = out_proj.bias
                saved["w_o"][l] = (out_proj.weight.detach(), None if bias is None else bias.detach())
            if l in capture.get("qk_weights", ()):
                norm = get_path(block, arch.input_norm)
                saved["qk_weights"][l] = (
                    (_param(norm, "weight"), _param(norm, "bias")),
                    tuple((_param(get_path(attention, m), "weight"), _param(get_path(attention, m), "bias"))
                          for m in QK_PROJECTIONS[arch.qk_projection]),
                )
            needs_z = want_grads or l in plan.z_scale or l in plan.patch_z or l in capture.get("z", ())
            if needs_z:
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
                    saved["z"][l] = z[row].detach()
                if want_grads:
                    z_for_grad.append(z)
                    proj_for_grad.append(out_proj.output)
            if l in plan.patch_attn or l in capture.get("attn_out", ()) or plan.edits("attn_out", l):
                attn_out = attention.output[0]
                if l in plan.patch_attn:
                    where, values = plan.patch_attn[l]
                    attn_out = torch.where(where.to(attn_out.device), values.to(attn_out), attn_out)
                if plan.edits("attn_out", l):
                    attn_out = apply_edits(attn_out, plan, "attn_out", l)
                if l in plan.patch_attn or plan.edits("attn_out", l):
                    attention.output = (attn_out, *attention.output[1:])
                if l in capture.get("attn_out", ()):
                    saved["attn_out"][l] = attn_out[row].detach()
            mlp = get_path(block, arch.mlp)
            if l in plan.neuron_scale or plan.edits("neurons", l) or l in capture.get("neurons", ()):
                down = get_path(mlp, arch.mlp_down)
                # OPT's decoder layer flattens the tokens to [B*T, ...] before its MLP:
                # read the MLP's tensors as [B, T, ...] and write them back as found
                neurons = down.input
                mlp_shape = neurons.shape
                neurons = neurons.reshape(*input_ids.shape, -1)
                if l in plan.neuron_scale:
                    neurons = neurons * plan.neuron_scale[l].to(neurons)
                if plan.edits("neurons", l):
                    neurons = apply_edits(neurons, plan, "neurons", l)
                if l in plan.neuron_scale or plan.edits("neurons", l):
                    down.input = neurons.reshape(mlp_shape)
                if l in capture.get("neurons", ()):
                    saved["neurons"][l] = neurons[row].detach()
            if l in plan.mlp_scale or l in plan.patch_mlp or l in capture.get("mlp_out", ()) or plan.edits("mlp_out", l):
                mlp_out = mlp.output
                mlp_shape = mlp_out.shape
                mlp_out = mlp_out.reshape(*input_ids.shape, -1)
                if l in plan.patch_mlp:
                    where, values = plan.patch_mlp[l]
                    mlp_out = torch.where(where.to(mlp_out.device), values.to(mlp_out), mlp_out)
                if l in plan.mlp_scale:
                    mlp_out = mlp_out * plan.mlp_scale[l]
                if plan.edits("mlp_out", l):
                    mlp_out = apply_edits(mlp_out, plan, "mlp_out", l)
                if l in plan.mlp_scale or l in plan.patch_mlp or plan.edits("mlp_out", l):
                    mlp.output = mlp_out.reshape(mlp_shape)
                if l in capture.get("mlp_out", ()):
                    saved["mlp_out"][l] = mlp_out[row].detach()
        if n_layers in lens_streams or plan.edits("resid_final", n_layers) or capture.get("resid_final"):
            final = final_norm.input
            if plan.edits("resid_final", n_layers):
                final = apply_edits(final, plan, "resid_final", n_layers)
                final_norm.input = final
            if capture.get("resid_final"):
                saved["resid_final"][n_layers] = final[row].detach()
            if n_layers in lens_streams:
                lens_inputs[n_layers] = final[0:1].detach()
        if metric_rows:
            # Only the metric's position is read: unembed just that one (a large
            # vocabulary makes the unembedding a third of a small model's cost).
            unembed.input = unembed.input[:, metric.position : metric.position + 1]
            last = softcap_logits(unembed.output[:, 0].float(), cap)
            value = last[:, metric.target]
            if metric.foil is not None:
                value = value - last[:, metric.foil]
            saved["metric"] = value.detach()
        elif want_grads and logits != "all":
            # Unembed only the metric's position (and the last one, for the run's
            # logits): the backward then never holds [T, vocab] logits and their
            # gradient (~0.4 GB for GPT-2 at T = 1,024).
            n_tokens = input_ids.shape[1]
            rows = sorted({metric.position, n_tokens - 1})
            unembed.input = unembed.input[:, rows]
            kept = softcap_logits(unembed.output[0], cap)
            metric_row = kept[rows.index(metric.position)]
            if logits != "none":
                saved["last_logits"] = kept[-1].detach().float()
        else:
            all_logits = softcap_logits(unembed.output[0], cap)
            metric_row = None if metric is None else all_logits[metric.position]
            if logits != "none":
                saved["last_logits"] = all_logits[-1].detach().float()
            if logits == "all":
                saved["logits"] = all_logits.detach().float()
        if lens_inputs:
            # The model's own final norm and unembedding on earlier streams,
            # reduced here so only [streams, T] numbers leave the trace.
            with torch.no_grad():
                for l, resid in lens_inputs.items():
                    probabilities = torch.softmax(softcap_logits(unembed(final_norm(resid))[0].float(), cap), dim=-1)
                    best = probabilities.max(dim=-1)
                    saved["lens"][l] = (
                        best.values, best.indices,
                        None if lens_target is None else probabilities[:, lens_target],
                    )
        if want_grads:
            value = metric_row[metric.target]
            if metric.foil is not None:
                value = value - metric_row[metric.foil]
            grads = torch.autograd.grad(value, attn_for_grad + z_for_grad + proj_for_grad)
            grads = [g[0].detach().float() for g in grads]
            saved["metric"] = value.detach().float()
            saved["grad_attn"] = grads[:n_layers]
            saved["grad_z"] = grads[n_layers : 2 * n_layers]
            saved["grad_out_proj"] = grads[2 * n_layers :]
        saved = saved.save()
    return saved
