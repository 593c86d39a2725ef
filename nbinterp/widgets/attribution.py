"""AttributionView: which heads and which query->key edges change the answer.

A signed head-effect grid, the chosen head's edge-effect matrix over its
attention pattern, the ranked edges, and "verify": exact knockouts /
ablations run on request, estimate vs measured with the summary errors.

The estimates (one forward + one backward) are shown at once; the hybrid's
exact measurements (every head's ablation first, then the dominant edges,
largest |estimate| first, within the budget) then stream in from a
background thread, batch by batch, with progress and a cancel. Every number
says what it is, as it arrives: "measured" only once measured, "estimate
(will be measured)" while queued, "estimate (not measured: budget)" outside
the budget, and after a cancel "not measured: cancelled". The
computation lives in `nbinterp.analysis.attribution`; this view also answers
`.heads`, `.edges`, `.verify(k)`, `.qk(...)` like the `Attribution` it holds
(those wait for the measurements)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import traitlets

from nbinterp.analysis.attribution import (
    DOMINANT, MEASURED, METHODS, NOT_DOMINANT, OUT_OF_BUDGET, Attribution, compute_attribution,
)
from nbinterp.analysis.estimate_stats import Verification
from nbinterp.errors import NbinterpError
from ._background import BackgroundJob
from ._base import CancelResume, HeadWidget, as_declared, in_range, new_figure, rpc
from ._contract import BOOL, FLOAT, INT, STR, TENSOR, Choice, ListOf, Nullable, Number, Obj
from ._buffers import encode
from .dataset_view import DatasetView, is_data_set, over_data_set, refuse_options
from .attention import display_tokens
from nbinterp.engine.tokens import display_token
from nbinterp.vocabulary import public_call

STATIC = Path(__file__).resolve().parent.parent / "static"
RANKED_EDGES_SHOWN = 50
MAX_VERIFY_K = 500
PUBLISH_EVERY_S = 0.25  # streaming granularity of the measurements

# What each method's numbers are, in the words the view, the notebook and the README use.
HEAD_LABELS = {
    "hybrid": "zero-ablation effect (every head measured in turn; gradient x activation estimate until then)",
    "qk_fix": "zero-ablation effect, estimated (gradient x activation)",
    "linear": "zero-ablation effect, estimated (gradient x activation)",
}
EDGE_LABELS = {
    "hybrid": "knockout effect: dominant edges measured largest estimate first within the budget (outlined), "
              "QK-fix estimate elsewhere",
    "qk_fix": "knockout effect, QK-fix estimate (AtP*)",
    "linear": "knockout effect, linear estimate (-gradient x probability)",
}
EDGE_ESTIMATE_WORDS = {"qk_fix": "estimate (QK fix)", "linear": "estimate (linear)"}
ESTIMATE_NAMES = {"qk_fix": "QK-fix estimate", "linear": "linear estimate",
                  "gradient x activation": "gradient x activation estimate"}

# ---- the traits' and requests' declarations (_contract.py): named fields throughout
METHOD = Choice(*METHODS)
STATES = ("running", "done", "cancelled", "error")
VERIFIED_KINDS = Choice("edge knockout", "head ablation")
PROGRESS = Obj({"done": INT, "total": INT, "heads_total": INT, "state": Choice(*STATES), "elapsed_s": FLOAT},
               name="AttributionProgress")
# `pending`: what every head not measured (yet) is, e.g. "estimate (will be measured)"
HEAD_EFFECTS = Obj({"method": METHOD, "label": STR, "tensor": TENSOR, "measured": TENSOR, "pending": STR},
                   name="HeadEffects")
# `status` uint8 [T, T]: each cell's index into `status_labels` (what that number is)
EDGE_MATRIX = Obj({"layer": INT, "head": INT, "method": METHOD, "label": STR, "effect": TENSOR, "measured": TENSOR,
                   "status": TENSOR, "status_labels": ListOf(STR), "attention": TENSOR}, name="EdgeMatrix")
RANKED_EDGE = Obj({"layer": INT, "head": INT, "query": INT, "key": INT, "effect": FLOAT, "measured": BOOL,
                   "status": STR}, name="RankedEdge")
RANKED_EDGES = Obj({"method": METHOD, "label": STR, "rows": ListOf(RANKED_EDGE)}, name="RankedEdges")
# one verified edge (query, key set) or head (query, key null)
VERIFIED_ROW = Obj({"layer": INT, "head": INT, "query": Nullable(INT), "key": Nullable(INT), "estimate": FLOAT,
                    "measured": FLOAT}, name="VerifiedRow")
ESTIMATE_SUMMARY = Obj({"spearman": Nullable(FLOAT), "recall_at_k": Nullable(FLOAT), "k": INT, "mae": Nullable(FLOAT),
                        "n": INT, "scope": STR}, name="EstimateSummary")
VERIFICATION = Obj({"kind": VERIFIED_KINDS, "method": STR, "view_method": Nullable(METHOD), "label": STR,
                    "seconds": FLOAT, "clean_metric": FLOAT, "summary": ESTIMATE_SUMMARY,
                    "rows": ListOf(VERIFIED_ROW)}, name="VerificationState")
VERIFIED = {"kind": VERIFIED_KINDS, "n": INT, "seconds": FLOAT}  # every verify request's reply


def edge_matrix(attribution: Attribution, layer: int, head: int, method: str) -> torch.Tensor:
    """[T, T] knockout effect of one head's edges (0 where none exists)."""
    return torch.nan_to_num(attribution.edge_map(layer, head, method), nan=0.0)


