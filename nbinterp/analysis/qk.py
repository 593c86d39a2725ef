"""Why a head attends from one query to one key: the pre-softmax score of one
cell split into query-side x key-side contributions of the residual stream's
components (token and position embeddings, each earlier head, each earlier
attention bias, each earlier MLP, and the norm's / projection's biases).

The input norm is nonlinear only through its scale. We freeze that scale at
the value the actual run had at each position ("frozen LayerNorm"); then the
norm, the query/key projections and (for rotary models) the rotation at each
position are linear, and the score is a bilinear form of the components:

    score = scale * <sum_i q_i, sum_j k_j> = sum_ij scale * <q_i, k_j>

The `remainder` is the captured score minus the sum of the parts (float
rounding, and anything the decomposition missed), so that parts + remainder
equal the actual score; it is reported, never hidden, and tested to be tiny.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from nbinterp.engine import weights
from nbinterp.engine.captures import QKWeights
from nbinterp.errors import NbinterpError, UnsupportedArchitectureError

if TYPE_CHECKING:
    from nbinterp.engine.model import Model
    from nbinterp.engine.run import Run


@dataclass
class QKDecomposition:
    """score(layer, head, query, key) = contributions.sum() + remainder.

    contributions [n_query_components, n_key_components], float64; row i is
    what query-side component `query_labels[i]` contributes with each
    key-side component.
    """

    layer: int
    head: int
    query: int
    key: int
    query_token: str
    key_token: str
    query_labels: list[str]
    key_labels: list[str]
    contributions: torch.Tensor
    score: float
    remainder: float

    def by_query_component(self) -> dict[str, float]:
        """Each query-side component's total (summed over key components)."""
        return dict(zip(self.query_labels, self.contributions.sum(1).tolist()))

    def by_key_component(self) -> dict[str, float]:
        """Each key-side component's total (summed over query components)."""
        return dict(zip(self.key_labels, self.contributions.sum(0).tolist()))

    def top(self, n: int = 10) -> list[tuple[str, str, float]]:
        """The n (query component, key component) pairs of largest |contribution|."""
        flat = self.contributions.flatten()
        order = flat.abs().argsort(descending=True)[:n].tolist()
        width = self.contributions.shape[1]
        return [(self.query_labels[i // width], self.key_labels[i % width], float(flat[i])) for i in order]

    def __repr__(self) -> str:
        def best(parts: dict[str, float]) -> str:
            ranked = sorted(parts.items(), key=lambda kv: -abs(kv[1]))[:4]
            return ", ".join(f"{name} {value:+.3g}" for name, value in ranked)

        return (
            f"<QK L{self.layer}.H{self.head} query {self.query} {self.query_token!r} -> key {self.key} "
            f"{self.key_token!r}: score {self.score:.4g} = {self.contributions.shape[0]}x"
            f"{self.contributions.shape[1]} parts + remainder {self.remainder:.2g}\n"
            f"  query side: {best(self.by_query_component())}\n  key side:   {best(self.by_key_component())}>"
        )


def layout_for(model: "Model") -> None:
    """A clear error unless the model's scores can be decomposed (the engine knows its layout)."""
    weights.check_qk_decomposable(model)


def residual_components(model: "Model", run: "Run", layer: int, positions: list[int]) -> tuple[list[str], torch.Tensor]:
    """The parts that add up to the residual stream entering `layer`, at
    `positions`: labels and [n_components, len(positions), d_model] float64.
    Everything is read from the run's captures (one forward for all of them,
    on the server for a remote model)."""
    _fetch_inputs(run, layer)
    embeddings = run.captured("embed", 0)
    token_embedding, position_embedding = embeddings.tokens, embeddings.positions
    labels = ["embed"]
    parts = [token_embedding[positions].double().cpu()]
    if position_embedding is not None:
        labels.append("pos_embed")
        parts.append(position_embedding[positions].double().cpu())
    for l in range(layer):
        heads = run.head_outputs(l)[:, positions].double()
        for h in range(model.n_heads):
            labels.append(f"L{l}.H{h}")
            parts.append(heads[h])
        bias = run.output_bias(l)
        if bias is not None:
            labels.append(f"L{l}.attn_bias")
            parts.append(bias.double().cpu().expand(len(positions), -1))
        labels.append(f"L{l}.mlp")
        parts.append(run.mlp_out(l)[positions].double())
    return labels, torch.stack(parts)


def _fetch_inputs(run: "Run", layer: int) -> None:
    """Everything the decomposition of a `layer` score reads, in one forward."""
    earlier = range(layer)
    run.fetch("embed", "rotary", "qkv", "resid_pre", "qk_weights", "z", "w_o", "mlp_out",
              layers={"qk_weights": layer, "resid_pre": layer, "qkv": layer,
                      "z": earlier, "w_o": earlier, "mlp_out": earlier})


def _frozen_norm(model: "Model", norm_params: tuple, components: torch.Tensor, resid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's input norm as a per-position linear map, its scale frozen at
    the run's actual residual `resid` [P, d]. Returns (normed components
    [n, P, d], the constant part [P, d])."""
    weight, bias = (None if p is None else p.double().cpu() for p in norm_params)
    weight = torch.ones(resid.shape[-1], dtype=torch.float64) if weight is None else weight
    eps = model.shape.norm_eps
    if model.shape.norm == "layernorm":
        scale = (resid.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
        centred = components - components.mean(-1, keepdim=True)
        constant = torch.zeros_like(resid) if bias is None else bias.expand_as(resid)
        return centred / scale * weight, constant
    scale = (resid.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return components / scale * weight, torch.zeros_like(resid)


def _project(model: "Model", projections: QKWeights, x: torch.Tensor, head: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Query or key projection of `head` without its bias: (x W [..., D], bias [D])."""
    weight, bias = weights.qk_projection(model, projections, head, side)
    weight = weight.double().cpu()
    bias = torch.zeros(model.head_dim, dtype=torch.float64) if bias is None else bias.double().cpu()
    return x @ weight, bias


def _rotate(rotary: Any, x: torch.Tensor, position: int) -> torch.Tensor:
    """Rotary embedding at one position, applied to [n, D] (linear in x);
    `rotary` is the run's `Rotary` tables [T, rotary dims], or None."""
    if rotary is None:
        return x
    cos, sin = (r[position].double().cpu() for r in (rotary.cos, rotary.sin))
    n_rot = cos.shape[-1]  # NeoX and Phi rotate only the first rotary dims
    rot, rest = x[..., :n_rot], x[..., n_rot:]
    half = n_rot // 2
    rotated_half = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    return torch.cat((rot * cos + rotated_half * sin, rest), dim=-1)


def qk(model: "Model", prompt_or_run: Any, layer: int, head: int, query: int, key: int) -> QKDecomposition:
    """The attention score of (layer, head, query, key) split into
    query-component x key-component contributions; see the module docstring."""
    from nbinterp.engine.run import Run

    layer, head = model.check_layer(layer), model.check_head(head)
    layout_for(model)
    run = prompt_or_run if isinstance(prompt_or_run, Run) else model.run(prompt_or_run)
    n_tokens = len(run)
    for name, pos in (("query", query), ("key", key)):
        if not isinstance(pos, int) or isinstance(pos, bool) or not 0 <= pos < n_tokens:
            raise NbinterpError(f"{name} position {pos!r} is outside the prompt's 0..{n_tokens - 1}")
    _fetch_inputs(run, layer)
    score = float(run.attention_scores(layer)[head, query, key])
    if key > query or not score > torch.finfo(torch.float32).min / 2:
        raise NbinterpError(f"query {query} cannot attend to key {key} in L{layer}.H{head} (masked: causal order or sliding window): pick a key the query can see")
    inputs = run.captured("qkv", layer)
    if inputs.softcap:
        raise UnsupportedArchitectureError("soft-capped attention scores are not decomposed")
    scaling = inputs.scaling or model.head_dim ** -0.5
    projections = run.captured("qk_weights", layer)
    norm_params = (projections.norm_weight, projections.norm_bias)
    labels, components = residual_components(model, run, layer, [query, key])
    resid = run.residual(layer)[[query, key]].double()
    normed, constant = _frozen_norm(model, norm_params, components, resid)
    rotary = run.captured("rotary", 0)
    sides = {}
    for index, (side, position) in enumerate((("query", query), ("key", key))):
        projected, bias = _project(model, projections, normed[:, index], head, side)
        constant_part, _ = _project(model, projections, constant[index : index + 1], head, side)
        vectors = torch.cat([projected, constant_part + bias])  # last row: the "bias" component
        sides[side] = _rotate(rotary, vectors, position)
    contributions = scaling * sides["query"] @ sides["key"].T
    return QKDecomposition(
        layer, head, query, key, run.tokens[query], run.tokens[key], labels + ["bias"], labels + ["bias"],
        contributions, score, score - float(contributions.sum()),
    )
