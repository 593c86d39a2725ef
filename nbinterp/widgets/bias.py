"""BiasView: a difference between two groups of prompts with its interval,
every head's and MLP's measured share of it, and, after `reduce`, the
held-out gap before and after removing the chosen components with the side
effects on capability prompts. A thin view over `nbinterp.analysis.bias`.

The components' shares are measured in a background thread, chunk by chunk,
and stream into the view as they land (progress, cancel and resume: nothing
measured is lost on a cancel); `b.components` waits for them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import traitlets

from nbinterp.analysis.bias import EXACT_BUDGET, Bias, EstimateError, Reduction, measure_bias

from ._background import BackgroundJob
from ._base import CancelResume, InterpWidget, new_figure
from ._contract import BOOL, FLOAT, INT, STR, Choice, ListOf, Nullable, Obj, Opt

STATIC = Path(__file__).resolve().parent.parent / "static"
SHOWN_COMPONENTS = 24  # the largest shares by size; the rest are in `.components`
PUBLISH_EVERY_S = 0.1  # streaming granularity: at most ~10 redraws a second
STATES = ("running", "done", "cancelled", "error")

# measured: False for a share estimated by attribution patching (outside the exact budget)
COMPONENT_SHARE = Obj({"name": STR, "share": FLOAT, "gap_ablated": FLOAT, "measured": BOOL}, name="ComponentShare")
ESTIMATE_ERROR = Obj({"n": INT, "max_abs_error": FLOAT, "correlation": Nullable(FLOAT)}, name="ShareEstimateError")
SIDE_EFFECT = Obj({"task": STR, "n": INT, "accuracy_before": FLOAT, "accuracy_after": FLOAT,
                   "logit_diff_before": Nullable(FLOAT), "logit_diff_after": Nullable(FLOAT)}, name="SideEffect")
REDUCTION = Obj({"method": STR, "removed": ListOf(STR), "n_held_out": INT, "gap_before": FLOAT,
                 "ci_before": ListOf(FLOAT), "gap_after": FLOAT, "ci_after": ListOf(FLOAT),
                 "side_effects": ListOf(SIDE_EFFECT)}, name="BiasReduction")


class BiasView(CancelResume, InterpWidget):
    """See `nbinterp.bias`. `.gap`, `.ci`, `.p_value`, `.components` and `.reduce(k)` answer as the analysis."""

    _esm = STATIC / "bias.js"

    model_name = traitlets.Unicode("").tag(sync=True)
    target = traitlets.Unicode("").tag(sync=True)
    foil = traitlets.Unicode("").tag(sync=True)
    group_names = traitlets.List(traitlets.Unicode()).tag(sync=True)
    group_sizes = traitlets.List(traitlets.Int()).tag(sync=True)
    group_means = traitlets.List(traitlets.Float()).tag(sync=True)
    paired = traitlets.Bool(False).tag(sync=True)
    gap = traitlets.Float(0.0).tag(sync=True)
    ci = traitlets.List(traitlets.Float()).tag(sync=True)
    p_value = traitlets.Float(1.0).tag(sync=True)
    n_components = traitlets.Int(0).tag(sync=True)  # how many are measured so far (0: none yet)
    # the components' measurement: done / total components to measure exactly, its state, seconds
    # spent; estimated: how many shares are estimates only (outside the exact budget), and
    # estimating: the estimates that choose which to measure are being made
    progress = traitlets.Dict().tag(sync=True, schema=Obj(
        {"done": Opt(INT), "total": Opt(INT), "state": Opt(Choice(*STATES)), "elapsed_s": Opt(FLOAT),
         "estimated": Opt(INT), "estimating": Opt(BOOL)}))
    components_shown = traitlets.List().tag(sync=True, schema=ListOf(COMPONENT_SHARE))
    # the estimated shares against the measured ones (None: every share measured, no estimates)
    estimates_vs_measured = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True, schema=Nullable(ESTIMATE_ERROR))
    reduction = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True, schema=Nullable(REDUCTION))

    def __init__(self, result: Bias, *, measure_components: bool = True, background: bool = True) -> None:
        self.result = result
        self.last_reduction: Reduction | None = None
        self._stop = False  # cancel(): the measurement stops after the chunk in flight
        rows = result.data.prompts.rows
        names = result.group_names
        super().__init__(
            model_name=str(getattr(result.model, "name", "")), target=_shared(r.target for r in rows),
            foil=_shared("" if r.foil is None else r.foil for r in rows), group_names=list(names),
            group_sizes=[len(result.layout.a_rows), len(result.layout.b_rows)],
            group_means=list(result.group_means()), paired=result.layout.pairs is not None, gap=result.gap,
            ci=list(result.ci), p_value=result.p_value,
        )
        self._job = BackgroundJob("nbinterp-bias", result.model.lock, lambda state, _: self._publish(state),
                                  self._show_exception, PUBLISH_EVERY_S, owner=self)
        if measure_components:
            self._publish("running")
            self._start(background)
        else:  # b.components or resume() measures them
            self._publish("cancelled")

    @property
    def components(self) -> list:
        """Every head and MLP by its share of the gap, largest first (measured,
        or estimated outside the exact budget: see each one's `measured`).
        Waits for the background measurement; after a cancel (or with
        components=False) it measures the rest here first."""
        self.wait()
        if not self.finished:
            self.resume(background=False)
        return self.result.components

    def estimate_error(self) -> EstimateError | None:
        """The estimated shares' error against the measured ones (`Bias.estimate_error`,
        None when every share is measured); waits for the measurement."""
        self.components  # noqa: B018 - the comparison needs the measurement complete
        return self.result.estimate_error()

    @property
    def finished(self) -> bool:
        """Whether every component's share is measured (or, outside the exact budget, estimated)."""
        return self.result.finished

    @property
    def running(self) -> bool:
        """Whether components are being measured in the background now."""
        return self._job.running

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until the background measurement stops; True if every component is measured."""
        self._job.wait(timeout)
        return self.finished

    def cancel(self) -> None:
        """Stops after the chunk in flight; every component measured so far is
        kept (and shown), and `resume()` continues from there."""
        self._stop = True

    def resume(self, background: bool = True) -> None:
        """Measures the components not measured yet (in the background by default)."""
        if self.finished or self._job.running:
            return
        self._stop = False
        self._start(background)

    def _start(self, background: bool) -> None:
        self._job.start(self._chunks, lambda: self.finished, background, self.progress.get("elapsed_s", 0.0))

    def _chunks(self) -> Any:
        for chunk in self.result.measure_components():
            yield chunk
            if self._stop:
                return

    def _publish(self, state: str) -> None:
        result = self.result
        known = result.measured_components()
        n_measured = sum(c.measured for c in known)
        largest = sorted(known, key=lambda c: -abs(c.share))[:SHOWN_COMPONENTS]
        error = result.estimate_error()
        total = result.n_to_measure
        with self.hold_sync():  # one message: the bars and the count never disagree
            self.components_shown = [{"name": c.name, "share": c.share, "gap_ablated": c.gap_ablated,
                                      "measured": c.measured} for c in sorted(largest, key=lambda c: -c.share)]
            self.n_components = n_measured
            self.estimates_vs_measured = None if error is None else vars(error).copy()
            self.progress = {"done": n_measured, "total": len(result.component_keys) if total is None else total,
                             "state": state, "estimated": len(known) - n_measured,
                             "estimating": total is None and state == "running",
                             "elapsed_s": round(self._job.elapsed(), 3) if known or state == "running" else 0.0}

    def reduce(self, k: int = 3, *, method: str = "ablate", direction: Any = None, site: Any = None,
               fit: float = 0.5, seed: int | None = None, capability: Any = "bundled") -> Reduction:
        """`nbinterp.analysis.bias.Bias.reduce` (held-out gap before / after, side
        effects), and the view's before/after bars show it. Waits for (or
        completes) the components' measurement first when ablating."""
        if method == "ablate":
            self.components  # noqa: B018 - the shares on the fit rows need the measurement complete
        with self.result.model.lock:  # beside other views' background work, one forward at a time
            reduction = self.result.reduce(k, method=method, direction=direction, site=site, fit=fit, seed=seed,
                                           capability=capability)
        self.last_reduction = reduction
        self.reduction = {
            "method": reduction.method, "removed": list(reduction.removed), "n_held_out": len(reduction.held_out_rows),
            "gap_before": reduction.gap_before, "ci_before": list(reduction.ci_before),
            "gap_after": reduction.gap_after, "ci_after": list(reduction.ci_after),
            "side_effects": [vars(s).copy() for s in reduction.side_effects],
        }
        return reduction

    def to_figure(self, *, dpi: int = 100) -> Any:
        reduced = self.last_reduction is not None
        figure = new_figure(figsize=(9 if reduced else 6.5, 3), dpi=dpi)
        axes = figure.subplots(1, 3 if reduced else 2, gridspec_kw={"width_ratios": [1, 2.2, 1.6][: 3 if reduced else 2]})
        ax = axes[0]
        low, high = self.result.ci
        ax.bar([0], [self.result.gap], color="#4c72b0", yerr=[[self.result.gap - low], [high - self.result.gap]],
               capsize=6)
        ax.axhline(0, color="#444", lw=0.8)
        ax.set_xticks([0], [f"{self.group_names[0]} - {self.group_names[1]}"])
        ax.set_ylabel("gap (logit diff)")
        ax.set_title(f"gap {self.result.gap:.2f}, p = {self.result.p_value:.3g}", fontsize=9)
        ax = axes[1]
        shown = self.components_shown[:12]
        if shown:
            bars = ax.barh(range(len(shown)), [c["share"] for c in shown], color="#dd8452")
            for patch, c in zip(bars, shown):
                if not c["measured"]:
                    patch.set_hatch("//")
                    patch.set_alpha(0.5)
            ax.set_yticks(range(len(shown)), [c["name"] for c in shown], fontsize=7)
            ax.invert_yaxis()
            ax.axvline(0, color="#444", lw=0.8)
            estimated = any(not c["measured"] for c in shown)
            ax.set_xlabel("share of the gap (measured: zero-ablated" + ("; hatched: estimated" if estimated else "") + ")")
        else:
            ax.text(0.5, 0.5, "components not measured", ha="center", va="center", transform=ax.transAxes)
        total, estimated = self.progress.get("total", 0), self.progress.get("estimated", 0)
        measured = "" if self.n_components == total else f" (measured so far, of {total})"
        rest = f" + {estimated} estimated" if estimated else ""
        ax.set_title(f"largest shares of {self.n_components} components{measured}{rest}", fontsize=9)
        if reduced:
            r = self.last_reduction
            ax = axes[2]
            values = [r.gap_before, r.gap_after]
            errors = [[v - ci[0] for v, ci in zip(values, (r.ci_before, r.ci_after))],
                      [ci[1] - v for v, ci in zip(values, (r.ci_before, r.ci_after))]]
            ax.bar([0, 1], values, yerr=errors, capsize=6, color=["#4c72b0", "#55a868"])
            ax.axhline(0, color="#444", lw=0.8)
            ax.set_xticks([0, 1], ["before", "after"])
            ax.set_title(f"held-out gap, {r.method} {len(r.removed)}", fontsize=9)
        figure.tight_layout()
        return figure

    def __repr__(self) -> str:
        a, b = self.group_names
        low, high = self.ci
        p = self.progress
        estimated = f" + {p['estimated']} estimated" if p.get("estimated") else ""
        return (f"BiasView({self.model_name!r}: {a} - {b} gap {self.gap:.3f} (95% CI {low:.3f}..{high:.3f}), "
                f"p = {self.p_value:.4f}, {sum(self.group_sizes)} rows, {p.get('done')}/{p.get('total')} components "
                f"measured{estimated}, {p.get('state')})")


