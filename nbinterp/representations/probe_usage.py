"""The usage test a probe lacks on its own: does the model *use* the
direction the probe reads?

For each held-out prompt, the probe's direction is projected out of the
residual stream at its layer (every position) through the engine's
`project_out` edit, and the output metric (logit(target) - logit(foil) at
the last token, or logit(target)) is measured again. The same is done with
control directions: "used" means the probe's direction moves the output well
beyond what removing a comparable arbitrary direction does. Verdict per
layer: "present and used", "present, not used", "not present", with the
numbers and the thresholds that decided it.

Two things keep the control comparable on real models:
- massive-activation positions (attention sinks: SmolLM2's position 0 has a
  residual norm ~22,700 at L12, ~160x the median, nearly all in one
  dimension) are left unedited, for the probe direction and the controls
  alike: a random direction's overlap with that one huge vector alone moves
  the metric by 0.5-2.9 logits there, which made "used" unreachable for a
  direction with a real 2-logit effect. A position is a sink when its norm
  is over SINK_FACTOR x the prompt's median; the verdict says how many;
- each control direction removes as much of the stream as the probe
  direction does: it is a seeded mix of an isotropic direction and a draw
  from the stream's own covariance (both orthogonal to the probe direction),
  mixed so its root-mean-square projection over the edited positions equals
  the probe direction's. An isotropic direction alone removes far less than
  a direction fitted to the data, which would make any probe look "used".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Hashable, Sequence

import math

import torch

from nbinterp.engine.batch import RowPlan, forwards_needed, measure
from nbinterp.engine.plan import Metric, check_scale
from nbinterp.engine.tokens import display_token
from nbinterp.errors import NbinterpError
from nbinterp.representations.probes import ProbeResult, stream_site

if TYPE_CHECKING:
    from nbinterp.engine.model import Model

Progress = Callable[[int, int], None]

# A position whose residual norm is over this many times its prompt's median is a
# massive-activation position (an attention sink), left unedited. Ordinary
# positions stay within ~2x the median; SmolLM2's position 0 is ~160x.
SINK_FACTOR = 10.0


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
    control_edited: torch.Tensor  # [controls, n] with the control directions projected out
    probability_token: str  # the target token whose probability is reported
    probability_before: list[float]  # mean P(target) per class, clean ([] when not asked for)
    probability_after: list[float]  # mean P(target) per class, probe direction projected out
    test_accuracy: float
    chance: float
    thresholds: UsageThresholds
    forwards: int
    # positions left unedited (massive activations), per prompt length: {T: [positions]}
    sink_positions: dict[int, list[int]] = field(default_factory=dict)
    probe_rms: float = 0.0  # root-mean-square projection on the probe direction over the edited positions
    control_rms: list[float] = field(default_factory=list)  # the same for each control (matched to probe_rms)

    @property
    def n_sinks(self) -> int:
        """How many (length, position) pairs were left unedited."""
        return sum(len(p) for p in self.sink_positions.values())

    @property
    def sink_text(self) -> str:
        """What was left unedited, in words (stated in the verdict)."""
        if not self.n_sinks:
            return "every position edited (no massive-activation position)"
        where = sorted({p for positions in self.sink_positions.values() for p in positions})
        return (f"massive-activation position{'s' if len(where) > 1 else ''} {', '.join(map(str, where))} "
                f"(residual norm > {SINK_FACTOR:g}x the prompt's median) left unedited for the probe and the controls")

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
            f"{len(self.clean)} held-out prompts), {ratio:.1f}x the largest of {len(self.control_edited)} control "
            f"directions ({control:.3f}; random, each removing as much of the stream as the probe direction: "
            f"rms projection {self.probe_rms:.3g}); used needs >= {t.used_factor:g}x and >= {t.min_change:g}; "
            f"{self.sink_text}"
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
            "sink_positions": sorted({p for positions in self.sink_positions.values() for p in positions}),
            "sink_text": self.sink_text, "probe_rms": self.probe_rms, "control_rms": list(self.control_rms),
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
    name = lambda i: display_token(model.tokenizer, i)  # noqa: E731 - " is", not the piece "Ġis"
    label = f"logit({name(target)})" + ("" if foil is None else f" - logit({name(foil)})")
    return target, foil, label + " at the last token"


def random_directions(width: int, n: int, seed: int) -> list[torch.Tensor]:
    """n unit directions, isotropic, seeded (the raw material of the controls)."""
    directions = []
    for k in range(n):
        v = torch.randn(width, generator=torch.Generator().manual_seed(10_000 * int(seed) + k), dtype=torch.float64)
        directions.append((v / v.norm()).float())
    return directions


def sink_positions(residual: torch.Tensor, factor: float = SINK_FACTOR) -> list[int]:
    """Positions of one prompt's residual stream [T, width] whose norm is over
    `factor` x the median norm: massive activations (attention sinks)."""
    norms = residual.double().norm(dim=-1)
    if len(norms) < 3:  # a median of one or two positions says nothing about what is ordinary
        return []
    return [int(p) for p in torch.nonzero(norms > factor * norms.median()).flatten()]


def rms_projection(rows: torch.Tensor, direction: torch.Tensor) -> float:
    """Root-mean-square of rows [N, width] . unit(direction): how much of the stream removing it takes."""
    u = direction.double() / direction.double().norm()
    return float((rows.double() @ u).pow(2).mean().sqrt())


def matched_directions(rows: torch.Tensor, direction: torch.Tensor, n: int, seed: int) -> list[torch.Tensor]:
    """n seeded unit directions orthogonal to `direction`, each with the same
    rms projection over `rows` [N, width] (the edited positions) as `direction`.

    Each is cos(a) r + sin(a) e: r isotropic, and e a random
    combination of the stream's high-energy eigendirections when the probe
    direction's rms is above r's (of the low-energy ones when below), all
    orthogonal to `direction`; `a` is found by bisection. When even the
    extreme end misses (a probe direction along the stream's very largest or
    smallest component) that end is used: `Usage.control_rms` reports it."""
    x = rows.double()
    u = direction.double() / direction.double().norm()
    target = float((x @ u).pow(2).mean().sqrt())
    away = torch.eye(x.shape[1], dtype=torch.float64) - torch.outer(u, u)
    moment = away @ (x.T @ x / len(x)) @ away
    values, vectors = torch.linalg.eigh(moment)  # ascending; u itself has eigenvalue 0
    usable = vectors[:, values > 1e-12 * float(values.max())]
    half = max(1, usable.shape[1] // 2)
    out = []
    for k in range(n):
        generator = torch.Generator().manual_seed(1_000_003 * int(seed) + k)
        r = away @ torch.randn(x.shape[1], generator=generator, dtype=torch.float64)
        r = r / r.norm()
        weights = torch.randn(half, generator=generator, dtype=torch.float64)
        below = target < float((x @ r).pow(2).mean().sqrt())
        # a random mix of the low- (high-) energy half first; the extreme eigendirection
        # when that mix does not reach the probe direction's rms
        ends = [usable[:, :half] @ weights, usable[:, 0]] if below else [usable[:, -half:] @ weights, usable[:, -1]]
        for e in ends:
            e = e / e.norm()  # orthogonal to u already (an eigendirection of the moment without u)
            r_e = r - (r @ e) * e  # r made orthogonal to e, not e to r: e keeps its (extreme) energy
            r_e = r_e / r_e.norm()
            mix = lambda a, e=e, r_e=r_e: math.cos(a) * r_e + math.sin(a) * e  # noqa: E731 - unit: orthonormal
            rms = lambda a, mix=mix: float((x @ mix(a)).pow(2).mean().sqrt())  # noqa: E731
            low, high = (math.pi / 2, 0.0) if below else (0.0, math.pi / 2)  # rms(low) <= target <= rms(high)
            if rms(low) <= target <= rms(high):
                break
        if not rms(low) <= target <= rms(high):
            out.append(mix(low if abs(rms(low) - target) < abs(rms(high) - target) else high).float())
            continue
        for _ in range(60):  # rms is continuous in the angle: bisect to the probe direction's value
            middle = (low + high) / 2
            if rms(middle) < target:
                low = middle
            else:
                high = middle
        out.append(mix((low + high) / 2).float())
    return out


def site_residuals(model: "Model", token_ids: Sequence[torch.Tensor], site: tuple[str, int]) -> list[torch.Tensor]:
    """Each prompt's stream at `site` [T, width] float32, from one batched forward."""
    saved, _ = model.capture_batch(list(token_ids), {site[0]: {site[1]}})
    stream = saved[site[0]][site[1]]
    return [stream[row, : len(ids)].float() for row, ids in enumerate(token_ids)]


