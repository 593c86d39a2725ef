"""WhyNotView: why the model did not say `expected`: the logit-lens trajectory of
expected vs actual with the critical layer, the ranked inhibitors (measured
ablation effects, gradient estimates marked as estimates), the missing
components with their measured restore shares, the restore of the top k, and
buttons that open the attention view on a head or the ablation panel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anywidget
import traitlets

from nbinterp.analysis.why_not import WhyNot, why_not as compute_why_not

from ._base import InterpWidget, in_range, new_figure, rpc
from ._buffers import encode
from ._contract import FLOAT, INT, STR, TENSOR, Choice, ListOf, Nullable, Obj, Opt
from nbinterp.vocabulary import public_call

STATIC = Path(__file__).resolve().parent.parent / "static"
OPEN_IN = ("attention", "ablation")

INHIBITOR = Obj({"name": STR, "layer": INT, "head": Nullable(INT), "effect": FLOAT, "estimate": Nullable(FLOAT)},
                name="InhibitorRow")
MISSING = Obj({"name": STR, "layer": INT, "head": Nullable(INT), "restore_share": FLOAT, "estimate": Nullable(FLOAT),
               "norm_here": FLOAT, "norm_reference": FLOAT, "attention_here": Nullable(FLOAT),
               "attention_reference": Nullable(FLOAT), "label": STR}, name="MissingRow")
RESTORE = Obj({"k": INT, "components": ListOf(STR), "single_shares": ListOf(FLOAT), "together_share": FLOAT,
               "labels": ListOf(STR)}, name="RestoreResult")


def inhibitor_rows(result: WhyNot) -> list[dict[str, Any]]:
    return [{"name": i.component.name, "layer": i.component.layer, "head": i.component.head,
             "effect": i.effect, "estimate": i.estimate} for i in result.inhibitors]


def missing_rows(result: WhyNot) -> list[dict[str, Any]]:
    return [{"name": m.component.name, "layer": m.component.layer, "head": m.component.head,
             "restore_share": m.restore_share, "estimate": m.estimate, "norm_here": m.norm_here,
             "norm_reference": m.norm_reference, "attention_here": m.attention_here,
             "attention_reference": m.attention_reference, "label": m.label} for m in result.missing]


class WhyNotView(InterpWidget):
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
    _opened = anywidget.WidgetTrait().tag(sync=True)

    def __init__(self, result: WhyNot, model: Any, prompt: Any, k: int = 5) -> None:
        self.result = result
        self._model, self._prompt = model, prompt
        self.opened: Any = None
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
        )
        if result.missing:
            self.restore(k)

    # the analysis' answers
    actual = property(lambda self: self.result.actual)
    trajectory = property(lambda self: self.result.trajectory)
    inhibitors = property(lambda self: self.result.inhibitors)
    missing = property(lambda self: self.result.missing)

    def restore(self, k: int = 5):
        """Patch the top-k missing components in from the references (exact); shown in the view."""
        with self._model.lock:
            outcome = self.result.restore(k)
        self.restored = {"k": len(outcome.components), "components": [c.name for c in outcome.components],
                         "single_shares": outcome.single_shares, "together_share": outcome.together_share,
                         "labels": outcome.labels}
        return outcome

    @rpc("restore", params={"k": INT}, result={"together_share": FLOAT})
    def _rpc_restore(self, params: dict[str, Any]) -> tuple[Any, list[bytes]]:
        k = in_range(params["k"], "k", 1, len(self.result.missing) + 1)
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
                widget = AblationPanel(self._model, self._prompt, target=self.result.expected,
                                       foil=self.result.actual, ablations={name: 0.0})
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
        return (f"WhyNotView({self.model_name!r}: {self.result.actual!r} instead of {self.result.expected!r}, "
                f"logit diff {self.result.metric:.3f})")


@public_call(positional=("target", "references"), renamed={"expected": "target", "actual": "foil"})
def why_not(model: Any, prompt: Any, *, target: Any, foil: Any = None, references: Any = (),
            position: int = -1, span: Any = None, k: int = 5) -> WhyNotView:
    """Why `prompt` does not give `target`: `wn = ni.why_not(model, prompt, target="Quorn",
    references=[ok_prompt])`, then `wn.actual`, `wn.trajectory`, `wn.inhibitors`, `wn.missing`,
    `wn.restore(k=5)`. `foil` is the token the model gives instead (default: its top token).
    References are prompts of the same token length where the model does say `target`
    (`nbinterp.analysis.why_not.contrast` builds one)."""
    if isinstance(references, str):
        references = [references]
    with model.lock:
        result = compute_why_not(model, prompt, target, references=list(references), actual=foil,
                                 position=position, span=span)
    return WhyNotView(result, model, prompt, k=k)
