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

from nbinterp.engine.plan import Plan
from nbinterp.engine.tokens import display_text

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


def logit_lens(model: "Model", prompt: Any, target: str | int | None = None) -> LogitLens:
    """Top token and target probability at every layer and position of `prompt` (one forward)."""
    input_ids = model.tokenize(prompt)
    target_id = None if target is None else model.token_id(target)
    saved = model.execute(input_ids, Plan(), model.all_layers(["lens"]), logits="none",
                          lens_tokens=() if target_id is None else (target_id,))
    streams = [saved["lens"][layer] for layer in range(model.n_layers + 1)]
    top_p = torch.stack([s.top_probability for s in streams]).float().cpu()
    top_ids = torch.stack([s.top_token for s in streams]).cpu()
    tokenizer = model.tokenizer
    return LogitLens(
        tokens=display_text(tokenizer, input_ids[0].tolist()),
        row_labels=["embed"] + [f"L{layer}" for layer in range(model.n_layers)],
        top_token_ids=top_ids,
        top_probabilities=top_p,
        target=None if target is None else (target if isinstance(target, str) else tokenizer.decode([target_id])),
        target_id=target_id,
        target_probabilities=None if target_id is None else torch.stack([s.token_probabilities[:, 0] for s in streams]).float().cpu(),
        top_tokens=[display_text(tokenizer, row) for row in top_ids.tolist()],
    )
