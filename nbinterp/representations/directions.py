"""Where a feature writes and what that does to the logits: decoder
directions in the residual stream (an MLP neuron's row of the down
projection, an SAE's decoder row) and their direct effect through the final
norm and the unembedding.

These read weights of the local model (`model.hf`); a remote model's weights
are meta tensors here, so every read goes through `local_module`, which says
so instead of returning zeros.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from nbinterp.engine.architectures import get_path
from nbinterp.errors import NbinterpError

if TYPE_CHECKING:
    from nbinterp.engine.model import Model


def local_module(model: "Model", path: str, what: str) -> Any:
    """A submodule of the local HF model; a clear error for remote models."""
    if model.remote is True:
        raise NbinterpError(f"{what} need the model's weights here: not available remotely yet "
                            "(load the model locally, or use the activations, which are captured remotely)")
    return get_path(model.hf, path)


def neuron_directions(model: "Model", layer: int) -> torch.Tensor:
    """[d_mlp, d_model] float32: row n is what neuron n of `layer` writes into
    the MLP's output per unit of activation (the down projection's column;
    its bias is not a neuron's). Models with a norm after the MLP (Gemma2)
    rescale this write; the direction is before that norm."""
    layer = model.check_layer(layer)
    down = local_module(model, f"{model.arch.layers}.{layer}.{model.arch.mlp}.{model.arch.mlp_down}",
                        "decoder directions of MLP neurons")
    weight = down.weight.detach().float()
    return weight if model.arch.conv1d_out_proj else weight.T


def unembedding(model: "Model") -> torch.Tensor:
    """[vocab, d_model] float32: the output embedding, read from the local model."""
    if model.remote is True:
        raise NbinterpError("direct logit effects need the unembedding: not available remotely yet")
    head = model.hf.get_output_embeddings()
    if head is None:
        raise NbinterpError(f"{model.name} has no output embedding to read direct logit effects from")
    return head.weight.detach().float()


def direct_logit_effect(model: "Model", direction: torch.Tensor, final_stream: torch.Tensor) -> torch.Tensor:
    """[vocab]: the change of the last token's logits per unit added along
    `direction` [d_model] to the final residual stream, with the final norm
    linearised at `final_stream` [d_model] (this prompt's last token): the
    norm's Jacobian there times the direction, then the unembedding. Exact
    for a small change; ignores every layer between the feature and the
    output, and the logit soft-cap of models that have one."""
    norm = local_module(model, model.arch.final_norm, "direct logit effects")
    w_u = unembedding(model)
    params = list(norm.parameters())
    dtype = params[0].dtype if params else torch.float32
    x = final_stream.detach().to(w_u.device, dtype)
    d = direction.detach().to(w_u.device, dtype)
    with torch.enable_grad():
        _, moved = torch.func.jvp(norm, (x,), (d,))
    return moved.float() @ w_u.T
