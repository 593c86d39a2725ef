"""AblationPanel: a layer x head grid of scale sliders (plus one per MLP),
zero or mean ablation; every change re-runs the model and shows the top-k
next tokens before vs after and the target-minus-foil logit difference.

The browser coalesces slider moves (one run in flight, the latest value
waiting), so the kernel never works through a queue of stale values; the
front end always ends on the result of the final values."""

from __future__ import annotations

import numbers
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import traitlets

from nbinterp.interventions.ablation import (
    ABLATION_MODES, AblationSummary, ablated_run, ablation_code, canonical_ablations, summarize,
)
from nbinterp.engine.plan import check_position
from nbinterp.engine.run import Run
from nbinterp.errors import NbinterpError
from nbinterp.engine.tokens import display_text
from nbinterp.vocabulary import public_call
from ._base import DictAccessDeprecated, FrontendError, InterpWidget, as_declared, new_figure, rpc
from ._contract import FLOAT, INT, STR, Choice, ListOf, MapOf, Nullable, Number, Obj, Opt
from .dataset_view import DatasetView, is_data_set, over_data_set, refuse_options

STATIC = Path(__file__).resolve().parent.parent / "static"
SCALE_RANGE = (0.0, 1.5)  # the sliders' range; Python may set any finite scale
MODE = Choice(*ABLATION_MODES)
TOKEN_PROBABILITY = Obj({"token": STR, "id": INT, "probability": FLOAT, "before": FLOAT}, name="TokenProbability")
# PanelRun.state(): nbinterp.interventions.ablation.AblationSummary + what the panel adds
SUMMARY = Obj({
    "ablations": MapOf(FLOAT), "ablation": MODE, "top_k": ListOf(TOKEN_PROBABILITY),
    "logit_diff": Nullable(FLOAT), "target_probability": Nullable(FLOAT), "foil_probability": Nullable(FLOAT),
    "target": Nullable(TOKEN_PROBABILITY), "foil": Nullable(TOKEN_PROBABILITY),
    "seq": INT, "compute_ms": FLOAT, "code": STR,
}, name="AblationSummary")
# what the sliders may send: the message names the entry as the user sees it
SLIDER_SCALES = MapOf(Number(low=SCALE_RANGE[0], high=SCALE_RANGE[1]), entry="the scale of {key}")


@dataclass
class PanelRun(AblationSummary, DictAccessDeprecated):
    """The panel's latest run (`panel.result`; `panel.baseline` without
    ablations): the next-token summary, numbered, timed and as code."""

    seq: int = 0
    compute_ms: float = 0.0
    code: str = ""  # the model.run(...) call that repeats it

    def state(self) -> dict[str, Any]:
        """As the panel's trait (SUMMARY)."""
        return asdict(self)


