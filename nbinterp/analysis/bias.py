"""A bias as a measured difference between two groups of prompts, localised by
exact ablations, and reduced on held-out rows with its side effects checked.

    gap        mean metric(A) - mean metric(B), metric = logit[target] - logit[foil] at each row's last token
    ci         95% percentile bootstrap over rows (pairs as units when the set is counterfactual pairs)
    p_value    permutation test of the group labels (sign flips within pairs)
    components every head and MLP zero-ablated alone on every row: share = (gap - gap_ablated) / gap,
               measured (a share > 1 overshoots, < 0 widens the gap). Each forward starts at its
               components' lowest layer from the rows' unintervened streams (blocks below are as
               in the clean run). When measuring every component would cost more than
               `exact_budget` forwards of the data set, every share is first estimated by
               attribution patching (one forward + backward per row) and the largest
               |estimates| are measured within the budget; the rest stay estimates, marked
               `measured=False`, and `estimate_error` reports the estimates' error against
               the measured shares.
    reduce(k)  rows split into fit / held-out by a seed; the top-k measured components by their share
               on the fit rows are removed together and judged on the held-out rows, and on capability prompts
               (the bundled tasks, or the user's) as accuracy and logit difference before / after.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch

from nbinterp.analysis import dataset_runs
from nbinterp.analysis.datasets import PromptSet, TokenizedSet, as_prompt_set
from nbinterp.analysis.group_stats import GroupLayout, bootstrap_interval, check_layout, gap, permutation_p_value
from nbinterp.analysis.reduction import Reduction, SideEffect, capability_prompts, side_effects, split_rows  # noqa: F401 - SideEffect re-exported
from nbinterp.engine.batch import forwards_needed
from nbinterp.engine.plan import check_edit_site, component_key
from nbinterp.errors import NbinterpError

if TYPE_CHECKING:
    from nbinterp.engine.model import Model

# Streaming measures the components in chunks; a chunk may be smaller than a
# whole forward's worth of them only while that adds at most this share of forwards.
CHUNK_EXTRA_FORWARDS = 0.1
# Exact measurement within this many forwards of the data set by default (one
# component costs (layers - its layer) / layers of one, `Bias.exact_cost`). With
# the estimates (a forward + backward per row, 4-6 forwards' worth on a CPU) and
# the clean forward, a GPT-2-small-sized sweep stays within ~20x one forward
# (benchmarks/bench_bias.py); every component of the bundled model (12.5) fits.
EXACT_BUDGET = 16.0
ESTIMATE_ROWS_PER_STEP = 8  # rows estimated between two chances to cancel


@dataclass(frozen=True)
class ComponentShare:
    name: str  # "L3.H1" / "L2.mlp"
    layer: int
    head: int | str  # head index or "mlp"
    share: float  # (gap - gap_ablated) / gap over the data set (an estimate when not `measured`)
    gap_ablated: float
    measured: bool = True  # False: share and gap_ablated are attribution-patching estimates
    estimate: float | None = None  # the estimated share, when estimates were made


@dataclass(frozen=True)
class EstimateError:
    """The estimated shares against the measured ones, over the measured components."""

    n: int  # measured components compared
    max_abs_error: float  # max |estimated share - measured share|
    correlation: float | None  # Pearson, None with fewer than 2 components or no spread


@dataclass(repr=False, eq=False)
class Bias:
    """The result of `ni.bias` without its view; see the module docstring.
    Measured on construction: the metrics, gap, interval and p-value; the
    components' shares on first use of `.components`."""

    model: "Model"
    data: TokenizedSet
    group_names: tuple[str, str]
    seed: int = 0
    n_resamples: int = 2000
    # which heads / MLPs `.components` and `reduce` consider (None: every one)
    only: Sequence[Any] | None = None
    # forwards of the data set the exact shares may cost (None: every component exact)
    exact_budget: float | None = EXACT_BUDGET

    def __post_init__(self) -> None:
        model, data, groups = self.model, self.data, self.group_names
        self.layout = layout_of(data.prompts, groups)
        check_layout(self.layout, groups)
        budget = self.exact_budget
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget < 0):
            raise NbinterpError(f"exact_budget is forwards of the data set (a number >= 0) or None for every "
                                f"component measured, got {budget!r}")
        # float64 [rows], and the rows' streams that let ablations skip the blocks below them
        self.metrics, self._streams = dataset_runs.clean_run(model, data)
        self.gap = float(gap(self.metrics, self.layout))
        self.ci = bootstrap_interval(self.metrics, self.layout, n_resamples=self.n_resamples, seed=self.seed)
        self.p_value = permutation_p_value(self.metrics, self.layout, n_permutations=self.n_resamples, seed=self.seed)
        self._components: list[ComponentShare] | None = None
        if self.only is None:
            self._component_keys = dataset_runs.every_component(model)
        else:
            if isinstance(self.only, (str, tuple)) or not self.only:
                raise NbinterpError('components= is True, False or a list like ["L3.H1", "L2.mlp"]')
            self._component_keys = list(dict.fromkeys(model.parse_component(key) for key in self.only))
        # [components, rows]: filled chunk by chunk (see measure_components); NaN until measured
        self._effects = torch.full((len(self._component_keys), len(data)), float("nan"), dtype=torch.float64)
        self._measured = torch.zeros(len(self._component_keys), dtype=torch.bool)
        self._chunks: list[list[int]] | None = None
        # attribution-patching estimates [components, rows], made only when the budget
        # cannot measure every component; NaN until a row is estimated
        self._estimates = torch.full_like(self._effects, float("nan"))
        self._plan: list[int] | None = self._plan_everything()

    def group_means(self) -> tuple[float, float]:
        return (float(self.metrics[self.layout.a_rows].mean()), float(self.metrics[self.layout.b_rows].mean()))

    def ablation_effects(self, progress: Callable[[], None] | None = None) -> torch.Tensor:
        """[components, rows]: metric(row, one component zero-ablated) - metric(row),
        both rows of the same forward (so a component that changes nothing has
        effect 0 exactly). Components in `component_keys` order; NaN for those
        outside the exact budget (`exact_plan`). Measured once (what
        `measure_components` already measured is kept)."""
        for _ in self.measure_components(progress):
            pass
        return self._effects

    @property
    def n_measured(self) -> int:
        """How many components' effects are measured so far."""
        return int(self._measured.sum())

    def exact_cost(self, indices: Sequence[int]) -> float:
        """Forwards of the data set that measuring these components costs: each
        runs (layers - its layer) / layers of the blocks, with the rows' streams
        (all of them without: the streams passed STREAM_BYTES)."""
        n_layers = self.model.n_layers
        if self._streams is None:
            return float(len(indices))
        return sum((n_layers - self._component_keys[i][0]) / n_layers for i in indices)

    def _plan_everything(self) -> list[int] | None:
        """Every component, when the budget allows it (no estimates needed); else None."""
        everything = list(range(len(self._component_keys)))
        if self.exact_budget is None or self.exact_cost(everything) <= self.exact_budget:
            return everything
        return None

    @property
    def exact_plan(self) -> list[int] | None:
        """Indices (into `component_keys`) of the components measured exactly:
        every one within the budget; else the largest |estimated share| first,
        as many as fit. None until the estimates it needs are made."""
        return self._plan

    @property
    def n_to_measure(self) -> int | None:
        """How many components are measured exactly (None until the plan is known)."""
        return None if self._plan is None else len(self._plan)

    @property
    def finished(self) -> bool:
        """Whether every component of the plan is measured (and the rest estimated)."""
        return self._plan is not None and bool(self._measured[self._plan].all())

    def estimate_steps(self) -> Iterator[list[int]]:
        """Estimates every component's share on the rows not estimated yet,
        ESTIMATE_ROWS_PER_STEP rows per step (yields [] after each: a chance to cancel)."""
        todo = [row for row in range(len(self.data)) if bool(self._estimates[:, row].isnan().any())]
        for start in range(0, len(todo), ESTIMATE_ROWS_PER_STEP):
            rows = todo[start : start + ESTIMATE_ROWS_PER_STEP]
            for row, estimate in dataset_runs.estimated_effects(self.model, self.data, self._component_keys, rows):
                self._estimates[:, row] = estimate
            yield []

    def _plan_from_estimates(self) -> list[int]:
        moved = -gap(self._estimates, self.layout)  # the estimated share x gap, per component
        chosen: list[int] = []
        for i in sorted(range(len(self._component_keys)), key=lambda i: -abs(float(moved[i]))):
            if self.exact_cost([*chosen, i]) > self.exact_budget:  # type: ignore[operator]
                break
            chosen.append(i)
        return sorted(chosen)  # component order: a forward's components share low layers

    def component_chunks(self) -> list[list[int]]:
        """The fixed chunks (indices into `component_keys`, within `exact_plan`)
        `measure_components` measures one at a time: as small as the forwards
        allow (a chunk smaller than one forward's worth of components costs
        extra forwards), at most CHUNK_EXTRA_FORWARDS more forwards than
        measuring all at once. Empty until the plan is known."""
        if self._plan is None:
            return []
        if self._chunks is None:
            plan = self._plan
            n = len(plan)
            sizes = [(len(self.data.input_ids[members[0]]), len(members))
                     for members in dataset_runs.buckets(self.data, range(len(self.data))).values()]

            def forwards(chunk: int) -> int:
                return sum(forwards_needed(self.model, n_prompts, n_tokens, min(chunk, n - start))
                           for n_tokens, n_prompts in sizes for start in range(0, n, chunk))

            allowed = forwards(n) * (1 + CHUNK_EXTRA_FORWARDS)
            size = next((c for c in range(1, n + 1) if forwards(c) <= allowed), 1)
            self._chunks = [plan[start : start + size] for start in range(0, n, size)]
        return self._chunks

    def measure_components(self, progress: Callable[[], None] | None = None) -> Iterator[list[int]]:
        """Measures the components of the plan not measured yet, one chunk at a
        time (`component_chunks`), yielding each chunk's indices once its effects
        are stored; first, when the budget cannot measure every component, the
        estimates that choose them (`estimate_steps`, yielding []). To cancel,
        stop iterating: everything measured or estimated is kept and a new call
        continues. The chunks are fixed, so a cancelled and resumed measurement
        runs exactly the forwards of an uninterrupted one and ends at the same numbers."""
        if self._plan is None:
            yield from self.estimate_steps()
            self._plan = self._plan_from_estimates()
        for chunk in self.component_chunks():
            if bool(self._measured[chunk].all()):
                continue
            keys = [self._component_keys[i] for i in chunk]
            measured = dataset_runs.component_metrics(self.model, self.data, keys, progress=progress,
                                                      streams=self._streams)
            self._effects[chunk] = measured.effects
            self._measured[chunk] = True
            yield chunk

    @property
    def estimated(self) -> bool:
        """Whether every row's estimates are made (only when the budget needs them)."""
        return not bool(self._estimates.isnan().any())

    def measured_components(self) -> list[ComponentShare]:
        """The components measured so far, largest share first (exact as they
        land), then, once the estimates are made, the others' estimated shares
        (`measured=False`) among them."""
        done = self._measured.nonzero().flatten().tolist()
        rest = (~self._measured).nonzero().flatten().tolist() if self.estimated else []
        if not done and not rest:
            return []
        effects = self._effects.clone()
        effects[rest] = self._estimates[rest]
        chosen = sorted(done + rest)
        estimates = self._estimates[chosen] if self.estimated else None
        return shares([self._component_keys[i] for i in chosen], effects[chosen], self.metrics, self.layout,
                      measured=[bool(self._measured[i]) for i in chosen], estimates=estimates)

    def estimate_error(self) -> EstimateError | None:
        """The estimated shares' error on the components measured so far (None without estimates)."""
        done = self._measured.nonzero().flatten().tolist()
        if not self.estimated or not done:
            return None
        clean_gap = float(gap(self.metrics, self.layout))
        exact = -gap(self._effects[done], self.layout) / clean_gap
        estimate = -gap(self._estimates[done], self.layout) / clean_gap
        correlation = None
        if len(done) >= 2 and float(exact.std()) > 0 and float(estimate.std()) > 0:
            correlation = float(torch.corrcoef(torch.stack([exact, estimate]))[0, 1])
        return EstimateError(len(done), float((estimate - exact).abs().max()), correlation)

    @property
    def component_keys(self) -> list[tuple[int, Any]]:
        """(layer, head or "mlp") of every component considered."""
        return list(self._component_keys)

    @property
    def components(self) -> list[ComponentShare]:
        """Every head and MLP, largest share of the gap first: measured, or
        (outside the exact budget) estimated, as each one's `measured` says."""
        if self._components is None:
            self.ablation_effects()
            self._components = self.measured_components()
        return self._components

    def reduce(self, k: int = 3, *, method: str = "ablate", direction: Any = None, site: Any = None,
               fit: float = 0.5, seed: int | None = None, capability: Any = "bundled") -> Reduction:
        """Remove the top `k` measured components (chosen on the fit rows) or, with
        method="project", the component of the activation at `site` along
        `direction` (e.g. a probe's, `pr.direction(layer)` at ("resid_pre", layer));
        judged on the held-out rows and on `capability` prompts ("bundled": the
        bundled model's induction / facts / IOI tasks; or {task: PromptSet or
        [(prompt, target, foil)]}; None: none)."""
        seed = self.seed if seed is None else seed
        fit_rows, held_out = split_rows(self.data.prompts, self.layout, fit, seed)
        held_layout = self.layout.restrict(held_out)
        check_layout(held_layout, self.group_names, "the held-out split")
        if method == "ablate":
            if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(self._component_keys):
                raise NbinterpError(f"k is how many components to remove: 1..{len(self._component_keys)}, got {k!r}")
            effects = self.ablation_effects()
            # chosen among the measured components only: an estimate may rank a component wrongly
            candidates = self._measured.nonzero().flatten().tolist()
            if k > len(candidates):
                raise NbinterpError(
                    f"reduce(k={k}) chooses among the components measured exactly, and only {len(candidates)} of "
                    f"{len(self._component_keys)} are (exact_budget={self.exact_budget}): pass a smaller k, or "
                    f"ni.bias(..., exact_budget=None) to measure every component")
            fit_layout = self.layout.restrict(fit_rows)
            fit_shares = shares([self._component_keys[i] for i in candidates], effects[candidates][:, fit_rows],
                                self.metrics[fit_rows], fit_layout)
            chosen = fit_shares[:k]
            removed = [c.name for c in chosen]
            keys = [(c.layer, c.head) for c in chosen]
            fill = lambda plan, slot, _: dataset_runs.ablate(plan, slot, keys)  # noqa: E731
            run_kwargs: dict[str, Any] = {"ablate": {name: 0.0 for name in removed}}
            chosen_shares = [c.share for c in chosen]
        elif method == "project":
            if direction is None or site is None:
                raise NbinterpError('method="project" needs direction= (a [d_model] vector, e.g. pr.direction(layer)) '
                                    'and site= (where to remove it, e.g. ("resid_pre", layer))')
            edit_site = check_edit_site(self.model.shape, tuple(site) if isinstance(site, list) else site)
            vector = torch.as_tensor(direction, dtype=torch.float32).flatten()
            if vector.numel() != self.model.site_width(edit_site[0]) or not bool(vector.norm() > 0):
                raise NbinterpError(f"direction= needs {self.model.site_width(edit_site[0])} numbers, not all zero")
            fill = lambda plan, slot, _: plan.project(slot, edit_site[0], edit_site[1], vector)  # noqa: E731
            removed, chosen_shares = [f"{edit_site[0]}[{edit_site[1]}] along the direction"], []
            run_kwargs = {"project_out": {edit_site: vector}}
        else:
            raise NbinterpError(f'method is "ablate" or "project", not {method!r}')
        measured = dataset_runs.measured_metrics(self.model, self.data, [None], fill, rows=held_out)
        before, after = measured.clean[0], measured.values[0]
        interval = dict(n_resamples=self.n_resamples, seed=seed)
        return Reduction(
            method=method, removed=removed, fit_rows=fit_rows, held_out_rows=held_out, fit_shares=chosen_shares,
            gap_before=float(gap(before, held_layout)), ci_before=bootstrap_interval(before, held_layout, **interval),
            gap_after=float(gap(after, held_layout)), ci_after=bootstrap_interval(after, held_layout, **interval),
            side_effects=side_effects(self.model, capability_prompts(self.model, capability), run_kwargs),
        )

    def __repr__(self) -> str:
        a, b = self.group_names
        return (f"<Bias {a} vs {b} over {len(self.data)} rows: gap {self.gap:.3f} "
                f"(95% CI {self.ci[0]:.3f}..{self.ci[1]:.3f}), p = {self.p_value:.4f}>")