def measured_mask(attribution: Attribution, layer: int, head: int, method: str) -> torch.Tensor:
    """bool [T, T]: the entries of `method` that are exact knockouts, not estimates."""
    if method == "hybrid":
        return attribution.exact_map(layer, head)
    n = len(attribution.run)
    return torch.zeros(n, n, dtype=torch.bool)


def edge_status_map(attribution: Attribution, layer: int, head: int, method: str) -> tuple[torch.Tensor, list[str]]:
    """uint8 [T, T] index of each cell's status into the returned labels."""
    n = len(attribution.run)
    codes = torch.zeros(n, n, dtype=torch.uint8)
    if method != "hybrid":
        return codes, [EDGE_ESTIMATE_WORDS[method]]
    dominant = attribution.summary.dominant
    mine = dominant[(dominant[:, 0] == layer) & (dominant[:, 1] == head)]
    codes[mine[:, 2], mine[:, 3]] = 1
    codes[attribution.queued_map(layer, head)] = 2
    codes[attribution.exact_map(layer, head)] = 3
    return codes, [NOT_DOMINANT, OUT_OF_BUDGET, attribution.pending_status(), MEASURED]


def ranked_edges(attribution: Attribution, method: str, k: int = RANKED_EDGES_SHOWN) -> list[dict[str, Any]]:
    """The top k edges, largest |effect| first, as named rows (RANKED_EDGE)."""
    return [{"layer": e.layer, "head": e.head, "query": e.query, "key": e.key, "effect": float(e.estimate),
             "measured": bool(e.measured),
             "status": attribution.edge_status(*e[:4]) if method == "hybrid" else EDGE_ESTIMATE_WORDS[method]}
            for e in attribution.top_edges(k, method)]


def pending_head_words(attribution: Attribution, method: str) -> str:
    """What a head not measured (yet) is, in the view's words."""
    if method != "hybrid":
        return "estimate (gradient x activation)"
    return attribution.pending_status() if attribution.measurement.heads else OUT_OF_BUDGET


