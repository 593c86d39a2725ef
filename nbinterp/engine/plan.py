"""What a run should do, as data: the `Plan` of interventions (per-layer
tensors the trace applies), the `Metric` gradients and batched runs are
taken of, and the one parser for every key a user writes: layers, heads,
components ("L3.H1", "L2.mlp", (3, 1)), neurons, attention edges and patch
sites. Every message says what to write instead.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import torch

from nbinterp.engine.architectures import ModelShape
from nbinterp.errors import NbinterpError

# patch site kind -> (capture that holds the source activation, Plan field it patches)
PATCH_SITES = {
    "resid_pre": ("resid_pre", "patch_resid"),
    "attn_out": ("attn_out", "patch_attn"),
    "mlp_out": ("mlp_out", "patch_mlp"),
    "head": ("z", "patch_z"),
}


@dataclass
class Plan:
    """Interventions as per-layer tensors, ready for the trace body.

    z' = z_baseline + z_scale * (z - z_baseline) on the output projection's input
    (per head: zero ablation has baseline 0, mean ablation the reference mean).

    Every tensor broadcasts against the batch: [H*D] / [T, width] / [1, H, T, T]
    apply to every row; [B, 1, H*D] / [B, T, width] / [B, H, T, T] give row b
    its own intervention (many single interventions in one forward).
    """

    z_scale: dict[int, torch.Tensor] = field(default_factory=dict)  # [H*D]
    z_baseline: dict[int, torch.Tensor] = field(default_factory=dict)  # [H*D]
    mlp_scale: dict[int, float] = field(default_factory=dict)
    neuron_scale: dict[int, torch.Tensor] = field(default_factory=dict)  # [d_mlp]
    knockout: dict[int, torch.Tensor] = field(default_factory=dict)  # bool [1, H, T, T]
    # patching: layer -> (where [T, width] bool, values [T, width])
    patch_resid: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    patch_z: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    patch_attn: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    patch_mlp: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    # edits of an activation x at (site, layer), one of EDIT_SITES, applied in order:
    #   add:     x + delta            (delta [T, width] or [B, T, width]: steering vectors,
    #                                  SAE feature edits decode(f') - decode(f))
    #   project: x - (1 - scale) (x . u) u   (u a unit direction [width]: scale 0 removes
    #                                  the component along u, e.g. a probe's direction;
    #                                  or u [B, 1, width] and scale [B, 1, 1], one per row)
    add: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    project: dict[tuple[str, int], tuple[torch.Tensor, float]] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not any(
            (self.z_scale, self.mlp_scale, self.neuron_scale, self.knockout,
             self.patch_resid, self.patch_z, self.patch_attn, self.patch_mlp, self.add, self.project)
        )

    def edits(self, site: str, layer: int) -> bool:
        return (site, layer) in self.add or (site, layer) in self.project


# Where an activation can be edited (Plan.add / Plan.project) and read (captures of
# the same name): the stream entering block l, the attention and MLP writes of block
# l, the MLP's hidden activations (its neurons: the down projection's input), and
# the final stream (layer n_layers: the final norm's input). "resid_post" of layer l
# is "resid_pre" of l + 1 (or "resid_final" after the last block).
EDIT_SITES = ("resid_pre", "attn_out", "mlp_out", "neurons", "resid_final")


def apply_edits(x: torch.Tensor, plan: Plan, site: str, layer: int) -> torch.Tensor:
    """The edited activation (plain torch: runs inside the trace, locally or remotely)."""
    delta = plan.add.get((site, layer))
    if delta is not None:
        x = x + delta.to(x)
    projection = plan.project.get((site, layer))
    if projection is not None:
        direction, scale = projection
        direction = direction.to(x)
        if direction.dim() == 1:
            x = x - (1.0 - scale) * (x @ direction)[..., None] * direction
        else:  # one direction per row [B, 1, width], scales [B, 1, 1] (`batch.RowPlan.project`)
            x = x - (1.0 - scale.to(x)) * (x * direction).sum(-1, keepdim=True) * direction
    return x


@dataclass(frozen=True)
class Metric:
    """logit[target] - logit[foil] (or logit[target] alone) at one position."""

    target: int
    foil: int | None
    position: int  # non-negative

    @classmethod
    def of(cls, model: Any, target: Any, foil: Any, position: int, n_tokens: int) -> "Metric":
        """Checked against the model's tokenizer and the prompt's length."""
        if target is None:
            raise NbinterpError("a metric needs a target token (and optionally a foil), e.g. target=' Paris'")
        position = check_position(position, n_tokens)
        return cls(model.token_id(target), None if foil is None else model.token_id(foil), position)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_layer(shape: ModelShape, layer: Any) -> int:
    if not _is_int(layer) or not 0 <= layer < shape.n_layers:
        raise NbinterpError(f"layer {layer!r} is out of range: this model has layers 0..{shape.n_layers - 1}")
    return int(layer)


def check_head(shape: ModelShape, head: Any) -> int:
    if not _is_int(head) or not 0 <= head < shape.n_heads:
        raise NbinterpError(f"head {head!r} is out of range: this model has heads 0..{shape.n_heads - 1} per layer")
    return int(head)


def check_position(position: Any, n_tokens: int, what: str = "position") -> int:
    """A token position (negative counts from the end) -> 0..n_tokens-1."""
    if not _is_int(position) or not -n_tokens <= position < n_tokens:
        raise NbinterpError(f"{what} {position!r} is outside the prompt's {n_tokens} tokens")
    return int(position) % n_tokens


def check_scale(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise NbinterpError(f"the scale for {what} must be a finite number (0 = ablate, 1 = unchanged), got {value!r}")
    return float(value)


def parse_component(shape: ModelShape, key: Any) -> tuple[int, int | str]:
    """(layer, head) | (layer, "mlp") | "L3.H1" | "L2.mlp" -> (layer, head or "mlp")."""
    if isinstance(key, str):
        parts = key.strip().split(".")
        if len(parts) == 2 and parts[0][:1] in "Ll" and parts[0][1:].isdigit():
            layer = check_layer(shape, int(parts[0][1:]))
            if parts[1].lower() == "mlp":
                return layer, "mlp"
            if parts[1][:1] in "Hh" and parts[1][1:].isdigit():
                return layer, check_head(shape, int(parts[1][1:]))
        raise NbinterpError(f"cannot read component {key!r}: write 'L3.H1' for a head or 'L2.mlp' for an MLP")
    if isinstance(key, tuple) and len(key) == 2:
        layer, head = key
        if head == "mlp":
            return check_layer(shape, layer), "mlp"
        return check_layer(shape, layer), check_head(shape, head)
    raise NbinterpError(f"cannot read component {key!r}: use (layer, head), (layer, 'mlp'), 'L3.H1' or 'L2.mlp'")


def component_key(layer: int, head: int | str) -> str:
    """The canonical name: "L3.H1" or "L2.mlp"."""
    return f"L{layer}.mlp" if head == "mlp" else f"L{layer}.H{head}"


def parse_neuron(shape: ModelShape, key: Any, d_mlp: int) -> tuple[int, int]:
    if not (isinstance(key, tuple) and len(key) == 2):
        raise NbinterpError(f"neuron {key!r}: use (layer, neuron)")
    layer, neuron = check_layer(shape, key[0]), key[1]
    if not _is_int(neuron) or not 0 <= neuron < d_mlp:
        raise NbinterpError(f"neuron {neuron!r} is out of range: MLPs here have neurons 0..{d_mlp - 1}")
    return layer, int(neuron)


def check_edge(shape: ModelShape, edge: Any, n_tokens: int, renormalisable: bool = False) -> tuple[int, int, int, int]:
    """(layer, head, query, key) checked; with `renormalisable`, query > 0
    (query 0 has no other key to renormalise onto)."""
    if not (isinstance(edge, (tuple, list)) and len(edge) == 4):
        raise NbinterpError(f"knockout edge {edge!r}: use (layer, head, query_position, key_position)")
    layer, head = check_layer(shape, edge[0]), check_head(shape, edge[1])
    query, key = edge[2], edge[3]
    for name, pos in (("query", query), ("key", key)):
        if not _is_int(pos) or not 0 <= pos < n_tokens:
            raise NbinterpError(f"knockout {name} position {pos!r} is outside the prompt's 0..{n_tokens - 1}")
    if key > query:
        raise NbinterpError(f"knockout edge {tuple(edge)}: query {query} cannot attend to later key {key} anyway")
    if renormalisable and query == 0:
        raise NbinterpError(
            f"knockout edge {tuple(edge)}: query 0 sees only key 0, so knocking it out leaves nothing to "
            "renormalise onto; pick a query > 0"
        )
    return layer, head, int(query), int(key)


def check_edit_site(shape: ModelShape, key: Any) -> tuple[str, int]:
    """(site, layer) of an edit: site in EDIT_SITES; "resid_final" has layer n_layers (or None)."""
    usage = f"an edit site is (site, layer) with site one of {EDIT_SITES}, e.g. ('resid_pre', 2)"
    if not (isinstance(key, tuple) and len(key) == 2 and key[0] in EDIT_SITES):
        raise NbinterpError(f"cannot read edit site {key!r}: {usage}")
    site, layer = key
    if site == "resid_final":
        if layer not in (None, shape.n_layers, -1):
            raise NbinterpError(f"'resid_final' is the stream after the last block: write ('resid_final', None)")
        return site, shape.n_layers
    return site, check_layer(shape, layer)


def parse_site(shape: ModelShape, site: Any, n_tokens: int) -> tuple[str, int, int | None, int | None]:
    """A patch site -> (kind, layer, head or None, position or None)."""
    usage = (
        "a patch site is ('resid_pre' | 'attn_out' | 'mlp_out', layer, position or None) "
        "or ('head', layer, head, position or None)"
    )
    if not isinstance(site, (tuple, list)) or not site or site[0] not in PATCH_SITES:
        raise NbinterpError(f"cannot read patch site {site!r}: {usage}")
    kind = site[0]
    expected = 4 if kind == "head" else 3
    if len(site) not in (expected - 1, expected):
        raise NbinterpError(f"cannot read patch site {site!r}: {usage}")
    layer = check_layer(shape, site[1])
    head = check_head(shape, site[2]) if kind == "head" else None
    position = site[expected - 1] if len(site) == expected else None
    if position is not None:
        position = check_position(position, n_tokens, "patch position")
    return kind, layer, head, position
