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

- ``"hybrid"`` (default): ``"qk_fix"`` for the edges, except that every edge
  holding at least ``dominant`` (0.3) of its row's attention is knocked out
  exactly (batched forwards): at most ``3 L H T`` knockouts, linear in the
  prompt length instead of the ``L H T^2 / 2`` of the exhaustive reference,
  capped at ``exact_budget`` (default: what four batched forwards hold,
  e.g. 2,048 edges for the bundled model at T = 32 and 168 for GPT-2 small at
  T = 128; highest probabilities first). ``exact`` marks which entries are
  measured. Every head's zero ablation is measured too (L*H ablations,
  batched, when they fit the same budget): gradient x activation misses heads
  that act through saturated heads downstream just as the edge estimates do
  (the bundled model's previous-token head: +1.4 estimated, -18.1 measured
  on the IOI prompt).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import numpy as np
import torch

from nbinterp.interventions import batch
from nbinterp.errors import NbinterpError
from nbinterp.analysis.estimate_stats import Summary, Verification

if TYPE_CHECKING:
    from nbinterp.engine.model import Model
    from nbinterp.engine.run import Run

METHODS = ("hybrid", "qk_fix", "linear")
DEFAULT_TOP = 100
DOMINANT = 0.3
EXACT_FORWARDS = 4  # default exact budget: this many batched forwards of knockouts


class EdgeEffect(NamedTuple):
    layer: int
    head: int
    query: int
    key: int
    estimate: float


def edge_estimates(scores_in: torch.Tensor, grad: torch.Tensor) -> dict[str, torch.Tensor]:
    """Both knockout estimates for every edge of one layer.

    scores_in: pre-softmax scores [H, T, T] (masked entries -inf);
    grad: d metric / d probability [H, T, T]. Returns {"linear", "qk_fix"}
    [H, T, T] float64, NaN where no knockout is possible (masked keys, rows
    with a single key). Works in float64 from the scores so that saturated
    rows (1 - a_k underflowing in float32) stay exact.
    """
    scores = scores_in.double()
    # Eager masks add the dtype's minimum instead of -inf: both mean "masked".
    allowed = torch.isfinite(scores) & (scores > torch.finfo(scores_in.dtype).min / 2)
    scores = torch.where(allowed, scores, torch.full((), float("-inf"), dtype=torch.float64))
    g = torch.where(allowed, grad.double(), torch.zeros((), dtype=torch.float64))
    n_keys = allowed.sum(-1, keepdim=True)
    top2 = scores.topk(min(2, scores.shape[-1]), dim=-1)
    m1 = top2.values[..., :1]
    w = torch.exp(scores - m1)  # 0 where masked, 1 at the argmax
    total = w.sum(-1, keepdim=True)
    probs = w / total
    weighted = (g * w).sum(-1, keepdim=True)
    # Mean of g over the other keys for k != argmax: the argmax keeps weight 1
    # in the denominator, so no cancellation.
    gbar = (weighted - g * w) / (total - w)
    if scores.shape[-1] > 1:
        # For k = argmax, renormalise against the runner-up instead.
        m2 = top2.values[..., 1:2]
        is_max = torch.zeros_like(allowed).scatter_(-1, top2.indices[..., :1], True)
        w2 = torch.where(is_max, torch.zeros((), dtype=torch.float64), torch.exp(scores - m2))
        gbar_max = (g * w2).sum(-1, keepdim=True) / w2.sum(-1, keepdim=True)
        gbar = torch.where(is_max, gbar_max, gbar)
    valid = allowed & (n_keys > 1)
    nan = torch.full((), float("nan"), dtype=torch.float64)
    return {
        "linear": torch.where(valid, -g * probs, nan),
        "qk_fix": torch.where(valid, probs * (gbar - g), nan),
    }


def causally_zero(n_layers: int, n_tokens: int, position: int) -> torch.Tensor:
    """bool [L, 1, T, T]: edges whose knockout cannot reach the metric at all.

    A query after `position` is never read by it; in the last layer only the
    query at `position` itself feeds the logits (MLPs, the final norm and the
    unembedding act per position).
    """
    zero = torch.zeros(n_layers, 1, n_tokens, n_tokens, dtype=torch.bool)
    zero[:, :, position + 1 :] = True
    last = torch.ones(n_tokens, dtype=torch.bool)
    last[position] = False
    zero[-1, :, last] = True
    return zero


