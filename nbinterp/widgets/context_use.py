"""ContextUseView: does the answer come from the context? The prompt's tokens
coloured by attention from the answer position (one head or the mean of all),
the context span marked, the per-head Lookback ratios, the knockout of all
attention into the context and the verdict with its numbers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import traitlets

from nbinterp.analysis.context_use import PARTLY_RATIO, ContextUse, compute_context_use

from ._base import FrontendError, InterpWidget, new_figure
from ._buffers import encode
from ._contract import FLOAT, INT, STR, TENSOR, Choice, Nullable, Obj
from nbinterp.vocabulary import public_call

STATIC = Path(__file__).resolve().parent.parent / "static"
KNOCKOUT = Obj({"answer_before": STR, "answer_after": STR, "probability_before": FLOAT, "probability_after": FLOAT,
                "metric_before": FLOAT, "metric_after": FLOAT, "rival": STR, "n_edges": INT}, name="KnockoutResult")


class ContextUseView(InterpWidget):
    """See `nbinterp.context_use`. `.ratio`, `.knockout`, `.verdict`, `.score` answer as the analysis."""

    _esm = STATIC / "context_use.js"

    model_name = traitlets.Unicode("").tag(sync=True)
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    context_start = traitlets.Int(0).tag(sync=True)
    context_end = traitlets.Int(0).tag(sync=True)
    position = traitlets.Int(0).tag(sync=True)
    _attention = traitlets.Dict().tag(sync=True, schema=TENSOR)  # float32 [layers, heads, T]
    _ratio = traitlets.Dict().tag(sync=True, schema=TENSOR)  # float32 [layers, heads]
    knockout_result = traitlets.Dict().tag(sync=True, schema=KNOCKOUT)
    verdict_text = traitlets.Unicode("").tag(sync=True, schema=Choice("used", "partly", "ignored"))
    reason = traitlets.Unicode("").tag(sync=True)
    partly_ratio = traitlets.Float(PARTLY_RATIO).tag(sync=True)
    detector_score = traitlets.Float(None, allow_none=True).tag(sync=True, schema=Nullable(FLOAT))
    # which attention colours the tokens: "mean" or a head "L1.H3"
    selected = traitlets.Unicode("mean").tag(sync=True)

    def __init__(self, result: ContextUse, model_name: str = "") -> None:
        self.result = result
        k = result.knockout
        super().__init__(
            model_name=model_name, tokens=result.tokens, context_start=result.context[0],
            context_end=result.context[1], position=result.position,
            _attention=encode(result.attention, "float32"), _ratio=encode(result.ratio, "float32"),
            knockout_result={"answer_before": k.answer_before, "answer_after": k.answer_after,
                             "probability_before": k.probability_before, "probability_after": k.probability_after,
                             "metric_before": k.metric_before, "metric_after": k.metric_after, "rival": k.rival,
                             "n_edges": k.n_edges},
            verdict_text=result.verdict, reason=result.reason, detector_score=result.score,
        )

    ratio = property(lambda self: self.result.ratio)
    knockout = property(lambda self: self.result.knockout)
    verdict = property(lambda self: self.result.verdict)
    score = property(lambda self: self.result.score)

    def _frontend_fields(self) -> dict[str, Any]:
        fields = super()._frontend_fields()
        layers, heads = self.result.ratio.shape

        def check_selected(value: Any) -> str:
            match = re.fullmatch(r"L(\d+)\.H(\d+)", value)  # a string: its declaration checked that
            if value == "mean" or (match and int(match[1]) < layers and int(match[2]) < heads):
                return value
            raise FrontendError(f"selected must be 'mean' or a head L0.H0 .. L{layers - 1}.H{heads - 1}, got {value!r}")

        fields.update(selected=check_selected)
        return fields

    def to_figure(self, *, dpi: int = 100) -> Any:
        figure = new_figure(figsize=(5, 3), dpi=dpi)
        ax = figure.add_subplot()
        image = ax.imshow(self.result.ratio.numpy(), cmap="viridis", vmin=0, vmax=1)
        figure.colorbar(image, ax=ax, label="Lookback ratio")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"context {self.result.verdict}", fontsize=9)
        figure.tight_layout()
        return figure

    def __repr__(self) -> str:
        return f"ContextUseView({self.model_name!r}: context {self.result.verdict}; {self.result.reason})"


@public_call(positional=("context",))
def context_use(model: Any, prompt: Any, *, context: Any, detector: Any = None, position: int = -1) -> ContextUseView:
    """Does the answer use `context` (its text as in the prompt, or (start, end) token positions)?
    `cu = ni.context_use(model, prompt, context="the capital of Veldora is Quorn .")`, then
    `cu.ratio`, `cu.knockout`, `cu.verdict` (and `cu.score` with `detector=`, a fitted
    `nbinterp.analysis.context_use.ContextDetector`)."""
    with model.lock:
        result = compute_context_use(model, prompt, context, detector=detector, position=position)
    return ContextUseView(result, model_name=str(getattr(model, "name", "")))
