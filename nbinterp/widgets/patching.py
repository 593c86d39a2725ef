"""PatchingView: activation-patching heatmaps (residual stream, attention
output and MLP output per layer x position; heads per layer x head). The
first paint is every cell's attribution-patching estimate; exact cells then
replace estimates, largest |estimate| first, with progress and a cancel; a
toggle shows the estimate alone, the measured cells alone, or where the two
disagree (measured - estimate). Clicking a cell opens that component in the
attention view or the ablation panel.

The sweep runs in a background thread so the view shows up at once and the
kernel stays free to take the cancel; `grid.effects` waits for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import anywidget
import torch
import traitlets

from nbinterp.errors import NbinterpError
from nbinterp.engine.tokens import display_text
from nbinterp.analysis.patching_sweep import KIND_LABELS, SWEEP_KINDS, PatchingSweep, prepare
from ._background import BackgroundJob
from ._base import CancelResume, FrontendError, InterpWidget, as_declared, in_range, new_figure, rpc
from ._buffers import encode
from ._contract import BOOL, FLOAT, INT, STR, TENSOR, WIDGET_REF, Choice, ListOf, MapOf, Obj, Opt
from .dataset_view import DatasetView, is_data_set, over_data_set, paired_lists, refuse_options
from nbinterp.vocabulary import public_call

STATIC = Path(__file__).resolve().parent.parent / "static"
OPEN_IN = ("attention", "ablation")
PUBLISH_EVERY_S = 0.1  # streaming granularity: at most ~10 redraws a second
STATES = ("running", "done", "cancelled", "error")
KIND = Choice(*SWEEP_KINDS)
# what the maps show: measured where done and the estimate elsewhere; the
# estimate alone; the measured cells alone; measured - estimate where measured
SHOW = ("best", "estimate", "measured", "difference")


class PatchingView(CancelResume, InterpWidget):
    """Activation patching of clean into corrupted; see `nbinterp.patch`."""

    _esm = STATIC / "patching.js"

    model_name = traitlets.Unicode("").tag(sync=True)
    clean_tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    corrupted_tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    n_layers = traitlets.Int(1).tag(sync=True)
    n_heads = traitlets.Int(1).tag(sync=True)
    target = traitlets.Unicode("").tag(sync=True)
    foil = traitlets.Unicode(None, allow_none=True).tag(sync=True)
    clean_logit_diff = traitlets.Float(0.0).tag(sync=True)
    corrupted_logit_diff = traitlets.Float(0.0).tag(sync=True)
    kinds = traitlets.List(traitlets.Unicode()).tag(sync=True, schema=ListOf(KIND))
    progress = traitlets.Dict().tag(sync=True, schema=Obj(
        {"done": Opt(INT), "total": Opt(INT), "state": Opt(Choice(*STATES)), "elapsed_s": Opt(FLOAT)}))
    open_in = traitlets.Unicode("attention").tag(sync=True, schema=Choice(*OPEN_IN))
    show = traitlets.Unicode("best").tag(sync=True, schema=Choice(*SHOW))
    # the cell last opened ({} before any)
    selected = traitlets.Dict().tag(sync=True, schema=Obj({"kind": Opt(KIND), "layer": Opt(INT), "index": Opt(INT)}))
    # kind -> {tensor: exact effects (float32, 0 where not measured), measured: 1 where
    # measured else 0, estimate: attribution-patching estimates, done: cells measured}
    _effects = traitlets.Dict().tag(sync=True, schema=MapOf(
        Obj({"tensor": TENSOR, "done": INT, "measured": TENSOR, "estimate": TENSOR}), keys=KIND))
    _opened = anywidget.WidgetTrait().tag(sync=True)  # "anywidget:<id>" of the opened view

    def __init__(self, model: Any, clean: str, corrupted: str, target: Any, foil: Any = None, *,
                 kinds: Sequence[str] = SWEEP_KINDS, position: int = -1, batch_size: int | None = None,
                 layers: Sequence[int] | None = None, positions: Sequence[int] | None = None,
                 exact: bool = True, background: bool = True) -> None:
        with model.lock:  # the sweep runs beside the user's own model.run calls
            setup = prepare(model, clean, corrupted, target, foil, position)
        self._model, self._clean_prompt = model, clean
        self._target, self._foil = target, foil
        self._sweep = PatchingSweep(setup, tuple(kinds), batch_size, layers, positions)  # type: ignore[arg-type]
        self._job = BackgroundJob("nbinterp-patching", model.lock, lambda state, _: self._publish(state),
                                  self._show_exception, PUBLISH_EVERY_S)
        self.opened: Any = None  # the widget the last click opened
        tokens = lambda ids: display_text(model.tokenizer, ids[0].tolist())  # noqa: E731
        name = lambda t: t if isinstance(t, str) else model.tokenizer.decode([t])  # noqa: E731
        super().__init__(
            model_name=str(getattr(model, "name", "")), clean_tokens=tokens(setup.clean.input_ids),
            corrupted_tokens=tokens(setup.corrupted_ids), n_layers=model.n_layers, n_heads=model.n_heads,
            target=name(target), foil=None if foil is None else name(foil),
            clean_logit_diff=setup.clean_logit_diff, corrupted_logit_diff=setup.corrupted_logit_diff,
            kinds=list(self._sweep.kinds),
        )
        if exact:
            self._publish("running")
            self._start(background)
        else:  # the estimate only; resume() measures
            self._sweep.cancel()
            self._publish("cancelled")

    # ------------------------------------------------------------ public
    @property
    def effects(self) -> dict[str, torch.Tensor]:
        """kind -> [layer, position] (or [layer, head]) measured effects; waits
        for a running sweep. NaN marks cells not measured (a cancel, a selection)."""
        self.wait()
        return {kind: values.clone() for kind, values in self._sweep.effects.items()}

    @property
    def estimates(self) -> dict[str, torch.Tensor]:
        """kind -> every cell's attribution-patching estimate (there at once, no wait)."""
        return {kind: values.clone() for kind, values in self._sweep.estimates.items()}

    @property
    def result(self) -> PatchingSweep:
        """The sweep (every view's numbers are its `.result`): its `effects`
        hold kind -> [layer, position] (or [layer, head]); waits for a running sweep."""
        self.wait()
        return self._sweep

    @property
    def setup(self) -> Any:
        return self._sweep.setup

    @property
    def running(self) -> bool:
        """Whether the sweep is computing in the background now."""
        return self._job.running

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until the sweep stops; True if it finished every cell."""
        self._job.wait(timeout)
        return self._sweep.finished

    def cancel(self) -> None:
        """Stops after the batch in flight; `resume()` picks up from there."""
        self._sweep.cancel()

    def resume(self, background: bool = True) -> None:
        if self._sweep.finished or self._job.running:
            return
        self._sweep.resume()
        self._start(background)

    def top_cells(self, kind: str = "head", n: int = 5) -> list[tuple[int, int, float]]:
        """The n cells of `kind` with the largest effect: [(layer, index, effect), ...]."""
        values = self.effects[kind]
        flat = torch.nan_to_num(values, nan=-float("inf")).flatten()
        order = flat.argsort(descending=True)[:n].tolist()
        cols = values.shape[1]
        return [(i // cols, i % cols, float(flat[i])) for i in order]

    # ------------------------------------------------------------ sweeping
    def _start(self, background: bool) -> None:
        self._job.start(lambda: iter(self._sweep), lambda: self._sweep.finished, background,
                        self.progress.get("elapsed_s", 0.0))

    def _publish(self, state: str) -> None:
        sweep = self._sweep
        payload = {}
        for kind in sweep.kinds:
            values, measured = sweep.effects[kind], sweep.measured(kind)
            payload[kind] = {"tensor": encode(torch.nan_to_num(values, nan=0.0), "float32"),
                             "measured": encode(measured.float(), "float32"),
                             "estimate": encode(sweep.estimates[kind], "float32"), "done": int(measured.sum())}
        self._effects = payload
        self.progress = {"done": sweep.done, "total": sweep.total, "state": state,
                         "elapsed_s": round(self._job.elapsed(), 3)}

    # ------------------------------------------------------------ browser
    def _frontend_fields(self) -> dict[str, Any]:
        fields = super()._frontend_fields()
        fields.update(open_in=as_declared, show=as_declared)
        return fields

    @rpc("open", params={"kind": KIND, "layer": INT, "index": INT, "open_in": Opt(Choice(*OPEN_IN))},
         result={"opened": STR})  # the handler narrows kind to this sweep's kinds
    def _rpc_open(self, params: dict[str, Any]) -> tuple[Any, list[bytes]]:
        kind = params["kind"]
        if kind not in self._sweep.kinds:
            raise FrontendError(f"this sweep has no {kind} cells; it computed {', '.join(self._sweep.kinds)}")
        rows, cols = self._sweep.effects[kind].shape
        layer, index = in_range(params["layer"], "layer", 0, rows), in_range(params["index"], "index", 0, cols)
        where = params.get("open_in", self.open_in)
        self.open_cell(kind, layer, index, where)
        return {"opened": type(self.opened).__name__}, []

    def open_cell(self, kind: str, layer: int, index: int, where: str = "attention") -> Any:
        """Opens the component of one cell: heads and positions in the attention
        view (at that head, or focused on that token), heads / attention / MLPs
        in the ablation panel with that component ablated. Returns the widget."""
        from .ablation import AblationPanel
        from .attention import attention

        if where not in OPEN_IN:
            raise NbinterpError(f"open in 'attention' or 'ablation', not {where!r}")
        with self._model.lock:
            if where == "ablation" and kind != "resid_pre":
                components = {
                    "head": {f"L{layer}.H{index}": 0.0},
                    "attn_out": {f"L{layer}.H{h}": 0.0 for h in range(self.n_heads)},
                    "mlp_out": {f"L{layer}.mlp": 0.0},
                }[kind]
                widget = AblationPanel(self._model, self._clean_prompt, target=self._target, foil=self._foil, ablations=components)
            else:
                widget = attention(self._model, self._clean_prompt, layer=layer, head=index if kind == "head" else 0)
                widget.focus_token = self._sweep.setup.metric.position if kind == "head" else index
                if kind != "head":
                    widget.strip_scope = "layer"
        self.opened = widget
        # One message, the cell first: the view's caption and marker never
        # show the new widget under the previous click.
        with self.hold_sync():
            self.selected = {"kind": kind, "layer": layer, "index": index}
            self._opened = widget
        return widget

    # ------------------------------------------------------------- export
    def to_figure(self, *, dpi: int = 100) -> Any:
        """One heatmap per kind (diverging, 0 = no effect), token labels on positions."""
        kinds = self._sweep.kinds
        figure = new_figure(figsize=(4.2 * len(kinds), 0.3 * self.n_layers + 2.6), dpi=dpi)
        sweep = self._sweep
        measured = sum(int(sweep.measured(kind).sum()) for kind in kinds)
        cells = sum(sweep.effects[kind].numel() for kind in kinds)
        # measured where done, the attribution-patching estimate elsewhere (as the view's first toggle)
        effects = {kind: torch.where(sweep.measured(kind), sweep.effects[kind], sweep.estimates[kind]) for kind in kinds}
        vmax = 1.0  # fixed, as in the view: 1 = clean restored; beyond is clipped to the end colour
        for i, kind in enumerate(kinds):
            ax = figure.add_subplot(1, len(kinds), i + 1)
            values = effects[kind].numpy()
            image = ax.imshow(values, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
            ax.set_title(KIND_LABELS[kind], fontsize=9)
            ax.set_ylabel("layer")
            ax.set_yticks(range(self.n_layers))
            if kind == "head":
                ax.set_xlabel("head")
                ax.set_xticks(range(self.n_heads))
            elif len(self.clean_tokens) <= 48:
                ax.set_xticks(range(len(self.clean_tokens)), [repr(t)[1:-1] for t in self.clean_tokens], rotation=90, fontsize=7)
        figure.colorbar(image, ax=figure.axes, label=f"patching effect: measured ({measured} of {cells} cells), attribution-patching "
                        "estimate elsewhere (1 = clean restored; clipped at \u00b11)",
                        shrink=0.8, extend="both")
        foil = f" - logit({self.foil!r})" if self.foil is not None else ""
        figure.suptitle(f"{self.model_name} \u00b7 logit({self.target!r}){foil}: clean {self.clean_logit_diff:.3f}, "
                        f"corrupted {self.corrupted_logit_diff:.3f}", fontsize=9)
        return figure

    def __repr__(self) -> str:
        p = self.progress
        return f"PatchingView({self.model_name!r}, {len(self.clean_tokens)} tokens, {p.get('done')}/{p.get('total')} cells, {p.get('state')})"


@public_call(positional=("corrupted", "target", "foil"))
def patch(model: Any, clean: Any, *, corrupted: Any = None, target: Any = None, foil: Any = None,
          kinds: Sequence[str] = SWEEP_KINDS, positions: Sequence[int] | None = None,
          layers: Sequence[int] | None = None, position: int = -1, exact: bool = True,
          batch_size: int | None = None, background: bool = True) -> PatchingView | DatasetView:
    """Activation patching from `clean` into `corrupted` (same token length):
    `grid = ni.patch(model, clean=..., corrupted=..., target=" Mary", foil=" John")`.
    Every cell is estimated at once (attribution patching: the clean forward and
    one corrupted forward + backward; `grid.estimates`), then measured exactly,
    largest estimate first, within `layers=` / `positions=` (default all;
    exact=False: the estimate only, `resume()` measures). `grid.effects` waits
    and returns {kind: tensor}. background=False measures before returning.
    `position` is where the metric is read.

    Over a data set of counterfactual pairs (a `PromptSet` from
    `PromptSet.from_templates`, a DataFrame with a partner column, or clean= and
    corrupted= as two lists of prompts, pair by pair): each pair's clean
    activation patched into its corrupted partner, cell by cell, measured; each
    cell shows the mean change of logit(target) - logit(foil) in logit units
    with a 95% bootstrap interval (positions counted from the end when pairs
    differ in length); clicking a pair opens this view on it."""
    if isinstance(kinds, str):
        raise NbinterpError("kinds is a list, e.g. kinds=['resid_pre', 'head']")
    if isinstance(clean, (list, tuple)) and not clean:
        raise NbinterpError("clean= is empty: pass a prompt, a data set, or a non-empty list of prompts")
    if isinstance(clean, (list, tuple)) and all(isinstance(p, str) for p in clean):
        clean, corrupted = paired_lists(clean, corrupted, target), None
    if is_data_set(clean):
        if corrupted is not None:
            raise NbinterpError("a data set carries its own counterfactual pairs: leave corrupted= out "
                                "(or pass clean= and corrupted= as two lists of prompts)")
        refuse_options("ni.patch", positions=(positions, None), layers=(layers, None), position=(position, -1),
                       exact=(exact, True), batch_size=(batch_size, None))
        return over_data_set("patch", model, clean, target=target, foil=foil, background=background, kinds=kinds)
    if corrupted is None or target is None:
        raise NbinterpError('ni.patch needs corrupted= and target=, e.g. ni.patch(model, "When Mary and John ...", '
                            'corrupted="When Mary and John ... Mary gave", target=" Mary", foil=" John")')
    return PatchingView(model, clean, corrupted, target, foil, kinds=kinds, position=position,
                        batch_size=batch_size, layers=layers, positions=positions, exact=exact,
                        background=background)
