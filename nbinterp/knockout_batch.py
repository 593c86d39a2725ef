"""Many exact single interventions in one forward pass: batch row b carries
intervention b (one attention-edge knockout, or one head ablation), and the
metric comes back per row.

`Model.run` does one intervention set per forward. Verifying an attribution
needs hundreds to hundreds of thousands of *separate* interventions on the
same prompt; on a small model the per-trace overhead dominates, so stacking
them along the batch dimension is the honest speed-up. Each row is computed
exactly as `model.run(prompt, knockout=[edge])` / `ablate={(l, h): 0}` would
(tested against it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

import torch

from .adapters import get_path
from .attention_math import attention_output, attention_probabilities
from .errors import NbinterpError
from .interventions import Metric, attention_call

if TYPE_CHECKING:
    from .model import Model

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
    if model.remote is True:
        raise NbinterpError(
            "batched exact knockouts run on a local model only; on NDIF verify a few edges with "
            "model.run(prompt, knockout=[edge]) instead"
        )
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
    arch, nn_model = model.arch, model.nn
    n_rows, n_tokens = len(items), input_ids.shape[1]
    device = model._device()
    knock: dict[int, torch.Tensor] = {}
    z_scale: dict[int, torch.Tensor] = {}
    if kind == "knockout":
        for row, (layer, head, query, key) in enumerate(items):
            mask = knock.setdefault(layer, torch.zeros(n_rows, model.n_heads, n_tokens, n_tokens, dtype=torch.bool))
            mask[row, head, query, key] = True
    elif kind == "ablate":
        width = model.n_heads * model.head_dim
        for row, (layer, head) in enumerate(items):
            scale = z_scale.setdefault(layer, torch.ones(n_rows, 1, width))
            scale[row, 0, head * model.head_dim : (head + 1) * model.head_dim] = 0.0
    layers = get_path(nn_model, arch.layers)
    calls = {l: attention_call(get_path(layers[l], arch.attention)) for l in knock}
    unembed = get_path(nn_model, arch.unembed)
    batch = input_ids.to(device).expand(n_rows, -1)
    with torch.no_grad(), nn_model.trace(batch):
        for l in range(model.n_layers):
            if l in knock:
                call = calls[l]
                args, kwargs = call.inputs
                query, key, value, mask = args[1], args[2], args[3], args[4]
                probs = attention_probabilities(
                    query, key, mask, kwargs.get("scaling") or query.shape[-1] ** -0.5,
                    kwargs.get("softcap"), kwargs.get("sliding_window"), knock[l].to(query.device),
                )
                call.output = (attention_output(probs, value), probs)
            if l in z_scale:
                out_proj = get_path(get_path(layers[l], arch.attention), arch.out_proj)
                out_proj.input = out_proj.input * z_scale[l].to(out_proj.input)
        # Only the metric's position is read: unembed just that one (a large
        # vocabulary makes the unembedding a third of a small model's cost).
        unembed.input = unembed.input[:, metric.position : metric.position + 1]
        logits = unembed.output[:, 0]  # [rows, V]
        value = logits[:, metric.target].float()
        if metric.foil is not None:
            value = value - logits[:, metric.foil].float()
        value = value.detach().save()
    return value.cpu().double()


def valid_edges(model: "Model", n_tokens: int, layers: Iterable[int] | None = None) -> list[Edge]:
    """Every edge a knockout can remove: key <= query, and the query keeps at
    least one other key (so query 0 has none)."""
    layers = range(model.n_layers) if layers is None else layers
    return [
        (l, h, q, k)
        for l in layers for h in range(model.n_heads) for q in range(1, n_tokens) for k in range(q + 1)
    ]
