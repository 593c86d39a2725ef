"""AttentionView: every layer x head as thumbnails, the selected head large,
a token strip, raw probabilities or value-weighted norms.

The view is thin: the functions at the top turn a `Run` into the plain
tensors the front end draws (thumbnails, one head, token rows), and can be
used and tested without a browser."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import traitlets

from nbinterp.engine.tokens import display_text
from nbinterp.errors import NbinterpError
from ._base import FrontendError, HeadWidget, all_or_none, as_declared, in_range, new_figure, rpc
from ._contract import BOOL, FLOAT, INT, TENSOR, TENSOR_REF, Choice, ListOf, Nullable, Obj, Opt
from ._buffers import encode, pack
from nbinterp.vocabulary import public_call

STATIC = Path(__file__).resolve().parent.parent / "static"
MODES = ("probabilities", "value_weighted")
MODE_LABELS = {"probabilities": "attention probability", "value_weighted": "||a_ij v_j W_O|| (value-weighted)"}
# Colour scales of the large heatmap and the thumbnails (js/lib/scales.ts).
# Long prompts default to log: a diffuse causal row at query q holds ~1/(q+1),
# so on a linear scale topped by the first rows (probability 1 on the one
# visible key) every row past a few dozen tokens is the darkest colour.
COLOR_SCALES = ("log", "linear", "row")
LONG_PROMPT_TOKENS = 32
SINK_SCALES = ("auto", "exclude", "include")  # key 0 on the colour scale: see AttentionView.sink_scale
SINK_SHARE = 0.5  # "auto" leaves key 0 out of the scale above this share (js/lib/scales.ts SINK_SHARE)
STRIP_SCOPES = ("head", "layer")
STRIP_DIRECTIONS = ("attends_to", "attended_by")
THUMBNAIL_SIDE = 32
ZOOM_FIELDS = ("query_start", "query_stop", "key_start", "key_stop")


def layer_values(run: Any, layer: int, mode: str) -> torch.Tensor:
    """[heads, T, T] for one layer: probabilities, or ||a_ij v_j W_O^h||."""
    if mode == "probabilities":
        return run.attention(layer)
    if mode == "value_weighted":
        return run.value_weighted(layer)
    raise NbinterpError(f"mode must be one of {MODES}, not {mode!r}")


def head_thumbnails(values: torch.Tensor, side: int = THUMBNAIL_SIDE) -> tuple[torch.Tensor, torch.Tensor]:
    """Block max of each head down to at most side x side, divided by that
    head's max (so faint heads stay visible), and the per-head maxima.

    values [heads, T, T] -> ([heads, s, s] in [0, 1], [heads]), s = min(T, side).
    """
    values = values.float()
    n_tokens = values.shape[-1]
    if n_tokens > side:
        # Max, not mean: a one-token edge (previous-token head) survives.
        values = torch.nn.functional.adaptive_max_pool2d(values.unsqueeze(1), side).squeeze(1)
    head_max = values.flatten(1).amax(1)
    return values / head_max.clamp_min(1e-12)[:, None, None], head_max


def masked_keys(run: Any, layer: int) -> torch.Tensor:
    """[T, T] bool, True where the model cannot attend (key after the query,
    outside a sliding window, padding): the cells its own scores hold at -inf."""
    return torch.isneginf(run.attention_scores(layer)[0])


def thumbnail_mask(masked: torch.Tensor, side: int = THUMBNAIL_SIDE) -> torch.Tensor:
    """[s, s] bool: a thumbnail pixel is masked when every cell in its block is
    (the same blocks as `head_thumbnails`)."""
    allowed = (~masked).float()[None, None]
    if masked.shape[-1] > side:
        allowed = torch.nn.functional.adaptive_max_pool2d(allowed, side)
    return allowed[0, 0] == 0


def first_key_share(values: Any, masked: Any) -> float:
    """Key 0's share of each query row 1.. (its attention, for probabilities),
    averaged: row 0 sees only key 0 and says nothing about a sink."""
    import numpy as np

    allowed = np.where(masked, 0.0, values)[1:]
    totals = allowed.sum(axis=1)
    keep = (totals > 0) & ~masked[1:, 0]
    return float((allowed[keep, 0] / totals[keep]).mean()) if keep.any() else 0.0


def default_color_scale(n_tokens: int) -> str:
    """log beyond LONG_PROMPT_TOKENS tokens, linear below (see COLOR_SCALES)."""
    return "log" if n_tokens > LONG_PROMPT_TOKENS else "linear"


def token_weights(run: Any, layer: int, token: int, mode: str, direction: str, head: int | None = None) -> torch.Tensor:
    """[T]: what `token` attends to (its query row) or what attends to it (its
    key column), for one head or summed over the layer's heads."""
    values = layer_values(run, layer, mode)
    if head is not None:
        values = values[head : head + 1]
    picked = values[:, token, :] if direction == "attends_to" else values[:, :, token]
    return picked.sum(0)