def measure_bias(model: "Model", data: Any = None, *, prompts: Any = None, target: Any = None, foil: Any = None,
                 groups: Sequence[str] | None = None, seed: int = 0, n_resamples: int = 2000,
                 only: Sequence[Any] | None = None, exact_budget: float | None = EXACT_BUDGET) -> Bias:
    """The analysis behind `ni.bias` (no widget)."""
    prompt_set = as_prompt_set(data, prompts=prompts, target=target, foil=foil)
    names = tuple(groups) if groups is not None else tuple(prompt_set.groups)
    if len(names) != 2:
        raise NbinterpError(f"a bias compares two groups; the data set has {list(prompt_set.groups)}: "
                            "pass groups=(first, second) to pick two")
    missing = [g for g in names if g not in prompt_set.groups]
    if missing:
        raise NbinterpError(f"group(s) {missing} have no rows; the data set has {prompt_set.groups}")
    if len(prompt_set.groups) > 2:
        prompt_set = prompt_set.subset([i for i, row in enumerate(prompt_set.rows) if row.group in names])
    if not isinstance(n_resamples, int) or n_resamples < 100:
        raise NbinterpError(f"n_resamples must be an integer >= 100 (2000 is the default), got {n_resamples!r}")
    return Bias(model, prompt_set.check(model), (names[0], names[1]), seed=seed, n_resamples=n_resamples, only=only,
                exact_budget=exact_budget)


