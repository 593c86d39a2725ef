"""FeatureView: the features of one prompt (MLP neurons of a layer, or an
SAE's latents at its site). Tokens coloured by the selected feature; a
click on a token lists its strongest features; a click on a feature shows
its activation over the prompt, its direct logit effect, its density and
its top-activating contexts over a corpus (streamed from a background pass,
with progress and cancel; the latest selection wins); steering sliders per
chosen feature re-run the model (latest value wins, as in the ablation
panel); per token the SAE's reconstruction error and what substituting the
reconstruction does to the metric.

Only the top `k_shown` features per token cross to the browser, never the
dense [T, n_features] matrix."""

from __future__ import annotations

import math
import numbers
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import torch
import traitlets

from nbinterp.errors import NbinterpError
from nbinterp.representations.activations import DIRECT_EFFECT_LABEL, STEER_MODES, FeatureActivations
from nbinterp.interventions.ablation import AblationSummary, summarize
from ._background import Worker
from ._base import DictAccessDeprecated, FrontendError, InterpWidget, as_declared, in_range, new_figure, rpc
from ._buffers import encode
from ._contract import BOOL, FLOAT, INT, STR, TENSOR, Choice, ListOf, MapOf, Nullable, Number, Obj, Opt
from .ablation import TOKEN_PROBABILITY
from nbinterp.vocabulary import public_call

STATIC = Path(__file__).resolve().parent.parent / "static"
K_SHOWN = 10  # features per token sent to the browser
CONTEXTS_SHOWN = 10
STEERED_MAX = 8  # steering sliders at once
VALUE_LIMIT = 1e6  # steering values the browser may send
PUBLISH_EVERY_S = 0.1
MODE = Choice(*STEER_MODES)
SLIDER_VALUES = MapOf(Number(low=-VALUE_LIMIT, high=VALUE_LIMIT), entry="the steering value of feature {key}")
CONTEXT_STATES = ("running", "done", "cancelled", "error", "unavailable")

# ---- the traits' declarations (_contract.py): named fields throughout
TOKEN_VALUE = Obj({"token": STR, "value": FLOAT}, name="TokenValue")
FEATURE_INFO = Obj({
    "feature": INT, "activation": TENSOR, "max": FLOAT, "argmax": INT, "min": FLOAT, "direct_label": STR,
    # the direct logit effect, or why there is none (e.g. a remote model)
    "direct": Nullable(Obj({"positive": ListOf(TOKEN_VALUE), "negative": ListOf(TOKEN_VALUE)})),
    "direct_error": Nullable(STR),
}, name="FeatureInfo")
CONTEXT_ITEM = Obj({"doc": INT, "position": INT, "value": FLOAT, "start": INT, "tokens": ListOf(STR),
                    "activations": ListOf(FLOAT)}, name="ContextItem")
CONTEXTS = Obj({
    "state": Choice(*CONTEXT_STATES), "note": STR,
    "done_docs": INT, "total_docs": INT, "done_tokens": INT, "total_tokens": INT, "tokens_counted": INT,
    # the feature whose top contexts are shown (null: none yet) and its density over the tokens counted
    "feature": Nullable(INT), "items": ListOf(CONTEXT_ITEM), "density": Nullable(FLOAT),
}, name="ContextsState")
STEERED = Obj({
    "top_k": ListOf(TOKEN_PROBABILITY), "logit_diff": Nullable(FLOAT), "target_probability": Nullable(FLOAT),
    "foil_probability": Nullable(FLOAT), "target": Nullable(TOKEN_PROBABILITY), "foil": Nullable(TOKEN_PROBABILITY),
    "steering": MapOf(FLOAT), "mode": MODE, "seq": INT, "compute_ms": FLOAT, "code": STR,
}, name="SteeringSummary")
RECONSTRUCTION = Obj({
    "fvu": TENSOR, "fvu_total": FLOAT, "metric_clean": Nullable(FLOAT), "metric_reconstructed": Nullable(FLOAT),
    "metric_change": Nullable(FLOAT), "metric_change_per_token": Nullable(TENSOR), "exact": BOOL,
}, name="ReconstructionState")


