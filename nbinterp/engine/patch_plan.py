"""Activation patching as a plan: copy a source prompt's activations into a
run at the sites asked for (`model.run(patch_from=..., patch=[...])`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

import torch

from nbinterp.engine.plan import PATCH_SITES, Plan, parse_site
from nbinterp.errors import NbinterpError

if TYPE_CHECKING:
    from nbinterp.engine.model import Model


def build_patch(model: "Model", plan: Plan, input_ids: torch.Tensor, source: Any, sites: Iterable) -> None:
    """Fill `plan`'s patch fields with the source run's activations at `sites`."""
    from nbinterp.engine.run import Run

    n_tokens = input_ids.shape[1]
    parsed = [parse_site(model.shape, site, n_tokens) for site in sites]
    if not isinstance(source, Run):
        source_ids = model.tokenize(source)
        if source_ids.shape[1] != n_tokens:
            raise NbinterpError(length_message(model, source_ids, input_ids))
        needed = sorted({PATCH_SITES[kind][0] for kind, *_ in parsed})
        source = model.run(source_ids, capture=needed)
    elif source.model is not model:
        raise NbinterpError("patch_from= must be a run of the same model")
    elif len(source) != n_tokens:
        raise NbinterpError(length_message(model, source.input_ids, input_ids))

    head_dim = model.head_dim
    for kind, layer, head, position in parsed:
        capture_name, field = PATCH_SITES[kind]
        values = source.captured(capture_name, layer).float()
        table = getattr(plan, field)
        where = table[layer][0] if layer in table else torch.zeros_like(values, dtype=torch.bool)
        rows = slice(None) if position is None else slice(position, position + 1)
        cols = slice(None) if head is None else slice(head * head_dim, (head + 1) * head_dim)
        where[rows, cols] = True
        table[layer] = (where, values)


def length_message(model: "Model", source_ids: torch.Tensor, input_ids: torch.Tensor) -> str:
    return (
        f"patching needs prompts of equal token length: the source has {source_ids.shape[1]} tokens, "
        f"the run {input_ids.shape[1]}. Pad or reword one of them "
        f"(source: {model.tokenizer.convert_ids_to_tokens(source_ids[0].tolist())})"
    )
