"""A bias as a measured difference between two groups of prompts, localised by
exact ablations, and reduced on held-out rows with its side effects checked.

    gap        mean metric(A) - mean metric(B), metric = logit[target] - logit[foil] at each row's last token
    ci         95% percentile bootstrap over rows (pairs as units when the set is counterfactual pairs)
    p_value    permutation test of the group labels (sign flips within pairs)
    components every head and MLP zero-ablated alone on every row: share = (gap - gap_ablated) / gap,
               measured, not estimated (a share > 1 overshoots, < 0 widens the gap)
    reduce(k)  rows split into fit / held-out by a seed; the top-k components by their share on the
               fit rows are removed together and judged on the held-out rows, and on capability prompts
               (the bundled tasks, or the user's) as accuracy and logit difference before / after.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import torch

from nbinterp.analysis import dataset_runs
from nbinterp.analysis.datasets import PromptSet, TokenizedSet, as_prompt_set
from nbinterp.analysis.group_stats import GroupLayout, bootstrap_interval, check_layout, gap, permutation_p_value
from nbinterp.engine.batch import forwards_needed
from nbinterp.engine.plan import check_edit_site, component_key
from nbinterp.errors import NbinterpError
from nbinterp.vocabulary import BUNDLED_MODEL_NAME

if TYPE_CHECKING:
    from nbinterp.engine.model import Model

CAPABILITY_TASKS = ("induction", "facts", "ioi")
CAPABILITY_PROMPTS = 12  # per bundled task: accuracy in steps of 1/12
# Streaming measures the components in chunks; a chunk may be smaller than a
# whole forward's worth of them only while that adds at most this share of forwards.
CHUNK_EXTRA_FORWARDS = 0.1


@dataclass(frozen=True)
class ComponentShare:
    name: str  # "L3.H1" / "L2.mlp"
    layer: int
    head: int | str  # head index or "mlp"
    share: float  # (gap - gap_ablated) / gap over the data set
    gap_ablated: float


@dataclass(frozen=True)
class SideEffect:
    task: str
    n: int
    accuracy_before: float  # argmax == target
    accuracy_after: float
    logit_diff_before: float | None  # mean logit[target] - logit[foil] (None: no foils)
    logit_diff_after: float | None


@dataclass
class Reduction:
    method: str  # "ablate" | "project"
    removed: list[str]  # component names, or the projected site
    fit_rows: list[int]
    held_out_rows: list[int]
    fit_shares: list[float]  # each removed component's share on the fit rows (ablate)
    gap_before: float  # held-out rows
    ci_before: tuple[float, float]
    gap_after: float
    ci_after: tuple[float, float]
    side_effects: list[SideEffect] = field(default_factory=list)

    @property
    def reduced_by(self) -> float:
        """1 - gap_after / gap_before: the share of the held-out gap removed."""
        return 1.0 - self.gap_after / self.gap_before

    def __repr__(self) -> str:
        return (f"<Reduction {self.method} {', '.join(self.removed)}: held-out gap {self.gap_before:.3f} -> "
                f"{self.gap_after:.3f} (95% CI {self.ci_after[0]:.3f}..{self.ci_after[1]:.3f}), "
                f"{len(self.side_effects)} side-effect tasks>")


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
    # which heads / MLPs `.components` and `reduce` consider (None: every one);
    # a large model's full sweep costs (components + 1) forwards of every row
    only: Sequence[Any] | None = None

    def __post_init__(self) -> None:
        model, data, groups = self.model, self.data, self.group_names
        self.layout = layout_of(data.prompts, groups)
        check_layout(self.layout, groups)
        self.metrics = dataset_runs.clean_metrics(model, data)  # float64 [rows]
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

    def group_means(self) -> tuple[float, float]:
        return (float(self.metrics[self.layout.a_rows].mean()), float(self.metrics[self.layout.b_rows].mean()))

    def ablation_effects(self, progress: Callable[[], None] | None = None) -> torch.Tensor:
        """[components, rows]: metric(row, one component zero-ablated) - metric(row),
        both rows of the same forward (so a component that changes nothing has
        effect 0 exactly). Components in `component_keys` order. Measured once
        (what `measure_components` already measured is kept)."""
        for _ in self.measure_components(progress):
            pass
        return self._effects

    @property
    def n_measured(self) -> int:
        """How many components' effects are measured so far."""
        return int(self._measured.sum())

    def component_chunks(self) -> list[list[int]]:
        """The fixed chunks (indices into `component_keys`) `measure_components`
        measures one at a time: as small as the forwards allow (a chunk
        smaller than one forward's worth of components costs extra forwards),
        at most CHUNK_EXTRA_FORWARDS more forwards than measuring all at once."""
        if self._chunks is None:
            n = len(self._component_keys)
            sizes = [(len(self.data.input_ids[members[0]]), len(members))
                     for members in dataset_runs.buckets(self.data, range(len(self.data))).values()]

            def forwards(chunk: int) -> int:
                return sum(forwards_needed(self.model, n_prompts, n_tokens, min(chunk, n - start))
                           for n_tokens, n_prompts in sizes for start in range(0, n, chunk))

            allowed = forwards(n) * (1 + CHUNK_EXTRA_FORWARDS)
            size = next(c for c in range(1, n + 1) if forwards(c) <= allowed)
            self._chunks = [list(range(start, min(n, start + size))) for start in range(0, n, size)]
        return self._chunks

    def measure_components(self, progress: Callable[[], None] | None = None) -> Iterator[list[int]]:
        """Measures the components not measured yet, one chunk at a time
        (`component_chunks`), yielding each chunk's indices once its effects
        are stored. To cancel, stop iterating: everything measured is kept and
        a new call continues with the next chunk. The chunks are fixed, so a
        cancelled and resumed measurement runs exactly the forwards of an
        uninterrupted one and ends at the same numbers."""
        for chunk in self.component_chunks():
            if bool(self._measured[chunk].all()):
                continue
            keys = [self._component_keys[i] for i in chunk]
            measured = dataset_runs.component_metrics(self.model, self.data, keys, progress=progress)
            self._effects[chunk] = measured.effects
            self._measured[chunk] = True
            yield chunk

    def measured_components(self) -> list[ComponentShare]:
        """The components measured so far, largest share first (all of them
        once the measurement is complete; exact, not estimated, as they land)."""
        done = self._measured.nonzero().flatten().tolist()
        if not done:
            return []
        return shares([self._component_keys[i] for i in done], self._effects[done], self.metrics, self.layout)

    @property
    def component_keys(self) -> list[tuple[int, Any]]:
        """(layer, head or "mlp") of every component considered."""
        return list(self._component_keys)

    @property
    def components(self) -> list[ComponentShare]:
        """Every head and MLP, largest share of the gap first."""
        if self._components is None:
            self._components = shares(self._component_keys, self.ablation_effects(), self.metrics, self.layout)
        return self._components

    def reduce(self, k: int = 3, *, method: str = "ablate", direction: Any = None, site: Any = None,
               fit: float = 0.5, seed: int | None = None, capability: Any = "bundled") -> Reduction:
        """Remove the top `k` components (chosen on the fit rows) or, with
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
            fit_layout = self.layout.restrict(fit_rows)
            fit_shares = shares(self._component_keys, self.ablation_effects()[:, fit_rows], self.metrics[fit_rows],
                                fit_layout)
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
                 only: Sequence[Any] | None = None) -> Bias:
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
    return Bias(model, prompt_set.check(model), (names[0], names[1]), seed=seed, n_resamples=n_resamples, only=only)


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


def shares(keys: Sequence[tuple[int, Any]], effects: torch.Tensor, clean: torch.Tensor,
           layout: GroupLayout) -> list[ComponentShare]:
    """Each component's share of the gap, largest first: the gap moves by
    gap(effects) when it is removed, so share = -gap(effects) / gap."""
    clean_gap = float(gap(clean, layout))
    if abs(clean_gap) < 1e-12:
        raise NbinterpError("the gap is 0 on these rows: there is nothing to share out among components")
    moved = gap(effects, layout)
    out = [ComponentShare(component_key(layer, head), layer, head, -float(m) / clean_gap, clean_gap + float(m))
           for (layer, head), m in zip(keys, moved)]
    return sorted(out, key=lambda c: -c.share)


def split_rows(prompt_set: PromptSet, layout: GroupLayout, fit: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded fit / held-out split by row, stratified by group (pairs kept together)."""
    if not isinstance(fit, float) or not 0.0 < fit < 1.0:
        raise NbinterpError(f"fit is the share of rows to choose components on, strictly between 0 and 1, got {fit!r}")
    rng = random.Random(seed)
    if layout.pairs is not None:
        units = [[tuple(p)] for p in layout.pairs.tolist()]
        strata = [units]
    else:
        strata = [[[(int(r),)] for r in layout.a_rows], [[(int(r),)] for r in layout.b_rows]]
    fit_rows: list[int] = []
    held_out: list[int] = []
    for units in strata:
        units = list(units)
        rng.shuffle(units)
        n_fit = min(len(units) - 1, max(1, round(fit * len(units))))
        for i, unit in enumerate(units):
            (fit_rows if i < n_fit else held_out).extend(r for group in unit for r in group)
    return sorted(fit_rows), sorted(held_out)


