"""ProbeView: linear probes on every residual stream (train vs held-out
accuracy, per position as a heatmap when computed) and the usage test per
layer (the metric's change when the probe direction is projected out, next
to control directions that remove as much of the stream; massive-activation
positions left unedited, as the verdict says), with a verdict: present and
used / present, not used / not present. Clicking a layer runs its usage test
in the kernel."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Hashable, Sequence

import torch
import traitlets

from nbinterp.errors import NbinterpError
from nbinterp.representations.probe_usage import Usage, UsageThresholds, parse_metric, usage_test
from nbinterp.representations.probes import DEFAULT_L2, ProbeResult, probe_layers
from ._base import InterpWidget, new_figure, rpc
from ._contract import FLOAT, INT, STR, TENSOR, Choice, ListOf, MapOf, Nullable, Obj
from ._buffers import encode
from nbinterp.vocabulary import public_call

STATIC = Path(__file__).resolve().parent.parent / "static"
PROGRESS_EVERY_S = 0.1

# ---- the traits' and requests' declarations (_contract.py)
THRESHOLDS = Obj({name: FLOAT for name in UsageThresholds.__dataclass_fields__}, name="UsageThresholds")
# Usage.summary(): one usage test, every number named
USAGE_SUMMARY = Obj({
    "layer": INT, "stream": STR, "metric": STR, "scale": FLOAT, "label": Nullable(STR), "n_test": INT,
    "mean_abs_change": FLOAT, "control_mean_abs_change": ListOf(FLOAT),
    "class_means_before": ListOf(FLOAT), "class_means_after": ListOf(FLOAT),
    "gap_before": Nullable(FLOAT), "gap_after": Nullable(FLOAT), "control_gap_after": ListOf(FLOAT),
    "probability_token": Nullable(STR), "probability_before": Nullable(ListOf(FLOAT)),
    "probability_after": Nullable(ListOf(FLOAT)), "test_accuracy": FLOAT, "chance": FLOAT,
    "verdict": STR, "explanation": STR, "forwards": INT, "thresholds": THRESHOLDS,
    # positions left unedited (massive activations) and how that reads; the rms projection
    # of the probe direction and of each control (matched to it) over the edited positions
    "sink_positions": ListOf(INT), "sink_text": STR, "probe_rms": FLOAT, "control_rms": ListOf(FLOAT)},
    name="UsageSummary")
PROGRESS = Obj({"layer": INT, "done": INT, "total": INT, "state": Choice("running", "done", "error")}, name="UsageProgress")


class ProbeView(InterpWidget):
    """Probes of one labelled prompt set; see `nbinterp.probe`."""

    _esm = STATIC / "probe.js"

    model_name = traitlets.Unicode("").tag(sync=True)
    stream_labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    classes = traitlets.List(traitlets.Unicode()).tag(sync=True)
    n_train = traitlets.Int(0).tag(sync=True)
    n_test = traitlets.Int(0).tag(sync=True)
    position = traitlets.Int(-1).tag(sync=True)
    chance = traitlets.Float(0.0).tag(sync=True)
    metric_label = traitlets.Unicode("").tag(sync=True)
    thresholds = traitlets.Dict().tag(sync=True, schema=THRESHOLDS)
    position_labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    usage_results = traitlets.Dict().tag(sync=True, schema=MapOf(USAGE_SUMMARY))  # str(layer) -> Usage.summary()
    selected_layer = traitlets.Int(-1).tag(sync=True)
    # the usage test running or last run; null before the first
    progress = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True, schema=Nullable(PROGRESS))
    # probe accuracy per stream, float32 [streams] each
    _accuracy = traitlets.Dict().tag(sync=True, schema=Obj({"train": TENSOR, "test": TENSOR}))
    # held-out accuracy per stream and position, float32 [streams, positions]; null unless all_positions
    _position_accuracy = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True, schema=Nullable(TENSOR))

    def __init__(self, model: Any, result: ProbeResult, metric: Any = None, *, n_controls: int = 5, seed: int = 0,
                 thresholds: UsageThresholds = UsageThresholds()) -> None:
        self.model = model
        self.result = result
        self.metric = metric
        self.n_controls = n_controls
        self.seed = seed
        self.usage_thresholds = thresholds
        self.results: dict[int, Usage] = {}
        metric_label = parse_metric(model, metric)[2] if metric is not None else ""
        position_accuracy = None
        position_labels: list[str] = []
        if result.position_accuracy is not None:
            position_accuracy = encode(result.position_accuracy, "float32")
            position_labels = [f"{o} {t}".strip() for o, t in zip(result.position_offsets, result.position_tokens)]
        super().__init__(
            model_name=str(getattr(model, "name", "")), stream_labels=result.stream_labels,
            classes=[str(c) for c in result.classes], n_train=len(result.train_index), n_test=len(result.test_index),
            position=result.position, chance=result.chance, metric_label=metric_label,
            thresholds={name: getattr(thresholds, name) for name in thresholds.__dataclass_fields__},
            position_labels=position_labels,
            _accuracy={"train": encode(result.train_accuracy, "float32"), "test": encode(result.test_accuracy, "float32")},
            _position_accuracy=position_accuracy,
        )

    # ------------------------------------------------------------- Python API
    @property
    def accuracy(self) -> dict[str, dict[str, float]]:
        """{stream: {"train": accuracy, "test": held-out accuracy}}."""
        r = self.result
        return {label: {"train": float(r.train_accuracy[s]), "test": float(r.test_accuracy[s])}
                for s, label in enumerate(r.stream_labels)}

    @property
    def best_layer(self) -> int:
        return self.result.best_layer

    def direction(self, layer: int | None = None, label: Hashable | None = None) -> torch.Tensor:
        """The probe's unit direction at `layer` (default the best held-out layer), float32 [d_model]."""
        return self.result.direction(self._layer(layer), label)

    def usage(self, layer: int | None = None, *, label: Hashable | None = None, scale: float = 0.0,
              probabilities: bool = True) -> Usage:
        """Run the usage test at `layer` (default the best held-out layer); the view shows it."""
        try:
            return self._run_usage(self._layer(layer), label=label, scale=scale, probabilities=probabilities)
        except NbinterpError as exc:
            self.error = str(exc)
            raise

    def _layer(self, layer: Any) -> int:
        if layer is None:
            return self.result.best_layer
        last = len(self.result.stream_labels) - 1
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= last:
            raise NbinterpError(f"layer {layer!r} is out of range: the probes sit on streams 0..{last} "
                                f"({', '.join(self.result.stream_labels)})")
        return layer

    def _run_usage(self, layer: int, *, label: Hashable | None = None, scale: float = 0.0,
                   probabilities: bool = True) -> Usage:
        if self.metric is None:
            raise NbinterpError("this view has no metric: make it with ni.probe(model, prompts, labels=labels, target=..., foil=...)")
        last_sent = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.perf_counter()
            if done == total or now - last_sent[0] >= PROGRESS_EVERY_S:
                last_sent[0] = now
                self.progress = {"layer": layer, "done": done, "total": total, "state": "running"}

        self.progress = {"layer": layer, "done": 0, "total": 1, "state": "running"}
        try:
            usage = usage_test(self.model, self.result, layer, self.metric, label=label, scale=scale,
                               n_controls=self.n_controls, seed=self.seed, thresholds=self.usage_thresholds,
                               probabilities=probabilities, progress=progress)
        except Exception:
            self.progress = {**self.progress, "state": "error"}
            raise
        self.results[layer] = usage
        self.usage_results = {**self.usage_results, str(layer): usage.summary()}
        self.selected_layer = layer
        self.progress = {**self.progress, "state": "done"}
        self.error = ""
        return usage

    # ------------------------------------------------------------- messages
    @rpc("usage", params={"layer": INT}, result=USAGE_SUMMARY)
    def _usage_request(self, params: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
        try:
            usage = self._run_usage(self._layer(params["layer"]))
        except NbinterpError as exc:
            self.error = str(exc)
            raise
        return usage.summary(), []

    # ------------------------------------------------------------- pictures
    def to_figure(self, *, dpi: int = 100) -> Any:
        """Accuracy per stream (train, held-out, chance) and the usage results measured so far."""
        r = self.result
        figure = new_figure(figsize=(8.0, 3.2), dpi=dpi)
        ax, ax_usage = figure.subplots(1, 2)
        x = range(len(r.stream_labels))
        ax.plot(x, r.train_accuracy.numpy(), "o-", label="train")
        ax.plot(x, r.test_accuracy.numpy(), "s-", label="held-out")
        ax.axhline(r.chance, color="#888", ls=":", label="chance (majority)")
        ax.set_xticks(list(x), r.stream_labels)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("probe accuracy")
        ax.set_title(f"{' vs '.join(map(str, r.classes))} \u00b7 position {r.position}", fontsize=9)
        ax.legend(fontsize=7)
        layers = sorted(self.results)
        if layers:
            ax_usage.bar([r.stream_labels[l] for l in layers], [self.results[l].mean_abs_change for l in layers],
                         color="#3b518b", label="probe direction")
            ax_usage.scatter([r.stream_labels[l] for l in layers],
                             [float(self.results[l].control_mean_abs_change.max()) for l in layers],
                             color="#d62728", marker="_", s=400, label="largest random direction")
            ax_usage.legend(fontsize=7)
        ax_usage.set_ylabel("mean |change| after projecting out")
        ax_usage.set_title(self.metric_label or "usage: no metric", fontsize=9)
        figure.tight_layout()
        return figure

    def __repr__(self) -> str:
        best = self.result.best_layer
        return (f"ProbeView({self.model_name!r}, {' vs '.join(self.classes)}, best held-out "
                f"{self.result.stream_labels[best]} {float(self.result.test_accuracy[best]):.2f})")


@public_call(positional=("labels", "metric"))
def probe(
    model: Any,
    prompts: Sequence[Any],
    *,
    labels: Sequence[Hashable],
    target: Any = None,
    foil: Any = None,
    metric: Any = None,
    position: int = -1,
    all_positions: bool = False,
    test_fraction: float = 0.3,
    seed: int = 0,
    l2: float = DEFAULT_L2,
    n_controls: int = 5,
    usage_layer: int | str | None = "best",
    thresholds: UsageThresholds = UsageThresholds(),
) -> ProbeView:
    """Linear probes on every residual stream, and the usage test:
    `pr = ni.probe(model, prompts, labels=labels, target="doctor", foil="nurse")`.

    Probes read `position` (each prompt's last token by default; with
    `all_positions`, held-out accuracy at every end-aligned position too);
    the usage test measures logit(target) - logit(foil) at the last token;
    `usage_layer` ("best", a layer, or None) is tested right away, any other
    on `pr.usage(layer)` or a click. `pr.accuracy`, `pr.direction(layer)`,
    `pr.results[layer]` (a `Usage`) hold the numbers. (`metric=(target, foil)`
    is the earlier spelling: it still works for one release.)"""
    if metric is not None:
        if target is not None or foil is not None:
            raise NbinterpError("probe() got both metric= and target=/foil=: write target= and foil= only")
        warnings.warn("probe(): metric=(target, foil) is now target=..., foil=... (the same names in every call); "
                      "metric= goes in the next release", DeprecationWarning, stacklevel=3)
    elif target is not None:
        metric = target if foil is None else (target, foil)
    elif foil is not None:
        raise NbinterpError("a foil needs a target: ni.probe(model, prompts, labels=labels, target='doctor', foil='nurse')")
    if metric is not None:
        parse_metric(model, metric)  # a bad token fails before the capture
    result = probe_layers(model, prompts, labels, position=position, all_positions=all_positions,
                          test_fraction=test_fraction, seed=seed, l2=l2)
    view = ProbeView(model, result, metric, n_controls=n_controls, seed=seed, thresholds=thresholds)
    if metric is not None and usage_layer is not None:
        view.usage(None if usage_layer == "best" else usage_layer)
    return view
