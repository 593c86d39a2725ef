"""The usage test a probe lacks on its own: does the model *use* the
direction the probe reads?

For each held-out prompt, the probe's direction is projected out of the
residual stream at its layer (every position) through the engine's
`project_out` edit, and the output metric (logit(target) - logit(foil) at
the last token, or logit(target)) is measured again. The same is done with
random unit directions (seeded) as a control: "used" means the probe's
direction moves the output well beyond what removing an arbitrary direction
does. Verdict per layer: "present and used", "present, not used", "not
present", with the numbers and the thresholds that decided it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Hashable, Sequence

import torch

from nbinterp.engine.batch import forwards_needed, measure
from nbinterp.engine.plan import Metric, check_scale
from nbinterp.errors import NbinterpError
from nbinterp.representations.probes import ProbeResult, stream_site

if TYPE_CHECKING:
    from nbinterp.engine.model import Model

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class UsageThresholds:
    """What the verdict compares against, named in every explanation."""

    present_accuracy: float = 0.8  # held-out accuracy for "present" ...
    above_chance: float = 0.1  # ... and at least this far above guessing the majority class
    used_factor: float = 3.0  # mean |change| at least this many times the largest random direction's ...
    min_change: float = 0.1  # ... and at least this much, in the metric's units (logits)


@dataclass
class Usage:
    """The usage test of one probe layer over the held-out prompts."""

    layer: int
    stream: str  # "L2" / "final"
    metric: str  # what was measured, e.g. "logit(doctor) - logit(nurse) at the last token"
    scale: float  # 0: the component along the direction removed; otherwise scaled by this
    label: Hashable | None  # the class a multi-class direction points to
    classes: list[Hashable]
    test_index: torch.Tensor  # the held-out prompts (indices into the probe's prompts)
    test_classes: torch.Tensor  # class index of each
    clean: torch.Tensor  # [n] metric without the edit, float64
    edited: torch.Tensor  # [n] with the probe's direction projected out
    control_edited: torch.Tensor  # [controls, n] with random unit directions projected out
    probability_token: str  # the target token whose probability is reported
    probability_before: list[float]  # mean P(target) per class, clean ([] when not asked for)
    probability_after: list[float]  # mean P(target) per class, probe direction projected out
    test_accuracy: float
    chance: float
    thresholds: UsageThresholds
    forwards: int

    @property
    def change(self) -> torch.Tensor:
        """[n] edited - clean, per held-out prompt."""
        return self.edited - self.clean

    @property
    def mean_abs_change(self) -> float:
        return float(self.change.abs().mean())

    @property
    def control_mean_abs_change(self) -> torch.Tensor:
        """[controls] mean |change| for each random direction."""
        return (self.control_edited - self.clean).abs().mean(1)

    def class_means(self, values: torch.Tensor) -> list[float]:
        return [float(values[self.test_classes == c].mean()) for c in range(len(self.classes))]

    def gap(self, values: torch.Tensor) -> float:
        """Mean metric of classes[1] minus classes[0] (multi-class: `label` minus the rest)."""
        if len(self.classes) == 2:
            means = self.class_means(values)
            return means[1] - means[0]
        inside = self.test_classes == self.classes.index(self.label)
        return float(values[inside].mean() - values[~inside].mean())

    @property
    def gap_before(self) -> float:
        return self.gap(self.clean)

    @property
    def gap_after(self) -> float:
        return self.gap(self.edited)

    @property
    def control_gap_after(self) -> torch.Tensor:
        return torch.tensor([self.gap(row) for row in self.control_edited], dtype=torch.float64)

    @property
    def present(self) -> bool:
        t = self.thresholds
        return self.test_accuracy >= t.present_accuracy and self.test_accuracy >= self.chance + t.above_chance

    @property
    def used(self) -> bool:
        t = self.thresholds
        control = float(self.control_mean_abs_change.max())
        return self.mean_abs_change >= t.used_factor * control and self.mean_abs_change >= t.min_change

    @property
    def verdict(self) -> str:
        if not self.present:
            return "not present"
        return "present and used" if self.used else "present, not used"

    @property
    def explanation(self) -> str:
        """The verdict with the numbers and the thresholds that decided it."""
        t = self.thresholds
        control = float(self.control_mean_abs_change.max())
        present = (
            f"held-out accuracy {self.test_accuracy:.2f} (needs >= {t.present_accuracy:.2f} and >= chance "
            f"{self.chance:.2f} + {t.above_chance:.2f})"
        )
        edit = "projecting the probe direction out" if self.scale == 0 else f"scaling the probe direction by {self.scale:g}"
        ratio = self.mean_abs_change / control if control > 0 else float("inf")
        used = (
            f"{edit} at {self.stream} changes {self.metric} by {self.mean_abs_change:.3f} on average (|change|, "
            f"{len(self.clean)} held-out prompts), {ratio:.1f}x the largest of {len(self.control_edited)} random "
            f"unit directions ({control:.3f}); used needs >= {t.used_factor:g}x and >= {t.min_change:g}"
        )
        return f"{self.verdict}: {present}; {used}"

    def summary(self) -> dict[str, Any]:
        """Plain numbers (JSON-able) for a view or a table."""
        return {
            "layer": self.layer, "stream": self.stream, "metric": self.metric, "scale": self.scale,
            "label": None if self.label is None else str(self.label), "n_test": len(self.clean),
            "mean_abs_change": self.mean_abs_change,
            "control_mean_abs_change": self.control_mean_abs_change.tolist(),
            "class_means_before": self.class_means(self.clean), "class_means_after": self.class_means(self.edited),
            "gap_before": self.gap_before, "gap_after": self.gap_after, "control_gap_after": self.control_gap_after.tolist(),
            "probability_token": self.probability_token,
            "probability_before": self.probability_before, "probability_after": self.probability_after,
            "test_accuracy": self.test_accuracy, "chance": self.chance,
            "verdict": self.verdict, "explanation": self.explanation, "forwards": self.forwards,
            "thresholds": asdict(self.thresholds),
        }


def parse_metric(model: "Model", metric: Any) -> tuple[int, int | None, str]:
    """(target id, foil id or None, a label) from (target, foil) or a target token."""
    if isinstance(metric, tuple) and len(metric) == 2:
        target, foil = model.token_id(metric[0]), model.token_id(metric[1])
    elif isinstance(metric, (str, int)) and not isinstance(metric, bool):
        target, foil = model.token_id(metric), None
    else:
        raise NbinterpError(
            f"metric must be (target, foil) tokens, e.g. ('doctor', 'nurse'), or one target token; got {metric!r}"
        )
    name = lambda i: model.tokenizer.convert_ids_to_tokens([i])[0]  # noqa: E731
    label = f"logit({name(target)})" + ("" if foil is None else f" - logit({name(foil)})")
    return target, foil, label + " at the last token"


def random_directions(width: int, n: int, seed: int) -> list[torch.Tensor]:
    """n unit directions, isotropic, seeded (the control)."""
    directions = []
    for k in range(n):
        v = torch.randn(width, generator=torch.Generator().manual_seed(10_000 * int(seed) + k), dtype=torch.float64)
        directions.append((v / v.norm()).float())
    return directions


def edited_metrics(
    model: "Model", token_ids: Sequence[torch.Tensor], site: tuple[str, int], directions: Sequence[torch.Tensor | None],
    scale: float, target: int, foil: int | None, progress: Callable[[], None] = lambda: None,
) -> torch.Tensor:
    """[len(directions), prompts] float64: the metric at each prompt's last token
    with each direction projected out at `site` (None: no edit, the clean rows).
    Prompts of one length share forwards (no padding, so the last token is one
    position), through the engine's batched runner: the clean metric comes from
    the same forwards as the edited ones."""
    out = torch.empty(len(directions), len(token_ids), dtype=torch.float64)
    edits = [d for d, direction in enumerate(directions) if direction is not None]
    for length, rows in _rows_by_length(token_ids).items():
        measured = measure(
            model, torch.stack([token_ids[r] for r in rows]), edits,
            lambda plan, slot, d: plan.project(slot, *site, directions[d], scale),
            Metric(target, foil, length - 1), progress=progress,
        )
        index = torch.tensor(rows)
        for n, d in enumerate(edits):
            out[d, index] = measured.values[n]
        for d, direction in enumerate(directions):
            if direction is None:
                out[d, index] = measured.clean[0]
    return out


def edit_forwards(model: "Model", token_ids: Sequence[torch.Tensor], n_edits: int) -> int:
    """How many forwards `edited_metrics` runs for `n_edits` directions."""
    return sum(forwards_needed(model, len(rows), length, n_edits) for length, rows in _rows_by_length(token_ids).items())


def _rows_by_length(token_ids: Sequence[torch.Tensor]) -> dict[int, list[int]]:
    by_length: dict[int, list[int]] = {}
    for row, ids in enumerate(token_ids):
        by_length.setdefault(len(ids), []).append(row)
    return by_length


def usage_test(
    model: "Model",
    result: ProbeResult,
    layer: int | None = None,
    metric: Any = None,
    *,
    label: Hashable | None = None,
    scale: float = 0.0,
    n_controls: int = 5,
    seed: int = 0,
    thresholds: UsageThresholds = UsageThresholds(),
    probabilities: bool = True,
    progress: Progress | None = None,
) -> Usage:
    """Project the probe direction of `layer` (default: the best held-out layer)
    out of the stream (or scale it by `scale`) for every held-out prompt; the
    metric's change, the class gap before/after, P(target) per class before/after,
    and the same for `n_controls` random directions. `probabilities=False` skips
    P(target), which costs one run per held-out prompt (the metric is batched)."""
    if metric is None:
        raise NbinterpError("the usage test needs metric=(target, foil), e.g. metric=('doctor', 'nurse')")
    layer = result.best_layer if layer is None else layer
    site = stream_site(model, layer)
    direction = result.direction(layer, label)
    scale = check_scale(scale, "the probe direction")
    if isinstance(n_controls, bool) or not isinstance(n_controls, int) or not 1 <= n_controls <= 100:
        raise NbinterpError(f"n_controls must be an integer 1..100 (random directions to compare with), got {n_controls!r}")
    target, foil, metric_label = parse_metric(model, metric)
    test = result.test_index
    token_ids = [result.token_ids[int(i)] for i in test]
    directions = [None, direction, *random_directions(model.d_model, n_controls, seed)]
    total = edit_forwards(model, token_ids, len(directions) - 1) + (2 * len(token_ids) if probabilities else 0)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    forwards_before = model.forwards
    with model.lock:
        metrics = edited_metrics(model, token_ids, site, directions, scale, target, foil, step)
        # P(target) per prompt needs every logit of the last token: one run per prompt
        edit_key = ("resid_final", None) if site[0] == "resid_final" else site
        before, after = [], []
        for ids in token_ids if probabilities else ():
            before.append(float(model.run(ids).probabilities()[target]))
            step()
            after.append(float(model.run(ids, project_out={edit_key: (direction, scale)}).probabilities()[target]))
            step()
    test_classes = result.y[test]
    per_class = lambda values: [  # noqa: E731
        float(torch.tensor(values, dtype=torch.float64)[test_classes == c].mean()) for c in range(len(result.classes))
    ] if values else []
    return Usage(
        layer=layer, stream=result.stream_labels[layer], metric=metric_label, scale=scale,
        label=None if len(result.classes) == 2 else label, classes=result.classes, test_index=test,
        test_classes=test_classes, clean=metrics[0], edited=metrics[1], control_edited=metrics[2:],
        probability_token=model.tokenizer.convert_ids_to_tokens([target])[0],
        probability_before=per_class(before), probability_after=per_class(after),
        test_accuracy=float(result.test_accuracy[layer]), chance=result.chance, thresholds=thresholds,
        forwards=model.forwards - forwards_before,
    )
