"""What one trace is asked to do (`TraceRequest`), as data the trace's steps read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nbinterp.engine.plan import Metric, Plan


@dataclass
class TraceRequest:
    """What one trace does.

    `capture` maps names in CAPTURES to the layers to read (batch row 0, every
    row with `all_rows`). `logits`: "last" returns the last position's logits
    [V] as "last_logits", "all" also every position's [T, V] as "logits",
    "none" neither. With a metric and several rows (or gradients=False), only
    the metric's position is unembedded and "metric" [B] comes back. With
    gradients (the default for a metric on a one-row batch): "metric", and
    per layer "grad_attn" [T, H, D] (d metric / d the attention call's output,
    from which d metric / d probability = grad_attn . v), "grad_z" [T, H*D]
    and "grad_out_proj" [T, d_model]; "qkv" and "z" are captured for every
    layer alongside. No probabilities are recomputed for gradients: the model
    keeps its own (SDPA) attention. `lens_tokens`: token ids whose lens
    probability and rank come back per stream. `attention_mask` [B, T]
    (1 = token, 0 = right padding) runs prompts of different lengths in one
    batch. `direct_effect`: see `DirectEffect`. `grad_captures`: names among
    "resid_pre", "attn_out", "mlp_out" whose gradient (d metric / d that
    activation, every position) comes back as "grad_<name>" {layer: [T, width]}
    for the layers captured (attribution patching); needs gradients.
    `lens_streams` {row: [T, d_model]}: residual streams captured earlier, read
    through the final norm and unembedding like the lens (reduced the same
    way, into "lens"); with a one-token input the trace only reaches the
    weights, so a lens can stream in chunks without another forward of the prompt.
    """

    input_ids: torch.Tensor
    plan: Plan
    capture: dict[str, set[int]]
    metric: Metric | None = None
    gradients: bool | None = None
    logits: str = "last"
    lens_tokens: tuple[int, ...] = ()
    attention_mask: torch.Tensor | None = None
    all_rows: bool = False
    direct_effect: "DirectEffect | None" = None
    grad_captures: tuple[str, ...] = ()
    # (layer l, stream [B or 1, T, d_model]): start at block l with this stream
    # entering it; blocks below l are not run (skipped; their outputs are this
    # stream). For interventions that leave layers below l alone (patching
    # sweeps): the stream is the unintervened run's resid_pre at l.
    start_at: "tuple[int, torch.Tensor] | None" = None
    # more keyword arguments of the model's forward (a resumed request's KV cache and
    # mask: `nbinterp.engine.resume`)
    forward_kwargs: "dict[str, Any] | None" = None
    lens_streams: "dict[int, torch.Tensor] | None" = None
    # the positions the "lens" capture reads (its entries then run over these, in order); None: every position
    lens_positions: "tuple[int, ...] | None" = None

    def __post_init__(self) -> None:
        rows = self.input_ids.shape[0]
        self.want_grads = self.metric is not None and rows == 1 if self.gradients is None else self.gradients
        self.metric_rows = self.metric is not None and not self.want_grads
        self.capture = {name: set(layers) for name, layers in self.capture.items()}
        self.row = slice(None) if self.all_rows else 0

    def wants(self, name: str, layer: int) -> bool:
        return layer in self.capture.get(name, ())

    @property
    def inputs(self) -> Any:
        if self.attention_mask is None:
            return self.input_ids
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


@dataclass
class DirectEffect:
    """"direct_effect" [n, vocab]: how vectors added to the final residual stream
    move the last position's logits, the final norm linearised at
    `final_stream` [d_model] (its Jacobian-vector product, by double backward
    through the model's own norm), then the unembedding's weight. `vectors`
    [n, width] are residual directions, or with `mlp_layer` MLP hidden
    activations written through that layer's down projection first (returned
    as "direct_vectors" [n, d_model]; without a `final_stream`, only that).
    Weights are read where the model lives."""

    vectors: torch.Tensor
    final_stream: torch.Tensor | None
    mlp_layer: int | None = None