def capability_prompts(model: "Model", capability: Any) -> dict[str, list[tuple[str, Any, Any]]]:
    """{task: [(prompt, target, foil)]} from the `capability=` argument of reduce."""
    if capability is None:
        return {}
    if isinstance(capability, str):
        if capability != "bundled":
            raise NbinterpError('capability= is "bundled", None, or {task: PromptSet or [(prompt, target, foil)]}')
        if model.name != BUNDLED_MODEL_NAME:
            return {}  # the bundled tasks are in the bundled model's vocabulary only
        from nbinterp.bundled.tasks import examples

        return {task: [(e.prompt, e.target, e.foil) for e in examples(task, CAPABILITY_PROMPTS, seed=7)]
                for task in CAPABILITY_TASKS}
    if not isinstance(capability, Mapping):
        raise NbinterpError('capability= is "bundled", None, or {task: PromptSet or [(prompt, target, foil)]}')
    out = {}
    for task, rows in capability.items():
        if isinstance(rows, PromptSet):
            out[str(task)] = [(r.prompt, r.target, r.foil) for r in rows]
        else:
            items = [tuple(r) if isinstance(r, (tuple, list)) else (r,) for r in rows]
            if not items or any(len(r) not in (2, 3) for r in items):
                raise NbinterpError(f"capability[{task!r}] needs a non-empty list of (prompt, target) or (prompt, target, foil)")
            out[str(task)] = [(r[0], r[1], r[2] if len(r) == 3 else None) for r in items]
    return out


def side_effects(model: "Model", tasks: dict[str, list[tuple[str, Any, Any]]], intervention: dict) -> list[SideEffect]:
    """Accuracy (argmax == target) and mean logit difference of each task's
    prompts without and with the intervention (`model.run` keywords)."""
    out = []
    for task, rows in tasks.items():
        results: dict[str, list[float]] = {"acc0": [], "acc1": [], "ld0": [], "ld1": []}
        for prompt, target, foil in rows:
            target_id = model.token_id(target)
            foil_id = None if foil is None else model.token_id(foil)
            for tag, kwargs in (("0", {}), ("1", intervention)):
                run = model.run(prompt, **kwargs)
                logits = run.logits_at(-1)
                results["acc" + tag].append(float(int(logits.argmax()) == target_id))
                if foil_id is not None:
                    results["ld" + tag].append(float(logits[target_id] - logits[foil_id]))
        mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
        out.append(SideEffect(task, len(rows), mean(results["acc0"]), mean(results["acc1"]),
                              mean(results["ld0"]), mean(results["ld1"])))
    return out
