"""Many activation-patching runs of one prompt in one batched forward.

A patching sweep asks the same question hundreds of times ("what if this one
site came from the clean run?"). Row b of the batch is the corrupted prompt
with patch set b applied, as row b of [B, T, width] patch masks in an engine
`Plan`; the engine's batch-aware trace runs them in one forward and returns
only each row's metric (so the request also runs remotely).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from nbinterp.engine.trace import Metric, Plan
from nbinterp.interventions.patching import PATCH_SITES, _parse_site

if TYPE_CHECKING:
    from nbinterp.engine.model import Model
    from nbinterp.engine.run import Run

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
    activations are read per (kind, layer) once and shared by every row. The
    forward is the engine's own (batch-aware) trace: row b's masks are row b
    of the plan's [B, T, width] patch masks.
    """
    plan = Plan()
    for (kind, layer), mask in _masks(model, patch_sets, input_ids.shape[1]).items():
        capture_name, field = PATCH_SITES[kind]
        getattr(plan, field)[layer] = (mask, source._capture(capture_name, layer).float())
    batch = input_ids.expand(len(patch_sets), -1)
    saved = model._execute(batch, plan, {}, metric, gradients=False)
    return saved["metric"].reshape(-1).float()
