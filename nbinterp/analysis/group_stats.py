"""Statistics of a difference between two groups of prompts: the gap, its
bootstrap interval and a permutation test.

Rows are independent draws, or counterfactual pairs (row A and row B differ
only in the attribute). Pairs are resampled as units and their test flips
the two labels within a pair: resampling the rows of a pair apart would
treat two measurements of one template as independent and make intervals
too wide (the template's own variation is what pairing cancels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nbinterp.errors import NbinterpError

CHUNK = 256  # resamples per vectorised step: memory ~ CHUNK x rows


@dataclass(frozen=True)
class GroupLayout:
    """Which rows are group A and B, and (when paired) the pairs [n_pairs, 2] (A row, B row)."""

    a_rows: torch.Tensor  # long [n_a]
    b_rows: torch.Tensor  # long [n_b]
    pairs: torch.Tensor | None = None

    def restrict(self, rows: list[int]) -> "GroupLayout":
        """The layout of the sub-table holding `rows` (in that order)."""
        where = {old: new for new, old in enumerate(rows)}
        a = torch.tensor([where[int(r)] for r in self.a_rows if int(r) in where], dtype=torch.long)
        b = torch.tensor([where[int(r)] for r in self.b_rows if int(r) in where], dtype=torch.long)
        pairs = None
        if self.pairs is not None:
            kept = [(where[int(x)], where[int(y)]) for x, y in self.pairs.tolist() if int(x) in where and int(y) in where]
            pairs = torch.tensor(kept, dtype=torch.long).reshape(-1, 2)
        return GroupLayout(a, b, pairs)


def gap(values: torch.Tensor, layout: GroupLayout) -> torch.Tensor:
    """mean over A - mean over B along the last dimension ([..., rows] -> [...])."""
    values = values.double()
    if layout.pairs is not None:
        return (values[..., layout.pairs[:, 0]] - values[..., layout.pairs[:, 1]]).mean(-1)
    return values[..., layout.a_rows].mean(-1) - values[..., layout.b_rows].mean(-1)


def bootstrap_interval(values: torch.Tensor, layout: GroupLayout, *, n_resamples: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the gap: rows resampled with replacement
    within each group (pairs as units when paired)."""
    gaps = bootstrap_gaps(values, layout, n_resamples=n_resamples, seed=seed)
    tail = (1.0 - level) / 2
    low, high = torch.quantile(gaps, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
    return float(low), float(high)


def bootstrap_gaps(values: torch.Tensor, layout: GroupLayout, *, n_resamples: int = 2000, seed: int = 0) -> torch.Tensor:
    """[n_resamples] float64: the gap of each bootstrap resample."""
    values = values.double().flatten()
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n_resamples, CHUNK):
        n = min(CHUNK, n_resamples - start)
        if layout.pairs is not None:
            differences = values[layout.pairs[:, 0]] - values[layout.pairs[:, 1]]
            picks = torch.randint(len(differences), (n, len(differences)), generator=generator)
            out.append(differences[picks].mean(-1))
        else:
            a, b = values[layout.a_rows], values[layout.b_rows]
            pick_a = torch.randint(len(a), (n, len(a)), generator=generator)
            pick_b = torch.randint(len(b), (n, len(b)), generator=generator)
            out.append(a[pick_a].mean(-1) - b[pick_b].mean(-1))
    return torch.cat(out)


def permutation_p_value(values: torch.Tensor, layout: GroupLayout, *, n_permutations: int = 2000,
                        seed: int = 0) -> float:
    """Two-sided permutation test of the group labels: the share of relabellings
    (sign flips within pairs when paired) whose |gap| is at least the observed
    one, counting the observed labelling itself (so p >= 1 / (n + 1))."""
    values = values.double().flatten()
    observed = abs(float(gap(values, layout)))
    # a relabelling that ties the observed gap up to rounding counts as extreme
    tolerance = 1e-9 * max(1.0, observed)
    generator = torch.Generator().manual_seed(seed)
    extreme = 0
    for start in range(0, n_permutations, CHUNK):
        n = min(CHUNK, n_permutations - start)
        if layout.pairs is not None:
            differences = values[layout.pairs[:, 0]] - values[layout.pairs[:, 1]]
            signs = torch.randint(0, 2, (n, len(differences)), generator=generator).double() * 2 - 1
            gaps = (signs * differences).mean(-1)
        else:
            pooled = torch.cat([values[layout.a_rows], values[layout.b_rows]])
            order = torch.argsort(torch.rand(n, len(pooled), generator=generator), dim=-1)
            shuffled = pooled[order]
            n_a = len(layout.a_rows)
            gaps = shuffled[:, :n_a].mean(-1) - shuffled[:, n_a:].mean(-1)
        extreme += int((gaps.abs() >= observed - tolerance).sum())
    return (extreme + 1) / (n_permutations + 1)


def check_layout(layout: GroupLayout, names: tuple[str, str], what: str = "the data set") -> None:
    """At least two rows (pairs) per group: one row has no spread to resample."""
    if layout.pairs is not None:
        if len(layout.pairs) < 2:
            raise NbinterpError(f"{what} has {len(layout.pairs)} counterfactual pair(s): an interval needs at least 2")
        return
    for name, rows in zip(names, (layout.a_rows, layout.b_rows)):
        if len(rows) < 2:
            raise NbinterpError(f"group {name!r} of {what} has {len(rows)} row(s): an interval needs at least 2 per group")