def layout_of(prompt_set: PromptSet, groups: tuple[str, str]) -> GroupLayout:
    """Rows of each group; pairs when every row's partner is in the other group."""
    labels = [row.group for row in prompt_set.rows]
    a_rows = torch.tensor([i for i, g in enumerate(labels) if g == groups[0]], dtype=torch.long)
    b_rows = torch.tensor([i for i, g in enumerate(labels) if g == groups[1]], dtype=torch.long)
    pairs = None
    if prompt_set.paired and all(labels[row.partner] != row.group for row in prompt_set.rows):  # type: ignore[index]
        pairs = torch.tensor([(i, row.partner) for i, row in enumerate(prompt_set.rows) if row.group == groups[0]],
                             dtype=torch.long)
    return GroupLayout(a_rows, b_rows, pairs)


def shares(keys: Sequence[tuple[int, Any]], effects: torch.Tensor, clean: torch.Tensor, layout: GroupLayout,
           measured: Sequence[bool] | None = None, estimates: torch.Tensor | None = None) -> list[ComponentShare]:
    """Each component's share of the gap, largest first: the gap moves by
    gap(effects) when it is removed, so share = -gap(effects) / gap.
    `measured` flags which effects are exact (default all); `estimates`
    [components, rows], when made, gives each one's estimated share too."""
    clean_gap = float(gap(clean, layout))
    if abs(clean_gap) < 1e-12:
        raise NbinterpError("the gap is 0 on these rows: there is nothing to share out among components")
    moved = gap(effects, layout)
    flags = [True] * len(keys) if measured is None else list(measured)
    estimated = [None] * len(keys) if estimates is None else [-float(m) / clean_gap for m in gap(estimates, layout)]
    out = [ComponentShare(component_key(layer, head), layer, head, -float(m) / clean_gap, clean_gap + float(m),
                          flag, estimate)
           for (layer, head), m, flag, estimate in zip(keys, moved, flags, estimated)]
    return sorted(out, key=lambda c: -c.share)