class AblationPanel(InterpWidget):
    """Live head / MLP ablation of one prompt; see `nbinterp.ablate`."""

    _esm = STATIC / "ablation.js"

    model_name = traitlets.Unicode("").tag(sync=True)
    prompt = traitlets.Unicode("").tag(sync=True)
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    n_layers = traitlets.Int(1).tag(sync=True)
    n_heads = traitlets.Int(1).tag(sync=True)
    target = traitlets.Unicode(None, allow_none=True).tag(sync=True)
    foil = traitlets.Unicode(None, allow_none=True).tag(sync=True)
    # component -> scale; the browser's come from the sliders
    ablations = traitlets.Dict().tag(sync=True, schema=MapOf(FLOAT), from_browser=SLIDER_SCALES)
    ablation = traitlets.Unicode("zero").tag(sync=True, schema=MODE)
    # PanelRun.state() of .result and .baseline (set in __init__: never null on screen)
    _result = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True, schema=Nullable(SUMMARY))
    _baseline = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True, schema=Nullable(SUMMARY))

    def __init__(self, model: Any, prompt: Any, *, target: Any = None, foil: Any = None, position: int = -1,
                 k: int = 10, ablations: dict | None = None, ablation: str = "zero",
                 reference: Sequence[str] | None = None) -> None:
        if isinstance(prompt, Run):
            # a run's tokens; its own ablations (if any) are where the sliders start
            if ablations is None and isinstance(prompt.interventions.get("ablate"), dict):
                ablations = prompt.interventions["ablate"]
                ablation = prompt.interventions.get("ablation") or ablation
                reference = reference or prompt.interventions.get("reference")
            prompt = tuple(prompt.token_ids)
        if isinstance(prompt, list):
            prompt = tuple(prompt)  # hashable: mean references are cached by prompt
        if not isinstance(prompt, str) and not (isinstance(prompt, (list, tuple)) and prompt):
            raise NbinterpError("the ablation panel takes a prompt (text, token ids or a Run), e.g. "
                                "ni.ablate(model, 'When Mary and John ...')")
        if not isinstance(k, numbers.Integral) or not 1 <= k <= 50:
            raise NbinterpError(f"k (how many next tokens to show) must be an integer from 1 to 50, not {k!r}")
        self._model = model
        self._input_ids = model.tokenize(prompt)
        self._position = check_position(position, self._input_ids.shape[1])
        self._k = int(k)
        self._reference = list(reference) if reference else [prompt]
        self._prompt = prompt  # as the user gave it: what the copied model.run(...) call repeats
        self._target, self._foil = target, foil
        self._seq = 0
        self._quiet = False  # set while an RPC sets traits, so observers don't run twice
        for token in (target, foil):
            if token is not None:
                model.token_id(token)
        if foil is not None and target is None:
            raise NbinterpError("a foil needs a target: ni.ablate(model, prompt, target=' Mary', foil=' John')")
        names = lambda t: None if t is None else (t if isinstance(t, str) else model.tokenizer.decode([t]))  # noqa: E731
        super().__init__(
            model_name=str(getattr(model, "name", "")),
            prompt=prompt if isinstance(prompt, str) else model.tokenizer.decode(list(prompt)),
            tokens=display_text(model.tokenizer, self._input_ids[0].tolist()),
            n_layers=model.n_layers, n_heads=model.n_heads, target=names(target), foil=names(foil),
        )
        with model.lock:
            self._baseline_run = ablated_run(model, self._input_ids, {}, position=self._position)
        self._baseline_summary = self._summary(self._baseline_run, {}, "zero", 0.0)
        self._baseline = self._baseline_summary.state()
        self._quiet = True
        try:
            self.ablation = ablation
            self.ablations = ablations or {}
        finally:
            self._quiet = False
        self._rerun()

    # ------------------------------------------------------------ public
    @property
    def model(self) -> Any:
        return self._model

    @property
    def code(self) -> str:
        """The `model.run(...)` call that reproduces the current result."""
        return ablation_code(self._prompt, self.ablations, self.ablation, self._reference)

    @property
    def result(self) -> PanelRun:
        """The latest run: next tokens and the metric with the ablations on."""
        return self._latest

    @property
    def baseline(self) -> PanelRun:
        """The run without ablations."""
        return self._baseline_summary

    def reset(self) -> None:
        """Back to the unablated model."""
        self.ablations = {}

    # -------------------------------------------------------- validation
    @traitlets.validate("ablations")
    def _valid_ablations(self, proposal: Any) -> dict[str, float]:
        return canonical_ablations(self._model, proposal["value"])

    @traitlets.validate("ablation")
    def _valid_mode(self, proposal: Any) -> str:
        return proposal["value"] if proposal["value"] in ABLATION_MODES else _bad_mode(proposal["value"])

    def _frontend_fields(self) -> dict[str, Any]:
        fields = super()._frontend_fields()
        fields.update(ablations=self._check_from_browser, ablation=as_declared)
        return fields

    def _check_from_browser(self, value: dict[str, float]) -> dict[str, float]:
        """The sliders' values (SLIDER_SCALES checked the numbers): components this model has."""
        if len(value) > self.n_layers * (self.n_heads + 1):
            raise FrontendError(f"ablations has {len(value)} entries; this model has only {self.n_layers * (self.n_heads + 1)} components")
        try:
            return canonical_ablations(self._model, value)
        except NbinterpError as exc:
            raise FrontendError(str(exc)) from None

    # ------------------------------------------------------------ running
    @traitlets.observe("ablations", "ablation")
    def _on_change(self, _change: Any) -> None:
        if not self._quiet:
            self._rerun()

    def _rerun(self) -> None:
        ablations, mode = dict(self.ablations), self.ablation
        start = time.perf_counter()
        with self._model.lock:
            run = ablated_run(self._model, self._input_ids, ablations, mode, self._reference, self._position)
        self._run = run
        self._latest = self._summary(run, ablations, mode, (time.perf_counter() - start) * 1000)
        self._result = self._latest.state()
        if self.error:
            self.error = ""

    def _summary(self, run: Any, ablations: dict[str, float], mode: str, compute_ms: float) -> PanelRun:
        summary = summarize(self._model, run, getattr(self, "_baseline_run", None), k=self._k, target=self._target,
                            foil=self._foil, ablations=ablations, ablation=mode, position=self._position)
        self._seq += 1
        return PanelRun(**{f.name: getattr(summary, f.name) for f in fields(summary)}, seq=self._seq,
                        compute_ms=round(compute_ms, 2), code=ablation_code(self._prompt, ablations, mode, self._reference))

    @rpc("run", params={"ablations": SLIDER_SCALES, "ablation": Opt(MODE)}, result={"seq": INT})
    def _rpc_run(self, params: dict[str, Any]) -> tuple[Any, list[bytes]]:
        """Re-run with the sliders' values: {"ablations": {...}, "ablation": "zero" | "mean"}."""
        ablations = self._check_from_browser(params["ablations"])
        mode = params.get("ablation", self.ablation)
        # One state message for the three traits, then the reply: fewer hops on a busy machine.
        with self.hold_sync():
            self._quiet = True
            try:
                self.ablation = mode
                self.ablations = ablations
            finally:
                self._quiet = False
            self._rerun()
        return {"seq": self.result.seq}, []

    # ------------------------------------------------------------- export
    def to_figure(self, *, dpi: int = 100) -> Any:
        """Top-k bars before vs after, and the logit difference in the title."""
        before, after = self.baseline.top_k, self.result.top_k
        figure = new_figure(figsize=(9, 0.35 * max(len(after), 4) + 1.2), dpi=dpi)
        for column, (entries, title, colour) in enumerate(((before, "before", "#9aa5b8"), (after, "after", "#3b518b"))):
            ax = figure.add_subplot(1, 2, column + 1)
            labels = [repr(e.token) for e in entries][::-1]
            ax.barh(range(len(entries)), [e.probability for e in entries][::-1], color=colour)
            if column == 1:
                ax.scatter([e.before for e in entries][::-1], range(len(entries)), marker="|", color="#222", s=120, label="before")
                ax.legend(loc="lower right", fontsize=7)
            ax.set_yticks(range(len(entries)), labels, fontsize=8)
            ax.set_xlim(0, 1)
            ax.set_xlabel("probability of the next token")
            ax.set_title(title)
        ablated = ", ".join(f"{k}={v:g}" for k, v in self.ablations.items()) or "nothing"
        title = f"{self.model_name} \u00b7 ablated: {ablated} ({self.ablation})"
        if self.result.logit_diff is not None:
            what = f"logit({self.target!r}) - logit({self.foil!r})" if self.foil is not None else f"logit({self.target!r})"
            title += f"\n{what}: {self.baseline.logit_diff:.3f} \u2192 {self.result.logit_diff:.3f}"
        figure.suptitle(title, fontsize=9)
        figure.tight_layout()
        return figure

    def __repr__(self) -> str:
        return f"AblationPanel({self.model_name!r}, {len(self.tokens)} tokens, ablations={self.ablations!r}, ablation={self.ablation!r})"


