"""What a trace capture holds, by name: typed results instead of tuples
known by position. The trace saves plain dicts keyed by these field names
(plain data crosses nnsight's remote boundary); `typed` turns them into these
dataclasses once the results are back on the client.

Per layer, `Run.captured(name, layer)` returns (tensors of batch row 0, or
every row with all_rows):
    qkv         AttentionInputs   what the attention probabilities are recomputed from
    z           tensor [T, H*D]   the output projection's input (every head's output before mixing)
    w_o         OutputWeight      the output projection's weight and bias (read where the model lives)
    resid_pre   tensor [T, d_model] the residual stream entering the block
    attn_out    tensor [T, d_model] the attention block's output
    mlp_out     tensor [T, d_model] the MLP's output
    neurons     tensor [T, d_mlp]  the MLP's hidden activations (the down projection's input)
    resid_final tensor [T, d_model] (layer n_layers) the stream after the last block
    embed       Embeddings        (layer 0) token and (learned) position embeddings
    rotary      Rotary | None     (layer 0) the rotary tables; None without rotary positions
    qk_weights  QKWeights         the input norm's and the query/key projections' parameters
    lens        Lens              the logit lens of the stream entering the block (layer n_layers:
                                  the final stream), reduced inside the trace
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch


@dataclass
class AttentionInputs:
    """The attention call's inputs (batch row 0): queries [H, T, D], keys and values [H_kv, T, D]."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor | None  # additive [1 or H, T, T], None for a causal call without one
    scaling: float | None  # None: head_dim ** -0.5
    softcap: float | None  # Gemma2's score soft-cap
    sliding_window: int | None


@dataclass
class OutputWeight:
    """The attention output projection: weight as the module stores it, and its bias."""

    weight: torch.Tensor
    bias: torch.Tensor | None


@dataclass
class Embeddings:
    """[T, d_model] token embeddings and, for learned positions, position embeddings."""

    tokens: torch.Tensor
    positions: torch.Tensor | None


@dataclass
class Rotary:
    """[T, rotary dims] cosine and sine tables of the rotary embedding."""

    cos: torch.Tensor
    sin: torch.Tensor


@dataclass
class QKWeights:
    """What the QK decomposition reads: the block's input norm and the query/key
    projections' (weight, bias) pairs in the architecture's layout (QK_PROJECTIONS)."""

    norm_weight: torch.Tensor | None
    norm_bias: torch.Tensor | None
    projections: tuple


@dataclass
class Lens:
    """The logit lens of one residual stream, per position [T]: the top token and its
    probability, and for each of the tokens asked for ([T, n]) its probability and rank
    (0 = top)."""

    top_probability: torch.Tensor
    top_token: torch.Tensor
    token_probabilities: torch.Tensor | None
    token_ranks: torch.Tensor | None


TYPES = {"qkv": AttentionInputs, "w_o": OutputWeight, "embed": Embeddings, "rotary": Rotary,
         "qk_weights": QKWeights, "lens": Lens}


def typed(saved: dict[str, Any]) -> dict[str, Any]:
    """The trace's plain per-layer dicts as the dataclasses above (in place)."""
    for name, kind in TYPES.items():
        if name in saved:
            saved[name] = {layer: None if value is None else kind(**value) for layer, value in saved[name].items()}
    return saved


def field_names(name: str) -> tuple[str, ...]:
    """The fields of a typed capture (what the trace must save for it)."""
    return tuple(f.name for f in fields(TYPES[name]))