def sinks_by_length(residuals: Sequence[torch.Tensor], factor: float = SINK_FACTOR) -> dict[int, list[int]]:
    """{T: positions}: the massive-activation positions of any prompt of length T
    (prompts of one length share forwards, so they share one set of edited positions)."""
    out: dict[int, set[int]] = {}
    for residual in residuals:
        out.setdefault(len(residual), set()).update(sink_positions(residual, factor))
    return {length: sorted(positions) for length, positions in out.items()}


def edited_metrics(
    model: "Model", token_ids: Sequence[torch.Tensor], site: tuple[str, int], directions: Sequence[torch.Tensor | None],
    scale: float, target: int, foil: int | None, progress: Callable[[], None] = lambda: None,
    skip: dict[int, list[int]] | None = None,
) -> torch.Tensor:
    """[len(directions), prompts] float64: the metric at each prompt's last token
    with each direction projected out at `site` (None: no edit, the clean rows),
    at every position except `skip[T]` (massive activations, left unedited).
    Prompts of one length share forwards (no padding, so the last token is one
    position), through the engine's batched runner: the clean metric comes from
    the same forwards as the edited ones."""
    out = torch.empty(len(directions), len(token_ids), dtype=torch.float64)
    edits = [d for d, direction in enumerate(directions) if direction is not None]
    for length, rows in _rows_by_length(token_ids).items():
        keep = torch.ones(length, 1)
        keep[(skip or {}).get(length, [])] = 0.0

        def fill(plan: RowPlan, slot: int, d: int) -> None:
            # the engine's per-row projection takes a direction per row and position
            # ([rows, T, width]); a zero direction leaves a position exactly as it was
            plan.project(slot, *site, directions[d], scale)
            table, scales = plan.plan.project[site]
            if table.shape[1] != length:
                table = table.expand(-1, length, -1).clone()
                plan.plan.project[site] = (table, scales)
            table[plan.rows(slot)] = table[plan.rows(slot), :1] * keep

        measured = measure(model, torch.stack([token_ids[r] for r in rows]), edits, fill,
                           Metric(target, foil, length - 1), progress=progress)
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
    and the same for `n_controls` control directions (random, each matched to the
    probe direction's rms projection; massive-activation positions are left
    unedited for both, see the module docstring). `probabilities=False` skips
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
    total = 1 + edit_forwards(model, token_ids, n_controls + 1) + (2 * len(token_ids) if probabilities else 0)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    forwards_before = model.forwards
    with model.lock:
        # one forward: the stream at the site, for the sinks and the controls' matching
        residuals = site_residuals(model, token_ids, site)
        step()
        skip = sinks_by_length(residuals)
        edited_rows = torch.cat([
            residual[[p for p in range(len(residual)) if p not in skip.get(len(residual), [])]] for residual in residuals
        ])
        controls = matched_directions(edited_rows, direction, n_controls, seed)
        directions = [None, direction, *controls]
        metrics = edited_metrics(model, token_ids, site, directions, scale, target, foil, step, skip=skip)
        # P(target) per prompt needs every logit of the last token: one run per prompt, the
        # projection applied as the delta it makes at the edited positions (the stream at the
        # site is the clean one: nothing upstream is edited)
        edit_key = ("resid_final", None) if site[0] == "resid_final" else site
        u = direction.float() / direction.float().norm()
        before, after = [], []
        for ids, residual in zip(token_ids if probabilities else (), residuals):
            before.append(float(model.run(ids).probabilities()[target]))
            step()
            keep = torch.ones(len(residual), 1)
            keep[skip.get(len(residual), [])] = 0.0
            delta = -(1.0 - scale) * (residual @ u)[:, None] * u * keep
            after.append(float(model.run(ids, add={edit_key: delta}).probabilities()[target]))
            step()
    test_classes = result.y[test]
    per_class = lambda values: [  # noqa: E731
        float(torch.tensor(values, dtype=torch.float64)[test_classes == c].mean()) for c in range(len(result.classes))
    ] if values else []
    return Usage(
        layer=layer, stream=result.stream_labels[layer], metric=metric_label, scale=scale,
        label=None if len(result.classes) == 2 else label, classes=result.classes, test_index=test,
        test_classes=test_classes, clean=metrics[0], edited=metrics[1], control_edited=metrics[2:],
        probability_token=display_token(model.tokenizer, target),
        probability_before=per_class(before), probability_after=per_class(after),
        test_accuracy=float(result.test_accuracy[layer]), chance=result.chance, thresholds=thresholds,
        forwards=model.forwards - forwards_before, sink_positions=skip,
        probe_rms=rms_projection(edited_rows, direction),
        control_rms=[rms_projection(edited_rows, c) for c in controls],
    )
