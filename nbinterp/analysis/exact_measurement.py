"""The hybrid attribution's exact measurements, in batches that can be
iterated and cancelled: every head's zero ablation, then each attention row's
dominant edges knocked out, one batched forward per step
(`nbinterp.interventions.batch`: each forward carries its own clean row, so
every number is metric(intervened) - metric(clean) of the same forward).

    for update in measurement:      # or measurement.run()
        print(update.done, "/", update.total)
    measurement.cancel()            # from any thread: stops after the batch in flight

Values not measured yet are NaN; iterating again resumes where it stopped.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch

from nbinterp.interventions import batch

if TYPE_CHECKING:
    from nbinterp.engine.model import Model
    from nbinterp.engine.plan import Metric


@dataclass(frozen=True)
class MeasuredBatch:
    """One forward's results: `keys` are (layer, head) for kind "head",
    (layer, head, query, key) for kind "edge"."""

    kind: str
    keys: list[tuple[int, ...]]
    effects: torch.Tensor  # float64 [len(keys)]
    done: int
    total: int


class ExactMeasurement:
    """Planned head ablations and edge knockouts of one prompt and metric."""

    def __init__(self, model: "Model", input_ids: torch.Tensor, metric: "Metric", heads: list[tuple[int, int]],
                 edges: torch.Tensor, rows: int | None = None) -> None:
        self.model, self.input_ids, self.metric = model, input_ids, metric
        self.heads = heads
        self.edges = edges  # [N, 4] int64, sorted by layer so a forward mostly touches one layer
        self.head_effects = torch.full((model.n_layers, model.n_heads), float("nan"), dtype=torch.float64)
        self.edge_effects = torch.full((len(edges),), float("nan"), dtype=torch.float64)
        self.done = 0
        rows = rows or batch.batch_rows(model, input_ids.shape[1])
        self.per_forward = max(1, rows - 1)  # one row of each forward is the clean reference
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one batch at a time, whichever thread iterates

    @property
    def total(self) -> int:
        return len(self.heads) + len(self.edges)

    @property
    def finished(self) -> bool:
        return self.done == self.total

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set() and not self.finished

    def cancel(self) -> None:
        """Stop after the batch in flight (safe from another thread)."""
        self._stop.set()

    def __iter__(self) -> Iterator[MeasuredBatch]:
        self._stop.clear()
        while not self._stop.is_set():
            with self._lock:
                update = self._next_batch()
            if update is None:
                return
            yield update

    def run(self) -> "ExactMeasurement":
        for _ in self:
            pass
        return self

    def _next_batch(self) -> MeasuredBatch | None:
        start = self.done
        if start < len(self.heads):
            keys = self.heads[start : start + self.per_forward]
            effects = batch.ablation_effects(self.model, self.input_ids, keys, self.metric, rows=len(keys) + 1)
            for (layer, head), value in zip(keys, effects.tolist()):
                self.head_effects[layer, head] = value
            kind = "head"
        elif start < self.total:
            first = start - len(self.heads)
            chosen = self.edges[first : first + self.per_forward]
            keys = [tuple(edge) for edge in chosen.tolist()]
            effects = batch.knockout_effects(self.model, self.input_ids, keys, self.metric, rows=len(keys) + 1)
            self.edge_effects[first : first + len(keys)] = effects
            kind = "edge"
        else:
            return None
        self.done = start + len(keys)
        return MeasuredBatch(kind, list(keys), effects, self.done, self.total)
