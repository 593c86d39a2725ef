"""Attention recomputed from the query/key/value tensors a model hands to its
attention call.

transformers runs most models with SDPA, which never materialises the
probabilities, so we rebuild them: softmax(q k^T * scale + mask), with the
model-specific parts (grouped-query heads, Gemma2's logit soft-cap, sliding
windows). These functions are plain torch so that they run unchanged inside an
nnsight trace, locally or on a remote (NDIF) server.
"""

from __future__ import annotations

import torch


def repeat_kv(states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, H_kv, T, D] -> [B, H_kv * n_rep, T, D]; query head h reads kv head h // n_rep."""
    if n_rep == 1:
        return states
    b, h_kv, t, d = states.shape
    return states[:, :, None].expand(b, h_kv, n_rep, t, d).reshape(b, h_kv * n_rep, t, d)


def additive_mask(
    attention_mask: torch.Tensor | None,
    q_len: int,
    k_len: int,
    dtype: torch.dtype,
    device: torch.device,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """The additive mask (0 where allowed, -inf where not) the model applies.

    SDPA calls often pass no mask (causal is implied) or a boolean one (True =
    attend); eager passes an additive float mask. All three become one form.
    """
    if attention_mask is None:
        query_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
        key_pos = torch.arange(k_len, device=device)[None, :]
        allowed = key_pos <= query_pos
        if sliding_window is not None:
            allowed = allowed & (query_pos - key_pos < sliding_window)
        attention_mask = allowed
    if attention_mask.dtype == torch.bool:
        zeros = torch.zeros((), dtype=dtype, device=device)
        neg_inf = torch.full((), float("-inf"), dtype=dtype, device=device)
        return torch.where(attention_mask, zeros, neg_inf)
    return attention_mask[..., :k_len].to(dtype)


def attention_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    softcap: float | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Pre-softmax scores [B, H, T_q, T_k] in float32, masked, as the model's eager path computes them.

    Always float32, whatever the model's dtype: a bf16 / fp16 score loses the
    differences a softmax amplifies (and fp16 can overflow), and every
    recompute (knocked-out layers and the clean reference alike) goes through
    this one function, so a knockout of nothing equals the clean run.
    """
    n_rep = query.shape[1] // key.shape[1]
    key = repeat_kv(key.float(), n_rep)
    scores = torch.matmul(query.float(), key.transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    mask = additive_mask(
        attention_mask, query.shape[-2], key.shape[-2], scores.dtype, scores.device, sliding_window
    )
    return scores + mask


def attention_probabilities(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    softcap: float | None = None,
    sliding_window: int | None = None,
    knockout: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax of `attention_scores`, in float32 (scores and softmax alike).

    `knockout` is a boolean [H, T_q, T_k] (or broadcastable) tensor of edges to
    remove: their scores become -inf before the softmax, so the probability is
    zero and the row renormalises over the keys that remain.
    """
    scores = attention_scores(query, key, attention_mask, scaling, softcap, sliding_window)
    if knockout is not None:
        scores = scores.masked_fill(knockout, float("-inf"))
    return torch.softmax(scores, dim=-1)


def attention_output(probabilities: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """probabilities [B, H, T_q, T_k] @ values -> [B, T_q, H, D], the layout the attention call returns.

    Accumulated in float32, returned in the value's dtype (what the model's
    output projection expects)."""
    n_rep = probabilities.shape[1] // value.shape[1]
    expanded = repeat_kv(value.float(), n_rep)
    return torch.matmul(probabilities.float(), expanded).transpose(1, 2).contiguous().to(value.dtype)


def per_head_output_weight(weight: torch.Tensor, n_heads: int, transposed: bool) -> torch.Tensor:
    """The output projection split per head: [H, head_dim, d_model].

    nn.Linear stores [out, in]; GPT-2's Conv1D stores [in, out] (`transposed`).
    """
    w_in_out = weight if transposed else weight.T
    d_in, d_model = w_in_out.shape
    return w_in_out.reshape(n_heads, d_in // n_heads, d_model)


def head_outputs(z: torch.Tensor, w_o: torch.Tensor) -> torch.Tensor:
    """Each head's write to the residual stream (bias excluded).

    z: [T, H * head_dim], the output projection's input; w_o: [H, head_dim, d_model].
    Returns [H, T, d_model]; summed over heads (plus the bias) it is the
    projection's output.
    """
    n_heads, head_dim, _ = w_o.shape
    z_heads = z.reshape(z.shape[0], n_heads, head_dim).transpose(0, 1)
    return torch.bmm(z_heads.to(w_o.dtype), w_o)


def value_weighted_norms(
    probabilities: torch.Tensor, value: torch.Tensor, w_o: torch.Tensor
) -> torch.Tensor:
    """||a_ij * v_j W_O^h|| for every head, query i and key j (Kobayashi et al. 2020).

    probabilities [H, T, T]; value [H_kv, T, head_dim]; w_o [H, head_dim, d_model].
    Since a_ij is a non-negative scalar, the norm is a_ij * ||v_j W_O^h||.
    """
    n_rep = probabilities.shape[0] // value.shape[0]
    value = repeat_kv(value[None], n_rep)[0]
    transformed = torch.bmm(value.to(w_o.dtype), w_o)  # [H, T, d_model]
    return probabilities * transformed.norm(dim=-1).float()[:, None, :]
