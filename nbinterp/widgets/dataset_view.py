"""DatasetView: one view of any single-prompt grid over a data set (what
`ni.attribute`, `ni.ablate`, `ni.patch` and `ni.logit_lens` return when given
a `PromptSet`, a DataFrame or {group: [prompts]}). Each cell shows the mean
over rows; hovering shows the 95% bootstrap interval, the share of rows that
agree in sign and the spread (min, quartiles, max); clicking a cell lists its
rows by value, and a row opens the single-prompt view for it below.

Rows stream in from a background thread a chunk at a time (progress, cancel,
resume); the rows computed before a cancel are kept. A thin view over
`nbinterp.analysis.dataset_effects`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import anywidget
import torch
import traitlets

from nbinterp.analysis import dataset_effects
from nbinterp.analysis.dataset_effects import DatasetEffects, DatasetResult
from nbinterp.analysis.datasets import PromptRow, PromptSet, as_prompt_set
from nbinterp.errors import NbinterpError

from ._background import BackgroundJob
from ._base import CancelResume, InterpWidget, in_range, new_figure, rpc
from ._buffers import encode
from ._contract import FLOAT, INT, STR, TENSOR, Choice, ListOf, Obj, Opt

STATIC = Path(__file__).resolve().parent.parent / "static"
PUBLISH_EVERY_S = 0.25
N_RESAMPLES = 2000
LISTED_ROWS = 500  # rows a cell's list sends at most (sorted by value: the extremes are what one opens)
STATES = ("running", "done", "cancelled", "error")
STAT_FIELDS = ("n", "mean", "low", "high", "agree", "minimum", "q1", "median", "q3", "maximum")
PANEL = Obj({"title": STR, "row_axis": STR, "col_axis": STR, "row_labels": ListOf(STR), "col_labels": ListOf(STR),
             "start": INT}, name="DatasetPanel")
CELL_ROW = Obj({"unit": INT, "group": STR, "text": STR, "value": FLOAT}, name="DatasetCellRow")
CALLS = {"attribute": "ni.attribute", "ablate": "ni.ablate", "patch": "ni.patch", "logit_lens": "ni.logit_lens"}


def is_data_set(value: Any) -> bool:
    """A data set where a prompt is expected: a PromptSet, {group: [prompts]} or a DataFrame."""
    return isinstance(value, (PromptSet, Mapping)) or type(value).__name__ == "DataFrame"


class DatasetView(CancelResume, InterpWidget):
    """A single-prompt view's grid over a data set; see the module docstring."""

    _esm = STATIC / "dataset.js"

    model_name = traitlets.Unicode("").tag(sync=True)
    kind = traitlets.Unicode("attribute").tag(sync=True, schema=Choice(*dataset_effects.KINDS))
    what = traitlets.Unicode("").tag(sync=True)  # what one row's value is, in words
    unit = traitlets.Unicode("row").tag(sync=True)
    n_units = traitlets.Int(0).tag(sync=True)
    diverging = traitlets.Bool(True).tag(sync=True)  # effects around 0; False: probabilities
    panels = traitlets.List().tag(sync=True, schema=ListOf(PANEL))
    progress = traitlets.Dict().tag(sync=True, schema=Obj(
        {"done": INT, "total": INT, "state": Choice(*STATES), "elapsed_s": FLOAT}, name="DatasetProgress"))
    # per cell, float32 [cells]: rows with a value (n), mean, 95% interval, sign agreement, spread;
    # 0 on the wire where a number is missing (n == 0, or n < 2 for the interval)
    _stats = traitlets.Dict().tag(sync=True, schema=Obj({name: TENSOR for name in STAT_FIELDS}))
    selected = traitlets.Dict().tag(sync=True, schema=Obj({"cell": Opt(INT), "unit": Opt(INT)}))
    _opened = anywidget.WidgetTrait().tag(sync=True)  # "anywidget:<id>" of the opened single-prompt view

    def __init__(self, effects: DatasetEffects, *, background: bool = True, seed: int = 0,
                 opener: Callable[[int, int | None], Any] | None = None) -> None:
        self._effects, self._seed = effects, seed
        self._opener = opener
        self.opened: Any = None  # the single-prompt view the last row click opened
        self._job = BackgroundJob(f"nbinterp-dataset-{effects.kind}", effects.model.lock,
                                  lambda state, _: self._publish(state), self._show_exception, PUBLISH_EVERY_S)
        super().__init__(
            model_name=str(getattr(effects.model, "name", "")), kind=effects.kind, what=effects.what,
            unit=effects.unit, n_units=effects.total, diverging=effects.diverging,
            panels=[{"title": p.title, "row_axis": p.row_axis, "col_axis": p.col_axis, "row_labels": list(p.row_labels),
                     "col_labels": list(p.col_labels), "start": p.start} for p in effects.panels],
        )
        self._publish("running")
        self._start(background)

    # ------------------------------------------------------------ public
    @property
    def effects(self) -> DatasetEffects:
        """The per-row computation (its `values` fill in while it runs)."""
        return self._effects

    @property
    def result(self) -> DatasetResult:
        """Every row's values and each cell's statistics; waits for a running computation."""
        self.wait()
        return self._effects.summary(n_resamples=N_RESAMPLES, seed=self._seed)

    @property
    def running(self) -> bool:
        return self._job.running

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until the rows stop coming; True if every row is computed."""
        self._job.wait(timeout)
        return self._effects.finished

    def cancel(self) -> None:
        """Stops after the chunk in flight; the rows computed so far stay (`resume()` continues)."""
        self._effects.cancel()

    def resume(self, background: bool = True) -> None:
        if self._effects.finished or self._job.running:
            return
        self._publish("running")
        self._start(background)

    def cell_rows(self, cell: int) -> list[tuple[int, str, float]]:
        """(unit, its prompt(s), value) of every computed row that has `cell`, largest first."""
        effects = self._effects
        return [(unit, effects.unit_text(unit), value) for unit, value in effects.cell_values(cell)]

    def open_row(self, unit: int, cell: int | None = None) -> Any:
        """The single-prompt view of one row (a pair for patching), at the cell's
        component where it has one; shown below the grid. Returns the widget."""
        if self._opener is None:
            raise NbinterpError("this view has no single-prompt view to open")
        with self._effects.model.lock:
            widget = self._opener(unit, cell)
        self.opened = widget
        with self.hold_sync():
            self.selected = {"unit": unit} if cell is None else {"cell": cell, "unit": unit}
            self._opened = widget
        return widget

    # ------------------------------------------------------------ streaming
    def _start(self, background: bool) -> None:
        effects = self._effects
        self._job.start(lambda: iter(effects), lambda: effects.finished, background,
                        self.progress.get("elapsed_s", 0.0) if self.progress else 0.0)

    def _publish(self, state: str) -> None:
        effects = self._effects
        stats = effects.stats(n_resamples=N_RESAMPLES, seed=self._seed)
        self._stats = {name: encode(torch.nan_to_num(getattr(stats, name).double(), nan=0.0), "float32")
                       for name in STAT_FIELDS}
        self.progress = {"done": effects.done, "total": effects.total, "state": state,
                         "elapsed_s": round(self._job.elapsed(), 3)}

    # ------------------------------------------------------------ browser
    @rpc("cell_rows", params={"cell": INT}, result={"name": STR, "rows": ListOf(CELL_ROW), "n": INT})
    def _rpc_cell_rows(self, params: dict[str, Any]) -> tuple[Any, list[bytes]]:
        cell = in_range(params["cell"], "cell", 0, self._effects.n_cells)
        rows = self.cell_rows(cell)
        shown = rows if len(rows) <= LISTED_ROWS else rows[: LISTED_ROWS // 2] + rows[-LISTED_ROWS // 2:]
        self.selected = {"cell": cell}
        groups = self._effects.unit_group
        return {"name": self._effects.cell_name(cell), "n": len(rows),
                "rows": [{"unit": u, "group": groups(u), "text": t, "value": v} for u, t, v in shown]}, []

    @rpc("open_row", params={"unit": INT, "cell": Opt(INT)}, result={"opened": STR})
    def _rpc_open_row(self, params: dict[str, Any]) -> tuple[Any, list[bytes]]:
        unit = in_range(params["unit"], "row", 0, self._effects.total)
        cell = params.get("cell")
        if cell is not None:
            cell = in_range(cell, "cell", 0, self._effects.n_cells)
        self.open_row(unit, cell)
        return {"opened": type(self.opened).__name__}, []

    # ------------------------------------------------------------- export
    def to_figure(self, *, dpi: int = 100) -> Any:
        """One heatmap of the mean per panel; cells without rows grey; the colour bar says what the mean is of."""
        import matplotlib

        effects = self._effects
        stats = effects.stats(n_resamples=200, seed=self._seed)  # the means only: few resamples will do
        panels = effects.panels
        figure = new_figure(figsize=(3.6 * len(panels) + 1.2, 0.3 * max(len(p.row_labels) for p in panels) + 2.8), dpi=dpi,
                            layout="constrained")
        means = torch.nan_to_num(stats.mean, nan=0.0)
        peak = float(means.abs().max()) if means.numel() else 1.0
        peak = peak if peak > 0 else 1.0
        cmap = matplotlib.colormaps["RdBu_r" if effects.diverging else "viridis"].with_extremes(bad="#e6e6e6")
        limits = dict(vmin=-peak, vmax=peak) if effects.diverging else dict(vmin=0.0, vmax=peak)
        image = None
        for i, panel in enumerate(panels):
            ax = figure.add_subplot(1, len(panels), i + 1)
            grid = stats.mean[panel.start : panel.start + panel.size].reshape(len(panel.row_labels), len(panel.col_labels))
            image = ax.imshow(grid.numpy(), cmap=cmap, aspect="auto", interpolation="nearest", **limits)
            ax.set_title(panel.title, fontsize=9)
            ax.set_ylabel(panel.row_axis)
            ax.set_xlabel(panel.col_axis)
            ax.set_yticks(range(len(panel.row_labels)), panel.row_labels, fontsize=7)
            if len(panel.col_labels) <= 48:
                ax.set_xticks(range(len(panel.col_labels)), panel.col_labels, fontsize=7)
        figure.colorbar(image, ax=figure.axes, shrink=0.8, label=f"mean over {effects.done} {effects.unit}s")
        state = "" if effects.finished else f" ({effects.done} of {effects.total} {effects.unit}s computed)"
        figure.suptitle(f"{self.model_name} \u00b7 {CALLS[effects.kind]} over a data set{state}\n{effects.what}",
                        fontsize=9)
        return figure

    def __repr__(self) -> str:
        p = self.progress
        return (f"DatasetView({self.model_name!r}, {CALLS[self.kind]}: {p.get('done')}/{p.get('total')} "
                f"{self.unit}s, {p.get('state')})")


def over_data_set(kind: str, model: Any, data: Any, *, target: Any = None, foil: Any = None,
                  background: bool = True, seed: int = 0, **options: Any) -> DatasetView:
    """The view of `kind` ("attribute", "ablate", "patch", "logit_lens") over a data set."""
    prompt_set = as_prompt_set(data, target=target, foil=foil)
    with model.lock:
        tokenized = prompt_set.check(model)
        if kind == "attribute":
            effects = dataset_effects.head_effects(model, tokenized)
        elif kind == "ablate":
            effects = dataset_effects.ablation_effects(model, tokenized, options.get("ablate"))
        elif kind == "patch":
            effects = dataset_effects.patch_effects(model, tokenized, options.get("kinds", dataset_effects.PATCH_KINDS))
        elif kind == "logit_lens":
            effects = dataset_effects.lens_probabilities(model, tokenized)
        else:
            raise NbinterpError(f"no view over a data set for {kind!r}; there are {list(dataset_effects.KINDS)}")
    return DatasetView(effects, background=background, seed=seed, opener=_opener(effects))


def refuse_options(call: str, **given: Any) -> None:
    """A single-prompt option that has no meaning over a data set: say so instead of ignoring it."""
    wrong = sorted(name for name, (value, default) in given.items() if value != default)
    if wrong:
        raise NbinterpError(f"{call} over a data set does not take {', '.join(f'{n}=' for n in wrong)} (a single-prompt "
                            "option); open one row's view from the grid, or call it with that row's prompt")


def _opener(effects: DatasetEffects) -> Callable[[int, int | None], Any]:
    """Builds the single-prompt view of a unit, at a cell's component."""
    model, rows = effects.model, effects.data.prompts.rows

    def open_unit(unit: int, cell: int | None) -> Any:
        key = None if cell is None else effects.cell_keys[cell]
        row = rows[effects.unit_rows[unit][-1]]
        if effects.kind == "attribute":
            from .attribution import attribute

            layer, head = key if key is not None else (None, None)
            return attribute(model, row.prompt, target=row.target, foil=row.foil, layer=layer, head=head)
        if effects.kind == "ablate":
            from .ablation import AblationPanel

            return AblationPanel(model, row.prompt, target=row.target, foil=row.foil, ablations=key or {})
        if effects.kind == "patch":
            from .patching import patch

            clean = rows[effects.unit_rows[unit][0]]
            return patch(model, clean.prompt, corrupted=row.prompt, target=row.target, foil=row.foil)
        from .logit_lens import logit_lens

        return logit_lens(model, row.prompt, target=row.target)

    return open_unit


def paired_lists(clean: Any, corrupted: Any, target: Any) -> PromptSet:
    """clean= and corrupted= as two lists of prompts: pair i is (clean[i], corrupted[i])."""
    if isinstance(corrupted, str) or not isinstance(corrupted, (list, tuple)) or len(corrupted) != len(clean):
        raise NbinterpError(f"with clean= a list of {len(clean)} prompts, corrupted= is a list of as many "
                            "(pair i is clean[i] and corrupted[i])")
    if target is None:
        raise NbinterpError('patching pairs of prompts needs target= (and usually foil=), e.g. target=" doctor"')
    rows = []
    for i, (a, b) in enumerate(zip(clean, corrupted)):
        rows += [PromptRow(a, target, None, "clean", 2 * i + 1), PromptRow(b, target, None, "corrupted", 2 * i)]
    return PromptSet(rows)
