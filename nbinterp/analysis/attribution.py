"""Attribution of the logit difference to attention heads and to single
query->key edges, from one forward and one backward pass, with exact checks.

Sign convention: every effect is ``metric(intervened) - metric(clean)``, where
the metric is ``logit(target) - logit(foil)`` at ``position``. A negative
effect means the head / edge *helps* the target (removing it lowers the logit
difference); a positive one means it works against the target.

Heads: the intervention is zero ablation of the head's output (the output
projection's input for that head); the estimate is gradient x activation,
``-<d metric / d z_h, z_h>``.

Edges: the intervention is the exact knockout of ``model.run(knockout=...)``:
probability ``a_k -> 0``, the row renormalised, so the new row is
``a * (1 - onehot_k) / (1 - a_k)``. Two estimates from the same gradient
``g = d metric / d attention probability``:

- ``"linear"``: attribution patching on the probability alone,
  ``delta = g_k * (0 - a_k)``; it ignores where the removed mass goes.
- ``"qk_fix"``: the AtP* fix (Kramar et al. 2024, arXiv 2403.00745)
  for the attention softmax: the changed row is known in closed form, so
  ``delta = sum_j g_j (new_a_j - a_j) = a_k * (gbar_k - g_k)`` with
  ``gbar_k`` the mean of ``g`` over the other keys weighted by the
  renormalised row. In a saturated head (``a_k ~ 1``) the removed mass all
  moves to the other keys, which the linear estimate misses.

Both still fail where the edge's effect runs through *other* saturated heads
downstream: knocking out a previous-token head's dominant edge rewrites the
key an induction head matches on, the induction head's attention jumps, and
the gradient, taken where that head was saturated, sees almost nothing
(measured on the bundled model: -0.01 estimated, -24 exact). Such edges are
the dominant ones of their row (the knockout removes most of the row's mass),
and a row has at most ``1 / dominant`` of them, so:

- ``"hybrid"`` (default): every head's zero ablation is measured first, at
  any length (L*H ablations, batched): gradient x activation misses heads
  that act through saturated heads downstream just as the edge estimates do
  (the bundled model's previous-token head: +1.4 estimated, -18.1 measured
  on the IOI prompt). Then the edges: ``"qk_fix"``, except that the edges
  holding at least ``dominant`` (0.3) of their row's attention are knocked
  out exactly (batched forwards), largest |QK-fix estimate| first, at most
  ``exact_budget`` of them (default: what is left of three batched forwards
  after the heads, at least one forward: 1,517 edges for the bundled model
  at T <= 32, 237 for SmolLM2 at T = 64). A row has at most ``1 / dominant``
  dominant edges, so there are at most ``3 L H T`` of them, linear in the
  prompt length instead of the ``L H T^2 / 2`` of the exhaustive reference.
  Every number says what it is (`edge_status`, `head_status`): "measured"
  only once measured; "estimate (will be measured)" while queued; "estimate
  (not measured: budget)" for a dominant edge outside the budget.

Memory: nothing [L, H, T, T] is held. The estimates are computed one head at
a time (float64) and reduced to each head's top edges, totals and dominant
edges (`nbinterp.analysis.edge_estimates`); a head's full map is recomputed
from the run on request (`edge_map`). `dense_edge_effects`,
`exhaustive_edges` and `compare` build L*H*T^2 tensors: for short prompts.

Two phases: the estimates (one forward + one backward), then the exact
measurements in batches (`measure()`: iterate, `cancel()`, `done / total`;
`nbinterp.analysis.exact_measurement`). `compute_attribution(...)` runs both by default;
`measure=False` returns after the first, every number marked estimated until
measured.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from nbinterp.analysis.edge_estimates import (  # noqa: F401 - re-exported: the estimates live there
    EdgeSummary, causally_zero, edge_estimates, head_edges, summarise, top_by_magnitude,
)
from nbinterp.analysis.estimate_stats import Summary, Verification
from nbinterp.analysis.exact_measurement import ExactMeasurement, MeasuredBatch
from nbinterp.engine.plan import Metric
from nbinterp.errors import NbinterpError
from nbinterp.interventions import batch
from nbinterp.vocabulary import renamed_function

if TYPE_CHECKING:
    from nbinterp.engine.model import Model
    from nbinterp.engine.run import Run

METHODS = ("hybrid", "qk_fix", "linear")
DEFAULT_TOP = 100
TOP_PER_HEAD = 256  # each head's top edges kept per method: global top-k is exact for k <= this
DOMINANT = 0.3
EXACT_FORWARDS = 3  # default: heads + edges fill this many batched forwards (at least one of edges)
# What an entry of the hybrid is, in the words every view uses.
MEASURED = "measured"
QUEUED = "estimate (will be measured)"
CANCELLED = "estimate (not measured: cancelled; resume to measure)"
OUT_OF_BUDGET = "estimate (not measured: budget)"
NOT_DOMINANT = "estimate (not measured: below the dominant threshold)"
DENSE_LIMIT = 1 << 27  # L*H*T^2 entries a dense tensor may have (1 GB of float64)


class EdgeEffect(NamedTuple):
    """One edge's effect: `estimate` is the number shown (a measurement where
    `measured`, the hybrid's exact knockouts; an estimate otherwise)."""

    layer: int
    head: int
    query: int
    key: int
    estimate: float
    measured: bool = False