@dataclass
class Attribution:
    """Estimated effects of every head and every attention edge on one metric.

    Build it with `attribute`. `heads` [L, H]; `edge_effects[method]`
    [L, H, T, T] (NaN where no knockout exists); `edges` the top edges of the
    default method, largest |estimate| first.
    """

    model: "Model"
    run: "Run"
    target: str | int
    foil: str | int | None
    position: int
    head_estimates: torch.Tensor  # [L, H] gradient x activation
    edge_effects: dict[str, torch.Tensor]
    method: str = "hybrid"
    n_top: int = DEFAULT_TOP
    seconds: float = 0.0
    exact: torch.Tensor | None = None  # bool [L, H, T, T]: entries of "hybrid" measured by knockout
    head_exact: torch.Tensor | None = None  # [L, H] measured zero-ablation effects ("hybrid"), if measured

    @property
    def heads(self) -> torch.Tensor:
        """[L, H] effect of zero-ablating each head: measured for "hybrid" (when
        the budget allowed), gradient x activation otherwise."""
        return self.head_effects()

    def head_effects(self, method: str | None = None) -> torch.Tensor:
        method = self.method if method is None else method
        if method not in METHODS:
            raise NbinterpError(f"method must be one of {METHODS}, not {method!r}")
        return self.head_exact if method == "hybrid" and self.head_exact is not None else self.head_estimates

    @property
    def metric(self) -> float:
        """The clean logit difference (logit alone without a foil)."""
        return self.run.metric

    @property
    def tokens(self) -> list[str]:
        return self.run.tokens

    @property
    def edges(self) -> list[EdgeEffect]:
        return self.top_edges(self.n_top)

    def top_edges(self, k: int | None = None, method: str | None = None, layer: int | None = None,
                  head: int | None = None) -> list[EdgeEffect]:
        """The k edges with the largest |estimate| (all when k is None),
        optionally of one layer / head."""
        effects = self._effects(method)
        selected = torch.zeros_like(effects, dtype=torch.bool)
        index = (slice(None) if layer is None else layer, slice(None) if head is None else head)
        selected[index] = True
        flat = torch.where(selected & ~effects.isnan(), effects, torch.zeros((), dtype=effects.dtype)).flatten()
        candidates = (selected & ~effects.isnan()).flatten().nonzero()[:, 0]
        order = candidates[torch.argsort(flat[candidates].abs(), descending=True, stable=True)]
        if k is not None:
            order = order[:k]
        shape = effects.shape
        out = []
        for i in order.tolist():
            l, rest = divmod(i, shape[1] * shape[2] * shape[3])
            h, rest = divmod(rest, shape[2] * shape[3])
            q, kk = divmod(rest, shape[3])
            out.append(EdgeEffect(l, h, q, kk, float(flat[i])))
        return out

    def _effects(self, method: str | None) -> torch.Tensor:
        method = self.method if method is None else method
        if method not in METHODS:
            raise NbinterpError(f"method must be one of {METHODS}, not {method!r}")
        return self.edge_effects[method]

    def _metric(self) -> Any:
        n_tokens = len(self.run)
        return batch.metric_of(self.model, self.target, self.foil, self.position, n_tokens)

    # ------------------------------------------------------------ verify
    def verify(self, k: int = 20, method: str | None = None, edges: Sequence[Sequence[int]] | None = None,
               pool: int | None = None) -> Verification:
        """Exact knockouts (batched forwards) of the top-k edges, or of `edges`.

        Measures the `pool` (default 4k) edges with the largest |estimate| and
        reports Spearman and MAE over them, and recall@k: how many of the k
        largest *measured* effects in the pool are among the k largest
        estimates. That recall is relative to the pool; for the recall over
        every edge, compare with `exhaustive_edges()` (short prompts).
        """
        method = self.method if method is None else method
        effects = self._effects(method)
        if edges is None:
            if not isinstance(k, int) or k < 1:
                raise NbinterpError(f"k must be a positive integer, not {k!r}")
            pool = 4 * k if pool is None else pool
            keys = [e[:4] for e in self.top_edges(max(pool, k), method)]
            scope = f"the top {len(keys)} edges by |{method} estimate|"
        else:
            keys = [tuple(int(x) for x in e[:4]) for e in edges]
            scope = f"{len(keys)} chosen edges"
        started = time.perf_counter()
        clean = batch.clean_metric(self.model, self.run.input_ids, self._metric())
        measured = batch.knockout_metrics(self.model, self.run.input_ids, keys, self._metric()) - clean
        seconds = time.perf_counter() - started
        estimate = np.array([float(effects[key]) for key in keys])
        estimate = np.nan_to_num(estimate)  # a no-op knockout (masked key) estimates 0
        summary = Summary.of(estimate, measured.numpy(), k, scope)
        return Verification("edge knockout", method, list(keys), estimate, measured.numpy(), summary, clean, seconds)

    def verify_heads(self, k: int = 10, heads: Sequence[tuple[int, int]] | None = None) -> Verification:
        """Exact zero ablation of every head (or `heads`) against the gradient x
        activation estimate."""
        if heads is None:
            heads = [(l, h) for l in range(self.model.n_layers) for h in range(self.model.n_heads)]
        keys = [(int(l), int(h)) for l, h in heads]
        started = time.perf_counter()
        clean = batch.clean_metric(self.model, self.run.input_ids, self._metric())
        measured = batch.ablation_metrics(self.model, self.run.input_ids, keys, self._metric()) - clean
        seconds = time.perf_counter() - started
        estimate = np.array([float(self.head_estimates[key]) for key in keys])
        summary = Summary.of(estimate, measured.numpy(), k, f"{len(keys)} heads")
        return Verification("head ablation", "gradient x activation", keys, estimate, measured.numpy(), summary,
                            clean, seconds)

    def exhaustive_edges(self, rows: int | None = None) -> "ExactEdges":
        """The reference: every edge knocked out exactly, many per forward.

        Edges that provably cannot reach the metric (queries after `position`;
        last-layer queries other than `position`) are 0 without a forward.
        Costs about L*H*T^2/2 / rows forwards: for short prompts.
        """
        n_tokens = len(self.run)
        valid = ~self.edge_effects["linear"].isnan()
        zero = causally_zero(self.model.n_layers, n_tokens, self.position % n_tokens)
        to_run = valid & ~zero
        keys = [tuple(x) for x in to_run.nonzero().tolist()]
        started = time.perf_counter()
        clean = batch.clean_metric(self.model, self.run.input_ids, self._metric())
        measured = batch.knockout_metrics(self.model, self.run.input_ids, keys, self._metric(), rows) - clean
        seconds = time.perf_counter() - started
        effects = torch.full(valid.shape, float("nan"), dtype=torch.float64)
        effects[valid] = 0.0
        if keys:
            effects[tuple(torch.tensor(keys).T)] = measured
        rows = rows or batch.batch_rows(self.model, n_tokens)
        return ExactEdges(effects, seconds, len(keys), int((valid & zero).sum()), -(-len(keys) // rows), clean)

    def compare(self, exact: "ExactEdges", k: int = 10, method: str | None = None) -> Summary:
        """Estimate vs the exhaustive reference over every edge that can reach the metric."""
        method = self.method if method is None else method
        # Edges that cannot reach the metric are exactly 0 on both sides:
        # counting them would inflate the rank correlation with ties.
        n_tokens = len(self.run)
        zero = causally_zero(self.model.n_layers, n_tokens, self.position % n_tokens).expand_as(exact.effects)
        valid = ~exact.effects.isnan() & ~zero
        estimate = self._effects(method)[valid].numpy()
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

    # --------------------------------------------------------------- qk
    def qk(self, layer: int, head: int, query: int, key: int) -> Any:
        """Why this head attends from `query` to `key`: see `nbinterp.analysis.qk.qk`."""
        from nbinterp.analysis.qk import qk

        return qk(self.model, self.run, layer, head, query, key)

    def __repr__(self) -> str:
        top = self.top_edges(5)
        shown = "\n".join(f"  L{e.layer}.H{e.head} {e.query}->{e.key}: {e.estimate:+.4g}" for e in top)
        heads = self.heads.flatten()
        best = int(heads.abs().argmax())
        return (
            f"<Attribution {self.model.name}: logit diff {self.metric:.3f} ({self.target!r} vs {self.foil!r}), "
            f"{len(self.run)} tokens, {self.method}; top head L{best // self.model.n_heads}.H{best % self.model.n_heads} "
            f"{float(heads[best]):+.4g}; top edges:\n{shown}>"
        )


def divmod_index(flat: int, shape: Sequence[int]) -> tuple[int, ...]:
    """Flat index -> multi-index in a C-ordered tensor of `shape`."""
    out = []
    for size in reversed(shape):
        flat, rest = divmod(flat, size)
        out.append(rest)
    return tuple(reversed(out))


@dataclass
class ExactEdges:
    """Exact knockout effect of every edge [L, H, T, T] (NaN: no knockout exists)."""

    effects: torch.Tensor
    seconds: float
    n_measured: int
    n_causally_zero: int
    n_forwards: int
    clean_metric: float


def dominant_edges(probs: torch.Tensor, valid: torch.Tensor, dominant: float, budget: int) -> torch.Tensor:
    """bool [L, H, T, T]: edges holding at least `dominant` of their row's
    attention among `valid`, at most `budget` of them (highest probability first)."""
    chosen = valid & (probs >= dominant)
    n = int(chosen.sum())
    if n > budget:
        flat = torch.where(chosen, probs, torch.full((), -1.0, dtype=probs.dtype)).flatten()
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[flat.topk(budget).indices] = True
        chosen = keep.view_as(chosen) & chosen
    return chosen


def attribute(model: "Model", prompt: Any, target: str | int, foil: str | int | None = None, *,
              position: int = -1, method: str = "hybrid", n_top: int = DEFAULT_TOP,
              dominant: float = DOMINANT, exact_budget: int | None = None) -> Attribution:
    """Estimated effect of ablating each head and knocking out each attention
    edge on logit(target) - logit(foil), from one forward + one backward, and
    (method "hybrid", the default) exact knockouts of each row's dominant
    edges (attention >= `dominant`; at most `exact_budget` of them).

    `prompt` is text, token ids, or a `Run` made with gradients for the same
    target / foil / position.
    """
    if method not in METHODS:
        raise NbinterpError(f"method must be one of {METHODS}, not {method!r}")
    if target is None:
        raise NbinterpError("attribution needs a target token, e.g. attribute(model, prompt, target=' Mary', foil=' John')")
    if not (isinstance(dominant, (int, float)) and 0 < dominant <= 1):
        raise NbinterpError(f"dominant must be a probability in (0, 1], not {dominant!r}")
    if exact_budget is not None and not (isinstance(exact_budget, int) and exact_budget >= 0):
        raise NbinterpError(f"exact_budget must be a non-negative integer, not {exact_budget!r} (0 turns exact knockouts off)")
    started = time.perf_counter()
    from nbinterp.engine.run import Run

    if isinstance(prompt, Run):
        run = prompt
        if run._metric is None:
            raise NbinterpError("this run has no gradients: pass the prompt, or a run made with gradients=True")
        n_tokens = len(run)
        expected = batch.metric_of(model, target, foil, position, n_tokens)
        if run._metric != expected:
            raise NbinterpError("the run's gradients are of another target / foil / position: pass the prompt instead")
    else:
        run = model.run(prompt, target=target, foil=foil, position=position, gradients=True)
    head_estimates = run.head_attribution().double()
    per_layer = [edge_estimates(run.attention_scores(l), run.grad_attention(l)) for l in range(model.n_layers)]
    # computed in float64 per layer, kept in float32: L*H*T^2 values per method
    edge_effects = {m: torch.stack([layer[m].float() for layer in per_layer]) for m in ("qk_fix", "linear")}
    if exact_budget is None:
        exact_budget = EXACT_FORWARDS * batch.batch_rows(model, len(run))
    metric = batch.metric_of(model, target, foil, position, len(run))
    # the clean value from the same batched path as the interventions (not the gradient run's)
    clean = batch.clean_metric(model, run.input_ids, metric) if exact_budget else 0.0
    head_exact = None
    n_heads = model.n_layers * model.n_heads
    if n_heads <= exact_budget:
        all_heads = [(l, h) for l in range(model.n_layers) for h in range(model.n_heads)]
        head_exact = (batch.ablation_metrics(model, run.input_ids, all_heads, metric) - clean).double()
        head_exact = head_exact.view(model.n_layers, model.n_heads)
    exact = _measure_dominant(model, run, metric, clean, position, edge_effects, dominant, exact_budget)
    seconds = time.perf_counter() - started
    return Attribution(model, run, target, foil, position, head_estimates, edge_effects, method, n_top, seconds,
                       exact, head_exact)


def _measure_dominant(model: "Model", run: "Run", metric: Any, clean: float, position: int,
                      edge_effects: dict[str, torch.Tensor], dominant: float, budget: int) -> torch.Tensor:
    """Adds edge_effects["hybrid"]: the QK-fix estimates with the dominant
    edges replaced by exact knockouts. Returns which entries were measured."""
    n_tokens = len(run)
    probs = torch.stack([run.attention(l) for l in range(model.n_layers)])
    reachable = ~edge_effects["qk_fix"].isnan() & ~causally_zero(model.n_layers, n_tokens, position % n_tokens)
    exact = dominant_edges(probs, reachable, dominant, budget)
    hybrid = edge_effects["qk_fix"].clone()
    keys = [tuple(x) for x in exact.nonzero().tolist()]
    if keys:
        measured = batch.knockout_metrics(model, run.input_ids, keys, metric) - clean
        hybrid[exact] = measured.to(hybrid.dtype)
    edge_effects["hybrid"] = hybrid
    return exact
