"""The one nnsight trace every run goes through: it reads what was asked for
and applies the interventions (head / MLP / neuron scaling, mean ablation,
attention-edge knockout, activation patching, edits), and takes gradients of
a metric in the same forward + one backward.

`execute` opens ONE trace and calls one step per site in forward order
(nnsight needs reads in the order the model computes them): embeddings,
then per block the stream entering it, the attention call, the head
outputs (z), the attention output, the neurons, the MLP output; then the
final stream, the unembedding and metric, the logit lens, the direct logit
effects and the gradients. The steps use torch ops on tensors prepared
beforehand, so the same request runs locally, through nnsight's
`remote="local"` serialisation check, or on NDIF. What each capture holds:
`nbinterp.engine.captures`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from nbinterp.engine.architectures import QK_PROJECTIONS, Architecture, ModelShape, attention_call, get_path
from nbinterp.engine.attention_math import attention_output, attention_probabilities
from nbinterp.engine.plan import apply_edits
from nbinterp.engine.request import DirectEffect, TraceRequest

__all__ = ["CAPTURES", "DirectEffect", "TraceRequest", "execute", "softcap_logits"]

CAPTURES = ("qkv", "z", "w_o", "resid_pre", "attn_out", "mlp_out", "neurons", "resid_final", "lens", "embed",
            "rotary", "qk_weights")


def softcap_logits(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """The model's final logit soft-cap (Gemma2), applied after the unembedding as HF does."""
    return logits if cap is None else torch.tanh(logits / cap) * cap


@dataclass
class Sites:
    """The model's modules a request touches (nnsight envoys), looked up once before the trace."""

    root: Any
    arch: Architecture
    shape: ModelShape
    layers: Any
    calls: dict[int, Any]
    final_norm: Any
    unembed: Any

    @classmethod
    def of(cls, nn_model: Any, arch: Architecture, shape: ModelShape, request: TraceRequest) -> "Sites":
        layers = get_path(nn_model, arch.layers)
        wanted = set(request.plan.knockout) | request.capture.get("qkv", set())
        calls = {l: attention_call(get_path(layers[l], arch.attention)) for l in wanted}
        return cls(nn_model, arch, shape, layers, calls, get_path(nn_model, arch.final_norm),
                   get_path(nn_model, arch.unembed))


@dataclass
class TraceState:
    """What the steps accumulate inside the trace: the results and the tensors the backward needs."""

    saved: dict[str, Any]
    attn_for_grad: list = field(default_factory=list)
    z_for_grad: list = field(default_factory=list)
    proj_for_grad: list = field(default_factory=list)
    lens_inputs: dict[int, Any] = field(default_factory=dict)
    metric_row: Any = None
    # (name, layer) -> the activation tensor whose gradient `grad_captures` asks for
    site_for_grad: dict[tuple[str, int], Any] = field(default_factory=dict)


def _param(module: Any, name: str) -> torch.Tensor | None:
    """A module's parameter (read where the model lives: on the server for remote models), or None."""
    value = getattr(module, name, None)
    return None if value is None else value.detach()