class Attribution:
    """Effects of every head and every attention edge on one metric; build it
    with `attribute`. `heads` [L, H]; `edges` the top edges of the default
    method, largest |effect| first; `edge_map(layer, head)` one head's [T, T]."""

    def __init__(self, model: "Model", run: "Run", target: str | int, foil: str | int | None, position: int,
                 head_estimates: torch.Tensor, summary: EdgeSummary, measurement: ExactMeasurement,
                 method: str = "hybrid", n_top: int = DEFAULT_TOP, seconds: float = 0.0) -> None:
        self.model, self.run, self.target, self.foil, self.position = model, run, target, foil, position
        self.head_estimates = head_estimates  # [L, H] gradient x activation
        self.summary = summary
        self.measurement = measurement
        self.method, self.n_top, self.seconds = method, n_top, seconds
        # planned edge i of the measurement, by head: (positions in its list, flat query * T + key)
        self._planned: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        edges, n = measurement.edges, len(run)
        for (layer, head) in {tuple(e) for e in edges[:, :2].tolist()}:
            where = ((edges[:, 0] == layer) & (edges[:, 1] == head)).nonzero()[:, 0]
            self._planned[(layer, head)] = (where, edges[where, 2] * n + edges[where, 3])

    # ---------------------------------------------------------------- heads
    @property
    def head_exact(self) -> torch.Tensor:
        """[L, H] measured zero-ablation effects, NaN where not (yet) measured."""
        return self.measurement.head_effects

    @property
    def head_measured(self) -> torch.Tensor:
        """bool [L, H]: which heads' "hybrid" effects are measured."""
        return ~self.head_exact.isnan()

    @property
    def heads(self) -> torch.Tensor:
        """[L, H] effect of zero-ablating each head, for the default method."""
        return self.head_effects()

    def head_effects(self, method: str | None = None) -> torch.Tensor:
        """[L, H]: "hybrid" the measured ablation where measured (`head_measured`),
        gradient x activation elsewhere; the other methods gradient x activation."""
        method = self._method(method)
        if method != "hybrid":
            return self.head_estimates
        return torch.where(self.head_measured, self.head_exact, self.head_estimates)

    @property
    def metric(self) -> float:
        """The clean logit difference (logit alone without a foil)."""
        return self.run.metric

    @property
    def tokens(self) -> list[str]:
        return self.run.tokens

    # ---------------------------------------------------------------- edges
    @property
    def edges(self) -> list[EdgeEffect]:
        return self.top_edges(self.n_top)

    def top_edges(self, k: int | None = None, method: str | None = None, layer: int | None = None,
                  head: int | None = None, measured: bool | None = None) -> list[EdgeEffect]:
        """The k edges with the largest |effect| (all when k is None), optionally
        of one layer / head, and only measured (True) or estimated (False) ones.

        Exact from the kept per-head lists for k <= TOP_PER_HEAD; larger k (or
        None) recomputes every selected head from the run."""
        method = self._method(method)
        layers = range(self.model.n_layers) if layer is None else [self.model.check_layer(layer)]
        heads = range(self.model.n_heads) if head is None else [self.model.check_head(head)]
        parts = []
        for l in layers:
            for h in heads:
                index, value, exact = self._head_ranked(method, l, h, k, measured)
                parts.append((torch.full_like(index, l), torch.full_like(index, h), index, value, exact))
        if not parts:
            return []
        l_, h_, index, value, exact = (torch.cat(p) for p in zip(*parts))
        order = torch.argsort(value.abs(), descending=True, stable=True)[: k]
        n = len(self.run)
        return [EdgeEffect(int(l_[i]), int(h_[i]), int(index[i]) // n, int(index[i]) % n, float(value[i]), bool(exact[i]))
                for i in order.tolist()]

    def _head_ranked(self, method: str, layer: int, head: int, k: int | None,
                     measured: bool | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(flat index, value, measured) of one head's top-k, largest first."""
        kept = k is not None and k <= self.summary.keep
        if method != "hybrid":
            if measured:  # nothing of an estimate-only method is measured
                return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.bool)
            if kept:
                top = self.summary.top(method, layer, head)
                return top.index[:k], top.value[:k], torch.zeros(len(top.index[:k]), dtype=torch.bool)
            values = head_edges(self.run, layer, head)[method].flatten()
            index = top_by_magnitude(values, k)
            return index, values[index], torch.zeros(len(index), dtype=torch.bool)
        if kept:
            top = self.summary.top("qk_fix", layer, head)
            index, value = top.index, top.value.clone()
        else:
            values = head_edges(self.run, layer, head)["qk_fix"].flatten()
            index = top_by_magnitude(values, None)
            value = values[index]
        exact_index, exact_value = self._measured_in_head(layer, head)
        exact = torch.zeros(len(index), dtype=torch.bool)
        if len(exact_index):
            hit = torch.isin(index, exact_index)
            exact = hit
            lookup = dict(zip(exact_index.tolist(), exact_value.tolist()))
            value[hit] = torch.tensor([lookup[i] for i in index[hit].tolist()], dtype=torch.float64)
            extra = ~torch.isin(exact_index, index)
            index = torch.cat([index, exact_index[extra]])
            value = torch.cat([value, exact_value[extra]])
            exact = torch.cat([exact, torch.ones(int(extra.sum()), dtype=torch.bool)])
        if measured is not None:
            keep = exact if measured else ~exact
            index, value, exact = index[keep], value[keep], exact[keep]
        by_index = torch.argsort(index)
        index, value, exact = index[by_index], value[by_index], exact[by_index]
        order = torch.argsort(value.abs(), descending=True, stable=True)[: k]
        return index[order], value[order], exact[order]

    def _measured_in_head(self, layer: int, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat index, measured effect) of the head's edges measured so far."""
        where, flat = self._planned.get((layer, head), (torch.zeros(0, dtype=torch.long),) * 2)
        values = self.measurement.edge_effects[where]
        done = ~values.isnan()
        return flat[done], values[done]

    def edge_map(self, layer: int, head: int, method: str | None = None) -> torch.Tensor:
        """[T, T] float64 effect of knocking out each edge of one head (NaN where
        no knockout exists), recomputed from the run; "hybrid" with the head's
        measured edges overlaid (`exact_map`)."""
        method = self._method(method)
        layer, head = self.model.check_layer(layer), self.model.check_head(head)
        values = head_edges(self.run, layer, head)["qk_fix" if method == "hybrid" else method]
        if method == "hybrid":
            index, measured = self._measured_in_head(layer, head)
            values.view(-1)[index] = measured
        return values

    def exact_map(self, layer: int, head: int) -> torch.Tensor:
        """bool [T, T]: the head's edges whose "hybrid" effect is a measured knockout."""
        n = len(self.run)
        mask = torch.zeros(n * n, dtype=torch.bool)
        mask[self._measured_in_head(self.model.check_layer(layer), self.model.check_head(head))[0]] = True
        return mask.view(n, n)

    def measured_edges(self) -> list[EdgeEffect]:
        """Every edge knocked out exactly so far, with its measured effect."""
        done = ~self.measurement.edge_effects.isnan()
        return [EdgeEffect(*edge, value, True) for edge, value in
                zip(self.measurement.edges[done].tolist(), self.measurement.edge_effects[done].tolist())]

    def dense_edge_effects(self, method: str | None = None) -> torch.Tensor:
        """[L, H, T, T] float64 effects of `method` (NaN: no knockout): L*H*T^2
        values, for short prompts; a head at a time is `edge_map`."""
        return torch.stack([torch.stack([self.edge_map(l, h, method) for h in range(self.model.n_heads)])
                            for l in self._dense_layers()])

    def dense_exact(self) -> torch.Tensor:
        """bool [L, H, T, T]: the measured entries of "hybrid" (L*H*T^2: short prompts)."""
        return torch.stack([torch.stack([self.exact_map(l, h) for h in range(self.model.n_heads)])
                            for l in self._dense_layers()])

    def _dense_layers(self) -> range:
        n = len(self.run)
        size = self.model.n_layers * self.model.n_heads * n * n
        if size > DENSE_LIMIT:
            raise NbinterpError(f"a dense [L, H, T, T] tensor here has {size:,} entries: use edge_map(layer, head) "
                                "per head, or top_edges(k), for a prompt this long")
        return range(self.model.n_layers)

    def _method(self, method: str | None) -> str:
        method = self.method if method is None else method
        if method not in METHODS:
            raise NbinterpError(f"method must be one of {METHODS}, not {method!r}")
        return method

    def _metric(self) -> Any:
        return Metric.of(self.model, self.target, self.foil, self.position, len(self.run))

    # ------------------------------------------------------- measurements
    def measure(self) -> Iterator[MeasuredBatch]:
        """The exact measurements still to do, one batched forward per step:
        `for update in att.measure(): print(update.done, update.total)`."""
        return iter(self.measurement)

    def cancel(self) -> None:
        """Stop measuring after the batch in flight (safe from another thread)."""
        self.measurement.cancel()

    @property
    def finished(self) -> bool:
        """Every planned exact measurement done."""
        return self.measurement.finished

    # -------------------------------------------------------------- status
    def head_status(self, layer: int, head: int) -> str:
        """What the hybrid's number for this head is: `MEASURED`, `QUEUED`,
        `CANCELLED`, or `OUT_OF_BUDGET` (exact_budget=0: nothing measured)."""
        if not bool(self.head_measured[layer, head]):
            return self.pending_status() if self.measurement.heads else OUT_OF_BUDGET
        return MEASURED

    def pending_status(self) -> str:
        """The status of every planned entry not measured yet (`QUEUED`, or
        `CANCELLED` after a cancel)."""
        return CANCELLED if self.measurement.cancelled else QUEUED

    def edge_status(self, layer: int, head: int, query: int, key: int) -> str:
        """What the hybrid's number for this edge is: `MEASURED`, `QUEUED`,
        `CANCELLED`, `OUT_OF_BUDGET` (dominant, past `exact_budget`) or
        `NOT_DOMINANT` (the QK-fix estimate by design)."""
        n = len(self.run)
        where, flat = self._planned.get((layer, head), (torch.zeros(0, dtype=torch.long),) * 2)
        hit = (flat == query * n + key).nonzero()
        if len(hit):
            return MEASURED if not bool(self.measurement.edge_effects[where[hit[0, 0]]].isnan()) else self.pending_status()
        dominant = self.summary.dominant
        if len(dominant) and bool((dominant == torch.tensor([layer, head, query, key])).all(1).any()):
            return OUT_OF_BUDGET
        return NOT_DOMINANT

    def queued_map(self, layer: int, head: int) -> torch.Tensor:
        """bool [T, T]: the head's planned edges not measured yet."""
        n = len(self.run)
        where, flat = self._planned.get((self.model.check_layer(layer), self.model.check_head(head)),
                                        (torch.zeros(0, dtype=torch.long),) * 2)
        mask = torch.zeros(n * n, dtype=torch.bool)
        mask[flat[self.measurement.edge_effects[where].isnan()]] = True
        return mask.view(n, n)

    # --------------------------------------------------------------- verify
    def verify(self, k: int = 20, method: str | None = None, edges: Sequence[Sequence[int]] | None = None,
               pool: int | None = None) -> Verification:
        """Exact knockouts (batched forwards) of the top-k edges, or of `edges`,
        against the estimate.

        Measures the `pool` (default 4k) edges with the largest |estimate| and
        reports Spearman and MAE over them, and recall@k relative to the pool
        (for the recall over every edge, `compare` with `exhaustive_edges()`).
        For "hybrid" the pool holds its *estimated* edges only (QK-fix
        estimates): the edges it measured would compare a measurement with
        itself. Chosen `edges` the hybrid measured are compared through the
        QK-fix estimate under the measurement. The method column says which
        estimate was compared.
        """
        method = self._method(method)
        if edges is None:
            if not isinstance(k, int) or k < 1:
                raise NbinterpError(f"k must be a positive integer, not {k!r}")
            pool = 4 * k if pool is None else pool
            if method == "hybrid":
                chosen = self.top_edges(max(pool, k), "hybrid", measured=False)
                n_measured = int((~self.measurement.edge_effects.isnan()).sum())
                scope = (f"the top {len(chosen)} estimated edges of the hybrid by |effect| "
                         f"(its {n_measured} measured edges left out)")
            else:
                chosen = self.top_edges(max(pool, k), method)
                scope = f"the top {len(chosen)} edges by |{method} estimate|"
            keys = [e[:4] for e in chosen]
            estimate = np.array([e.estimate for e in chosen])
        else:
            keys = [tuple(int(x) for x in e[:4]) for e in edges]
            estimate = self._estimates_at(keys, "qk_fix" if method == "hybrid" else method)
            scope = f"{len(keys)} chosen edges"
        compared = "qk_fix" if method == "hybrid" else method
        started = time.perf_counter()
        measured = batch.knockout_effects(self.model, self.run.input_ids, keys, self._metric(), base=self.run).numpy()
        clean = self.metric  # for display: the gradient run's own forward, no extra one
        seconds = time.perf_counter() - started
        estimate = np.nan_to_num(estimate)  # a no-op knockout (masked key) estimates 0
        summary = Summary.of(estimate, measured, k, scope)
        return Verification("edge knockout", compared, list(keys), estimate, measured, summary, clean, seconds,
                            {"view_method": method})

    def _estimates_at(self, keys: list[tuple[int, ...]], method: str) -> np.ndarray:
        maps: dict[tuple[int, int], torch.Tensor] = {}
        out = []
        for layer, head, query, key in keys:
            if (layer, head) not in maps:
                maps[(layer, head)] = head_edges(self.run, self.model.check_layer(layer), self.model.check_head(head))[method]
            n = maps[(layer, head)].shape[0]
            out.append(float(maps[(layer, head)][query, key]) if 0 <= query < n and 0 <= key < n else float("nan"))
        return np.array(out, dtype=np.float64)

    def verify_heads(self, k: int = 10, heads: Sequence[tuple[int, int]] | None = None) -> Verification:
        """The gradient x activation estimate of each head (or `heads`) against
        its exact zero ablation (the hybrid's own measurements reused where done)."""
        if heads is None:
            heads = [(l, h) for l in range(self.model.n_layers) for h in range(self.model.n_heads)]
        keys = [(self.model.check_layer(l), self.model.check_head(h)) for l, h in heads]
        started = time.perf_counter()
        measured = np.array([float(self.head_exact[key]) for key in keys])
        missing = [i for i, value in enumerate(measured) if np.isnan(value)]
        if missing:
            measured[missing] = batch.ablation_effects(self.model, self.run.input_ids, [keys[i] for i in missing],
                                                       self._metric(), base=self.run).numpy()
        clean = self.metric  # for display (effects come with their own clean rows)
        seconds = time.perf_counter() - started
        estimate = np.array([float(self.head_estimates[key]) for key in keys])
        reused = len(keys) - len(missing)
        scope = f"{len(keys)} heads" + (f" ({reused} measured earlier by the hybrid, reused)" if reused else "")
        summary = Summary.of(estimate, measured, k, scope)
        return Verification("head ablation", "gradient x activation", keys, estimate, measured, summary, clean,
                            seconds, {"view_method": self.method})

    # ------------------------------------------- references (short prompts)
    def exhaustive_edges(self, rows: int | None = None) -> "ExactEdges":
        """The reference: every edge knocked out exactly, many per forward.

        Edges that provably cannot reach the metric (queries after `position`;
        last-layer queries other than `position`) are 0 without a forward.
        Costs about L*H*T^2/2 / rows forwards and an [L, H, T, T] tensor: for
        short prompts.
        """
        n_tokens = len(self.run)
        valid = ~self.dense_edge_effects("linear").isnan()
        zero = causally_zero(self.model.n_layers, n_tokens, self.position % n_tokens)
        to_run = valid & ~zero
        keys = [tuple(x) for x in to_run.nonzero().tolist()]
        started = time.perf_counter()
        measured = batch.knockout_effects(self.model, self.run.input_ids, keys, self._metric(), rows, base=self.run)
        clean = self.metric  # for display (effects come with their own clean rows)
        seconds = time.perf_counter() - started
        effects = torch.full(valid.shape, float("nan"), dtype=torch.float64)
        effects[valid] = 0.0
        if keys:
            effects[tuple(torch.tensor(keys).T)] = measured
        rows = rows or batch.batch_rows(self.model, n_tokens)
        per_forward = max(1, rows - 1)
        return ExactEdges(effects, seconds, len(keys), int((valid & zero).sum()), -(-len(keys) // per_forward), clean)

    def compare(self, exact: "ExactEdges", k: int = 10, method: str | None = None) -> Summary:
        """Estimate vs the exhaustive reference over every edge that can reach the metric."""
        method = self._method(method)
        # Edges that cannot reach the metric are exactly 0 on both sides:
        # counting them would inflate the rank correlation with ties.
        n_tokens = len(self.run)
        zero = causally_zero(self.model.n_layers, n_tokens, self.position % n_tokens).expand_as(exact.effects)
        valid = ~exact.effects.isnan() & ~zero
        estimate = self.dense_edge_effects(method)[valid].numpy()
        return Summary.of(np.nan_to_num(estimate), exact.effects[valid].numpy(), k,
                          f"all {int(valid.sum())} edges that can reach the metric")

    def candidate_recall(self, exact: "ExactEdges", k: int = 10, pool: int | None = None,
                         method: str | None = None) -> float:
        """Share of the true top-k edges among the top `pool` (default 4k)
        estimates: when it is 1, `verify(k)` (which measures that pool)
        finds the true top-k exactly."""
        from nbinterp.analysis.estimate_stats import top_k_by_magnitude

        pool = 4 * k if pool is None else pool
        effects = exact.effects.nan_to_num()
        true_top = {tuple(int(i) for i in divmod_index(j, effects.shape))
                    for j in top_k_by_magnitude(effects.flatten().numpy(), k)}
        estimated = {e[:4] for e in self.top_edges(pool, method)}
        return len(true_top & estimated) / k

    # ------------------------------------------------------------------ qk
    def qk(self, layer: int, head: int, query: int, key: int) -> Any:
        """Why this head attends from `query` to `key`: see `nbinterp.analysis.qk.qk`."""
        from nbinterp.analysis.qk import qk

        return qk(self.model, self.run, layer, head, query, key)

    def __repr__(self) -> str:
        top = self.top_edges(5)
        shown = "\n".join(f"  L{e.layer}.H{e.head} {e.query}->{e.key}: {e.estimate:+.4g}"
                          f" ({'measured' if e.measured else 'estimate'})" for e in top)
        heads = self.heads.flatten()
        best = int(heads.abs().argmax())
        m = self.measurement
        return (
            f"<Attribution {self.model.name}: logit diff {self.metric:.3f} ({self.target!r} vs {self.foil!r}), "
            f"{len(self.run)} tokens, {self.method}, {m.done}/{m.total} exact measurements done; "
            f"top head L{best // self.model.n_heads}.H{best % self.model.n_heads} {float(heads[best]):+.4g}; "
            f"top edges:\n{shown}>"
        )


def divmod_index(flat: int, shape: Sequence[int]) -> tuple[int, ...]:
    """Flat index -> multi-index in a C-ordered tensor of `shape`."""
    out = []
    for size in reversed(shape):
        flat, rest = divmod(flat, size)
        out.append(rest)
    return tuple(reversed(out))


class ExactEdges(NamedTuple):
    """Exact knockout effect of every edge [L, H, T, T] (NaN: no knockout exists)."""

    effects: torch.Tensor
    seconds: float
    n_measured: int
    n_causally_zero: int
    n_forwards: int
    clean_metric: float


def choose_dominant(summary: EdgeSummary, budget: int) -> torch.Tensor:
    """[N, 4] the dominant edges to measure, in measurement order: largest
    |QK-fix estimate| first (ties: higher attention first), at most `budget`."""
    by_probability = torch.argsort(summary.dominant_probability, descending=True, stable=True)
    by_estimate = torch.argsort(summary.dominant_estimate[by_probability].abs().nan_to_num(), descending=True, stable=True)
    return summary.dominant[by_probability[by_estimate][:budget]]


def default_edge_budget(model: "Model", n_tokens: int) -> int:
    """Edges the default hybrid knocks out: what is left of `EXACT_FORWARDS`
    batched forwards once every head is in, and at least one forward's worth."""
    per_forward = max(1, batch.batch_rows(model, n_tokens) - 1)
    return max(per_forward, EXACT_FORWARDS * per_forward - model.n_layers * model.n_heads)


def compute_attribution(model: "Model", prompt: Any, target: str | int, foil: str | int | None = None, *,
              position: int = -1, method: str = "hybrid", n_top: int = DEFAULT_TOP,
              dominant: float = DOMINANT, exact_budget: int | None = None, measure: bool = True) -> Attribution:
    """Estimated effect of ablating each head and knocking out each attention
    edge on logit(target) - logit(foil), from one forward + one backward, and
    exact measurements of every head's ablation, then of the dominant edges
    (attention >= `dominant`), largest |estimate| first, at most `exact_budget`
    of them (`default_edge_budget`; 0: nothing measured, estimates only).

    `prompt` is text, token ids, or a `Run` made with gradients for the same
    target / foil / position. `measure=False` returns after the estimates;
    `att.measure()` then runs the measurements batch by batch.
    """
    if method not in METHODS:
        raise NbinterpError(f"method must be one of {METHODS}, not {method!r}")
    if target is None:
        raise NbinterpError("attribution needs a target token, e.g. ni.attribute(model, prompt, target=' Mary', foil=' John')")
    if not (isinstance(dominant, (int, float)) and 0 < dominant <= 1):
        raise NbinterpError(f"dominant must be a probability in (0, 1], not {dominant!r}")
    if exact_budget is not None and not (isinstance(exact_budget, int) and exact_budget >= 0):
        raise NbinterpError(f"exact_budget must be a non-negative integer, not {exact_budget!r} (0: estimates only, nothing measured)")
    if not (isinstance(n_top, int) and n_top >= 1):
        raise NbinterpError(f"n_top must be a positive integer, not {n_top!r}")
    started = time.perf_counter()
    from nbinterp.engine.run import Run

    if isinstance(prompt, Run):
        run = prompt
        if run.gradient_metric is None:
            raise NbinterpError("this run has no gradients: pass the prompt, or a run made with gradients=True")
        expected = Metric.of(model, target, foil, position, len(run))
        if run.gradient_metric != expected:
            raise NbinterpError("the run's gradients are of another target / foil / position: pass the prompt instead")
    else:
        # resid_pre too (in the same forward): exact measurements start from this run's stream
        run = model.run(prompt, target=target, foil=foil, position=position, gradients=True, capture=["resid_pre"])
    n_tokens = len(run)
    head_estimates = run.head_attribution().double()
    summary = summarise(run, model.n_layers, model.n_heads, position, max(n_top, TOP_PER_HEAD), dominant)
    if exact_budget is None:
        exact_budget = default_edge_budget(model, n_tokens)
    # every head, at any length (exact_budget=0 asks for estimates only)
    heads = [(l, h) for l in range(model.n_layers) for h in range(model.n_heads)] if exact_budget else []
    metric = Metric.of(model, target, foil, position, n_tokens)
    measurement = ExactMeasurement(model, run.input_ids, metric, heads, choose_dominant(summary, exact_budget),
                                   base=run)
    att = Attribution(model, run, target, foil, position, head_estimates, summary, measurement, method, n_top)
    if measure:
        measurement.run()
    att.seconds = time.perf_counter() - started
    return att


# `attribute` was this function's name; `ni.attribute` is the view
__getattr__ = renamed_function(__name__, "attribute", compute_attribution)
