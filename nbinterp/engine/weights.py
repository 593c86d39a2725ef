"""Reads of the model's weights outside an ordinary run, remote-aware: every
one goes through the engine's trace (a one-token forward), so the weights are
read where the model lives. A client holding only meta weights (NDIF) gets
the same numbers as a local model; only small results leave the trace.

Nothing outside the engine reads `model.hf`'s parameters or names its modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from nbinterp.engine.architectures import head_qk_projection
from nbinterp.engine.captures import QKWeights
from nbinterp.engine.plan import Plan
from nbinterp.engine.request import DirectEffect
from nbinterp.errors import UnsupportedArchitectureError

if TYPE_CHECKING:
    from nbinterp.engine.model import Model


def _weights_trace(model: "Model", effect: DirectEffect) -> dict:
    # Any one token will do: the trace is there to reach the weights, not to read activations.
    return model.execute(torch.zeros(1, 1, dtype=torch.long), Plan(), {}, logits="none", direct_effect=effect)


def mlp_write(model: "Model", layer: int, vectors: torch.Tensor) -> torch.Tensor:
    """[n, d_model] float32: what hidden activations `vectors` [n, d_mlp] of layer
    `layer`'s MLP write into its output through the down projection (its bias,
    which is no neuron's, excluded). Row n of the identity is neuron n's direction."""
    layer = model.check_layer(layer)
    vectors = torch.as_tensor(vectors, dtype=torch.float32).reshape(-1, model.d_mlp)
    return _weights_trace(model, DirectEffect(vectors, None, layer))["direct_vectors"].float()


def direct_logit_effects(model: "Model", vectors: torch.Tensor, final_stream: torch.Tensor,
                         mlp_layer: int | None = None) -> torch.Tensor:
    """[n, vocab] float32: the change of the last token's logits per unit added
    along each of `vectors` [n, d_model] to the final residual stream, the final
    norm linearised at `final_stream` [d_model] (that prompt's last token): the
    norm's Jacobian there times the vector, then the unembedding. Exact for a
    small change; ignores every layer between the vector and the output, and the
    logit soft-cap. With `mlp_layer`, `vectors` [n, d_mlp] are MLP hidden
    activations of that layer, written through its down projection first."""
    width = model.d_model if mlp_layer is None else model.d_mlp
    vectors = torch.as_tensor(vectors, dtype=torch.float32).reshape(-1, width)
    if mlp_layer is not None:
        mlp_layer = model.check_layer(mlp_layer)
    effect = DirectEffect(vectors, torch.as_tensor(final_stream, dtype=torch.float32).flatten(), mlp_layer)
    return _weights_trace(model, effect)["direct_effect"].float()


def lens_of_streams(model: "Model", streams: dict[int, torch.Tensor], tokens: tuple[int, ...] = ()) -> dict:
    """The logit lens of residual streams captured earlier ({row: [T, d_model]}),
    through the model's own final norm and unembedding, reduced where the model
    lives: {row: top_probability [T], top_token [T], token_probabilities [T, n]
    and token_ranks [T, n] of `tokens` (None without)}. One one-token trace."""
    streams = {row: torch.as_tensor(s, dtype=torch.float32).reshape(-1, model.d_model) for row, s in streams.items()}
    saved = model.execute(torch.zeros(1, 1, dtype=torch.long), Plan(), {}, logits="none",
                          lens_streams=streams, lens_tokens=tuple(tokens))
    return saved["lens"]


def check_qk_decomposable(model: "Model") -> None:
    """A clear error for architectures whose attention scores the QK decomposition does not split."""
    if model.arch.qk_projection is None or model.arch.input_norm is None:
        model_type = getattr(model.hf.config, "model_type", None)
        raise UnsupportedArchitectureError(
            f"the QK decomposition supports GPT-2, GPT-NeoX, OPT, Llama, Mistral, Qwen2 and OLMo, not {model_type!r}: "
            "Gemma scales embeddings and normalises after attention and soft-caps scores, and Qwen3 / OLMo2 "
            "normalise q and k per head, none of which is decomposed yet. Attribution and knockouts still work."
        )


def qk_projection(model: "Model", weights: QKWeights, head: int, side: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One head's query or key projection (weight [d_model, D], bias [D] or None)
    from a `qk_weights` capture, in the architecture's layout."""
    return head_qk_projection(model.arch, weights.projections, head, side, model.shape)
