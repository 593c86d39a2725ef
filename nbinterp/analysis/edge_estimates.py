"""The two knockout estimates of every attention edge (see
`nbinterp.analysis.attribution`), computed one head at a time from a gradient
run and reduced as they are computed, so nothing [L, H, T, T] is ever held:

- per head, the `keep` edges with the largest |estimate| of each method
  (for "qk_fix", `keep` plus the head's dominant edges, so that the top
  `keep` of the hybrid, where the dominant edges are replaced by
  measurements, is exact too);
- per head, the sum of each method's edge estimates;
- the dominant edges (attention >= `dominant`, knockout possible, able to
  reach the metric) with their probability and QK-fix estimate.

A head's full [T, T] map is recomputed on demand (`head_edges`): one
layer's scores and gradient, then float64 for that head only. The float64
work runs over blocks of query rows (the estimates are per row), so its
temporaries stay a few MB whatever T is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from nbinterp.engine.run import Run

ESTIMATES = ("linear", "qk_fix")
ROW_BLOCK_ELEMENTS = 1 << 18  # query rows x keys per float64 block: 2 MB a temporary


def row_blocks(n_tokens: int) -> range:
    """Start rows of the query blocks of one head."""
    return range(0, n_tokens, max(1, ROW_BLOCK_ELEMENTS // max(1, n_tokens)))


def edge_estimates(scores_in: torch.Tensor, grad: torch.Tensor) -> dict[str, torch.Tensor]:
    """Both knockout estimates for every edge of any number of heads.

    scores_in: pre-softmax scores [..., T, T] (masked entries -inf);
    grad: d metric / d probability, same shape. Returns {"linear", "qk_fix",
    "probability"} float64 of that shape; the estimates are NaN where no
    knockout is possible (masked keys, rows with a single key). Works in
    float64 from the scores so that saturated rows (1 - a_k underflowing in
    float32) stay exact.
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
        "probability": probs,
    }


def reachable_queries(n_layers: int, layer: int, n_tokens: int, position: int) -> torch.Tensor:
    """bool [T]: queries of `layer` whose edges can change the metric at `position`.

    A query after `position` is never read by it; in the last layer only the
    query at `position` itself feeds the logits (MLPs, the final norm and the
    unembedding act per position)."""
    reach = torch.arange(n_tokens) <= position
    if layer == n_layers - 1:
        reach = torch.arange(n_tokens) == position
    return reach


def causally_zero(n_layers: int, n_tokens: int, position: int) -> torch.Tensor:
    """bool [L, 1, T, T]: edges whose knockout cannot reach the metric at all
    (dense: for short prompts; `reachable_queries` is the per-layer form)."""
    zero = torch.zeros(n_layers, 1, n_tokens, n_tokens, dtype=torch.bool)
    for layer in range(n_layers):
        zero[layer, :, ~reachable_queries(n_layers, layer, n_tokens, position)] = True
    return zero


def head_edges(run: "Run", layer: int, head: int) -> dict[str, torch.Tensor]:
    """One head's [T, T] estimates and probabilities (float64), recomputed from the run."""
    scores, grad = run.attention_scores(layer)[head], run.grad_attention(layer)[head]
    n = scores.shape[-1]
    out = {name: torch.empty(n, n, dtype=torch.float64) for name in (*ESTIMATES, "probability")}
    starts = row_blocks(n)
    for start in starts:
        block = edge_estimates(scores[start : start + starts.step], grad[start : start + starts.step])
        for name, values in block.items():
            out[name][start : start + len(values)] = values
    return out


def top_by_magnitude(values: torch.Tensor, n: int | None) -> torch.Tensor:
    """Flat indices of the n largest |values| among the non-NaN ones (all when n
    is None), largest first; ties go to the lower index, as a stable sort of
    the whole tensor would give."""
    flat = values.flatten()
    magnitude = torch.where(flat.isnan(), torch.full((), -1.0, dtype=flat.dtype), flat.abs())
    n_valid = int((magnitude >= 0).sum())
    n = n_valid if n is None else min(n, n_valid)
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    threshold = magnitude.topk(n).values[-1]
    above = (magnitude > threshold).nonzero()[:, 0]
    tied = (magnitude == threshold).nonzero()[:, 0][: n - len(above)]
    chosen = torch.cat([above, tied]).sort().values
    return chosen[torch.argsort(magnitude[chosen], descending=True, stable=True)]


