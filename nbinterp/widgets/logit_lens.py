"""LogitLensView: layers x positions, coloured by the target's probability
(or the top token's, without a target), each cell labelled with the top
token, the prompt's tokens along the columns.

The first paint comes from one forward (the output row at every position,
every row at the last position: `nbinterp.analysis.logit_lens.first_paint`);
the other rows stream in from a background thread, chunk by chunk, drawn as
"not computed yet" until they land; `progress` says what is computed and
what is pending. `.lens` / `.result` wait for the whole lens."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import matplotlib
import torch
import traitlets

from nbinterp.analysis.logit_lens import LensRemainder, LogitLens, first_paint
from ._background import BackgroundJob
from ._base import InterpWidget, new_figure
from ._buffers import encode
from ._contract import FLOAT, INT, STR, TENSOR, Choice, Obj, Opt
from .dataset_view import DatasetView, is_data_set, over_data_set
from nbinterp.vocabulary import public_call

STATIC = Path(__file__).resolve().parent.parent / "static"
PUBLISH_EVERY_S = 0.25
# rows computed / all rows; `label` says in words what is shown and what is pending
LENS_PROGRESS = Obj({"done": INT, "total": INT, "state": Choice("running", "done", "cancelled", "error"),
                     "elapsed_s": FLOAT, "label": STR}, name="LensProgress")


def progress_label(lens: LogitLens, state: str) -> str:
    """What the view shows, in words: computed rows, and what is pending."""
    full = int(lens.computed.all(1).sum())
    rows = len(lens.row_labels)
    if full == rows:
        return f"every row and position computed ({rows} rows)"
    partial = "the last position of every row" if bool(lens.computed[:, -1].all()) else "some cells"
    pending = {"running": "streaming in", "cancelled": "not computed: cancelled (resume() to compute)",
               "error": "not computed: stopped by an error", "done": "not computed"}[state]
    return f"computed: {full} of {rows} rows at every position, {partial}; the other cells (grey) {pending}"


class LogitLensView(InterpWidget):
    """A logit lens of one prompt; see `nbinterp.logit_lens`."""

    _esm = STATIC / "logit_lens.js"

    model_name = traitlets.Unicode("").tag(sync=True)
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    row_labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    target = traitlets.Unicode(None, allow_none=True).tag(sync=True)
    top_tokens = traitlets.List(traitlets.List(traitlets.Unicode())).tag(sync=True)
    # float32 [rows, T] each; `computed` uint8 [rows, T] (absent: every cell), the others are 0 on the wire
    _lens = traitlets.Dict().tag(sync=True, schema=Obj({"top_probabilities": TENSOR, "target_probabilities": Opt(TENSOR),
                                                        "computed": Opt(TENSOR)}))
    progress = traitlets.Dict({"done": 0, "total": 0, "state": "done", "elapsed_s": 0.0, "label": ""}).tag(
        sync=True, schema=LENS_PROGRESS)

    def __init__(self, lens: LogitLens, model_name: str = "", rest: LensRemainder | None = None,
                 lock: Any = None, background: bool = True) -> None:
        self._lens_value = lens
        self._rest = rest
        self._send_lock = threading.RLock()
        super().__init__(model_name=model_name, tokens=lens.tokens, row_labels=lens.row_labels,
                         target=lens.target, top_tokens=[list(row) for row in lens.top_tokens], _lens=self._tensors())
        self._job = BackgroundJob("nbinterp-logit-lens", lock if lock is not None else threading.RLock(),
                                  lambda state, rows: self._publish(state), self._show_exception, PUBLISH_EVERY_S)
        self._publish("done" if rest is None or rest.finished else "running")
        if rest is not None and not rest.finished:
            self._job.start(lambda: iter(rest), lambda: rest.finished, background)

    def _tensors(self) -> dict[str, Any]:
        lens = self._lens_value
        tensors = {"top_probabilities": encode(lens.top_probabilities.nan_to_num(0.0), "float32")}
        if lens.target_probabilities is not None:
            tensors["target_probabilities"] = encode(lens.target_probabilities.nan_to_num(0.0), "float32")
        if not lens.complete:  # the wire has no NaN: the view greys out what is not computed yet
            tensors["computed"] = encode(lens.computed.to(torch.uint8), "uint8")
        return tensors

    def _publish(self, state: str) -> None:
        with self._send_lock:
            lens, rest = self._lens_value, self._rest
            if state != "error":
                self.top_tokens = [list(row) for row in lens.top_tokens]
                self._lens = self._tensors()
            rows = len(lens.row_labels)
            self.progress = {"done": rows if rest is None else rows - len(rest.pending), "total": rows, "state": state,
                             "elapsed_s": round(self._job.elapsed(), 3), "label": progress_label(lens, state)}

    # -------------------------------------------------------- streaming
    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until the rows stop streaming; True if the lens is complete."""
        self._job.wait(timeout)
        return self._lens_value.complete

    def cancel(self) -> None:
        """Stop after the chunk in flight; `resume()` continues."""
        if self._rest is not None:
            self._rest.cancel()

    def resume(self, background: bool = True) -> None:
        rest = self._rest
        if rest is None or rest.finished or self._job.running:
            return
        self._job.start(lambda: iter(rest), lambda: rest.finished, background, self.progress.get("elapsed_s", 0.0))

    @property
    def lens(self) -> LogitLens:
        """The numbers, every row and position (waits for the rows still streaming)."""
        self.wait()
        return self._lens_value

    @property
    def result(self) -> LogitLens:
        """The numbers (every view's are its `.result`; `.lens` is the same object); waits for the whole lens."""
        return self.lens

    @property
    def first_paint(self) -> LogitLens:
        """The numbers as computed so far (NaN / -1 where pending; `computed` says which)."""
        return self._lens_value

    def to_figure(self, *, dpi: int = 100) -> Any:
        """The same heatmap, top tokens written in the cells where they fit. Waits for the rows
        still streaming; a lens left incomplete (cancelled, or stopped by an error) draws its
        missing cells grey and says so in the title."""
        lens = self.lens
        values = (lens.target_probabilities if lens.target_probabilities is not None else lens.top_probabilities).numpy()
        rows, cols = values.shape
        figure = new_figure(figsize=(max(6.0, 0.75 * cols + 1.5), 0.45 * rows + 1.8), dpi=dpi)
        ax = figure.add_subplot()
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#e6e6e6")  # NaN: not computed, grey as in the view
        image = ax.imshow(values, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
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
        title = f"{self.model_name} \u00b7 logit lens \u00b7 {label}"
        if not lens.complete:
            state = self.progress.get("state", "done")  # the rows have stopped streaming: not "running" any more
            title += f"\n{progress_label(lens, 'done' if state == 'running' else state)}"
        ax.set_title(title, fontsize=9)
        figure.tight_layout()
        return figure

    def __repr__(self) -> str:
        return f"LogitLensView({self.model_name!r}, {len(self.tokens)} tokens, target={self.target!r})"


@public_call(positional=("target",))
def logit_lens(model: Any, prompt: Any, *, target: Any = None, background: bool = True) -> LogitLensView | DatasetView:
    """The top token and the target's probability at every layer and position:
    `lens = ni.logit_lens(model, "The capital of Veldora is", target=" Quorn")`;
    `lens.lens` holds the numbers. Shown at once from one forward (the output
    row, and the last position of every row); the other rows stream in
    (background=False: computed before returning).

    Over a data set (a `PromptSet`, a DataFrame or {group: [prompts]}; target=
    replaces the rows' own): the mean probability of each row's target per
    layer x position counted from the end (rows of different lengths line up on
    their last tokens), with 95% bootstrap intervals; clicking a row opens this view."""
    if is_data_set(prompt):
        return over_data_set("logit_lens", model, prompt, target=target, background=background)
    with model.lock:
        lens, rest = first_paint(model, prompt, target)
    return LogitLensView(lens, model_name=str(getattr(model, "name", "")), rest=rest, lock=model.lock,
                         background=background)
