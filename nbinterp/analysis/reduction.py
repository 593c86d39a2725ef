"""How `Bias.reduce` judges removing a bias: the seeded fit / held-out split of
the rows (components are chosen on the fit rows, the gap is judged on the
held-out ones), the `Reduction` it returns, and the side effects: accuracy
and logit difference on capability prompts (the bundled model's tasks, or the
user's) without and with the same intervention."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from nbinterp.analysis.datasets import PromptSet
from nbinterp.analysis.group_stats import GroupLayout
from nbinterp.errors import NbinterpError
from nbinterp.vocabulary import BUNDLED_MODEL_NAME

if TYPE_CHECKING:
    from nbinterp.engine.model import Model

CAPABILITY_TASKS = ("induction", "facts", "ioi")
CAPABILITY_PROMPTS = 12  # per bundled task: accuracy in steps of 1/12


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