@dataclass
class SteeredRun(AblationSummary, DictAccessDeprecated):
    """The feature view's latest run (`fv.result`; `fv.baseline` before any
    steering): the next-token summary of `nbinterp.interventions.ablation`,
    with the steering that produced it."""

    steering: dict[str, float] = field(default_factory=dict)
    mode: str = "scale"
    seq: int = 0
    compute_ms: float = 0.0
    code: str = ""  # the fv.steer(...) call that repeats it

    def state(self) -> dict[str, Any]:
        """As the view's trait (STEERED): no ablation fields, nothing was ablated."""
        state = asdict(self)
        del state["ablations"], state["ablation"]
        return state


class FeatureView(InterpWidget):
    """Feature activations of one prompt; see `nbinterp.features`."""

    _esm = STATIC / "features.js"

    model_name = traitlets.Unicode("").tag(sync=True)
    prompt = traitlets.Unicode("").tag(sync=True)
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    kind = traitlets.Unicode("neurons").tag(sync=True, schema=Choice("neurons", "sae"))
    source_label = traitlets.Unicode("").tag(sync=True)
    n_features = traitlets.Int(1).tag(sync=True)
    target = traitlets.Unicode(None, allow_none=True).tag(sync=True)
    foil = traitlets.Unicode(None, allow_none=True).tag(sync=True)
    selected_token = traitlets.Int(-1).tag(sync=True)
    selected_feature = traitlets.Int(-1).tag(sync=True)
    steering = traitlets.Dict().tag(sync=True, schema=SLIDER_VALUES)  # {"feature": value}
    steer_mode = traitlets.Unicode("scale").tag(sync=True, schema=MODE)
    # the selected feature (null: none selected)
    feature_info = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True, schema=Nullable(FEATURE_INFO))
    # the corpus pass and the selected feature's top contexts (null: not started)
    contexts = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True, schema=Nullable(CONTEXTS))
    reconstruction = traitlets.Dict().tag(sync=True, schema=RECONSTRUCTION)
    # SteeredRun.state() of .result and .baseline (set in __init__: never null on screen)
    _result = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True, schema=Nullable(STEERED))
    _baseline = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True, schema=Nullable(STEERED))
    # the top k_shown features per token: float32 [T, k_shown] each (indices as floats)
    _top = traitlets.Dict().tag(sync=True, schema=Obj({"values": TENSOR, "indices": TENSOR}))

    def __init__(self, model: Any, prompt: Any, *, layer: Any = None, sae: Any = None, site: Any = None,
                 target: Any = None, foil: Any = None, k: int = 32, corpus: Sequence[Any] | None = None,
                 context_batch_size: int | None = None, background: bool = True) -> None:
        with model.lock:
            acts = FeatureActivations(model, prompt, layer=layer, sae=sae, site=site, k=k, target=target, foil=foil)
        self.features = acts
        self._model = model
        self._corpus, self._context_batch = corpus, context_batch_size
        self._background = background
        self._quiet = False
        self._seq = 0
        self._run: Any = acts.run
        self._wanted: int | None = None
        self._shown_contexts: int | None = None
        self._context_thread: threading.Thread | None = None
        self._context_lock = threading.Lock()
        self._contexts_cancelled = False
        self._closed = threading.Event()  # the view is closed: the contexts worker stops for good
        self._index: Any = None
        name = lambda t: None if t is None else (t if isinstance(t, str) else model.tokenizer.decode([t]))  # noqa: E731
        shown = min(K_SHOWN, acts.k)
        last = len(acts) - 1
        super().__init__(
            model_name=str(getattr(model, "name", "")), prompt=prompt if isinstance(prompt, str) else "",
            tokens=acts.tokens, kind=acts.source.kind, source_label=acts.source.label,
            n_features=acts.n_features, target=name(target), foil=name(foil),
            _top={"values": encode(acts.top_values[:, :shown], "float32"),
                  "indices": encode(acts.top_indices[:, :shown].float(), "float32")},
        )
        self._baseline_run = self._summary(acts.run, {}, "scale", 0.0)
        self._latest = self._baseline_run
        self._baseline = self._result = self._baseline_run.state()
        self.reconstruction = self._reconstruction_payload()
        self._quiet = True
        try:
            self.selected_token = last
            self.selected_feature = int(acts.top_indices[last, 0])
        finally:
            self._quiet = False
        self._show_feature(self.selected_feature)

    # ------------------------------------------------------------ public
    @property
    def model(self) -> Any:
        return self._model

    @property
    def result(self) -> SteeredRun:
        """The latest run: next tokens and the metric with the steering on
        (the same as `baseline` until something is steered)."""
        return self._latest

    @property
    def baseline(self) -> SteeredRun:
        """The run without steering."""
        return self._baseline_run

    @property
    def activations(self) -> torch.Tensor:
        """[T, n_features] sparse: the top k per token (see FeatureActivations)."""
        return self.features.activations

    def top(self, token: int, k: int = 10) -> list[tuple[int, float]]:
        return self.features.top(token, k)

    def feature(self, feature: int) -> torch.Tensor:
        return self.features.feature(feature)

    def steer(self, features: dict, mode: str = "scale", positions: Any = None, **run_options: Any) -> Any:
        """A `Run` with the features scaled / clamped (the view's sliders are not moved)."""
        with self._model.lock:
            return self.features.steer(features, mode, positions, **run_options)

    def direct_logit_effect(self, feature: int, k: int = 10) -> dict:
        return self.features.direct_logit_effect(feature, k)

    def top_contexts(self, feature: int, k: int = 10) -> list:
        return self.features.top_contexts(feature, self._corpus, k, self._context_batch)

    def density(self, feature: int) -> float:
        return self.features.density(feature, self._corpus, self._context_batch)

    def wait(self, timeout: float | None = None) -> None:
        """Blocks until the background contexts work stops."""
        thread = self._context_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def close(self) -> None:
        """Closes the view and stops its contexts pass (after the batch in
        flight), waiting for the thread."""
        self._closed.set()
        super().close()
        thread = self._context_thread
        if isinstance(thread, Worker):
            thread.stop()

    def cancel_contexts(self) -> None:
        """Stops the corpus pass after the batch in flight; contexts then
        show what the documents done so far give (say so on screen)."""
        self._contexts_cancelled = True
        if self._index is not None:
            self._index.cancel()

    def resume_contexts(self) -> None:
        self._contexts_cancelled = False
        self._shown_contexts = None
        self._want_contexts(self.selected_feature)

    # -------------------------------------------------------- validation
    def _check_feature(self, value: Any) -> int:
        return self.features.source.check_feature(value)

    @traitlets.validate("selected_feature")
    def _valid_feature(self, proposal: Any) -> int:
        value = proposal["value"]
        return -1 if value == -1 else self._check_feature(value)

    @traitlets.validate("selected_token")
    def _valid_token(self, proposal: Any) -> int:
        value = proposal["value"]
        if value != -1 and not 0 <= value < len(self.tokens):
            raise NbinterpError(f"token {value} is outside the prompt's {len(self.tokens)} tokens")
        return value

    @traitlets.validate("steering")
    def _valid_steering(self, proposal: Any) -> dict[str, float]:
        return self._canonical_steering(proposal["value"])

    @traitlets.validate("steer_mode")
    def _valid_mode(self, proposal: Any) -> str:
        if proposal["value"] not in STEER_MODES:
            raise NbinterpError(f"steer_mode must be 'scale' or 'clamp', not {proposal['value']!r}")
        return proposal["value"]

    def _canonical_steering(self, value: Any) -> dict[str, float]:
        if not isinstance(value, dict):
            raise NbinterpError(f"steering is a dict {{feature: value}}, not {type(value).__name__}")
        if len(value) > STEERED_MAX:
            raise NbinterpError(f"steer at most {STEERED_MAX} features at once (got {len(value)})")
        out: dict[str, float] = {}
        for key, number in value.items():
            try:
                feature = int(key) if isinstance(key, str) and key.strip().lstrip("-").isdigit() else key
            except ValueError:
                feature = key
            feature = self._check_feature(feature)
            if isinstance(number, bool) or not isinstance(number, numbers.Real) or not math.isfinite(number):
                raise NbinterpError(f"the steering value of feature {feature} must be a finite number, got {number!r}")
            if abs(number) > VALUE_LIMIT:
                raise NbinterpError(f"the steering value of feature {feature} must lie within \u00b1{VALUE_LIMIT:g}, got {number!r}")
            out[str(feature)] = float(number)
        return dict(sorted(out.items(), key=lambda kv: int(kv[0])))

    def _from_browser(self, check: Any) -> Any:
        def wrapped(value: Any) -> Any:
            try:
                return check(value)
            except NbinterpError as exc:
                raise FrontendError(str(exc)) from None
        return wrapped

    def _browser_steering(self, value: dict[str, float]) -> dict[str, float]:
        """Slider values (their declaration checked the numbers): features this source has, at most STEERED_MAX."""
        return self._from_browser(self._canonical_steering)(value)

    def _frontend_fields(self) -> dict[str, Any]:
        fields = super()._frontend_fields()
        n_tokens = len(self.tokens)
        fields.update(
            selected_token=lambda v: in_range(v, "selected_token", -1, n_tokens),
            selected_feature=lambda v: -1 if v == -1 else in_range(v, "feature", 0, self.n_features),
            steering=self._browser_steering,
            steer_mode=as_declared,
        )
        return fields

    # ------------------------------------------------------------ selection
    @traitlets.observe("selected_feature")
    def _on_feature(self, change: Any) -> None:
        if not self._quiet:
            self._show_feature(change["new"])

    def _show_feature(self, feature: int) -> None:
        if feature < 0:
            self.feature_info = None
            return
        acts = self.features
        values = acts.feature(feature)
        info: dict[str, Any] = {
            "feature": feature, "activation": encode(values, "float32"),
            "max": float(values.max()), "argmax": int(values.argmax()), "min": float(values.min()),
            "direct_label": DIRECT_EFFECT_LABEL, "direct": None, "direct_error": None,
        }
        try:
            effect = acts.direct_logit_effect(feature, 8)
            info["direct"] = {side: [{"token": t, "value": v} for t, v in rows] for side, rows in effect.items()}
        except NbinterpError as exc:  # e.g. a remote model: say why, keep the rest
            info["direct_error"] = str(exc)
        self.feature_info = info
        self._want_contexts(feature)

    # ------------------------------------------------------------ contexts
    def _want_contexts(self, feature: int) -> None:
        if feature < 0:
            return
        with self._context_lock:
            self._wanted = feature
            if self._context_thread is not None or self._closed.is_set():
                return  # the running worker picks up the latest wish
            if self._background:
                # a Worker: stopped and joined at close and at interpreter exit
                self._context_thread = Worker(self._context_work, "nbinterp-features", self._closed.set)
                self._context_thread.start()
                return
            self._context_thread = threading.current_thread()
        self._context_work()

    def _context_work(self) -> None:
        try:
            if self._index is None:
                try:
                    self._index = self.features.context_index(self._corpus, self._context_batch)
                except NbinterpError as exc:
                    self._publish_contexts("unavailable", note=str(exc))
                    with self._context_lock:
                        self._context_thread = None
                    return
            index = self._index
            last = 0.0
            while True:
                if not index.finished and not self._contexts_cancelled:
                    self._publish_contexts("running")
                    for _ in index:
                        now = time.perf_counter()
                        if now - last > PUBLISH_EVERY_S:
                            self._publish_contexts("running")
                            last = now
                        if self._contexts_cancelled or self._closed.is_set():
                            break
                with self._context_lock:
                    wanted = self._wanted
                    if wanted is None or wanted == self._shown_contexts or self._closed.is_set():
                        self._context_thread = None
                        return
                items = index.contexts(wanted, CONTEXTS_SHOWN)
                with self._context_lock:
                    self._shown_contexts = wanted
                state = "done" if index.finished else "cancelled"
                self._publish_contexts(state, feature=wanted, items=[c.to_dict() for c in items])
        except KeyboardInterrupt:
            # a kernel interrupt of a foreground pass: what was counted stays
            # (the index redoes the cut batch), and the next selection starts again
            with self._context_lock:
                self._context_thread = None
            self._publish_contexts("cancelled")
            raise
        except Exception as exc:  # noqa: BLE001 - shown in the view; the kernel keeps working
            with self._context_lock:
                self._context_thread = None
            self._publish_contexts("error", note=str(exc))
            self._show_exception(exc)

    def _publish_contexts(self, state: str, feature: int | None = None, items: list | None = None, note: str = "") -> None:
        index = self._index
        progress = index.progress if index is not None else {}
        payload: dict[str, Any] = {"state": state, "note": note, "tokens_counted": index.tokens_seen if index else 0,
                                   **{k: progress.get(k, 0) for k in ("done_docs", "total_docs", "done_tokens", "total_tokens")},
                                   "feature": None, "items": [], "density": None}
        shown = self.contexts
        if feature is not None:
            payload.update(feature=feature, items=items or [],
                           density=None if not index.tokens_seen else index.density(feature))
        elif shown is not None and shown["feature"] is not None and state == "running":
            # keep what is on screen while the pass advances
            payload.update({k: shown[k] for k in ("feature", "items", "density")})
        self.contexts = payload

    @rpc("cancel_contexts", params={}, result={"cancelled": BOOL})
    def _rpc_cancel(self, params: dict[str, Any]) -> tuple[Any, list[bytes]]:
        self.cancel_contexts()
        return {"cancelled": True}, []

    @rpc("resume_contexts", params={}, result={"resumed": BOOL})
    def _rpc_resume(self, params: dict[str, Any]) -> tuple[Any, list[bytes]]:
        self.resume_contexts()
        return {"resumed": True}, []

    # ------------------------------------------------------------ steering
    @traitlets.observe("steering", "steer_mode")
    def _on_steering(self, _change: Any) -> None:
        if not self._quiet:
            self._rerun()

    def _rerun(self) -> None:
        steering, mode = dict(self.steering), self.steer_mode
        start = time.perf_counter()
        with self._model.lock:
            run = self.features.steer({int(k): v for k, v in steering.items()}, mode)
        self._run = run
        self._latest = self._summary(run, steering, mode, (time.perf_counter() - start) * 1000)
        self._result = self._latest.state()
        if self.error:
            self.error = ""

    def _summary(self, run: Any, steering: dict[str, float], mode: str, compute_ms: float) -> SteeredRun:
        summary = summarize(self._model, run, self.features.run, k=10,
                            target=self.features.target, foil=self.features.foil)
        self._seq += 1
        shown = ", ".join(f"{k}: {v:g}" for k, v in steering.items())
        return SteeredRun(**{f.name: getattr(summary, f.name) for f in fields(summary)}, steering=dict(steering),
                          mode=mode, seq=self._seq, compute_ms=round(compute_ms, 2),
                          code=f"fv.steer({{{shown}}}, mode={mode!r})")

    @rpc("steer", params={"steering": SLIDER_VALUES, "mode": Opt(MODE)}, result={"seq": INT})
    def _rpc_steer(self, params: dict[str, Any]) -> tuple[Any, list[bytes]]:
        """Re-run with the sliders' values: {"steering": {"feature": value}, "mode": "scale" | "clamp"}."""
        steering = self._browser_steering(params["steering"])
        mode = params.get("mode", self.steer_mode)
        with self.hold_sync():
            self._quiet = True
            try:
                self.steer_mode = mode
                self.steering = steering
            finally:
                self._quiet = False
            self._rerun()
        return {"seq": self.result.seq}, []

    # ------------------------------------------------------------ the error
    def _reconstruction_payload(self) -> dict[str, Any]:
        error = self.features.reconstruction_error()
        payload: dict[str, Any] = {
            "fvu": encode(error.fvu, "float32"), "fvu_total": error.fvu_total,
            "metric_clean": error.metric_clean, "metric_reconstructed": error.metric_reconstructed,
            "metric_change": error.metric_change,
            "metric_change_per_token": None if error.metric_change_per_token is None
            else encode(error.metric_change_per_token, "float32"),
            "exact": self.features.source.kind == "neurons",
        }
        return payload

    # ------------------------------------------------------------- export
    def to_figure(self, *, dpi: int = 100) -> Any:
        """The selected feature's activation per token (and the SAE's FVU per token)."""
        sae = self.kind == "sae"
        figure = new_figure(figsize=(max(6, 0.35 * len(self.tokens) + 2), 4.6 if sae else 2.8), dpi=dpi)
        feature = self.selected_feature
        ax = figure.add_subplot(2 if sae else 1, 1, 1)
        values = self.features.feature(feature).numpy() if feature >= 0 else [0.0] * len(self.tokens)
        ax.bar(range(len(self.tokens)), values, color="#3b518b")
        ax.set_xticks(range(len(self.tokens)), [repr(t)[1:-1] for t in self.tokens], rotation=90, fontsize=7)
        ax.set_ylabel("activation")
        ax.set_title(f"{self.model_name} \u00b7 {self.source_label} \u00b7 feature {feature}, measured", fontsize=9)
        if sae:
            ax2 = figure.add_subplot(2, 1, 2)
            ax2.bar(range(len(self.tokens)), self.features.reconstruction_error().fvu.numpy(), color="#b2182b")
            ax2.set_xticks(range(len(self.tokens)), [repr(t)[1:-1] for t in self.tokens], rotation=90, fontsize=7)
            ax2.set_ylabel("FVU")
            ax2.set_title("SAE reconstruction error per token (fraction of variance unexplained, measured)", fontsize=9)
        figure.tight_layout()
        return figure

    def __repr__(self) -> str:
        return (f"FeatureView({self.model_name!r}, {self.source_label}, {len(self.tokens)} tokens, "
                f"feature {self.selected_feature}, steering={self.steering!r})")


@public_call(positional=("layer",))
def features(model: Any, prompt: Any, *, layer: Any = None, sae: Any = None, site: Any = None, target: Any = None,
             foil: Any = None, k: int = 32, corpus: Sequence[Any] | None = None, context_batch_size: int | None = None,
             background: bool = True) -> FeatureView:
    """The features of `prompt`: `ni.features(model, prompt, layer=2)` (MLP
    neurons of layer 2) or `ni.features(model, prompt, sae=sae)` (an SAE's
    latents at its site; any object with encode/decode, site= when it does
    not say where it reads). target=/foil= give the metric the steering and
    the reconstruction error are measured on. Top contexts come from
    `corpus` (default: the bundled model's task texts), in the background.
    The view answers `.activations`, `.top(token, k)`, `.steer({i: v})`."""
    return FeatureView(model, prompt, layer=layer, sae=sae, site=site, target=target, foil=foil, k=k, corpus=corpus,
                       context_batch_size=context_batch_size, background=background)