def display_tokens(run: Any) -> list[str]:
    """Each token as text (" Mary", not "ĠMary"); falls back to the raw pieces."""
    return display_text(run.model.tokenizer, run.token_ids)


class AttentionView(HeadWidget):
    """Attention of every layer and head of one run; see `nbinterp.attention`."""

    _esm = STATIC / "attention.js"

    mode = traitlets.Unicode("probabilities").tag(sync=True, schema=Choice(*MODES))
    # log | linear | row (each query row / its max)
    color_scale = traitlets.Unicode("linear").tag(sync=True, schema=Choice(*COLOR_SCALES))
    # Key 0 on or off the colour scale: an attention sink (key 0 holding most
    # of a head) otherwise sets the top colour and darkens every other key.
    # auto | exclude | include; auto leaves it out per head when its share > 0.5.
    sink_scale = traitlets.Unicode("auto").tag(sync=True, schema=Choice(*SINK_SCALES))
    focus_token = traitlets.Int(-1).tag(sync=True)
    strip_scope = traitlets.Unicode("head").tag(sync=True, schema=Choice(*STRIP_SCOPES))
    strip_direction = traitlets.Unicode("attends_to").tag(sync=True, schema=Choice(*STRIP_DIRECTIONS))
    zoom = traitlets.Dict().tag(sync=True, schema=Obj({k: Opt(INT) for k in ZOOM_FIELDS}))  # {} or all four
    _thumbnails = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True, schema=Nullable(Obj(
        {"mode": Choice(*MODES), "side": INT, "head_max": ListOf(FLOAT), "tensor": TENSOR, "masked": TENSOR})))
    _pattern = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True, schema=Nullable(Obj(
        {"layer": INT, "head": INT, "mode": Choice(*MODES), "tensor": TENSOR, "masked": TENSOR})))

    def __init__(self, run: Any, *, layer: int = 0, head: int = 0, mode: str = "probabilities",
                 color_scale: str | None = None, thumbnail_side: int = THUMBNAIL_SIDE) -> None:
        model = run.model
        self._run = run
        self._thumbnail_side = thumbnail_side
        self._layer_cache: OrderedDict[tuple[int, str], torch.Tensor] = OrderedDict()
        self._masks: dict[int, torch.Tensor] = {}
        if mode not in MODES:
            raise NbinterpError(f"mode must be one of {MODES}, not {mode!r}")
        if color_scale is None:
            color_scale = default_color_scale(len(run.token_ids))
        if color_scale not in COLOR_SCALES:
            raise NbinterpError(f"color_scale must be one of {COLOR_SCALES} ('row': each query row / its max), not {color_scale!r}")
        layer, head = model.check_layer(layer), model.check_head(head)
        super().__init__(
            model_name=str(getattr(model, "name", "")), tokens=display_tokens(run),
            n_layers=model.n_layers, n_heads=model.n_heads, layer=layer, head=head, mode=mode,
            color_scale=color_scale,
        )
        self._send_thumbnails()
        self._send_pattern()

    @property
    def run(self) -> Any:
        return self._run

    @property
    def result(self) -> Any:
        """The `Run` whose attention the view shows (every view's numbers are its `.result`)."""
        return self._run

    @property
    def _model(self) -> Any:
        return self._run.model

    # ----------------------------------------------------------- validation
    def _frontend_fields(self) -> dict[str, Any]:
        n_tokens = len(self.tokens)
        fields = super()._frontend_fields()
        fields.update(
            mode=as_declared, color_scale=as_declared, sink_scale=as_declared, strip_scope=as_declared, strip_direction=as_declared,
            focus_token=lambda v: -1 if v == -1 else in_range(v, "focus_token", 0, n_tokens),
            zoom=self._check_zoom,
        )
        return fields

    def _check_zoom(self, value: dict[str, int]) -> dict[str, int]:
        n = len(self.tokens)
        zoom = {k: in_range(v, k, 0, n + 1) for k, v in all_or_none(value, "zoom", ZOOM_FIELDS).items()}
        if zoom and not (zoom["query_start"] < zoom["query_stop"] and zoom["key_start"] < zoom["key_stop"]):
            raise FrontendError(f"zoom window is empty: {zoom}")
        return zoom

    @traitlets.validate("mode")
    def _valid_mode(self, proposal: Any) -> str:
        if proposal["value"] not in MODES:
            raise NbinterpError(f"mode must be one of {MODES}, not {proposal['value']!r}")
        return proposal["value"]

    @traitlets.validate("color_scale")
    def _valid_color_scale(self, proposal: Any) -> str:
        if proposal["value"] not in COLOR_SCALES:
            raise NbinterpError(f"color_scale must be one of {COLOR_SCALES} ('row': each query row / its max), not {proposal['value']!r}")
        return proposal["value"]

    @traitlets.validate("sink_scale")
    def _valid_sink_scale(self, proposal: Any) -> str:
        if proposal["value"] not in SINK_SCALES:
            raise NbinterpError(f"sink_scale must be one of {SINK_SCALES} (auto: key 0 left out of the colour scale "
                                f"where it holds more than {SINK_SHARE:.0%} of a head), not {proposal['value']!r}")
        return proposal["value"]

    # --------------------------------------------------------------- data
    def _masked(self, layer: int) -> torch.Tensor:
        if layer not in self._masks:
            self._masks[layer] = masked_keys(self._run, layer)
        return self._masks[layer]

    def _values(self, layer: int, mode: str) -> torch.Tensor:
        key = (layer, mode)
        if key not in self._layer_cache:
            self._layer_cache[key] = layer_values(self._run, layer, mode)
            while len(self._layer_cache) > 2:  # the run keeps its own cache of probabilities
                self._layer_cache.popitem(last=False)
        self._layer_cache.move_to_end(key)
        return self._layer_cache[key]

    def _send_thumbnails(self) -> None:
        mode = self.mode
        tiles, maxima = zip(*(head_thumbnails(self._values(l, mode), self._thumbnail_side) for l in range(self.n_layers)))
        tiles_t = torch.stack(tiles)
        masks = torch.stack([thumbnail_mask(self._masked(l), self._thumbnail_side) for l in range(self.n_layers)])
        # float16, not uint8: a log scale needs the faint values (1/512 of a
        # head's max is 0.5 of a uint8 step).
        self._thumbnails = {
            "mode": mode, "side": int(tiles_t.shape[-1]),
            "head_max": torch.stack(maxima).flatten().tolist(),
            "tensor": encode(tiles_t, "float16"),
            "masked": encode(masks.to(torch.uint8), "uint8"),
        }

    def _send_pattern(self) -> None:
        values = self._values(self.layer, self.mode)[self.head]
        self._pattern = {"layer": self.layer, "head": self.head, "mode": self.mode, "tensor": encode(values, "float16"),
                         "masked": encode(self._masked(self.layer).to(torch.uint8), "uint8")}

    def notify_change(self, change: Any) -> None:
        # One message for a new head and its data: the view never sees the
        # head change without the pattern and asks for it a second time.
        if change.get("name") in ("layer", "head", "mode"):
            with self.hold_sync():
                super().notify_change(change)
        else:
            super().notify_change(change)

    @traitlets.observe("layer", "head", "mode")
    def _on_head_change(self, change: Any) -> None:
        if self._thumbnails is not None and self._thumbnails["mode"] != self.mode:
            self._send_thumbnails()
        if self.changed_by_frontend:
            return  # the view requests the head it picked ("head_pattern")
        p = self._pattern
        if p is None or (p["layer"], p["head"], p["mode"]) != (self.layer, self.head, self.mode):
            self._send_pattern()

    @rpc("head_pattern", params={"layer": INT, "head": INT, "mode": Choice(*MODES), "with_mask": Opt(BOOL)},
         result={"pattern": TENSOR_REF, "masked": Opt(TENSOR_REF)})
    def _rpc_head_pattern(self, params: dict[str, Any]) -> tuple[Any, list[bytes]]:
        layer, mode = in_range(params["layer"], "layer", 0, self.n_layers), params["mode"]
        head = in_range(params["head"], "head", 0, self.n_heads)
        tensors = {"pattern": encode(self._values(layer, mode)[head], "float16")}
        if params.get("with_mask"):  # once per layer: the view keeps it
            tensors["masked"] = encode(self._masked(layer).to(torch.uint8), "uint8")
        return pack(tensors)

    @rpc("token_weights", params={"layer": INT, "token": INT, "mode": Choice(*MODES), "direction": Choice(*STRIP_DIRECTIONS),
                                  "head": Opt(Nullable(INT))},  # no head: summed over the layer's heads
         result={"weights": TENSOR_REF})
    def _rpc_token_weights(self, params: dict[str, Any]) -> tuple[Any, list[bytes]]:
        layer = in_range(params["layer"], "layer", 0, self.n_layers)
        token = in_range(params["token"], "token", 0, len(self.tokens))
        head = params.get("head")
        if head is not None:
            head = in_range(head, "head", 0, self.n_heads)
        weights = token_weights(self._run, layer, token, params["mode"], params["direction"], head)
        metas, buffers = pack({"weights": encode(weights, "float32")})
        return metas, buffers

    # --------------------------------------------------------------- export
    def to_figure(self, *, dpi: int = 100) -> Any:
        """A matplotlib Figure of the head on screen (zoom window, selection
        and mode included), independent of pyplot's global state."""
        values = self._values(self.layer, self.mode)[self.head].float().numpy()
        n = values.shape[0]
        z = self.zoom or {"query_start": 0, "query_stop": n, "key_start": 0, "key_stop": n}
        q0, q1, k0, k1 = z["query_start"], z["query_stop"], z["key_start"], z["key_stop"]
        import matplotlib
        import numpy as np
        from matplotlib.colors import LogNorm, Normalize

        masked = self._masked(self.layer).numpy()
        # The same sink rule as the view (js/lib/scales.ts): key 0 left out of the scale's max.
        exclude = self.sink_scale == "exclude" or (self.sink_scale == "auto" and first_key_share(values, masked) > SINK_SHARE)
        on_scale = ~masked
        if exclude and n > 1:
            on_scale[:, 0] = False
        vmax = max(float(values[on_scale].max()) if on_scale.any() else 0.0, 1e-12)
        scale = self.color_scale
        shown, label = values, MODE_LABELS[self.mode] + (", key 0 left out of the scale" if exclude else "")
        if scale == "row":
            row_max = np.where(on_scale, values, 0.0).max(axis=1, keepdims=True)
            shown = values / np.maximum(row_max, 1e-30)
            norm, label = Normalize(0.0, 1.0), f"{label} \u00f7 its row's max (per-row scale)"
        elif scale == "log":
            norm, label = LogNorm(vmax / (10 * n), vmax, clip=True), f"{label} (log scale)"
        else:
            norm, label = Normalize(0.0, vmax), f"{label} (linear scale)"
        window = np.ma.masked_where(masked[q0:q1, k0:k1], shown[q0:q1, k0:k1])
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#f0f0f0")  # masked: the model cannot attend there
        figure = new_figure(figsize=(6.4, 5.6), dpi=dpi)
        ax = figure.add_subplot()
        image = ax.imshow(window, cmap=cmap, norm=norm, interpolation="nearest", extent=(k0 - 0.5, k1 - 0.5, q1 - 0.5, q0 - 0.5))
        figure.colorbar(image, ax=ax, label=label)
        tokens = self.tokens
        if q1 - q0 <= 48:
            ax.set_yticks(range(q0, q1), [repr(t)[1:-1] for t in tokens[q0:q1]], fontsize=7)
        if k1 - k0 <= 48:
            ax.set_xticks(range(k0, k1), [repr(t)[1:-1] for t in tokens[k0:k1]], fontsize=7, rotation=90)
        if self.selected:
            q, k = self.selected["query"], self.selected["key"]
            ax.add_patch(_cell_outline(k, q))
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        ax.set_title(f"{self.model_name} \u00b7 layer {self.layer} head {self.head}")
        figure.tight_layout()
        return figure

    def __repr__(self) -> str:
        return (f"AttentionView({self.model_name!r}, {len(self.tokens)} tokens, layer={self.layer}, head={self.head}, "
                f"mode={self.mode!r}, color_scale={self.color_scale!r})")


def _cell_outline(col: int, row: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="#e0115f", linewidth=2)


@public_call(positional=("layer", "head"))
def attention(model: Any, prompt: Any, *, layer: int = 0, head: int = 0, mode: str = "probabilities",
              color_scale: str | None = None) -> AttentionView:
    """Interactive attention patterns of `prompt` (a string or a `Run`):
    `view = ni.attention(model, "When Mary and John went to the store, John gave a drink to")`.

    color_scale: "log", "linear" (0 .. the head's max) or "row" (each query
    row / its max); default linear up to 32 tokens, log beyond. Key 0 (an
    attention sink in most trained models) is left out of the colour scale's
    max where it holds more than half of a head: `view.sink_scale` is "auto"
    (that rule), "exclude" or "include"; the legend says which applies."""
    run = prompt if hasattr(prompt, "attention") and hasattr(prompt, "model") else model.run(prompt, capture=("qkv",))
    return AttentionView(run, layer=layer, head=head, mode=mode, color_scale=color_scale)
