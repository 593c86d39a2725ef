"""The metric (logit[target] - logit[foil] at the last token) of every row of a
data set, clean and under interventions, batched through the engine's one
batched runner (`nbinterp.engine.batch.measure`).

Rows are grouped by (token length, target, foil) and each group runs as the
prompts of `measure`: rows of one length need no padding, so every row's
metric is read at its own last token exactly as `model.run` would, and the
engine's metric has one target and foil per forward. This costs little: a
forward packs (prompts x intervention slots) up to the engine's row budget,
so small groups simply carry more intervention slots per forward.
Memory is bounded in the number of rows: `measure` runs a group's prompts in
chunks, and only float64 [items, rows] numbers are kept.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from nbinterp.engine.batch import Measured, RowPlan, batch_rows, forward_metric, measure
from nbinterp.engine.plan import Metric, Plan

if TYPE_CHECKING:
    from nbinterp.analysis.datasets import TokenizedSet
    from nbinterp.engine.model import Model

Component = tuple[int, "int | str"]  # (layer, head) or (layer, "mlp")


def buckets(data: "TokenizedSet", rows: Sequence[int]) -> dict[tuple[int, int, int | None], list[int]]:
    """(token length, target, foil) -> the data rows among `rows` that have them."""
    grouped: dict[tuple[int, int, int | None], list[int]] = defaultdict(list)
    for row in rows:
        grouped[(len(data.input_ids[row]), data.targets[row], data.foils[row])].append(row)
    return dict(grouped)


def clean_metrics(model: "Model", data: "TokenizedSet", rows: Sequence[int] | None = None) -> torch.Tensor:
    """float64 [len(rows)]: each row's metric without interventions."""
    rows = list(range(len(data))) if rows is None else list(rows)
    out = torch.empty(len(rows), dtype=torch.float64)
    where = {row: i for i, row in enumerate(rows)}
    for (n_tokens, target, foil), members in buckets(data, rows).items():
        metric = Metric(target, foil, n_tokens - 1)
        chunk = batch_rows(model, n_tokens)
        for start in range(0, len(members), chunk):
            part = members[start : start + chunk]
            ids = torch.stack([data.input_ids[row] for row in part])
            values = forward_metric(model, ids, Plan(), metric)
            out[[where[row] for row in part]] = values
    return out


def measured_metrics(
    model: "Model", data: "TokenizedSet", items: Sequence[Any], fill: Callable[[RowPlan, int, Any], None],
    rows: Sequence[int] | None = None, order: Callable[[Any], Any] | None = None,
    progress: Callable[[], None] | None = None, max_rows: int | None = None,
) -> Measured:
    """Every item's intervention (written by `fill(row_plan, slot, item)`) on every
    row: `Measured` with values and clean [len(items), len(rows)] float64."""
    rows = list(range(len(data))) if rows is None else list(rows)
    values = torch.empty(len(items), len(rows), dtype=torch.float64)
    clean = torch.empty(len(items), len(rows), dtype=torch.float64)
    where = {row: i for i, row in enumerate(rows)}
    for (n_tokens, target, foil), members in buckets(data, rows).items():
        ids = torch.stack([data.input_ids[row] for row in members])
        part = measure(model, ids, items, fill, Metric(target, foil, n_tokens - 1), rows=max_rows, order=order,
                       progress=progress)
        columns = [where[row] for row in members]
        values[:, columns] = part.values
        clean[:, columns] = part.clean
    return Measured(values, clean)


def every_component(model: "Model") -> list[Component]:
    """Every head, then each layer's MLP, layer by layer."""
    return [(layer, head) for layer in range(model.n_layers) for head in [*range(model.n_heads), "mlp"]]


def ablate(plan: RowPlan, slot: int, components: Sequence[Component]) -> None:
    """Zero-ablate `components` (heads and MLPs) in the rows of `slot`."""
    for layer, head in components:
        if head == "mlp":
            plan.scale_mlp(slot, layer, 0.0)
        else:
            plan.ablate_head(slot, layer, int(head))


def component_metrics(model: "Model", data: "TokenizedSet", components: Sequence[Component],
                      progress: Callable[[], None] | None = None, max_rows: int | None = None) -> Measured:
    """Each component zero-ablated alone, on every row: [components, rows]."""
    return measured_metrics(model, data, list(components), lambda plan, slot, c: ablate(plan, slot, [c]),
                            order=lambda c: c[0], progress=progress, max_rows=max_rows)

