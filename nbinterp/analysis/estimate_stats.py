"""Estimates against exact interventions: the summary errors (Spearman rank
correlation, recall of the true top-k among the estimated top-k, mean
absolute error) and the tables `Attribution.verify*` return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


def rank_average(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties get the mean of their ranks (as scipy.stats.rankdata)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # start index of each run of equal values
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values) != 0) + 1]
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1..ends
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def spearman(estimate: Sequence[float], measured: Sequence[float]) -> float:
    """Spearman rank correlation; NaN when either side is constant or n < 2."""
    x, y = rank_average(np.asarray(estimate)), rank_average(np.asarray(measured))
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def top_k_by_magnitude(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest |values| (stable: ties keep the earlier index)."""
    return np.argsort(-np.abs(np.asarray(values, dtype=np.float64)), kind="mergesort")[:k]


def recall_at_k(estimate: Sequence[float], measured: Sequence[float], k: int) -> float:
    """|true top-k ∩ estimated top-k| / k, both by magnitude of the effect."""
    k = min(k, len(estimate))
    if k == 0:
        return float("nan")
    true_top = set(top_k_by_magnitude(np.asarray(measured), k).tolist())
    estimated_top = set(top_k_by_magnitude(np.asarray(estimate), k).tolist())
    return len(true_top & estimated_top) / k


@dataclass(frozen=True)
class Summary:
    """How well estimates predict exact effects over one set of items."""

    spearman: float
    recall_at_k: float
    k: int
    mae: float
    n: int
    scope: str  # which items were compared, in words

    @classmethod
    def of(cls, estimate: Sequence[float], measured: Sequence[float], k: int, scope: str) -> "Summary":
        estimate, measured = np.asarray(estimate, float), np.asarray(measured, float)
        mae = float(np.abs(estimate - measured).mean()) if len(estimate) else float("nan")
        return cls(spearman(estimate, measured), recall_at_k(estimate, measured, k), min(k, len(estimate)),
                   mae, len(estimate), scope)

    def __str__(self) -> str:
        return (f"Spearman {self.spearman:.3f} · recall@{self.k} {self.recall_at_k:.2f} · "
                f"MAE {self.mae:.4g} over {self.scope}")


@dataclass
class Verification:
    """Estimate vs exact measurement, one row per edge or head.

    `keys` are (layer, head, query, key) for edges, (layer, head) for heads;
    effects are metric(intervened) - metric(clean).
    """

    kind: str  # "edge knockout" or "head ablation"
    method: str
    keys: list[tuple[int, ...]]
    estimate: np.ndarray
    measured: np.ndarray
    summary: Summary
    clean_metric: float
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        names = ("layer", "head", "query", "key") if self.kind == "edge knockout" else ("layer", "head")
        return [
            {**dict(zip(names, key)), "estimate": float(e), "measured": float(m), "error": float(e - m)}
            for key, e, m in zip(self.keys, self.estimate, self.measured)
        ]

    def table(self, n: int = 20) -> str:
        rows = self.rows()[:n]
        if not rows:
            return "(nothing verified)"
        names = list(rows[0])
        lines = ["  ".join(f"{c:>9}" for c in names)]
        for row in rows:
            lines.append("  ".join(f"{row[c]:>9.4g}" if isinstance(row[c], float) else f"{row[c]:>9}" for c in names))
        return "\n".join(lines)

    def __repr__(self) -> str:
        more = f"\n... {len(self.keys) - 20} more rows (.rows())" if len(self.keys) > 20 else ""
        return (f"<Verification: {self.kind}, {self.method} estimate vs exact, {len(self.keys)} rows, "
                f"{self.seconds:.2f} s>\n{self.summary}\n{self.table()}{more}")
