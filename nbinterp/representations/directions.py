"""Where a feature writes and what that does to the logits: decoder
directions in the residual stream (an MLP neuron's row of the down
projection, an SAE's decoder row) and their direct effect through the final
norm and the unembedding.

The model's weights are read by the engine's trace (`nbinterp.engine.weights`),
where the model lives: a remote model (NDIF, meta weights on the client)
gives the same numbers as a local one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from nbinterp.engine import weights

if TYPE_CHECKING:
    from nbinterp.engine.model import Model


def neuron_directions(model: "Model", layer: int, neurons: list[int] | None = None) -> torch.Tensor:
    """[n, d_model] float32: row i is what neuron `neurons[i]` (default: every
    neuron) of `layer` writes into the MLP's output per unit of activation (the
    down projection's column; its bias is not a neuron's). Models with a norm
    after the MLP (Gemma2) rescale this write; the direction is before that norm."""
    layer = model.check_layer(layer)
    chosen = torch.arange(model.d_mlp) if neurons is None else torch.as_tensor(neurons, dtype=torch.long)
    return weights.mlp_write(model, layer, torch.nn.functional.one_hot(chosen, model.d_mlp).float())


def mlp_write(model: "Model", layer: int, activations: torch.Tensor) -> torch.Tensor:
    """[d_model]: what the MLP hidden activations `activations` [d_mlp] of `layer` write."""
    return weights.mlp_write(model, layer, activations[None])[0]


def direct_logit_effect(model: "Model", direction: torch.Tensor, final_stream: torch.Tensor,
                        mlp_layer: int | None = None) -> torch.Tensor:
    """[vocab]: the change of the last token's logits per unit added along
    `direction` [d_model] to the final residual stream, with the final norm
    linearised at `final_stream` [d_model] (this prompt's last token): the
    norm's Jacobian there times the direction, then the unembedding. Exact
    for a small change; ignores every layer between the feature and the
    output, and the logit soft-cap of models that have one. With `mlp_layer`,
    `direction` [d_mlp] is MLP hidden activations of that layer, written
    through its down projection first (in the same trace)."""
    return weights.direct_logit_effects(model, direction[None], final_stream, mlp_layer)[0]
