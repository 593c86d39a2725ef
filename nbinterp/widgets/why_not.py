"""WhyNotView: why the model did not say `expected`: the logit-lens trajectory of
expected vs actual with the critical layer, the ranked inhibitors (measured
ablation effects, gradient estimates marked as estimates), the missing
components with their measured restore shares, the restore of the top k, and
buttons that open the attention view on a head or the ablation panel.

It answers at once: the first answer (trajectory, every component ranked by
its gradient estimate, labelled "estimate") comes from one forward + backward
and the references' forwards; the exact ablation effects and restore shares
then stream in, largest estimate first, one batched forward per step, in a
background job (progress, cancel, resume; `wait()` blocks until done)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anywidget
import traitlets

from nbinterp.analysis.why_not import WhyNot, exact_steps, first_answer
from nbinterp.errors import NbinterpError

from ._background import BackgroundJob
from ._base import CancelResume, InterpWidget, in_range, new_figure, rpc
from ._buffers import encode
from ._contract import BOOL, FLOAT, INT, STR, TENSOR, Choice, ListOf, Nullable, Obj, Opt
from nbinterp.vocabulary import public_call

STATIC = Path(__file__).resolve().parent.parent / "static"
OPEN_IN = ("attention", "ablation")
STATES = ("running", "done", "cancelled", "error")
PUBLISH_EVERY_S = 0.25

# `measured` false: the number is still the gradient estimate (0 for an MLP), shown as "estimate"
INHIBITOR = Obj({"name": STR, "layer": INT, "head": Nullable(INT), "effect": FLOAT, "estimate": Nullable(FLOAT),
                 "measured": BOOL}, name="InhibitorRow")
MISSING = Obj({"name": STR, "layer": INT, "head": Nullable(INT), "restore_share": FLOAT, "estimate": Nullable(FLOAT),
               "norm_here": FLOAT, "norm_reference": FLOAT, "attention_here": Nullable(FLOAT),
               "attention_reference": Nullable(FLOAT), "label": STR, "measured": BOOL}, name="MissingRow")
PROGRESS = Obj({"done": INT, "total": INT, "state": Choice(*STATES), "elapsed_s": FLOAT}, name="WhyNotProgress")
RESTORE = Obj({"k": INT, "components": ListOf(STR), "single_shares": ListOf(FLOAT), "together_share": FLOAT,
               "labels": ListOf(STR)}, name="RestoreResult")


def inhibitor_rows(result: WhyNot) -> list[dict[str, Any]]:
    """Measured rows first (strongest push against expected first), then the estimates."""
    rows = sorted(result.inhibitors, key=lambda i: (not i.measured, -i.effect))
    return [{"name": i.component.name, "layer": i.component.layer, "head": i.component.head,
             "effect": i.effect, "estimate": i.estimate, "measured": i.measured} for i in rows]


def missing_rows(result: WhyNot) -> list[dict[str, Any]]:
    """Measured rows first (largest restore share first), then the estimates."""
    rows = sorted(result.missing, key=lambda m: (not m.measured, -m.restore_share))
    return [{"name": m.component.name, "layer": m.component.layer, "head": m.component.head,
             "restore_share": m.restore_share, "estimate": m.estimate, "norm_here": m.norm_here,
             "norm_reference": m.norm_reference, "attention_here": m.attention_here,
             "attention_reference": m.attention_reference, "label": m.label, "measured": m.measured}
            for m in rows]


class WhyNotView(CancelResume, InterpWidget):
    """See `nbinterp.why_not`. The analysis is in `.result`; `.actual`, `.trajectory`,
    `.inhibitors`, `.missing` and `.restore(k)` answer as it does."""

    _esm = STATIC / "why_not.js"

    model_name = traitlets.Unicode("").tag(sync=True)
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    expected = traitlets.Unicode("").tag(sync=True)
    actual_token = traitlets.Unicode("").tag(sync=True)
    metric = traitlets.Float(0.0).tag(sync=True)
    reference_metrics = traitlets.List(traitlets.Float()).tag(sync=True)
    row_labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    critical_layer = traitlets.Int(None, allow_none=True).tag(sync=True)
    # float32 [streams] each: ranks and probabilities of expected / actual at the answer position
    _trajectory = traitlets.Dict().tag(sync=True, schema=Obj({
        "expected_rank": TENSOR, "expected_probability": TENSOR, "actual_rank": TENSOR, "actual_probability": TENSOR}))
    inhibitor_list = traitlets.List().tag(sync=True, schema=ListOf(INHIBITOR))
    missing_list = traitlets.List().tag(sync=True, schema=ListOf(MISSING))
    restored = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True, schema=Nullable(RESTORE))
    progress = traitlets.Dict().tag(sync=True, schema=PROGRESS)
    _opened = anywidget.WidgetTrait().tag(sync=True)

    def __init__(self, result: WhyNot, model: Any, prompt: Any, k: int = 5, background: bool = True) -> None:
        self._result = result
        self._model, self._prompt, self._k = model, prompt, k
        self.opened: Any = None
        self._steps = exact_steps(result)
        self._total = len(result.inhibitors) + len(result.missing)
        self._done = sum(i.measured for i in result.inhibitors) + sum(m.measured for m in result.missing)
        self._job = BackgroundJob("nbinterp-why-not", model.lock, lambda state, _: self._publish(state),
                                  self._show_exception, PUBLISH_EVERY_S)
        t = result.trajectory
        super().__init__(
            model_name=str(getattr(model, "name", "")), tokens=result.tokens, expected=result.expected,
            actual_token=result.actual, metric=result.metric, reference_metrics=result.reference_metrics,
            row_labels=t.row_labels, critical_layer=t.critical_layer,
            _trajectory={"expected_rank": encode(t.expected_rank.float(), "float32"),
                         "expected_probability": encode(t.expected_probability, "float32"),
                         "actual_rank": encode(t.actual_rank.float(), "float32"),
                         "actual_probability": encode(t.actual_probability, "float32")},
            inhibitor_list=inhibitor_rows(result), missing_list=missing_rows(result),
            progress={"done": self._done, "total": self._total, "state": "running", "elapsed_s": 0.0},
        )
        self._start(background)

    # ------------------------------------------------------------ streaming
    @property
    def result(self) -> WhyNot:
        """The analysis, every number measured: waits for the exact measurements."""
        self.wait()
        return self._result

    @property
    def first_answer(self) -> WhyNot:
        """The analysis as it stands now (no wait): unmeasured rows hold estimates (`measured` False)."""
        return self._result

    @property
    def finished(self) -> bool:
        return self._done == self._total

    @property
    def running(self) -> bool:
        return self._job.running

    def wait(self, timeout: float | None = None) -> "WhyNotView":
        """Block until the exact measurements stop (finished or cancelled); returns the view."""
        self._job.wait(timeout)
        return self

    def cancel(self) -> None:
        """Stop after the batch in flight; `resume()` continues."""
        self._stop_requested = True

    def resume(self, background: bool = True) -> None:
        if self.finished or self._job.running:
            return
        self._start(background)

    def _start(self, background: bool) -> None:
        self._stop_requested = False
        self._job.start(self._next_steps, lambda: self.finished, background, self.progress.get("elapsed_s", 0.0))

    def _next_steps(self):
        while not self._stop_requested:
            step = next(self._steps, None)
            if step is None:
                return
            self._done = step["done"]
            yield step

    def _publish(self, state: str) -> None:
        self.inhibitor_list = inhibitor_rows(self._result)
        self.missing_list = missing_rows(self._result)
        self.progress = {"done": self._done, "total": self._total, "state": state,
                         "elapsed_s": round(self._job.elapsed(), 3)}
        if state == "done" and self._result.missing and self.restored is None:
            self.restore(self._k)

    # the analysis' answers
    actual = property(lambda self: self.result.actual)
    trajectory = property(lambda self: self.result.trajectory)
    inhibitors = property(lambda self: self.result.inhibitors)
    missing = property(lambda self: self.result.missing)

    def restore(self, k: int = 5):
        """Patch the top-k missing components in from the references (exact); shown in the view.
        Waits for the restore shares (the top k are chosen by them)."""
        result = self.result
        with self._model.lock:
            outcome = result.restore(k)
        self.restored = {"k": len(outcome.components), "components": [c.name for c in outcome.components],
                         "single_shares": outcome.single_shares, "together_share": outcome.together_share,
                         "labels": outcome.labels}
        return outcome

    @rpc("restore", params={"k": INT}, result={"together_share": FLOAT})
    def _rpc_restore(self, params: dict[str, Any]) -> tuple[Any, list[bytes]]:
        if not self.finished:
            raise NbinterpError("the restore shares are still being measured (see the progress line): restore when done")
        k = in_range(params["k"], "k", 1, len(self._result.missing) + 1)
        return {"together_share": self.restore(k).together_share}, []

    @rpc("open", params={"layer": INT, "head": Opt(Nullable(INT)), "open_in": Choice(*OPEN_IN)}, result={"opened": STR})
    def _rpc_open(self, params: dict[str, Any]) -> tuple[Any, list[bytes]]:
        layer = self._model.check_layer(params["layer"])
        head = params.get("head")
        head = None if head is None else self._model.check_head(head)
        self.open_component(layer, head, params["open_in"])
        return {"opened": type(self.opened).__name__}, []

    def open_component(self, layer: int, head: int | None, where: str = "attention") -> Any:
        """The attention view on a head, or the ablation panel with the component ablated."""
        from .ablation import AblationPanel
        from .attention import attention

        with self._model.lock:
            if where == "ablation" or head is None:
                name = f"L{layer}.mlp" if head is None else f"L{layer}.H{head}"
                widget = AblationPanel(self._model, self._prompt, target=self._result.expected,
                                       foil=self._result.actual, ablations={name: 0.0})
            else:
                widget = attention(self._model, self._prompt, layer=layer, head=head)
        self.opened = widget
        self._opened = widget
        return widget

    def to_figure(self, *, dpi: int = 100) -> Any:
        t = self.result.trajectory
        figure = new_figure(figsize=(9, 3.2), dpi=dpi)
        ax, bx = figure.subplots(1, 2)
        x = range(len(t.row_labels))
        ax.plot(x, t.expected_probability.numpy(), "o-", label=f"p({self.result.expected!r})")
        ax.plot(x, t.actual_probability.numpy(), "s-", label=f"p({self.result.actual!r})")
        if t.critical_layer is not None:
            ax.axvline(t.critical_layer + 1, color="#c33", ls="--", lw=1, label="critical layer")
        ax.set_xticks(list(x), t.row_labels, fontsize=7)
        ax.legend(fontsize=7)
        ax.set_title("logit lens at the answer", fontsize=9)
        rows = self.result.missing[:8] or self.result.inhibitors[:8]
        if self.result.missing:
            bx.barh([m.component.name for m in rows][::-1], [m.restore_share for m in rows][::-1])
            bx.set_xlabel("share of the gap restored (measured)", fontsize=8)
        else:
            bx.barh([i.component.name for i in rows][::-1], [i.effect for i in rows][::-1])
            bx.set_xlabel("ablation effect (measured)", fontsize=8)
        figure.tight_layout()
        return figure

    def __repr__(self) -> str:
        r = self._result
        return (f"WhyNotView({self.model_name!r}: {r.actual!r} instead of {r.expected!r}, "
                f"logit diff {r.metric:.3f}; {self._done}/{self._total} measured)")


@public_call(positional=("target", "references"), renamed={"expected": "target", "actual": "foil"})
def why_not(model: Any, prompt: Any, *, target: Any, foil: Any = None, references: Any = (),
            position: int = -1, span: Any = None, k: int = 5, background: bool = True) -> WhyNotView:
    """Why `prompt` does not give `target`: `wn = ni.why_not(model, prompt, target="Quorn",
    references=[ok_prompt])`, then `wn.actual`, `wn.trajectory`, `wn.inhibitors`, `wn.missing`,
    `wn.restore(k=5)`. `foil` is the token the model gives instead (default: its top token).
    References are prompts of the same token length where the model does say `target`
    (`nbinterp.analysis.why_not.contrast` builds one).

    Returns at once with the first answer (every component ranked by its gradient
    estimate, labelled "estimate"); the exact effects and restore shares stream in
    (`background=False`: measured before returning). `.result` and `wn.wait()`
    wait for them; `wn.first_answer` does not."""
    if isinstance(references, str):
        references = [references]
    with model.lock:
        result = first_answer(model, prompt, target, references=list(references), actual=foil,
                              position=position, span=span)
    return WhyNotView(result, model, prompt, k=k, background=background)
