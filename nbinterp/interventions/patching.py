"""Activation patching: copy activations from a source prompt into a run."""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any, Iterable

import torch

from nbinterp.engine.trace import Plan

if TYPE_CHECKING:
    from nbinterp.engine.model import Model

# site name -> (capture that holds the source activation, Plan field it patches)
PATCH_SITES = {
    "resid_pre": ("resid_pre", "patch_resid"),
    "attn_out": ("attn_out", "patch_attn"),
    "mlp_out": ("mlp_out", "patch_mlp"),
    "head": ("z", "patch_z"),
}


def _parse_site(model: "Model", site: Any, n_tokens: int) -> tuple[str, int, int | None, int | None]:
    """-> (kind, layer, head or None, position or None)."""
    usage = (
        "a patch site is ('resid_pre' | 'attn_out' | 'mlp_out', layer, position or None) "
        "or ('head', layer, head, position or None)"
    )
    if not isinstance(site, (tuple, list)) or not site or site[0] not in PATCH_SITES:
        raise model._error(f"cannot read patch site {site!r}: {usage}")
    kind = site[0]
    expected = 4 if kind == "head" else 3
    if len(site) not in (expected - 1, expected):
        raise model._error(f"cannot read patch site {site!r}: {usage}")
    layer = model._check_layer(site[1])
    head = model._check_head(site[2]) if kind == "head" else None
    position = site[expected - 1] if len(site) == expected else None
    if position is not None:
        if not isinstance(position, numbers.Integral) or not -n_tokens <= position < n_tokens:
            raise model._error(f"patch position {position!r} is outside the prompt's {n_tokens} tokens")
        position = int(position) % n_tokens
    return kind, layer, head, position


def build_patch(model: "Model", plan: Plan, input_ids: torch.Tensor, source: Any, sites: Iterable) -> None:
    """Fill `plan`'s patch fields with the source run's activations at `sites`."""
    from nbinterp.engine.run import Run

    n_tokens = input_ids.shape[1]
    parsed = [_parse_site(model, site, n_tokens) for site in sites]
    if not isinstance(source, Run):
        source_ids = model.tokenize(source)
        if source_ids.shape[1] != n_tokens:
            raise model._error(_length_message(model, source_ids, input_ids))
        needed = sorted({PATCH_SITES[kind][0] for kind, *_ in parsed})
        source = model.run(source_ids, capture=needed)
    elif source.model is not model:
        raise model._error("patch_from= must be a run of the same model")
    elif len(source) != n_tokens:
        raise model._error(_length_message(model, source.input_ids, input_ids))

    head_dim = model.head_dim
    for kind, layer, head, position in parsed:
        capture_name, field = PATCH_SITES[kind]
        values = source._capture(capture_name, layer).float()
        table = getattr(plan, field)
        where = table[layer][0] if layer in table else torch.zeros_like(values, dtype=torch.bool)
        rows = slice(None) if position is None else slice(position, position + 1)
        cols = slice(None) if head is None else slice(head * head_dim, (head + 1) * head_dim)
        where[rows, cols] = True
        table[layer] = (where, values)


def _length_message(model: "Model", source_ids: torch.Tensor, input_ids: torch.Tensor) -> str:
    return (
        f"patching needs prompts of equal token length: the source has {source_ids.shape[1]} tokens, "
        f"the run {input_ids.shape[1]}. Pad or reword one of them "
        f"(source: {model.tokenizer.convert_ids_to_tokens(source_ids[0].tolist())})"
    )