def _patched(x: torch.Tensor, patch: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    if patch is None:
        return x
    where, values = patch
    return torch.where(where.to(x.device), values.to(x), x)


def execute(nn_model: Any, arch: Architecture, shape: ModelShape, request: TraceRequest,
            remote: bool | str = False) -> dict[str, Any]:
    """Run one forward (and, with gradients, one backward) and return plain tensors."""
    if request.want_grads:
        for name in ("qkv", "z"):
            request.capture[name] = set(range(shape.n_layers))
    sites = Sites.of(nn_model, arch, shape, request)
    with warnings.catch_warnings():
        # transformers 5 renames past_key_values to `cache` in some models (a FutureWarning);
        # nnsight passes on only the old name, which still works
        warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated", category=FutureWarning)
        return _execute(nn_model, sites, request, remote)


def _execute(nn_model: Any, sites: Sites, request: TraceRequest, remote: bool | str) -> dict[str, Any]:
    shape = sites.shape
    with torch.set_grad_enabled(request.want_grads), nn_model.trace(request.inputs, remote=remote,
                                                                    **(request.forward_kwargs or {})):
        state = TraceState({name: {} for name in CAPTURES})
        embeddings(sites, request, state)
        start = skip_below(sites, request)
        for l in range(start, shape.n_layers):
            resid_pre(sites, request, state, l)
            attention_inputs(sites, request, state, l)
            attention_weights(sites, request, state, l)
            head_outputs(sites, request, state, l)
            attention_out(sites, request, state, l)
            neurons(sites, request, state, l)
            mlp_out(sites, request, state, l)
        final_stream(sites, request, state)
        unembed_and_metric(sites, request, state)
        logit_lens(sites, request, state)
        direct_effects(sites, request, state)
        gradients(sites, request, state)
        saved = state.saved.save()
    return saved


# ------------------------------------------------------------------ the steps, in forward order
def skip_below(sites: Sites, request: TraceRequest) -> int:
    """`start_at`: blocks below l are skipped, each returning the given stream
    (only block l - 1's output is read, as block l's input). Returns l."""
    if request.start_at is None:
        return 0
    start, stream = request.start_at
    rows = request.input_ids.shape[0]
    stream = stream.to(request.input_ids.device)
    # one stream for every row, or one per prompt (row r runs prompt r mod P)
    stream = stream.expand(rows, -1, -1) if stream.shape[0] == 1 else stream.repeat(rows // stream.shape[0], 1, 1)
    for l in range(start):
        sites.layers[l].skip(stream)
    return start


def embeddings(sites: Sites, request: TraceRequest, state: TraceState) -> None:
    """Token and (learned) position embeddings, and the rotary tables: the first reads."""
    if request.capture.get("embed"):
        tokens = get_path(sites.root, sites.arch.embed).output[0].detach()
        positions = None
        if sites.arch.position_embedding is not None:
            positions = get_path(sites.root, sites.arch.position_embedding).output
            positions = positions.reshape(-1, positions.shape[-1])[-request.input_ids.shape[1]:].detach()
        state.saved["embed"][0] = {"tokens": tokens, "positions": positions}
    if request.capture.get("rotary"):
        state.saved["rotary"][0] = None
        if sites.arch.rotary is not None:
            cos, sin = get_path(sites.root, sites.arch.rotary).output
            state.saved["rotary"][0] = {"cos": cos[0].detach(), "sin": sin[0].detach()}


def resid_pre(sites: Sites, request: TraceRequest, state: TraceState, l: int) -> None:
    """The stream entering block l: patched, edited, read, and kept for the logit lens."""
    plan = request.plan
    edited = l in plan.patch_resid or plan.edits("resid_pre", l)
    if not (edited or request.wants("resid_pre", l) or request.wants("lens", l)):
        return
    block = sites.layers[l]
    resid = _patched(block.input, plan.patch_resid.get(l))
    if plan.edits("resid_pre", l):
        resid = apply_edits(resid, plan, "resid_pre", l)
    if edited:
        block.input = resid
    if request.wants("resid_pre", l):
        state.saved["resid_pre"][l] = resid[request.row].detach()
        _keep_for_grad(request, state, "resid_pre", l, resid)
    if request.wants("lens", l):
        state.lens_inputs[l] = _lens_rows(request, resid)


def attention_inputs(sites: Sites, request: TraceRequest, state: TraceState, l: int) -> None:
    """The attention call: its inputs read, its output replaced for knocked-out edges."""
    if l not in sites.calls:
        return
    call = sites.calls[l]
    args, kwargs = call.inputs
    query, key, value, mask = args[1], args[2], args[3], args[4]
    knockout = request.plan.knockout.get(l)
    if knockout is not None:
        # A resumed forward's sliding-window layers hold only the keys still in view (the
        # cache dropped older ones, which no query here can see): the mask's last columns.
        knockout = knockout[..., -key.shape[-2]:]
        probs = attention_probabilities(
            query, key, mask, kwargs.get("scaling") or query.shape[-1] ** -0.5, kwargs.get("softcap"),
            kwargs.get("sliding_window"), knockout.to(query.device),
        )
        call.output = (attention_output(probs, value), probs)
    if request.want_grads:
        state.attn_for_grad.append(call.output[0])
    if request.wants("qkv", l):
        state.saved["qkv"][l] = {
            "query": query[0].detach(), "key": key[0].detach(), "value": value[0].detach(),
            "mask": None if mask is None else mask[0].detach(),
            **{k: kwargs.get(k) for k in ("scaling", "softcap", "sliding_window")},
        }


def attention_weights(sites: Sites, request: TraceRequest, state: TraceState, l: int) -> None:
    """Parameters of block l read where the model lives: W_O, the QK decomposition's."""
    if not (request.wants("w_o", l) or request.wants("qk_weights", l)):
        return
    block = sites.layers[l]
    attention = get_path(block, sites.arch.attention)
    if request.wants("w_o", l):
        out_proj = get_path(attention, sites.arch.out_proj)
        state.saved["w_o"][l] = {"weight": out_proj.weight.detach(), "bias": _param(out_proj, "bias")}
    if request.wants("qk_weights", l):
        norm = get_path(block, sites.arch.input_norm)
        state.saved["qk_weights"][l] = {
            "norm_weight": _param(norm, "weight"), "norm_bias": _param(norm, "bias"),
            "projections": tuple((_param(get_path(attention, m), "weight"), _param(get_path(attention, m), "bias"))
                                 for m in QK_PROJECTIONS[sites.arch.qk_projection]),
        }


def head_outputs(sites: Sites, request: TraceRequest, state: TraceState, l: int) -> None:
    """z, the output projection's input [.., H*D]: patched, scaled per head (ablation), read."""
    plan = request.plan
    edited = l in plan.z_scale or l in plan.patch_z
    if not (edited or request.want_grads or request.wants("z", l)):
        return
    out_proj = get_path(get_path(sites.layers[l], sites.arch.attention), sites.arch.out_proj)
    z = _patched(out_proj.input, plan.patch_z.get(l))
    if l in plan.z_scale:
        baseline = plan.z_baseline[l].to(z)
        z = baseline + plan.z_scale[l].to(z) * (z - baseline)
    if edited:
        out_proj.input = z
    if request.wants("z", l):
        state.saved["z"][l] = z[request.row].detach()
    if request.want_grads:
        state.z_for_grad.append(z)
        state.proj_for_grad.append(out_proj.output)


def attention_out(sites: Sites, request: TraceRequest, state: TraceState, l: int) -> None:
    """The attention block's output: patched, edited, read."""
    plan = request.plan
    edited = l in plan.patch_attn or plan.edits("attn_out", l)
    if not (edited or request.wants("attn_out", l)):
        return
    attention = get_path(sites.layers[l], sites.arch.attention)
    out = _patched(attention.output[0], plan.patch_attn.get(l))
    if plan.edits("attn_out", l):
        out = apply_edits(out, plan, "attn_out", l)
    if edited:
        attention.output = (out, *attention.output[1:])
    if request.wants("attn_out", l):
        state.saved["attn_out"][l] = out[request.row].detach()
        _keep_for_grad(request, state, "attn_out", l, out)


# OPT's decoder layer flattens the tokens to [B*T, ...] before its MLP: the MLP
# steps read its tensors as [B, T, ...] and write them back as found.
def neurons(sites: Sites, request: TraceRequest, state: TraceState, l: int) -> None:
    """The MLP's hidden activations (the down projection's input): scaled, edited, read."""
    plan = request.plan
    edited = l in plan.neuron_scale or plan.edits("neurons", l)
    if not (edited or request.wants("neurons", l)):
        return
    down = get_path(get_path(sites.layers[l], sites.arch.mlp), sites.arch.mlp_down)
    found = down.input
    x = found.reshape(*request.input_ids.shape, -1)
    if l in plan.neuron_scale:
        x = x * plan.neuron_scale[l].to(x)
    if plan.edits("neurons", l):
        x = apply_edits(x, plan, "neurons", l)
    if edited:
        down.input = x.reshape(found.shape)
    if request.wants("neurons", l):
        state.saved["neurons"][l] = x[request.row].detach()


def mlp_out(sites: Sites, request: TraceRequest, state: TraceState, l: int) -> None:
    """The MLP's output: patched, scaled (ablation), edited, read."""
    plan = request.plan
    edited = l in plan.mlp_scale or l in plan.patch_mlp or plan.edits("mlp_out", l)
    if not (edited or request.wants("mlp_out", l)):
        return
    mlp = get_path(sites.layers[l], sites.arch.mlp)
    found = mlp.output
    x = _patched(found.reshape(*request.input_ids.shape, -1), plan.patch_mlp.get(l))
    if l in plan.mlp_scale:
        x = x * plan.mlp_scale[l]
    if plan.edits("mlp_out", l):
        x = apply_edits(x, plan, "mlp_out", l)
    if edited:
        mlp.output = x.reshape(found.shape)
    if request.wants("mlp_out", l):
        state.saved["mlp_out"][l] = x[request.row].detach()
        # the tensor the model goes on with (a reshape of it is not in the graph)
        _keep_for_grad(request, state, "mlp_out", l, x if edited else found)


def _keep_for_grad(request: TraceRequest, state: TraceState, name: str, l: int, tensor: Any) -> None:
    if request.want_grads and name in request.grad_captures:
        state.site_for_grad[(name, l)] = tensor


def final_stream(sites: Sites, request: TraceRequest, state: TraceState) -> None:
    """The stream after the last block (the final norm's input): edited, read, lens."""
    n = sites.shape.n_layers
    edited = request.plan.edits("resid_final", n)
    if not (edited or request.capture.get("resid_final") or request.wants("lens", n)):
        return
    final = sites.final_norm.input
    if edited:
        final = apply_edits(final, request.plan, "resid_final", n)
        sites.final_norm.input = final
    if request.capture.get("resid_final"):
        state.saved["resid_final"][n] = final[request.row].detach()
    if request.wants("lens", n):
        state.lens_inputs[n] = _lens_rows(request, final)


def _lens_rows(request: TraceRequest, stream: Any) -> Any:
    """Batch row 0 of a stream for the lens: every position, or `lens_positions` only
    (a full-vocabulary lens of every position costs several forwards at long prompts)."""
    if request.lens_positions is None:
        return stream[0:1].detach()
    return stream[0:1, list(request.lens_positions)].detach()


def unembed_and_metric(sites: Sites, request: TraceRequest, state: TraceState) -> None:
    """The logits asked for, and the metric (per row, or kept for the backward)."""
    metric, cap, unembed = request.metric, sites.shape.final_logit_softcap, sites.unembed
    if request.metric_rows:
        # Only the metric's position and its one or two tokens are read: the
        # unembedding is those rows of its weight (a large vocabulary's full
        # matrix costs a third of a small model's forward, and is read from
        # memory in every forward even for one token), and the module is skipped.
        tokens = [metric.target] + ([] if metric.foil is None else [metric.foil])
        stream = unembed.input[:, metric.position : metric.position + 1]
        weight, bias = unembed.weight[tokens], _param(unembed, "bias")
        logits = stream @ weight.T.to(stream.dtype)
        if bias is not None:
            logits = logits + bias[tokens].to(logits.dtype)
        unembed.skip(logits)
        picked = softcap_logits(logits[:, 0].float(), cap)
        value = picked[:, 0] if metric.foil is None else picked[:, 0] - picked[:, 1]
        state.saved["metric"] = value.detach()
    elif request.want_grads and request.logits != "all":
        # Unembed only the metric's position (and the last one, for the run's
        # logits): the backward then never holds [T, vocab] logits and their
        # gradient (~0.4 GB for GPT-2 at T = 1,024).
        positions = sorted({metric.position, request.input_ids.shape[1] - 1})
        unembed.input = unembed.input[:, positions]
        kept = softcap_logits(unembed.output[0], cap)
        state.metric_row = kept[positions.index(metric.position)]
        if request.logits != "none":
            state.saved["last_logits"] = kept[-1].detach().float()
    else:
        all_logits = softcap_logits(unembed.output[0], cap)
        state.metric_row = None if metric is None else all_logits[metric.position]
        if request.logits != "none":
            state.saved["last_logits"] = all_logits[-1].detach().float()
        if request.logits == "all":
            state.saved["logits"] = all_logits.detach().float()


def logit_lens(sites: Sites, request: TraceRequest, state: TraceState) -> None:
    """The model's own final norm and unembedding on earlier streams, reduced here
    so only [streams, T] numbers leave the trace."""
    ids = list(request.lens_tokens)
    with torch.no_grad():
        for l, resid in state.lens_inputs.items():
            state.saved["lens"][l] = _lens_entry(sites, resid, ids)
        if request.lens_streams:
            # every given stream in ONE norm + unembedding call (the norm acts per
            # position, so rows can sit side by side): one module call, not one per row
            weight = sites.unembed.weight  # where and in what dtype the model lives (remote: there)
            rows = list(request.lens_streams)
            lengths = [request.lens_streams[r].shape[0] for r in rows]
            stacked = torch.cat([request.lens_streams[r] for r in rows]).to(weight.device, weight.dtype)[None]
            entry = _lens_entry(sites, stacked, ids)
            parts = {key: (value.split(lengths) if value is not None else [None] * len(rows)) for key, value in entry.items()}
            for i, row in enumerate(rows):
                state.saved["lens"][row] = {key: parts[key][i] for key in entry}


def _lens_entry(sites: Sites, resid: Any, ids: list[int]) -> dict:
    logits = softcap_logits(sites.unembed(sites.final_norm(resid))[0].float(), sites.shape.final_logit_softcap)
    probabilities = torch.softmax(logits, dim=-1)
    best = probabilities.max(dim=-1)
    entry = {"top_probability": best.values, "top_token": best.indices, "token_probabilities": None, "token_ranks": None}
    if ids:
        entry["token_probabilities"] = probabilities[:, ids]
        # one token at a time: [T, vocab] comparisons, never [T, n, vocab]
        entry["token_ranks"] = torch.stack([(logits > logits[:, i : i + 1]).sum(-1) for i in ids], dim=-1)
    return entry


def direct_effects(sites: Sites, request: TraceRequest, state: TraceState) -> None:
    """`DirectEffect`: J_norm(x) v through the model's own final norm (double
    backward: g = J^T u is linear in u, so d<g, v>/du = J v), then W_U."""
    effect = request.direct_effect
    if effect is None:
        return
    w_u = sites.unembed.weight
    vectors = effect.vectors
    if effect.mlp_layer is not None:
        down = get_path(get_path(sites.layers[effect.mlp_layer], sites.arch.mlp), sites.arch.mlp_down).weight
        # Conv1D stores [in, out], Linear [out, in]
        vectors = vectors.to(down.device).float() @ (down if sites.arch.conv1d_out_proj else down.T).detach().float()
        state.saved["direct_vectors"] = vectors
    if effect.final_stream is None:
        return
    with torch.enable_grad():
        x = effect.final_stream.to(w_u.device, w_u.dtype).detach().requires_grad_(True)
        y = sites.final_norm(x)
        u = torch.zeros_like(y, requires_grad=True)
        (g,) = torch.autograd.grad(y, x, u, create_graph=True)
        moved = torch.stack([torch.autograd.grad(g, u, v.to(g), retain_graph=True)[0] for v in vectors])
    state.saved["direct_effect"] = (moved.detach().float() @ w_u.detach().float().T)


def gradients(sites: Sites, request: TraceRequest, state: TraceState) -> None:
    """One backward of the metric to the attention outputs, z and the output projections."""
    if not request.want_grads:
        return
    metric, n = request.metric, sites.shape.n_layers
    value = state.metric_row[metric.target]
    if metric.foil is not None:
        value = value - state.metric_row[metric.foil]
    keys = list(state.site_for_grad)
    grads = torch.autograd.grad(value, state.attn_for_grad + state.z_for_grad + state.proj_for_grad
                                + [state.site_for_grad[k] for k in keys])
    for (name, l), g in zip(keys, grads[3 * n :]):
        state.saved.setdefault(f"grad_{name}", {})[l] = g.reshape(*request.input_ids.shape, -1)[0].detach().float()
    grads = [g[0].detach().float() for g in grads[: 3 * n]]
    state.saved["metric"] = value.detach().float()
    state.saved["grad_attn"] = grads[:n]
    state.saved["grad_z"] = grads[n : 2 * n]
    state.saved["grad_out_proj"] = grads[2 * n :]