def bias(model: Any, data: Any = None, *, prompts: Any = None, target: Any = None, foil: Any = None,
         groups: Sequence[str] | None = None, components: bool | Sequence[Any] = True, seed: int = 0,
         n_resamples: int = 2000, exact_budget: float | None = EXACT_BUDGET, background: bool = True) -> BiasView:
    """A bias over a data set: `b = ni.bias(model, prompts={"A": [...], "B": [...]}, target=" doctor",
    foil=" nurse")` (or a `nbinterp.analysis.datasets.PromptSet` / DataFrame as `data`).
    `b.gap`, `b.ci` (95% bootstrap), `b.p_value` (permutation test), `b.components` (every head
    and MLP by its exact share of the gap; `components=False` measures them on first use, a list
    like ["L3.H1", "L2.mlp"] only those), `b.reduce(k=3)` (held-out gap before / after and side effects).
    `exact_budget`: forwards of the data set the exact shares may cost (each component costs
    (layers - its layer) / layers of one); past it, every share is estimated by attribution
    patching (one forward + backward per row), the largest |estimates| are measured within the
    budget and the rest are marked estimated (`measured=False`); `b.estimate_error()` reports the
    estimates' error on the measured ones. None: every component measured.
    The shares are measured in the background and stream into the view with progress;
    `b.cancel()` / `b.resume()` (or the view's buttons) stop and continue without losing
    any; `b.components` waits. background=False measures them before returning."""
    only = None if isinstance(components, bool) else components
    with model.lock:
        result = measure_bias(model, data, prompts=prompts, target=target, foil=foil, groups=groups, seed=seed,
                              n_resamples=n_resamples, only=only, exact_budget=exact_budget)
    return BiasView(result, measure_components=components is not False, background=background)


def _shared(tokens: Any) -> str:
    """The rows' common target (or foil), or "(per row)" when they differ."""
    distinct = {str(token) for token in tokens}
    return distinct.pop() if len(distinct) == 1 else "(per row)"
