"""AttributionView: which heads and which query->key edges change the answer.

A signed head-effect grid, the chosen head's edge-effect matrix over its
attention pattern, the ranked edges, and "verify": exact knockouts /
ablations run on request, estimate vs measured with the summary errors.
The computation lives in `nbinterp.analysis.attribution`; this is a thin view that
also answers `.heads`, `.edges`, `.verify(k)`, `.qk(...)` like the
`Attribution` it holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import traitlets

from nbinterp.analysis.attribution import DOMINANT, METHODS, Attribution, attribute as compute_attribution
from nbinterp.errors import NbinterpError
from nbinterp.analysis.estimate_stats import Verification
from ._base import HeadWidget, choice_value, int_value, new_figure, rpc
from ._buffers import encode
from .attention import display_tokens

STATIC = Path(__file__).resolve().parent.parent / "static"
RANKED_EDGES = 50
MAX_VERIFY_K = 500


def edge_matrix(attribution: Attribution, layer: int, head: int, method: str) -> torch.Tensor:
    """[T, T] estimated knockout effect of one head's edges (0 where none exists)."""
    return torch.nan_to_num(attribution.edge_effects[method][layer, head], nan=0.0)


def measured_mask(attribution: Attribution, method: str) -> torch.Tensor:
    """bool [L, H, T, T]: the entries of `method` that are exact knockouts, not estimates."""
    if method == "hybrid" and attribution.exact is not None:
        return attribution.exact
    return torch.zeros(attribution.edge_effects[method].shape, dtype=torch.bool)


def ranked_edges(attribution: Attribution, method: str, k: int = RANKED_EDGES) -> torch.Tensor:
    """[k, 6] rows (layer, head, query, key, effect, measured 0/1), largest |effect| first."""
    rows = attribution.top_edges(k, method)
    exact = measured_mask(attribution, method)
    return torch.tensor([[*r, float(exact[r[:4]])] for r in rows], dtype=torch.float64).reshape(-1, 6)


def verification_state(v: Verification) -> dict[str, Any]:
    """A verification as a trait value: summary in JSON, rows as one tensor."""
    keys = np.array(v.keys, dtype=np.float64).reshape(len(v.keys), -1)
    rows = np.concatenate([keys, v.estimate[:, None], v.measured[:, None]], axis=1) if len(v.keys) else np.zeros((0, 6))
    s = v.summary
    finite = lambda x: None if not np.isfinite(x) else float(x)  # noqa: E731
    return {
        "kind": v.kind, "method": v.method, "seconds": v.seconds, "clean_metric": v.clean_metric,
        "summary": {"spearman": finite(s.spearman), "recall_at_k": finite(s.recall_at_k), "k": s.k,
                    "mae": finite(s.mae), "n": s.n, "scope": s.scope},
        "rows": encode(rows, "float32"),
    }


