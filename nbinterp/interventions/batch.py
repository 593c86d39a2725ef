"""Many exact single interventions in one forward pass: batch row b carries
intervention b (one attention-edge knockout, or one head ablation), and the
metric comes back per row.

`Model.run` does one intervention set per forward. Verifying an attribution
needs hundreds to hundreds of thousands of *separate* interventions on the
same prompt; on a small model the per-trace overhead dominates, so stacking
them along the batch dimension of the engine's (batch-aware) trace is the
honest speed-up. Each row equals `model.run(prompt, knockout=[edge])` /
`ablate={(l, h): 0}` (tested against it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from nbinterp.errors import NbinterpError
from nbinterp.engine.trace import Metric, Plan

if TYPE_CHECKING:
    from nbinterp.engine.model import Model

Edge = tuple[int, int, int, int]  # (layer, head, query, key)

# Largest float32 element count of one layer's attention probabilities
# (rows x heads x T x T) or MLP hidden state per batch: ~64 MB each.
ELEMENT_BUDGET = 1 << 24
MAX_ROWS = 512


def batch_rows(model: "Model", n_tokens: int) -> int:
    """How many interventions to stack per forward for a prompt of n_tokens."""
    per_row = max(model.n_heads * n_tokens * n_tokens, model.d_mlp * n_tokens, 1)
    return max(1, min(MAX_ROWS, ELEMENT_BUDGET // per_row))


def metric_of(model: "Model", target: str | int, foil: str | int | None, position: int, n_tokens: int) -> Metric:
    if not -n_tokens <= position < n_tokens:
        raise NbinterpError(f"position {position} is outside the prompt's {n_tokens} tokens")
    return Metric(model.token_id(target), None if foil is None else model.token_id(foil), position % n_tokens)


def knockout_metrics(
    model: "Model", input_ids: torch.Tensor, edges: Sequence[Edge], metric: Metric, rows: int | None = None,
) -> torch.Tensor:
    """metric(prompt with edge i knocked out) for every edge: [len(edges)] float64."""
    n_tokens = input_ids.shape[1]
    checked = []
    for edge in edges:
        if not (isinstance(edge, (tuple, list)) and len(edge) == 4):
            raise NbinterpError(f"knockout edge {edge!r}: use (layer, head, query_position, key_position)")
        layer, head, query, key = model._check_layer(edge[0]), model._check_head(edge[1]), edge[2], edge[3]
        if not (isinstance(query, int) and isinstance(key, int) and 0 <= key <= query < n_tokens and query > 0):
            raise NbinterpError(
                f"knockout edge {tuple(edge)}: need 0 <= key <= query < {n_tokens} and query > 0 "
                "(query 0 has no other key to renormalise onto)"
            )
        checked.append((layer, head, int(query), int(key)))
    return _batched(model, input_ids, checked, "knockout", metric, rows)


def ablation_metrics(
    model: "Model", input_ids: torch.Tensor, heads: Sequence[tuple[int, int]], metric: Metric, rows: int | None = None,
) -> torch.Tensor:
    """metric(prompt with head i zero-ablated) for every (layer, head): [len(heads)] float64."""
    checked = [(model._check_layer(l), model._check_head(h)) for l, h in heads]
    return _batched(model, input_ids, checked, "ablate", metric, rows)


def clean_metric(model: "Model", input_ids: torch.Tensor, metric: Metric) -> float:
    return float(_batched(model, input_ids, [None], "none", metric, 1)[0])


def _batched(model: "Model", input_ids: torch.Tensor, items: list, kind: str, metric: Metric, rows: int | None) -> torch.Tensor:
    n_tokens = input_ids.shape[1]
    rows = rows or batch_rows(model, n_tokens)
    out = torch.empty(len(items), dtype=torch.float64)
    # Sorting by layer keeps most batches to one intervened layer.
    order = sorted(range(len(items)), key=lambda i: (items[i] or (0,))[0])
    for start in range(0, len(order), rows):
        chunk = order[start : start + rows]
        values = _one_forward(model, input_ids, [items[i] for i in chunk], kind, metric)
        out[torch.tensor(chunk)] = values
    return out


def _one_forward(model: "Model", input_ids: torch.Tensor, items: list, kind: str, metric: Metric) -> torch.Tensor:
    """One forward of len(items) rows through the engine's trace; row b carries items[b]."""
    n_rows, n_tokens = len(items), input_ids.shape[1]
    plan = Plan()
    if kind == "knockout":
        for row, (layer, head, query, key) in enumerate(items):
            mask = plan.knockout.setdefault(layer, torch.zeros(n_rows, model.n_heads, n_tokens, n_tokens, dtype=torch.bool))
            mask[row, head, query, key] = True
    elif kind == "ablate":
        width = model.n_heads * model.head_dim
        for row, (layer, head) in enumerate(items):
            if layer not in plan.z_scale:
                plan.z_scale[layer] = torch.ones(n_rows, 1, width)
                plan.z_baseline[layer] = torch.zeros(width)
            plan.z_scale[layer][row, 0, head * model.head_dim : (head + 1) * model.head_dim] = 0.0
    batch = input_ids.expand(n_rows, -1)
    saved = model._execute(batch, plan, {}, metric, gradients=False)
    return saved["metric"].reshape(n_rows).cpu().double()
