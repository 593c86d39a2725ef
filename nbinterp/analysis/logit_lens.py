"""Logit lens: read the residual stream at every layer and position through
the model's own final norm and unembedding, as if the model stopped there.

Row 0 is the embeddings (the residual stream entering layer 0), row l + 1
the stream after block l; the last row is the model's actual prediction.
Everything is reduced inside the trace (top token, its probability, the
target's probability), so only [layers + 1, T] numbers leave it and the
same request works remotely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from nbinterp.engine.architectures import get_path
from nbinterp.engine.trace import softcap_logits

if TYPE_CHECKING:
    from nbinterp.engine.model import Model


@dataclass
class LogitLens:
    """[layers + 1, T] tensors; row labels say which residual stream each row reads."""

    tokens: list[str]  # the prompt, as display text
    row_labels: list[str]  # "embed", "L0", ..., "L{n-1}" (after that block)
    top_token_ids: torch.Tensor  # long
    top_probabilities: torch.Tensor  # float32
    target: str | None
    target_id: int | None
    target_probabilities: torch.Tensor | None  # float32, None without a target
    top_tokens: list[list[str]]  # display text of top_token_ids

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.top_probabilities.shape)  # type: ignore[return-value]


def display_text(tokenizer: Any, ids: list[int]) -> list[str]:
    """Each token as text (" Mary", not "ĠMary"); the raw pieces if decoding fails."""
    try:
        return [tokenizer.decode([i]) for i in ids]
    except Exception:  # noqa: BLE001 - a tokenizer without decode still has pieces
        return tokenizer.convert_ids_to_tokens(ids)


def logit_lens(model: "Model", prompt: Any, target: str | int | None = None) -> LogitLens:
    """Top token and target probability at every layer and position of `prompt`."""
    input_ids = model.tokenize(prompt)
    target_id = None if target is None else model.token_id(target)
    arch, nn_model = model.arch, model.nn
    layers = get_path(nn_model, arch.layers)
    final_norm, unembed = get_path(nn_model, arch.final_norm), get_path(nn_model, arch.unembed)
    # read outside the trace: the body must not capture (and ship) the model
    n_layers, cap = model.n_layers, model.shape.final_logit_softcap
    with model.lock, torch.no_grad(), nn_model.trace(input_ids.to(model._device()), remote=model.remote):
        top_p, top_id, target_p = [], [], []
        # block inputs in forward order, then the final norm's input (after the last block)
        streams = [layers[layer].input for layer in range(n_layers)] + [final_norm.input]
        for resid in streams:
            probabilities = torch.softmax(softcap_logits(unembed(final_norm(resid))[0].float(), cap), dim=-1)
            best = probabilities.max(dim=-1)
            top_p.append(best.values)
            top_id.append(best.indices)
            if target_id is not None:
                target_p.append(probabilities[:, target_id])
        lens = {"top_p": torch.stack(top_p).cpu(), "top_id": torch.stack(top_id).cpu()}
        if target_id is not None:
            lens["target_p"] = torch.stack(target_p).cpu()
        lens = lens.save()
    tokenizer = model.tokenizer
    top_ids = lens["top_id"]
    return LogitLens(
        tokens=display_text(tokenizer, input_ids[0].tolist()),
        row_labels=["embed"] + [f"L{layer}" for layer in range(model.n_layers)],
        top_token_ids=top_ids,
        top_probabilities=lens["top_p"],
        target=None if target is None else (target if isinstance(target, str) else tokenizer.decode([target_id])),
        target_id=target_id,
        target_probabilities=lens.get("target_p"),
        top_tokens=[display_text(tokenizer, row) for row in top_ids.tolist()],
    )