def _bad_mode(value: Any) -> str:
    raise NbinterpError(f"ablation must be 'zero' or 'mean' (towards the reference prompts' mean), not {value!r}")


@public_call(positional=("target", "foil"), renamed={"ablations": "ablate"})
def ablate(model: Any, prompt: Any, *, target: Any = None, foil: Any = None, position: int = -1, k: int = 10,
           ablate: dict | None = None, ablation: str = "zero", reference: Sequence[str] | None = None) -> AblationPanel | DatasetView:
    """Sliders that scale every head (0..1.5) and MLP of `model` on `prompt` (text, token ids or a `Run`):
    `panel = ni.ablate(model, "When Mary and John went to the store, John gave a drink to", target=" Mary", foil=" John")`.

    `ablate=` sets the starting scales ({"L3.H1": 0.0, "L2.mlp": 0.5}, as in `model.run(ablate=)`);
    `position` is where the next tokens and logit(target) - logit(foil) are read (the last token by default).
    ablation="mean" moves heads towards their mean output over `reference`
    prompts (default: the prompt itself) instead of zero; MLPs always scale
    towards zero. `panel.ablations` is two-way; `panel.result` the latest run.

    Over a data set (a `PromptSet`, a DataFrame or {group: [prompts]}; target=
    / foil= replace the rows' own): the sliders are for one prompt, so the
    ablations are a fixed set: each component of `ablate=` alone at its scale
    and, with several, all together (none given: every head and MLP
    zero-ablated alone), one cell each with its mean effect on logit(target) -
    logit(foil) over the rows and a 95% bootstrap interval (zero ablation only;
    clicking a row opens this panel on it)."""
    if is_data_set(prompt):
        refuse_options("ni.ablate", position=(position, -1), k=(k, 10), ablation=(ablation, "zero"),
                       reference=(reference, None))
        return over_data_set("ablate", model, prompt, target=target, foil=foil, ablate=ablate)
    return AblationPanel(model, prompt, target=target, foil=foil, position=position, k=k, ablations=ablate,
                         ablation=ablation, reference=reference)
