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
chunks, and only float64 [items, rows] numbers are kept, plus (`clean_run`)
the rows' unintervened streams when they fit STREAM_BYTES.

Head and MLP ablations need no block below their layer: with the streams
(`clean_run`), `measured_metrics(start=...)` starts each forward at its
items' lowest layer (`measure(base=...)`), the same numbers for ~half the
blocks over a sweep of every component. `estimated_effects` gives every
component's attribution-patching estimate from one forward + backward per row.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch

from nbinterp.engine.batch import Measured, RowPlan, batch_rows, forward_metric, measure
from nbinterp.engine.plan import Metric, Plan

if TYPE_CHECKING:
    from nbinterp.analysis.datasets import TokenizedSet
    from nbinterp.engine.model import Model

Component = tuple[int, "int | str"]  # (layer, head) or (layer, "mlp")
Bucket = tuple[int, int, "int | None"]  # (token length, target, foil)

# Largest float32 bytes of unintervened streams `clean_run` keeps (every row,
# every layer above 0): past it, forwards run every block (same numbers, slower).
STREAM_BYTES = 512 << 20


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


@dataclass
class Streams:
    """The rows' unintervened residual streams entering each layer above 0, per
    bucket: `members` (data rows) and {layer: [len(members), T, d_model]}."""

    by_bucket: dict[Bucket, tuple[list[int], dict[int, torch.Tensor]]]

    def of(self, bucket: Bucket, members: Sequence[int]) -> dict[int, torch.Tensor]:
        """{layer: [len(members), T, d_model]} for these rows of the bucket."""
        kept, layers = self.by_bucket[bucket]
        if list(members) == kept:
            return layers
        where = {row: i for i, row in enumerate(kept)}
        index = torch.tensor([where[row] for row in members])
        return {layer: stream[index] for layer, stream in layers.items()}


def stream_bytes(model: "Model", data: "TokenizedSet") -> int:
    """float32 bytes of every row's streams entering layers 1..L-1."""
    tokens = sum(len(ids) for ids in data.input_ids)
    return 4 * tokens * model.d_model * max(0, model.n_layers - 1)


def clean_run(model: "Model", data: "TokenizedSet") -> tuple[torch.Tensor, "Streams | None"]:
    """Each row's clean metric (float64 [rows]) and, from the same forwards,
    its unintervened streams (`Streams`; None when they would pass STREAM_BYTES
    or the model has one layer)."""
    keep = model.n_layers > 1 and stream_bytes(model, data) <= STREAM_BYTES
    if not keep:
        return clean_metrics(model, data), None
    out = torch.empty(len(data), dtype=torch.float64)
    layers = set(range(1, model.n_layers))
    kept: dict[Bucket, tuple[list[int], dict[int, torch.Tensor]]] = {}
    for bucket, members in buckets(data, range(len(data))).items():
        n_tokens, target, foil = bucket
        metric = Metric(target, foil, n_tokens - 1)
        chunk = batch_rows(model, n_tokens)
        parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
        for start in range(0, len(members), chunk):
            part = members[start : start + chunk]
            ids = torch.stack([data.input_ids[row] for row in part])
            saved = model.execute(ids, Plan(), {"resid_pre": layers}, metric, gradients=False, logits="none",
                                  all_rows=True)
            out[part] = saved["metric"].reshape(len(part)).cpu().double()
            for layer in layers:
                parts[layer].append(saved["resid_pre"][layer].float())
        kept[bucket] = (list(members), {layer: torch.cat(p) for layer, p in parts.items()})
    return out, Streams(kept)


def measured_metrics(
    model: "Model", data: "TokenizedSet", items: Sequence[Any], fill: Callable[[RowPlan, int, Any], None],
    rows: Sequence[int] | None = None, order: Callable[[Any], Any] | None = None,
    progress: Callable[[], None] | None = None, max_rows: int | None = None,
    streams: "Streams | None" = None, start: Callable[[Any], int] | None = None,
) -> Measured:
    """Every item's intervention (written by `fill(row_plan, slot, item)`) on every
    row: `Measured` with values and clean [len(items), len(rows)] float64.
    With `streams` (`clean_run`) and `start(item)` = the lowest layer the item
    changes, forwards skip the blocks below their items' lowest layer."""
    rows = list(range(len(data))) if rows is None else list(rows)
    values = torch.empty(len(items), len(rows), dtype=torch.float64)
    clean = torch.empty(len(items), len(rows), dtype=torch.float64)
    where = {row: i for i, row in enumerate(rows)}
    skip = streams is not None and start is not None
    for (n_tokens, target, foil), members in buckets(data, rows).items():
        ids = torch.stack([data.input_ids[row] for row in members])
        resume: dict[str, Any] = {}
        if skip:
            resume = {"base": streams.of((n_tokens, target, foil), members),  # type: ignore[union-attr]
                      "start": lambda item: (start(item), 0)}  # type: ignore[misc]
        part = measure(model, ids, items, fill, Metric(target, foil, n_tokens - 1), rows=max_rows, order=order,
                       progress=progress, **resume)
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
                      progress: Callable[[], None] | None = None, max_rows: int | None = None,
                      streams: "Streams | None" = None) -> Measured:
    """Each component zero-ablated alone, on every row: [components, rows]
    (with `streams`, each forward starts at its components' lowest layer)."""
    return measured_metrics(model, data, list(components), lambda plan, slot, c: ablate(plan, slot, [c]),
                            order=lambda c: c[0], progress=progress, max_rows=max_rows, streams=streams,
                            start=lambda c: c[0])


def estimated_effects(model: "Model", data: "TokenizedSet", components: Sequence[Component],
                      rows: Sequence[int]) -> Iterator[tuple[int, torch.Tensor]]:
    """Attribution patching of each component's zero ablation, row by row:
    yields (row, float64 [components]) with metric(ablated) - metric(clean)
    estimated to first order from one forward + backward of the row:
    -(d metric / d z . z) over every position and the head's columns of z
    (the output projection's input), -(d metric / d mlp_out . mlp_out) for an MLP.
    One row per backward: the engine's gradients are of one row's metric."""
    mlp_layers = {layer for layer, head in components if head == "mlp"}
    head_dim = model.head_dim
    for row in rows:
        ids = data.input_ids[row][None]
        metric = Metric(data.targets[row], data.foils[row], ids.shape[1] - 1)
        saved = model.execute(ids, Plan(), {"mlp_out": mlp_layers}, metric, gradients=True,
                              grad_captures=("mlp_out",) if mlp_layers else (), logits="none")
        out = torch.empty(len(components), dtype=torch.float64)
        for i, (layer, head) in enumerate(components):
            if head == "mlp":
                value, grad = saved["mlp_out"][layer], saved["grad_mlp_out"][layer]
            else:
                columns = slice(int(head) * head_dim, (int(head) + 1) * head_dim)
                value, grad = saved["z"][layer][:, columns], saved["grad_z"][layer][:, columns]
            out[i] = -(grad.double() * value.double()).sum()
        yield row, out

