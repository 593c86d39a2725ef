"""LogitLensView: layers x positions, coloured by the target's probability
(or the top token's, without a target), each cell labelled with the top
token, the prompt's tokens along the columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import traitlets

from nbinterp.analysis.logit_lens import LogitLens, logit_lens as compute_logit_lens
from ._base import InterpWidget, new_figure
from ._buffers import encode
from ._contract import TENSOR, Obj, Opt
from nbinterp.vocabulary import public_call

STATIC = Path(__file__).resolve().parent.parent / "static"


class LogitLensView(InterpWidget):
    """A logit lens of one prompt; see `nbinterp.logit_lens`."""

    _esm = STATIC / "logit_lens.js"

    model_name = traitlets.Unicode("").tag(sync=True)
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    row_labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    target = traitlets.Unicode(None, allow_none=True).tag(sync=True)
    top_tokens = traitlets.List(traitlets.List(traitlets.Unicode())).tag(sync=True)
    # float32 [rows, T] each
    _lens = traitlets.Dict().tag(sync=True, schema=Obj({"top_probabilities": TENSOR, "target_probabilities": Opt(TENSOR)}))

    def __init__(self, lens: LogitLens, model_name: str = "") -> None:
        self.lens = lens
        tensors = {"top_probabilities": encode(lens.top_probabilities, "float32")}
        if lens.target_probabilities is not None:
            tensors["target_probabilities"] = encode(lens.target_probabilities, "float32")
        super().__init__(model_name=model_name, tokens=lens.tokens, row_labels=lens.row_labels,
                         target=lens.target, top_tokens=lens.top_tokens, _lens=tensors)

    @property
    def result(self) -> LogitLens:
        """The numbers (every view's are its `.result`; `.lens` is the same object)."""
        return self.lens

    def to_figure(self, *, dpi: int = 100) -> Any:
        """The same heatmap, top tokens written in the cells where they fit."""
        lens = self.lens
        values = (lens.target_probabilities if lens.target_probabilities is not None else lens.top_probabilities).numpy()
        rows, cols = values.shape
        figure = new_figure(figsize=(max(6.0, 0.75 * cols + 1.5), 0.45 * rows + 1.8), dpi=dpi)
        ax = figure.add_subplot()
        image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
        label = f"p({lens.target!r})" if lens.target is not None else "p(top token)"
        figure.colorbar(image, ax=ax, label=label)
        if cols <= 40:
            for r in range(rows):
                for c in range(cols):
                    ax.text(c, r, lens.top_tokens[r][c].strip()[:8], ha="center", va="center", fontsize=6,
                            color="#111" if values[r, c] > 0.6 else "#fff")
            ax.set_xticks(range(cols), [repr(t)[1:-1] for t in lens.tokens], rotation=90, fontsize=7)
        ax.set_yticks(range(rows), lens.row_labels, fontsize=8)
        ax.set_ylabel("residual stream after")
        ax.set_title(f"{self.model_name} \u00b7 logit lens \u00b7 {label}", fontsize=9)
        figure.tight_layout()
        return figure

    def __repr__(self) -> str:
        return f"LogitLensView({self.model_name!r}, {len(self.tokens)} tokens, target={self.target!r})"


@public_call(positional=("target",))
def logit_lens(model: Any, prompt: Any, *, target: Any = None) -> LogitLensView:
    """The top token and the target's probability at every layer and position:
    `lens = ni.logit_lens(model, "The capital of Veldora is", target=" Quorn")`;
    `lens.lens` holds the numbers."""
    with model.lock:
        lens = compute_logit_lens(model, prompt, target)
    return LogitLensView(lens, model_name=str(getattr(model, "name", "")))
