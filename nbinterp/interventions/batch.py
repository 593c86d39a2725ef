"""Many exact single interventions on one prompt, batched: every edge
knocked out, every head ablated, every patch set, one per batch row.

Verifying an attribution or sweeping a patching grid needs hundreds to
hundreds of thousands of *separate* interventions on the same prompt;
stacking them along the batch dimension is the honest speed-up. Each row
equals `model.run(prompt, knockout=[edge])` / `ablate={(l, h): 0}` /
`patch_from=..., patch=[...]` (tested against it). The rows are built and run
by the engine (`nbinterp.engine.batch`: `RowPlan`, `measure`), whose every
forward carries a clean row; the `*_effects` here subtract that row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from nbinterp.engine.batch import ELEMENT_BUDGET, MAX_ROWS, RowPlan, batch_rows, forward_metric, measure
from nbinterp.engine.plan import PATCH_SITES, Metric, Plan, check_edge, check_head, check_layer

if TYPE_CHECKING:
    from nbinterp.engine.model import Model
    from nbinterp.engine.run import Run

__all__ = ["ELEMENT_BUDGET", "MAX_ROWS", "batch_rows", "knockout_effects", "knockout_metrics", "ablation_effects",
           "ablation_metrics", "clean_metric", "patched_metrics"]

Edge = tuple[int, int, int, int]  # (layer, head, query, key)
# (kind, layer, head or None, position or None), as plan.parse_site returns
Site = tuple[str, int, "int | None", "int | None"]


def knockout_effects(
    model: "Model", input_ids: torch.Tensor, edges: Sequence[Edge], metric: Metric, rows: int | None = None,
    base: "Run | None" = None,
) -> torch.Tensor:
    """metric(edge i knocked out) - metric(clean), every edge: [len(edges)] float64.
    `base` (the prompt's run): each forward starts at its lowest layer and query (`engine.batch.measure`)."""
    return _knockouts(model, input_ids, edges, metric, rows, base).effects[:, 0]


def knockout_metrics(
    model: "Model", input_ids: torch.Tensor, edges: Sequence[Edge], metric: Metric, rows: int | None = None,
    base: "Run | None" = None,
) -> torch.Tensor:
    """metric(prompt with edge i knocked out) for every edge: [len(edges)] float64."""
    return _knockouts(model, input_ids, edges, metric, rows, base).values[:, 0]


def _knockouts(model, input_ids, edges, metric, rows, base=None):
    checked = [check_edge(model.shape, edge, input_ids.shape[1], renormalisable=True) for edge in edges]
    # with a base, a forward starts at its lowest layer and first query (tokens before it are untouched)
    return measure(model, input_ids, checked, lambda plan, slot, edge: plan.knock_out(slot, *edge), metric, rows,
                   order=lambda edge: edge[0], base=base, start=lambda edge: (edge[0], edge[2]))


def ablation_effects(
    model: "Model", input_ids: torch.Tensor, heads: Sequence[tuple[int, int]], metric: Metric, rows: int | None = None,
    base: "Run | None" = None,
) -> torch.Tensor:
    """metric(head i zero-ablated) - metric(clean), every (layer, head): [len(heads)] float64.
    `base` (the prompt's run): each forward starts at its lowest ablated layer."""
    return _ablations(model, input_ids, heads, metric, rows, base).effects[:, 0]


def ablation_metrics(
    model: "Model", input_ids: torch.Tensor, heads: Sequence[tuple[int, int]], metric: Metric, rows: int | None = None,
    base: "Run | None" = None,
) -> torch.Tensor:
    """metric(prompt with head i zero-ablated) for every (layer, head): [len(heads)] float64."""
    return _ablations(model, input_ids, heads, metric, rows, base).values[:, 0]


def _ablations(model, input_ids, heads, metric, rows, base=None):
    checked = [(check_layer(model.shape, l), check_head(model.shape, h)) for l, h in heads]
    return measure(model, input_ids, checked, lambda plan, slot, head: plan.ablate_head(slot, *head), metric, rows,
                   order=lambda head: head[0], base=base, start=lambda head: (head[0], 0))


def clean_metric(model: "Model", input_ids: torch.Tensor, metric: Metric) -> float:
    """The metric of the prompt without interventions, through the batched path."""
    return float(forward_metric(model, input_ids, Plan(), metric)[0])


def patched_metrics(
    model: "Model", input_ids: torch.Tensor, source: "Run", patch_sets: Sequence[Sequence[Site]], metric: Metric,
    base: "Run | None" = None,
) -> torch.Tensor:
    """metric of each patched copy of `input_ids` in ONE forward (plus its clean row), float32 [B].

    `source` is a run of the prompt to copy from (same token length); it must
    hold the captures the sites read (fetched for every layer at once if not).
    `base` (the run of `input_ids`): the forward starts at the lowest patched
    layer and token.
    """
    def fill(plan: RowPlan, slot: int, sites: Sequence[Site]) -> None:
        for kind, layer, head, position in sites:
            plan.patch(slot, kind, layer, head, position, source.captured(PATCH_SITES[kind][0], layer))

    def start(sites: Sequence[Site]) -> tuple[int, int]:
        return min(s[1] for s in sites), min(0 if s[3] is None else s[3] for s in sites)

    measured = measure(model, input_ids, list(patch_sets), fill, metric, rows=len(patch_sets) + 1, base=base,
                       start=start)
    return measured.values[:, 0].float()