class AttributionView(HeadWidget):
    """Head and edge effects of one prompt on logit(target) - logit(foil);
    see `nbinterp.attribute`."""

    _esm = STATIC / "attribution.js"

    target = traitlets.Unicode("").tag(sync=True)
    foil = traitlets.Unicode("").tag(sync=True)
    metric = traitlets.Float(0.0).tag(sync=True)
    method = traitlets.Unicode("hybrid").tag(sync=True)
    _heads = traitlets.Dict().tag(sync=True)
    _edge_matrix = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True)
    _edges = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True)
    _verification = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True)

    def __init__(self, attribution: Attribution, *, layer: int | None = None, head: int | None = None) -> None:
        self._attribution = attribution
        model = attribution.model
        if layer is None or head is None:
            top = attribution.top_edges(1)
            best = top[0][:2] if top else (0, 0)
            layer = best[0] if layer is None else layer
            head = best[1] if head is None else head
        layer, head = model.check_layer(layer), model.check_head(head)
        super().__init__(
            model_name=str(getattr(model, "name", "")), tokens=display_tokens(attribution.run),
            n_layers=model.n_layers, n_heads=model.n_heads, target=str(attribution.target),
            foil="" if attribution.foil is None else str(attribution.foil), metric=attribution.metric,
            method=attribution.method, layer=layer, head=head,
        )
        self._send_heads()
        self._send_edges()
        self._send_matrix()

    # -------------------------------------------- the Attribution's own API
    @property
    def attribution(self) -> Attribution:
        return self._attribution

    @property
    def heads(self) -> torch.Tensor:
        """[layers, heads] effect of zero-ablating each head, for the view's
        method: measured ("hybrid") or gradient x activation."""
        return self._attribution.head_effects(self.method)

    @property
    def edges(self) -> list:
        """Top edges (layer, head, query, key, estimate) of the view's method."""
        return self._attribution.top_edges(self._attribution.n_top, self.method)

    @property
    def edge_effects(self) -> dict[str, torch.Tensor]:
        return self._attribution.edge_effects

    @property
    def exact(self) -> torch.Tensor | None:
        """bool [L, H, T, T]: the edges whose "hybrid" effect is an exact knockout."""
        return self._attribution.exact

    @property
    def run(self) -> Any:
        return self._attribution.run

    def top_edges(self, k: int | None = None, method: str | None = None, **where: Any) -> list:
        return self._attribution.top_edges(k, method or self.method, **where)

    def verify(self, k: int = 20, method: str | None = None, edges: Sequence | None = None, pool: int | None = None) -> Verification:
        """Exact knockouts of the top-k edges (see `Attribution.verify`); the view shows the result."""
        result = self._attribution.verify(k, method or self.method, edges, pool)
        self._verification = verification_state(result)
        return result

    def verify_heads(self, k: int = 10, heads: Sequence | None = None) -> Verification:
        result = self._attribution.verify_heads(k, heads)
        self._verification = verification_state(result)
        return result

    def exhaustive_edges(self, rows: int | None = None) -> Any:
        return self._attribution.exhaustive_edges(rows)

    def compare(self, exact: Any, k: int = 10, method: str | None = None) -> Any:
        return self._attribution.compare(exact, k, method or self.method)

    def qk(self, layer: int, head: int, query: int, key: int) -> Any:
        return self._attribution.qk(layer, head, query, key)

    # ----------------------------------------------------------- validation
    @property
    def _model(self) -> Any:
        return self._attribution.model

    def _frontend_fields(self) -> dict[str, Any]:
        fields = super()._frontend_fields()
        fields.update(method=lambda v: choice_value(v, "method", METHODS))
        return fields

    @traitlets.validate("method")
    def _valid_method(self, proposal: Any) -> str:
        if proposal["value"] not in METHODS:
            raise NbinterpError(f"method must be one of {METHODS}, not {proposal['value']!r}")
        return proposal["value"]

    # ----------------------------------------------------------------- data
    def _send_matrix(self) -> None:
        a, layer, head, method = self._attribution, self.layer, self.head, self.method
        self._edge_matrix = {
            "layer": layer, "head": head, "method": method,
            "effect": encode(edge_matrix(a, layer, head, method), "float32"),
            "measured": encode(measured_mask(a, method)[layer, head].to(torch.uint8), "uint8"),
            "attention": encode(a.run.attention(layer)[head], "float16"),
        }

    def _send_heads(self) -> None:
        a = self._attribution
        self._heads = {"method": self.method, "tensor": encode(a.head_effects(self.method), "float32"),
                       "measured": self.method == "hybrid" and a.head_exact is not None}

    def _send_edges(self) -> None:
        self._edges = {"method": self.method, "tensor": encode(ranked_edges(self._attribution, self.method), "float32")}

    @traitlets.observe("layer", "head", "method")
    def _on_change(self, change: Any) -> None:
        if change["name"] == "method":
            self._send_heads()
            self._send_edges()
        m = self._edge_matrix
        if m is None or (m["layer"], m["head"], m["method"]) != (self.layer, self.head, self.method):
            self._send_matrix()

    # ------------------------------------------------------------- requests
    @rpc("verify")
    def _rpc_verify(self, params: dict[str, Any]) -> tuple[Any, list[bytes]]:
        """{"what": "top_k", "k"} | {"what": "edge", "edge": [l, h, q, k]} |
        {"what": "head", "layer", "head"} | {"what": "heads"}"""
        what = choice_value(params.get("what"), "what", ("top_k", "edge", "head", "heads"))
        if what == "top_k":
            result = self.verify(int_value(params.get("k"), "k", 1, MAX_VERIFY_K + 1))
        elif what == "edge":
            edge = params.get("edge")
            if not isinstance(edge, list) or len(edge) != 4:
                raise NbinterpError("edge must be [layer, head, query, key]")
            n = len(self.tokens)
            layer = int_value(edge[0], "layer", 0, self.n_layers)
            head = int_value(edge[1], "head", 0, self.n_heads)
            query, key = int_value(edge[2], "query", 0, n), int_value(edge[3], "key", 0, n)
            result = self.verify(edges=[(layer, head, query, key)])
        elif what == "head":
            layer = int_value(params.get("layer"), "layer", 0, self.n_layers)
            head = int_value(params.get("head"), "head", 0, self.n_heads)
            result = self.verify_heads(heads=[(layer, head)])
        else:
            result = self.verify_heads()
        return {"kind": result.kind, "n": len(result.keys), "seconds": result.seconds}, []

    # --------------------------------------------------------------- export
    def to_figure(self, *, dpi: int = 100) -> Any:
        """Head-effect grid and the chosen head's edge effects, as a Figure."""
        a = self._attribution
        heads = self.heads.float().numpy()
        effect = edge_matrix(a, self.layer, self.head, self.method).float().numpy()
        figure = new_figure(figsize=(11, 4.8), dpi=dpi)
        left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
        m = max(float(np.abs(heads).max()), 1e-12)
        image = left.imshow(heads, cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
        figure.colorbar(image, ax=left, label=("measured" if self._heads.get("measured") else "est.") + " effect of ablating the head")
        left.set_xticks(range(heads.shape[1]))
        left.set_yticks(range(heads.shape[0]))
        left.set_xlabel("head")
        left.set_ylabel("layer")
        left.set_title(f"heads · logit diff {a.metric:.3f}")
        left.add_patch(_outline(self.head, self.layer))
        m = max(float(np.abs(effect).max()), 1e-12)
        image = right.imshow(effect, cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
        figure.colorbar(image, ax=right, label=f"knockout effect ({self.method}{': dominant edges exact' if self.method == 'hybrid' else ' estimate'})")
        tokens = self.tokens
        if len(tokens) <= 48:
            right.set_yticks(range(len(tokens)), [repr(t)[1:-1] for t in tokens], fontsize=7)
            right.set_xticks(range(len(tokens)), [repr(t)[1:-1] for t in tokens], fontsize=7, rotation=90)
        right.set_xlabel("key")
        right.set_ylabel("query")
        right.set_title(f"L{self.layer}.H{self.head} edges")
        figure.tight_layout()
        return figure

    def __repr__(self) -> str:
        return f"AttributionView({self.model_name!r}, {len(self.tokens)} tokens, {self.target!r} vs {self.foil!r}, method={self.method!r})"


def _outline(col: int, row: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="#e0115f", linewidth=2)


def attribute(model: Any, prompt: Any, target: str | int, foil: str | int | None = None, *, position: int = -1,
              method: str = "hybrid", dominant: float = DOMINANT, exact_budget: int | None = None,
              layer: int | None = None, head: int | None = None) -> AttributionView:
    """Which heads and attention edges change logit(target) - logit(foil), from
    one forward + one backward pass (plus exact knockouts of each attention
    row's dominant edges, method "hybrid"), shown as a widget:

        att = ni.attribute(model, "When Mary and John went to the store , John gave a drink to",
                           target="Mary", foil="John")
        att.heads; att.edges; att.verify(k=20); att.qk(layer, head, query, key)
    """
    return AttributionView(compute_attribution(model, prompt, target, foil, position=position, method=method,
                                               dominant=dominant, exact_budget=exact_budget),
                           layer=layer, head=head)
