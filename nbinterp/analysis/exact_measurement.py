"""The hybrid attribution's exact measurements, in batches that can be
iterated and cancelled: every head's zero ablation first, then the planned
attention edges knocked out in the order given (largest |estimate| first),
one batched forward per step (`nbinterp.engine.batch.measure`: each forward
carries its own clean row, so every number is metric(intervened) -
metric(clean) of the same forward). A forward whose heads run out is filled
with the first edges, so no row is wasted.

    for update in measurement:      # or measurement.run()
        print(update.done, "/", update.total)
    measurement.cancel()            # from any thread: stops after the batch in flight

Values not measured yet are NaN; iterating again resumes where it stopped.
`status_of_head` / `queued` say what an unmeasured number is waiting for.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from nbinterp.analysis.chunked import ChunkedWork
from nbinterp.interventions import batch

if TYPE_CHECKING:
    from nbinterp.engine.model import Model
    from nbinterp.engine.plan import Metric
    from nbinterp.engine.run import Run


@dataclass(frozen=True)
class MeasuredBatch:
    """One forward's results: `keys` are (layer, head) for a head ablation,
    (layer, head, query, key) for an edge knockout; `kind` is "head", "edge",
    or "head+edge" for the forward where the heads end and the edges begin."""

    kind: str
    keys: list[tuple[int, ...]]
    effects: torch.Tensor  # float64 [len(keys)]
    done: int
    total: int


class ExactMeasurement(ChunkedWork):
    """Planned head ablations and edge knockouts of one prompt and metric."""

    def __init__(self, model: "Model", input_ids: torch.Tensor, metric: "Metric", heads: list[tuple[int, int]],
                 edges: torch.Tensor, rows: int | None = None, base: "Run | None" = None) -> None:
        self.model, self.input_ids, self.metric = model, input_ids, metric
        self.base = base  # the prompt's own run: forwards start where their interventions begin
        self.heads = heads
        self.edges = edges  # [N, 4] int64, in measurement order (the caller's priority)
        self.head_effects = torch.full((model.n_layers, model.n_heads), float("nan"), dtype=torch.float64)
        self.edge_effects = torch.full((len(edges),), float("nan"), dtype=torch.float64)
        self.done = 0
        rows = rows or batch.batch_rows(model, input_ids.shape[1])
        self.per_forward = max(1, rows - 1)  # one row of each forward is the clean reference
        self._lock = threading.Lock()  # one batch at a time, whichever thread iterates
        super().__init__()

    @property
    def total(self) -> int:
        return len(self.heads) + len(self.edges)

    @property
    def pending(self) -> int:  # type: ignore[override] - derived from `done`
        """How many planned measurements are left."""
        return self.total - self.done

    def _step(self) -> MeasuredBatch | None:
        with self._lock:
            return self._next_batch()

    def run(self) -> "ExactMeasurement":
        for _ in self:
            pass
        return self

    def _next_batch(self) -> MeasuredBatch | None:
        start = self.done
        if start >= self.total:
            return None
        stop = min(self.total, start + self.per_forward)
        n_heads = len(self.heads)
        keys: list[tuple[int, ...]] = [tuple(h) for h in self.heads[start:stop]]
        first_edge = max(0, start - n_heads)
        keys += [tuple(edge) for edge in self.edges[first_edge : max(0, stop - n_heads)].tolist()]
        effects = measure_effects(self.model, self.input_ids, keys, self.metric, self.base)
        n_head_keys = sum(len(key) == 2 for key in keys)
        for (layer, head), value in zip(keys[:n_head_keys], effects[:n_head_keys].tolist()):
            self.head_effects[layer, head] = value
        if n_head_keys < len(keys):
            self.edge_effects[first_edge : first_edge + len(keys) - n_head_keys] = effects[n_head_keys:]
        kind = "head" if n_head_keys == len(keys) else "edge" if n_head_keys == 0 else "head+edge"
        self.done = stop
        return MeasuredBatch(kind, keys, effects, self.done, self.total)

    def queued(self) -> torch.Tensor:
        """bool [N]: the planned edges not measured yet."""
        return self.edge_effects.isnan()


def measure_effects(model: "Model", input_ids: torch.Tensor, keys: list[tuple[int, ...]], metric: "Metric",
                    base: "Run | None" = None) -> torch.Tensor:
    """metric(intervened) - metric(clean) for head ablations (2-tuples) and edge
    knockouts (4-tuples) together, in one forward (more only where a resumed
    forward's cache budget splits it): float64 [len(keys)]. With `base`, the
    prompt's run, a forward starts at its lowest layer and, for edges only, its
    first query (`nbinterp.engine.batch.measure`)."""
    def fill(plan: batch.RowPlan, slot: int, key: tuple[int, ...]) -> None:
        if len(key) == 2:
            plan.ablate_head(slot, *key)
        else:
            plan.knock_out(slot, *key)

    def start(key: tuple[int, ...]) -> tuple[int, int]:
        return (key[0], 0) if len(key) == 2 else (key[0], key[2])

    return batch.measure(model, input_ids, keys, fill, metric, rows=len(keys) + 1, base=base,
                         start=start).effects[:, 0]
