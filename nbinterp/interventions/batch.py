"""Many exact single interventions in one forward pass: batch row b carries
intervention b (one attention-edge knockout, one head ablation, or one set of
patched sites), and the metric comes back per row.

`Model.run` does one intervention set per forward. Verifying an attribution
or sweeping a patching grid needs hundreds to hundreds of thousands of
*separate* interventions on the same prompt; stacking them along the batch
dimension of the engine's (batch-aware) trace is the honest speed-up. Each
row equals `model.run(prompt, knockout=[edge])` / `ablate={(l, h): 0}` /
`patch_from=..., patch=[...]` (tested against it).

Every forward also carries a clean row (no intervention, through exactly the
same code path, e.g. the same float32 attention recompute for a knocked-out
layer), and `*_effects` subtract that row: an intervention that changes
nothing has effect 0 whatever the batch, the dtype or the CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from nbinterp.engine.plan import Metric, Plan, check_edge, check_head, check_layer

if TYPE_CHECKING:
    from nbinterp.engine.model import Model
    from nbinterp.engine.run import Run

Edge = tuple[int, int, int, int]  # (layer, head, query, key)
# (kind, layer, head or None, position or None), as plan.parse_site returns
Site = tuple[str, int, "int | None", "int | None"]

# Largest float32 element count of one layer's attention probabilities
# (rows x heads x T x T) or MLP hidden state per batch: ~64 MB each.
ELEMENT_BUDGET = 1 << 24
MAX_ROWS = 512


def batch_rows(model: "Model", n_tokens: int) -> int:
    """How many interventions to stack per forward for a prompt of n_tokens."""
    per_row = max(model.n_heads * n_tokens * n_tokens, model.d_mlp * n_tokens, 1)
    return max(1, min(MAX_ROWS, ELEMENT_BUDGET // per_row))



# ------------------------------------------------------------------ knockouts
def knockout_effects(
    model: "Model", input_ids: torch.Tensor, edges: Sequence[Edge], metric: Metric, rows: int | None = None,
) -> torch.Tensor:
    """metric(edge i knocked out) - metric(clean), every edge: [len(edges)] float64."""
    values, clean = _knockouts(model, input_ids, edges, metric, rows)
    return values - clean


def knockout_metrics(
    model: "Model", input_ids: torch.Tensor, edges: Sequence[Edge], metric: Metric, rows: int | None = None,
) -> torch.Tensor:
    """metric(prompt with edge i knocked out) for every edge: [len(edges)] float64."""
    return _knockouts(model, input_ids, edges, metric, rows)[0]


def _knockouts(model, input_ids, edges, metric, rows):
    n_tokens = input_ids.shape[1]
    checked = [check_edge(model.shape, edge, n_tokens, renormalisable=True) for edge in edges]

    def fill(plan: Plan, items: list, n_rows: int) -> None:
        # The clean row 0 runs the same recompute (an all-False mask) in every knocked-out layer.
        for row, (layer, head, query, key) in enumerate(items, start=1):
            mask = plan.knockout.setdefault(layer, torch.zeros(n_rows, model.n_heads, n_tokens, n_tokens, dtype=torch.bool))
            mask[row, head, query, key] = True

    return _batched(model, input_ids, checked, fill, metric, rows, layer_of=lambda edge: edge[0])


# ------------------------------------------------------------------ head ablations
def ablation_effects(
    model: "Model", input_ids: torch.Tensor, heads: Sequence[tuple[int, int]], metric: Metric, rows: int | None = None,
) -> torch.Tensor:
    """metric(head i zero-ablated) - metric(clean), every (layer, head): [len(heads)] float64."""
    values, clean = _ablations(model, input_ids, heads, metric, rows)
    return values - clean


def ablation_metrics(
    model: "Model", input_ids: torch.Tensor, heads: Sequence[tuple[int, int]], metric: Metric, rows: int | None = None,
) -> torch.Tensor:
    """metric(prompt with head i zero-ablated) for every (layer, head): [len(heads)] float64."""
    return _ablations(model, input_ids, heads, metric, rows)[0]


def _ablations(model, input_ids, heads, metric, rows):
    checked = [(check_layer(model.shape, l), check_head(model.shape, h)) for l, h in heads]
    width, head_dim = model.n_heads * model.head_dim, model.head_dim

    def fill(plan: Plan, items: list, n_rows: int) -> None:
        for row, (layer, head) in enumerate(items, start=1):
            if layer not in plan.z_scale:
                plan.z_scale[layer] = torch.ones(n_rows, 1, width)
                plan.z_baseline[layer] = torch.zeros(width)
            plan.z_scale[layer][row, 0, head * head_dim : (head + 1) * head_dim] = 0.0

    return _batched(model, input_ids, checked, fill, metric, rows, layer_of=lambda item: item[0])


def clean_metric(model: "Model", input_ids: torch.Tensor, metric: Metric) -> float:
    """The metric of the prompt without interventions, through the batched path."""
    return float(_one_forward(model, input_ids, Plan(), 1, metric)[0])


# ------------------------------------------------------------------ patching
def patch_masks(model: "Model", patch_sets: Sequence[Sequence[Site]], n_tokens: int) -> dict[tuple[str, int], torch.Tensor]:
    """(kind, layer) -> bool mask [B, T, width] of what each row takes from the source."""
    widths = {"resid_pre": model.d_model, "attn_out": model.d_model, "mlp_out": model.d_model,
              "head": model.n_heads * model.head_dim}
    masks: dict[tuple[str, int], torch.Tensor] = {}
    for row, sites in enumerate(patch_sets):
        for kind, layer, head, position in sites:
            mask = masks.get((kind, layer))
            if mask is None:
                mask = masks[(kind, layer)] = torch.zeros(len(patch_sets), n_tokens, widths[kind], dtype=torch.bool)
            rows = slice(None) if position is None else slice(position, position + 1)
            cols = slice(None) if head is None else slice(head * model.head_dim, (head + 1) * model.head_dim)
            mask[row, rows, cols] = True
    return masks


def patched_metrics(
    model: "Model", input_ids: torch.Tensor, source: "Run", patch_sets: Sequence[Sequence[Site]], metric: Metric,
) -> torch.Tensor:
    """metric of each patched copy of `input_ids` in ONE forward, float32 [B].

    `source` is a run of the prompt to copy from (same token length); it must
    hold the captures the sites read (fetched for every layer at once if not).
    Row b's masks are row b of the plan's [B, T, width] patch masks.
    """
    from nbinterp.interventions.patching import PATCH_SITES

    plan = Plan()
    for (kind, layer), mask in patch_masks(model, patch_sets, input_ids.shape[1]).items():
        capture_name, field = PATCH_SITES[kind]
        getattr(plan, field)[layer] = (mask, source.captured(capture_name, layer).float())
    return _one_forward(model, input_ids, plan, len(patch_sets), metric).float()


# ------------------------------------------------------------------ the runner
def _batched(
    model: "Model", input_ids: torch.Tensor, items: list, fill: Callable[[Plan, list, int], None], metric: Metric,
    rows: int | None, layer_of: Callable[[Any], int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(metric of each item's row, metric of the clean row of the same forward), float64."""
    n_tokens = input_ids.shape[1]
    per_forward = max(1, (rows or batch_rows(model, n_tokens)) - 1)  # one row is the clean reference
    values = torch.empty(len(items), dtype=torch.float64)
    clean = torch.empty(len(items), dtype=torch.float64)
    # Sorting by layer keeps most batches to one intervened layer.
    order = sorted(range(len(items)), key=lambda i: layer_of(items[i]))
    for start in range(0, len(order), per_forward):
        chunk = order[start : start + per_forward]
        plan = Plan()
        fill(plan, [items[i] for i in chunk], len(chunk) + 1)
        out = _one_forward(model, input_ids, plan, len(chunk) + 1, metric)
        index = torch.tensor(chunk)
        values[index] = out[1:]
        clean[index] = out[0]
    return values, clean


def _one_forward(model: "Model", input_ids: torch.Tensor, plan: Plan, n_rows: int, metric: Metric) -> torch.Tensor:
    """One forward of n_rows copies of the prompt through the engine's trace: the metric per row, float64."""
    saved = model.execute(input_ids.expand(n_rows, -1), plan, {}, metric, gradients=False)
    return saved["metric"].reshape(n_rows).cpu().double()