def verification_label(v: Verification) -> str:
    """What was compared with what, in words."""
    estimate = ESTIMATE_NAMES.get(v.method, f"{v.method} estimate")
    if v.kind == "head ablation":
        return f"head ablation: {estimate} vs measured zero ablation"
    if v.extra.get("view_method") == "hybrid":
        return f"edge knockout: the hybrid's {estimate}s vs measured knockout"
    return f"edge knockout: {estimate} vs measured knockout"


def verification_state(v: Verification) -> dict[str, Any]:
    """A verification as a trait value (VERIFICATION): one named row per edge or head."""
    s = v.summary
    finite = lambda x: None if not np.isfinite(x) else float(x)  # noqa: E731
    rows = [{"layer": int(key[0]), "head": int(key[1]),
             "query": int(key[2]) if len(key) == 4 else None, "key": int(key[3]) if len(key) == 4 else None,
             "estimate": float(e), "measured": float(m)} for key, e, m in zip(v.keys, v.estimate, v.measured)]
    return {
        "kind": v.kind, "method": v.method, "view_method": v.extra.get("view_method"),
        "label": verification_label(v), "seconds": v.seconds, "clean_metric": v.clean_metric,
        "summary": {"spearman": finite(s.spearman), "recall_at_k": finite(s.recall_at_k), "k": s.k,
                    "mae": finite(s.mae), "n": s.n, "scope": s.scope},
        "rows": rows,
    }


