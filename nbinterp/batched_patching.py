"""Many activation-patching runs of one prompt in one batched forward.

A patching sweep asks the same question hundreds of times ("what if this one
site came from the clean run?"). Row b of the batch is the corrupted prompt
with patch set b applied; every site is a `torch.where` on a [B, T, width]
mask, prepared before the trace, so the request also runs remotely. Only the
metric of each row comes back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from .adapters import get_path
from .interventions import Metric
from .patching import PATCH_SITES, _parse_site

if TYPE_CHECKING:
    from .model import Model
    from .run import Run

# (kind, layer, head or None, position or None), as patching._parse_site returns
Site = tuple[str, int, "int | None", "int | None"]


def parse_sites(model: "Model", sites: Sequence[Any], n_tokens: int) -> list[Site]:
    """The engine's patch-site syntax, checked: ("resid_pre", 3, pos) or ("head", 3, 1, None)."""
    return [_parse_site(model, site, n_tokens) for site in sites]


def _masks(model: "Model", patch_sets: Sequence[Sequence[Site]], n_tokens: int) -> dict[tuple[str, int], torch.Tensor]:
    """(kind, layer) -> bool mask [B, T, width] of what each row takes from the source."""
    widths = {"resid_pre": model.d_model, "attn_out": model.d_model, "mlp_out": model.d_model,
              "head": model.n_heads * model.head_dim}
    masks: dict[tuple[str, int], torch.Tensor] = {}
    batch = len(patch_sets)
    for row, sites in enumerate(patch_sets):
        for kind, layer, head, position in sites:
            mask = masks.get((kind, layer))
            if mask is None:
                mask = masks[(kind, layer)] = torch.zeros(batch, n_tokens, widths[kind], dtype=torch.bool)
            rows = slice(None) if position is None else slice(position, position + 1)
            cols = slice(None) if head is None else slice(head * model.head_dim, (head + 1) * model.head_dim)
            mask[row, rows, cols] = True
    return masks


def patched_metrics(
    model: "Model",
    input_ids: torch.Tensor,
    source: "Run",
    patch_sets: Sequence[Sequence[Site]],
    metric: Metric,
) -> torch.Tensor:
    """metric (logit diff at metric.position) of each patched copy of `input_ids`, float32 [B].

    `source` is a run of the prompt to copy from (same token length); its
    activations are read per (kind, layer) once and shared by every row.
    """
    n_tokens = input_ids.shape[1]
    masks = _masks(model, patch_sets, n_tokens)
    values = {key: source._capture(PATCH_SITES[key[0]][0], key[1]).float() for key in masks}
    arch, nn_model = model.arch, model.nn
    layers = get_path(nn_model, arch.layers)
    unembed = get_path(nn_model, arch.unembed)
    device = model._device()
    batch_ids = input_ids.to(device).expand(len(patch_sets), -1)
    with torch.no_grad(), nn_model.trace(batch_ids, remote=model.remote):
        for layer in range(model.n_layers):
            block = layers[layer]
            key = ("resid_pre", layer)
            if key in masks:
                resid = block.input
                block.input = torch.where(masks[key].to(resid.device), values[key].to(resid), resid)
            attention = get_path(block, arch.attention)
            key = ("head", layer)
            if key in masks:
                out_proj = get_path(attention, arch.out_proj)
                z = out_proj.input
                out_proj.input = torch.where(masks[key].to(z.device), values[key].to(z), z)
            key = ("attn_out", layer)
            if key in masks:
                attn_out = attention.output[0]
                patched = torch.where(masks[key].to(attn_out.device), values[key].to(attn_out), attn_out)
                attention.output = (patched, *attention.output[1:])
            key = ("mlp_out", layer)
            if key in masks:
                mlp = get_path(block, arch.mlp)
                mlp_out = mlp.output
                mlp.output = torch.where(masks[key].to(mlp_out.device), values[key].to(mlp_out), mlp_out)
        # Unembed only the metric's position: at GPT-2 size the unembedding
        # of every position costs a third of the forward.
        unembed.input = unembed.input[:, metric.position : metric.position + 1, :]
        row = unembed.output[:, 0, :].float()
        value = row[:, metric.target]
        if metric.foil is not None:
            value = value - row[:, metric.foil]
        value = value.detach().cpu().save()
    return value
