"""Run only what an intervention can change.

A patch or an attention-edge knockout at block l and token p leaves every
block below l, and every token before p, exactly as in the run without it
(attention is causal). A batch of such interventions can therefore start at
block l from the unintervened stream entering it, and at token p with the
unintervened keys and values of tokens 0..p-1 as a KV cache: the forward then
costs (layers - l) / layers x (T - p) / T of a full one. For an exact
patching cell at the last position of a 64-token prompt that is 1/64 of the
tokens; most attention edges of interest sit at the last query too.

`Resume` holds the unintervened run's reads; `trim` turns a full-length
request into the shorter one: the suffix tokens, the plan's per-token tensors
cut to them, the metric's position moved, and the cache. The keys and values
are the attention call's own inputs (after rotary, before grouped-query
repetition), which is what transformers' cache holds; the result equals the
full forward to float32 rounding for every family in the architecture table
(tests/test_resume.py).

Only local models take the token cut: a remote request would have to ship
the cache, so there the forward starts at block l over every token.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch

from nbinterp.engine.plan import Metric, Plan
from nbinterp.errors import NbinterpError

# largest rows x tokens of cached keys/values held at once (see `rows_for`)
CACHE_TOKENS = 8192


@dataclass
class Resume:
    """Where a forward may start: block `layer`, token `position`.

    `stream` [T, d_model] is the unintervened stream entering `layer` (or
    [P, T, d_model] for P prompts, batch row r running prompt r mod P);
    `keys_values` per layer (key, value) [H_kv, T, D], the unintervened
    attention inputs, needed when position > 0."""

    layer: int
    position: int
    stream: torch.Tensor
    keys_values: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None

    def __post_init__(self) -> None:
        if self.position > 0 and self.keys_values is None:
            raise NbinterpError("a resume after token 0 needs the unintervened run's keys and values")


def from_run(run: Any, layer: int, position: int) -> "Resume | None":
    """A `Resume` from the unintervened run `run` (its resid_pre and attention
    inputs, fetched for every layer if not captured); None when there is nothing to skip."""
    if (layer == 0 and position == 0) or not run.plan.is_empty():
        return None  # nothing to skip, or a run with interventions of its own: not the unintervened one
    keys_values = None
    if position > 0:
        inputs = [run.captured("qkv", l) for l in range(run.model.n_layers)]
        keys_values = [(a.key, a.value) for a in inputs]
    return Resume(layer, position, run.captured("resid_pre", layer), keys_values)


def trim(input_ids: torch.Tensor, plan: Plan, metric: Metric, resume: Resume, config: Any,
         tokens: bool = True) -> dict[str, Any]:
    """The `TraceRequest` fields of the shorter forward (input_ids, plan,
    metric, start_at, forward_kwargs). `tokens=False` keeps every token
    (block skipping only)."""
    position = resume.position if tokens else 0
    if position > metric.position:
        raise NbinterpError(f"cannot resume at token {position}: the metric is read at token {metric.position}")
    rows, n_tokens = input_ids.shape
    start_at = None
    if resume.layer > 0:
        stream = resume.stream if resume.stream.dim() == 3 else resume.stream[None]
        start_at = (resume.layer, stream[:, position:])
    if position == 0:
        return {"input_ids": input_ids, "plan": plan, "metric": metric, "start_at": start_at}
    return {
        "input_ids": input_ids[:, position:],
        "plan": cut_plan(plan, position, n_tokens),
        "metric": replace(metric, position=metric.position - position),
        "start_at": start_at,
        "forward_kwargs": {
            "past_key_values": _cache(resume.keys_values, position, rows, config),
            # OPT derives its learned positions from the mask: it must span the cached tokens too
            "attention_mask": torch.ones(rows, n_tokens, dtype=torch.long, device=input_ids.device),
        },
    }


def cut_plan(plan: Plan, position: int, n_tokens: int) -> Plan:
    """The plan's per-token tensors from token `position` on. Per-head,
    per-MLP and per-direction entries hold no token axis and stay."""

    def tokens(x: torch.Tensor) -> torch.Tensor:
        return x[..., position:, :] if x.dim() >= 2 and x.shape[-2] == n_tokens else x

    def patches(table: dict) -> dict:
        return {layer: (tokens(where), tokens(values)) for layer, (where, values) in table.items()}

    return replace(
        plan,
        # [.., H, queries, keys]: the queries are cut, every key stays (the cache holds the early ones)
        knockout={layer: mask[..., position:, :] for layer, mask in plan.knockout.items()},
        patch_resid=patches(plan.patch_resid), patch_z=patches(plan.patch_z),
        patch_attn=patches(plan.patch_attn), patch_mlp=patches(plan.patch_mlp),
        add={key: tokens(delta) for key, delta in plan.add.items()},
    )


def rows_for(n_tokens: int, position: int, budget: int) -> int:
    """Rows per forward when each row runs tokens position..T-1: the token
    budget of a forward, also bounded by the cached keys it holds."""
    length = n_tokens - position
    return max(1, min(budget // max(length, 1), CACHE_TOKENS // n_tokens if position else budget))


def _cache(keys_values: Sequence[tuple[torch.Tensor, torch.Tensor]], position: int, rows: int, config: Any) -> Any:
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=config)  # sliding-window layers keep their own window
    except TypeError:  # transformers before 4.56
        cache = DynamicCache()
    for layer, (key, value) in enumerate(keys_values):
        cache.update(key[None, :, :position].expand(rows, -1, -1, -1),
                     value[None, :, :position].expand(rows, -1, -1, -1), layer)
    return cache