@dataclass
class HeadTop:
    """One head's largest edges of one method: flat index query * T + key and
    value (float64), largest |value| first."""

    index: torch.Tensor
    value: torch.Tensor


@dataclass
class EdgeSummary:
    """What is kept of every edge estimate; see the module docstring."""

    n_layers: int
    n_heads: int
    n_tokens: int
    keep: int
    tops: dict[str, list[HeadTop]]  # method -> [L * H] (index layer * H + head)
    totals: dict[str, torch.Tensor]  # method -> [L, H] sum of the head's edge estimates
    n_valid: torch.Tensor  # [L, H] edges with a knockout
    dominant: torch.Tensor  # [M, 4] (layer, head, query, key) int64, in that order
    dominant_probability: torch.Tensor  # [M] float64
    dominant_estimate: torch.Tensor  # [M] float64, the QK-fix estimate

    def top(self, method: str, layer: int, head: int) -> HeadTop:
        return self.tops[method][layer * self.n_heads + head]


def summarise(run: "Run", n_layers: int, n_heads: int, position: int, keep: int, dominant: float) -> EdgeSummary:
    """One pass over every head of `run` (a gradient run): see the module docstring."""
    n_tokens = len(run)
    position = position % n_tokens
    tops: dict[str, list[HeadTop]] = {m: [] for m in ESTIMATES}
    totals = {m: torch.zeros(n_layers, n_heads, dtype=torch.float64) for m in ESTIMATES}
    n_valid = torch.zeros(n_layers, n_heads, dtype=torch.long)
    dominant_parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    starts = row_blocks(n_tokens)
    most_dominant = int(1 / dominant) * n_tokens  # a row has at most 1 / dominant dominant edges
    for layer in range(n_layers):
        scores, grad = run.attention_scores(layer), run.grad_attention(layer)
        reach = reachable_queries(n_layers, layer, n_tokens, position)[:, None]
        for head in range(n_heads):
            # per block of query rows: candidates for the head's top lists (flat index, value)
            candidates: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {m: [] for m in ESTIMATES}
            head_dominant = []
            for start in starts:
                rows = slice(start, start + starts.step)
                estimates = edge_estimates(scores[head, rows], grad[head, rows])
                valid = ~estimates["linear"].isnan()
                n_valid[layer, head] += int(valid.sum())
                chosen = (valid & reach[rows] & (estimates["probability"] >= dominant)).nonzero()
                if len(chosen):
                    q, k = chosen[:, 0], chosen[:, 1]
                    where = torch.tensor([layer, head, start, 0]).expand(len(chosen), 4)
                    head_dominant.append((where + torch.cat([torch.zeros_like(chosen), chosen], 1),
                                          estimates["probability"][q, k], estimates["qk_fix"][q, k]))
                for method in ESTIMATES:
                    values = estimates[method]
                    totals[method][layer, head] += values.nansum()
                    # enough for the head's top list whatever its dominant count turns out to be
                    index = top_by_magnitude(values, keep + (most_dominant if method == "qk_fix" else 0))
                    candidates[method].append((index + start * n_tokens, values.flatten()[index]))
                del estimates
            n_dominant = sum(len(d[0]) for d in head_dominant)
            dominant_parts.extend(head_dominant)
            for method in ESTIMATES:
                index = torch.cat([c[0] for c in candidates[method]])
                values = torch.cat([c[1] for c in candidates[method]])
                best = top_by_magnitude(values, keep + (n_dominant if method == "qk_fix" else 0))
                # top_by_magnitude breaks ties by position in `values`: blocks are in row
                # order, so that is the flat index order of the whole head
                tops[method].append(HeadTop(index[best], values[best]))
    if dominant_parts:
        edges, probability, estimate = (torch.cat(parts) for parts in zip(*dominant_parts))
    else:
        edges = torch.zeros(0, 4, dtype=torch.long)
        probability = estimate = torch.zeros(0, dtype=torch.float64)
    return EdgeSummary(n_layers, n_heads, n_tokens, keep, tops, totals, n_valid, edges, probability, estimate)