class AttributionView(CancelResume, HeadWidget):
    """Head and edge effects of one prompt on logit(target) - logit(foil);
    see `nbinterp.attribute`."""

    _esm = STATIC / "attribution.js"

    target = traitlets.Unicode("").tag(sync=True)
    foil = traitlets.Unicode("").tag(sync=True)
    metric = traitlets.Float(0.0).tag(sync=True)
    method = traitlets.Unicode("hybrid").tag(sync=True, schema=METHOD)
    progress = traitlets.Dict({"done": 0, "total": 0, "heads_total": 0, "state": "running", "elapsed_s": 0.0}).tag(
        sync=True, schema=PROGRESS)
    _heads = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True, schema=Nullable(HEAD_EFFECTS))
    _edge_matrix = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True, schema=Nullable(EDGE_MATRIX))
    _edges = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True, schema=Nullable(RANKED_EDGES))
    _verification = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True, schema=Nullable(VERIFICATION))

    def __init__(self, attribution: Attribution, *, layer: int | None = None, head: int | None = None,
                 background: bool = True) -> None:
        self._attribution = attribution
        self._send_lock = threading.RLock()  # the measuring thread and the kernel both send
        model = attribution.model
        self._job = BackgroundJob("nbinterp-attribution", model.lock, self._publish_updates, self._show_exception,
                                  PUBLISH_EVERY_S)
        if layer is None or head is None:
            top = attribution.top_edges(1)
            best = top[0][:2] if top else (0, 0)
            layer = best[0] if layer is None else layer
            head = best[1] if head is None else head
        layer, head = model.check_layer(layer), model.check_head(head)
        super().__init__(
            model_name=str(getattr(model, "name", "")), tokens=display_tokens(attribution.run),
            n_layers=model.n_layers, n_heads=model.n_heads, target=_token_text(model, attribution.target),
            foil="" if attribution.foil is None else _token_text(model, attribution.foil), metric=attribution.metric,
            method=attribution.method, layer=layer, head=head,
        )
        self._publish("done" if attribution.finished else "running")
        if not attribution.finished:
            self._start(background)

    # -------------------------------------------- the Attribution's own API
    @property
    def result(self) -> Attribution:
        """The analysis (every view's numbers are its `.result`); measurements may still be streaming in."""
        return self._attribution

    @property
    def attribution(self) -> Attribution:
        return self._attribution

    @property
    def heads(self) -> torch.Tensor:
        """[layers, heads] effect of zero-ablating each head, for the view's
        method: measured ("hybrid") or gradient x activation. Waits for the measurements."""
        self.wait()
        return self._attribution.head_effects(self.method)

    @property
    def edges(self) -> list:
        """Top edges (layer, head, query, key, effect, measured) of the view's method."""
        self.wait()
        return self._attribution.top_edges(self._attribution.n_top, self.method)

    @property
    def run(self) -> Any:
        return self._attribution.run

    def top_edges(self, k: int | None = None, method: str | None = None, **where: Any) -> list:
        self.wait()
        return self._attribution.top_edges(k, method or self.method, **where)

    def edge_map(self, layer: int, head: int, method: str | None = None) -> torch.Tensor:
        return self._attribution.edge_map(layer, head, method or self.method)

    def verify(self, k: int = 20, method: str | None = None, edges: Sequence | None = None, pool: int | None = None) -> Verification:
        """Exact knockouts of the top-k edges (see `Attribution.verify`); the view shows the result."""
        result = self._attribution.verify(k, method or self.method, edges, pool)
        self._verification = verification_state(result)
        return result

    def verify_heads(self, k: int = 10, heads: Sequence | None = None) -> Verification:
        """Gradient x activation against each head's measured zero ablation."""
        result = self._attribution.verify_heads(k, heads)
        result.extra["view_method"] = self.method
        self._verification = verification_state(result)
        return result

    def exhaustive_edges(self, rows: int | None = None) -> Any:
        return self._attribution.exhaustive_edges(rows)

    def compare(self, exact: Any, k: int = 10, method: str | None = None) -> Any:
        self.wait()
        return self._attribution.compare(exact, k, method or self.method)

    def qk(self, layer: int, head: int, query: int, key: int) -> Any:
        return self._attribution.qk(layer, head, query, key)

    # -------------------------------------------------------- measurements
    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until the measurements stop; True if every one is done."""
        self._job.wait(timeout)
        return self._attribution.finished

    def cancel(self) -> None:
        """Stop measuring after the batch in flight; `resume()` continues."""
        self._attribution.cancel()

    def resume(self, background: bool = True) -> None:
        if self._attribution.finished or self._job.running:
            return
        self._start(background)

    def _start(self, background: bool) -> None:
        self._job.start(self._attribution.measure, lambda: self._attribution.finished, background,
                        self.progress.get("elapsed_s", 0.0))

    def _publish_updates(self, state: str, updates: list) -> None:
        """What the measured batches since the last publish changed: the head grid,
        the ranked edges, the matrix on screen."""
        heads = any(len(key) == 2 for u in updates for key in u.keys) or state != "running"
        edges = any(len(key) == 4 for u in updates for key in u.keys) or state != "running"
        matrix = any(key[:2] == (self.layer, self.head) for u in updates for key in u.keys) or state != "running"
        if state == "error":
            heads = edges = matrix = False
        self._publish(state, heads, edges, matrix)

    def _publish(self, state: str, heads: bool = True, edges: bool = True, matrix: bool = True) -> None:
        with self._send_lock:
            if heads:
                self._send_heads()
            if edges:
                self._send_edges()
            if matrix:
                self._send_matrix()
            m = self._attribution.measurement
            self.progress = {"done": m.done, "total": m.total, "heads_total": len(m.heads), "state": state,
                             "elapsed_s": round(self._job.elapsed(), 3)}

    # ----------------------------------------------------------- validation
    @property
    def _model(self) -> Any:
        return self._attribution.model

    def _frontend_fields(self) -> dict[str, Any]:
        fields = super()._frontend_fields()
        fields.update(method=as_declared)
        return fields

    @traitlets.validate("method")
    def _valid_method(self, proposal: Any) -> str:
        if proposal["value"] not in METHODS:  # Python's own assignments; the browser's pass the declaration first
            raise NbinterpError(f"method must be one of {METHODS}, not {proposal['value']!r}")
        return proposal["value"]

    # ----------------------------------------------------------------- data
    def _send_matrix(self) -> None:
        with self._send_lock:
            a, layer, head, method = self._attribution, self.layer, self.head, self.method
            codes, labels = edge_status_map(a, layer, head, method)
            self._edge_matrix = {
                "layer": layer, "head": head, "method": method, "label": EDGE_LABELS[method],
                "effect": encode(edge_matrix(a, layer, head, method), "float32"),
                "measured": encode(measured_mask(a, layer, head, method).to(torch.uint8), "uint8"),
                "status": encode(codes, "uint8"), "status_labels": labels,
                "attention": encode(a.run.attention(layer)[head], "float16"),
            }

    def _send_heads(self) -> None:
        with self._send_lock:
            a, method = self._attribution, self.method
            measured = a.head_measured if method == "hybrid" else torch.zeros(a.head_estimates.shape, dtype=torch.bool)
            # the hybrid with exact_budget=0 measures no head: its grid is the estimate, and says so
            label = HEAD_LABELS["qk_fix" if method == "hybrid" and not a.measurement.heads else method]
            self._heads = {"method": method, "label": label,
                           "tensor": encode(a.head_effects(method), "float32"),
                           "measured": encode(measured.to(torch.uint8), "uint8"),
                           "pending": pending_head_words(a, method)}

    def _send_edges(self) -> None:
        with self._send_lock:
            self._edges = {"method": self.method, "label": EDGE_LABELS[self.method],
                           "rows": ranked_edges(self._attribution, self.method)}

    @traitlets.observe("layer", "head", "method")
    def _on_change(self, change: Any) -> None:
        with self._send_lock:
            if change["name"] == "method":
                self._send_heads()
                self._send_edges()
            m = self._edge_matrix
            if m is None or (m["layer"], m["head"], m["method"]) != (self.layer, self.head, self.method):
                self._send_matrix()

    # ------------------------------------------------------------- requests
    # One request per kind of check, each with its own named params: the
    # declaration checks their types before the handler runs; what depends on
    # this prompt and model (a layer that exists, a query inside the prompt) the
    # model and the positions' range say here.
    @rpc("verify_top_k", params={"k": Number(integer=True, low=1, high=MAX_VERIFY_K)}, result=VERIFIED)
    def _rpc_verify_top_k(self, params: dict[str, Any]) -> tuple[Any, list[bytes]]:
        return self._verified(self.verify(params["k"]))

    @rpc("verify_edge", params={"layer": INT, "head": INT, "query": INT, "key": INT}, result=VERIFIED)
    def _rpc_verify_edge(self, params: dict[str, Any]) -> tuple[Any, list[bytes]]:
        n = len(self.tokens)
        edge = (self._model.check_layer(params["layer"]), self._model.check_head(params["head"]),
                in_range(params["query"], "query", 0, n), in_range(params["key"], "key", 0, n))
        return self._verified(self.verify(edges=[edge]))

    @rpc("verify_head", params={"layer": INT, "head": INT}, result=VERIFIED)
    def _rpc_verify_head(self, params: dict[str, Any]) -> tuple[Any, list[bytes]]:
        head = (self._model.check_layer(params["layer"]), self._model.check_head(params["head"]))
        return self._verified(self.verify_heads(heads=[head]))

    @rpc("verify_heads", params={}, result=VERIFIED)
    def _rpc_verify_heads(self, params: dict[str, Any]) -> tuple[Any, list[bytes]]:
        return self._verified(self.verify_heads())

    @staticmethod
    def _verified(result: Verification) -> tuple[Any, list[bytes]]:
        return {"kind": result.kind, "n": len(result.keys), "seconds": result.seconds}, []

    # --------------------------------------------------------------- export
    def to_figure(self, *, dpi: int = 100) -> Any:
        """Head-effect grid and the chosen head's edge effects, as a Figure (as measured so far)."""
        a = self._attribution
        heads = a.head_effects(self.method).float().numpy()
        effect = edge_matrix(a, self.layer, self.head, self.method).float().numpy()
        figure = new_figure(figsize=(11, 4.8), dpi=dpi)
        left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
        m = max(float(np.abs(heads).max()), 1e-12)
        image = left.imshow(heads, cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
        figure.colorbar(image, ax=left, label=HEAD_LABELS[self.method].split(" (")[0])
        left.set_xticks(range(heads.shape[1]))
        left.set_yticks(range(heads.shape[0]))
        left.set_xlabel("head")
        left.set_ylabel("layer")
        left.set_title(f"heads ({self.method}) · logit diff {a.metric:.3f}", fontsize=9)
        left.add_patch(_outline(self.head, self.layer))
        m = max(float(np.abs(effect).max()), 1e-12)
        image = right.imshow(effect, cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
        figure.colorbar(image, ax=right, label=EDGE_LABELS[self.method].split(":")[0].split(",")[0])
        tokens = self.tokens
        if len(tokens) <= 48:
            right.set_yticks(range(len(tokens)), [repr(t)[1:-1] for t in tokens], fontsize=7)
            right.set_xticks(range(len(tokens)), [repr(t)[1:-1] for t in tokens], fontsize=7, rotation=90)
        right.set_xlabel("key")
        right.set_ylabel("query")
        right.set_title(f"L{self.layer}.H{self.head} edges · {EDGE_LABELS[self.method]}", fontsize=8)
        figure.tight_layout()
        return figure

    def __repr__(self) -> str:
        p = self.progress
        return (f"AttributionView({self.model_name!r}, {len(self.tokens)} tokens, {self.target!r} vs {self.foil!r}, "
                f"method={self.method!r}, exact {p.get('done')}/{p.get('total')} {p.get('state')})")


def _outline(col: int, row: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="#e0115f", linewidth=2)


@public_call(positional=("target", "foil"))
def attribute(model: Any, prompt: Any, *, target: str | int | None = None, foil: str | int | None = None,
              position: int = -1, method: str = "hybrid", dominant: float = DOMINANT, exact_budget: int | None = None,
              layer: int | None = None, head: int | None = None, background: bool = True) -> AttributionView | DatasetView:
    """Which heads and attention edges change logit(target) - logit(foil), from
    one forward + one backward pass, shown at once, then the exact measurements
    (method "hybrid": every head's ablation, then the dominant edges largest
    |estimate| first, at most `exact_budget`; 0: estimates only) streamed in
    with progress and a cancel:

        att = ni.attribute(model, "When Mary and John went to the store , John gave a drink to",
                           target="Mary", foil="John")
        att.heads; att.edges; att.verify(k=20); att.qk(layer, head, query, key)

    `att.heads` / `att.edges` wait for the measurements; background=False
    measures everything before returning.

    Over a data set (a `PromptSet`, a DataFrame or {group: [prompts]}; target=
    / foil= replace the rows' own): every head's exact zero-ablation effect on
    each row, a layer x head grid of means with 95% bootstrap intervals
    (`nbinterp.widgets.dataset_view.DatasetView`; clicking a row opens this view).
    """
    if is_data_set(prompt):
        refuse_options("ni.attribute", position=(position, -1), method=(method, "hybrid"), dominant=(dominant, DOMINANT),
                       exact_budget=(exact_budget, None), layer=(layer, None), head=(head, None))
        return over_data_set("attribute", model, prompt, target=target, foil=foil, background=background)
    if target is None:
        raise NbinterpError('ni.attribute needs target= (and usually foil=), e.g. target=" Mary", foil=" John"')
    with model.lock:
        attribution = compute_attribution(model, prompt, target, foil, position=position, method=method,
                                          dominant=dominant, exact_budget=exact_budget, measure=False)
    return AttributionView(attribution, layer=layer, head=head, background=background)


def _token_text(model: Any, token: str | int) -> str:
    """The token as the reader knows it (" Rome"), also when it was given as an id."""
    return display_token(model.tokenizer, model.token_id(token))
