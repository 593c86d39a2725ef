"""Many interventions in one forward: the per-row plan builder (`RowPlan`)
and the one batched runner (`measure`).

Batch row b carries its own intervention (an attention-edge knockout, a head
or MLP ablation, a patched site, an added delta, a projected-out direction),
and the metric comes back per row. Every forward also carries clean rows (no
intervention, through exactly the same code path, e.g. the same float32
attention recompute for a knocked-out layer), so an effect is the difference
of two rows of ONE forward: an intervention that changes nothing has effect 0
whatever the batch, the dtype or the CPU.

With several prompts (same token length) the rows come in slots: slot 0 is
every prompt clean, slot s every prompt with intervention s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch

from nbinterp.engine.plan import PATCH_SITES, Metric, Plan
from nbinterp.engine.resume import Resume, from_run, rows_for

if TYPE_CHECKING:
    from nbinterp.engine.model import Model
    from nbinterp.engine.run import Run

# Largest float32 element count of one layer's attention probabilities
# (rows x heads x T x T) or MLP hidden state per batch: ~64 MB each.
ELEMENT_BUDGET = 1 << 24
MAX_ROWS = 512
# The time of one exact forward, in units of one row running one token through
# one block: a fixed cost per call and per block run (Python, nnsight, kernel
# launches), and a cached key/value read per earlier token. Measured with
# SmolLM2-135M on a 2-core CPU (~50 us a row-token-block; 5.5 ms a call, 2.5 ms
# a block: reading the block's weights from memory); only the ratios matter, and
# they steer batching, not results.
PER_FORWARD, PER_BLOCK, PER_CACHED_TOKEN = 110.0, 50.0, 0.1


# the least share of the time an item adds to a forward that is its own work (`_chunks`,
# `PatchingSweep._next_batch`); 0.4-0.75 schedule the real-model bench's T=64 patching grid within 4%
MIN_EFFICIENCY = 0.6
REMOTE_PER_FORWARD = 1000 * PER_FORWARD  # a round trip to the server: fewer, fuller forwards


def forward_cost(rows: Any, blocks: Any, n_tokens: int, position: Any, per_forward: float = PER_FORWARD) -> Any:
    """Estimated time of a forward of `rows` rows through `blocks` blocks from
    token `position` (the earlier ones cached), in row-token-block units
    (tensors broadcast)."""
    return per_forward + blocks * (PER_BLOCK + rows * ((n_tokens - position) + PER_CACHED_TOKEN * position))


def batch_rows(model: "Model", n_tokens: int) -> int:
    """How many rows to stack per forward for a prompt of n_tokens."""
    per_row = max(model.n_heads * n_tokens * n_tokens, model.d_mlp * n_tokens, 1)
    return max(1, min(MAX_ROWS, ELEMENT_BUDGET // per_row))


class RowPlan:
    """One `Plan` whose batch rows carry their own interventions.

    `n_slots` slots of `n_prompts` rows each (row = slot * n_prompts + prompt);
    every method edits the rows of one slot only, so slot 0 stays clean unless
    a caller writes to it."""

    def __init__(self, model: "Model", n_slots: int, n_tokens: int, n_prompts: int = 1) -> None:
        self.model, self.n_slots, self.n_tokens, self.n_prompts = model, n_slots, n_tokens, n_prompts
        self.n_rows = n_slots * n_prompts
        self.plan = Plan()

    def rows(self, slot: int) -> slice:
        return slice(slot * self.n_prompts, (slot + 1) * self.n_prompts)

    def ablate_head(self, slot: int, layer: int, head: int, scale: float = 0.0) -> None:
        """Zero-ablate (scale towards 0) one head's output-projection input."""
        width, head_dim = self.model.n_heads * self.model.head_dim, self.model.head_dim
        if layer not in self.plan.z_scale:
            self.plan.z_scale[layer] = torch.ones(self.n_rows, 1, width)
            self.plan.z_baseline[layer] = torch.zeros(width)
        self.plan.z_scale[layer][self.rows(slot), 0, head * head_dim : (head + 1) * head_dim] = scale

    def scale_mlp(self, slot: int, layer: int, scale: float = 0.0) -> None:
        """Scale one MLP's output (0 = ablated)."""
        if layer not in self.plan.mlp_scale:
            self.plan.mlp_scale[layer] = torch.ones(self.n_rows, 1, 1)  # type: ignore[assignment] - per row
        self.plan.mlp_scale[layer][self.rows(slot)] = scale  # type: ignore[index]

    def knock_out(self, slot: int, layer: int, head: int, query: int, key: int) -> None:
        """Remove one attention edge (its row renormalised). Every row of a knocked-out
        layer, clean ones included, goes through the same recompute."""
        masks = self.plan.knockout
        if layer not in masks:
            masks[layer] = torch.zeros(self.n_rows, self.model.n_heads, self.n_tokens, self.n_tokens, dtype=torch.bool)
        masks[layer][self.rows(slot), head, query, key] = True

    def add(self, slot: int, site: str, layer: int, delta: torch.Tensor) -> None:
        """Add `delta` [T, width] (or [width]) to the activation at (site, layer)."""
        width = self.model.site_width(site)
        table = self.plan.add
        if (site, layer) not in table:
            table[(site, layer)] = torch.zeros(self.n_rows, self.n_tokens, width)
        table[(site, layer)][self.rows(slot)] += delta.float()

    def project(self, slot: int, site: str, layer: int, direction: torch.Tensor, scale: float = 0.0) -> None:
        """Scale the component along the unit `direction` [width] by `scale` (0 removes it).
        Rows without a projection get the zero direction: x - 0, exactly unchanged."""
        width = self.model.site_width(site)
        if (site, layer) not in self.plan.project:
            self.plan.project[(site, layer)] = (torch.zeros(self.n_rows, 1, width), torch.ones(self.n_rows, 1, 1))
        directions, scales = self.plan.project[(site, layer)]
        direction = direction.float().flatten()
        directions[self.rows(slot), 0] = direction / direction.norm()
        scales[self.rows(slot)] = float(scale)

    def patch(self, slot: int, kind: str, layer: int, head: int | None, position: int | None,
              values: torch.Tensor) -> None:
        """Copy `values` [T, width] (the source run's capture for `kind`, see
        `PATCH_SITES`) into the rows of `slot`, at `position` (None: every
        token) and, for a head, its columns only."""
        table = getattr(self.plan, PATCH_SITES[kind][1])
        if layer not in table:
            table[layer] = (torch.zeros(self.n_rows, *values.shape, dtype=torch.bool), values.float())
        where = table[layer][0]
        positions = slice(None) if position is None else slice(position, position + 1)
        head_dim = self.model.head_dim
        cols = slice(None) if head is None else slice(head * head_dim, (head + 1) * head_dim)
        where[self.rows(slot), positions, cols] = True


def forward_metric(model: "Model", input_ids: torch.Tensor, plan: Plan, metric: Metric,
                   resume: "Resume | None" = None) -> torch.Tensor:
    """One forward of the rows `input_ids` [B, T] under `plan`: the metric per row, float64 [B]
    (`resume`: run only the blocks and tokens the plan can change, `nbinterp.engine.resume`)."""
    saved = model.execute(input_ids, plan, {}, metric, gradients=False, logits="none", resume=resume)
    return saved["metric"].reshape(input_ids.shape[0]).cpu().double()


@dataclass
class Measured:
    """The metric with each item's intervention, and the clean rows of the same forwards."""

    values: torch.Tensor  # [items, prompts] float64
    clean: torch.Tensor  # [items, prompts]: the clean row of the forward item i ran in

    @property
    def effects(self) -> torch.Tensor:
        """[items, prompts]: metric(intervened) - metric(clean), per forward."""
        return self.values - self.clean


def _layout(model: "Model", n_prompts: int, n_tokens: int, rows: int | None) -> tuple[int, int]:
    """(prompts per forward, item slots per forward): at least one item slot next to the clean one."""
    capacity = max(2, rows or batch_rows(model, n_tokens))
    per_prompts = max(1, min(n_prompts, capacity // 2))
    return per_prompts, max(1, capacity // per_prompts - 1)


def forwards_needed(model: "Model", n_prompts: int, n_tokens: int, n_items: int, rows: int | None = None) -> int:
    """How many forwards `measure` runs for these sizes (for progress bars)."""
    per_prompts, per_forward = _layout(model, n_prompts, n_tokens, rows)
    return -(-n_prompts // per_prompts) * -(-n_items // per_forward)


def measure(
    model: "Model", input_ids: torch.Tensor, items: Sequence[Any], fill: Callable[[RowPlan, int, Any], None],
    metric: Metric, rows: int | None = None, order: Callable[[Any], Any] | None = None,
    progress: Callable[[], None] | None = None, base: "Run | dict[int, torch.Tensor] | None" = None,
    start: Callable[[Any], tuple[int, int]] | None = None,
) -> Measured:
    """The one batched runner: `fill(row_plan, slot, item)` writes item's
    intervention into slot `slot` (1, 2, ...) of a forward whose slot 0 is the
    clean prompts; `input_ids` [P, T] are P prompts of one token length (the
    metric at the same position in each). `rows` caps the rows per forward
    (default: what fits, `batch_rows`); `order` sorts the items so a batch
    touches few layers (resumable items go latest start first instead);
    `progress()` is called after each forward.

    With one prompt, its unintervened run `base` and `start(item)` = (layer,
    token) before which the item changes nothing (a patch or knockout there,
    (layer, 0) for a head or MLP at every token), each forward runs only the
    blocks and tokens its items can change (`nbinterp.engine.resume`); the
    clean row is the same shortened forward, so effects stay differences of
    one forward's rows. With several prompts, `base` {layer: [P, T, d_model]}
    holds their unintervened streams entering each layer: forwards skip the
    blocks below their items' lowest layer (every token runs)."""
    n_prompts, n_tokens = input_ids.shape
    per_prompts, per_forward = _layout(model, n_prompts, n_tokens, rows)
    values = torch.empty(len(items), n_prompts, dtype=torch.float64)
    clean = torch.empty(len(items), n_prompts, dtype=torch.float64)
    streams = base if isinstance(base, dict) else None
    if streams is not None:
        wrong = [layer for layer, s in streams.items() if tuple(s.shape[:2]) != (n_prompts, n_tokens)]
        if wrong:
            raise ValueError(f"base streams of layers {wrong} are not [{n_prompts}, {n_tokens}, d_model]")
        start = None if start is None else (lambda item, given=start: (given(item)[0], 0))  # every token runs
    resumable = start is not None and (streams is not None or (
        base is not None and n_prompts == 1 and torch.equal(base.input_ids.cpu(), input_ids.cpu())))
    if resumable:  # latest start first: forwards that run few blocks and tokens fill up first
        order = lambda item: tuple(-x for x in start(item))  # noqa: E731
    indices = sorted(range(len(items)), key=lambda i: order(items[i])) if order else list(range(len(items)))
    for p0 in range(0, n_prompts, per_prompts):
        prompts = input_ids[p0 : p0 + per_prompts]
        n_p = prompts.shape[0]
        starts = [start(items[i]) for i in indices] if resumable else None
        # a remote forward costs a round trip: there, fewer and fuller forwards
        for chunk in _chunks(indices, per_forward, starts, n_tokens, model.n_layers, metric.position,
                             split=model.remote is False, prompts=n_p):
            row_plan = RowPlan(model, len(chunk) + 1, n_tokens, n_p)
            for slot, i in enumerate(chunk, start=1):
                fill(row_plan, slot, items[i])
            resume = None
            if resumable:
                layer = min(start(items[i])[0] for i in chunk)
                position = min(min(start(items[i])[1] for i in chunk), metric.position)
                if streams is None:
                    resume = from_run(base, layer, position)
                elif layer > 0:
                    resume = Resume(layer, 0, streams[layer][p0 : p0 + n_p])
            out = forward_metric(model, prompts.repeat(len(chunk) + 1, 1), row_plan.plan, metric, resume)
            out = out.reshape(-1, n_p)
            index = torch.tensor(chunk)
            values[index, p0 : p0 + n_p] = out[1:]
            clean[index, p0 : p0 + n_p] = out[0].expand(len(chunk), -1)
            if progress is not None:
                progress()
    return Measured(values, clean)


def _chunks(indices: list[int], per_forward: int, starts: list[tuple[int, int]] | None, n_tokens: int,
            n_layers: int, metric_position: int, split: bool = True, prompts: int = 1) -> Iterator[list[int]]:
    """The items of each forward, in order. With `starts` (items sorted latest
    start first), a forward ends where the next item would add more time
    (`forward_cost`: it may make every row start lower or earlier) than
    MIN_EFFICIENCY of its own work: that item opens a forward that has to run
    more blocks or tokens anyway (with `split`; a remote forward costs a round
    trip, so there forwards only fill up). Each slot holds `prompts` rows.
    Resumed forwards hold cached keys for every row: a chunk that starts after
    token 0 also keeps rows x tokens within the cache's budget (`resume.rows_for`)."""
    if starts is None:
        yield from (indices[i : i + per_forward] for i in range(0, len(indices), per_forward))
        return
    chunk: list[int] = []
    layer, position = n_layers, n_tokens
    for i, (item_layer, item_position) in zip(indices, starts):
        item_position = min(item_position, metric_position)
        lower, earlier = min(layer, item_layer), min(position, item_position)
        capacity = per_forward if earlier == 0 else min(per_forward, rows_for(n_tokens, earlier, MAX_ROWS * n_tokens) - 1)
        if chunk:
            rows = (len(chunk) + 1) * prompts  # the clean slot's and the items'
            added = (forward_cost(rows + prompts, n_layers - lower, n_tokens, earlier)
                     - forward_cost(rows, n_layers - layer, n_tokens, position))
            work = prompts * (forward_cost(1, n_layers - item_layer, n_tokens, item_position)
                              - forward_cost(0, n_layers - item_layer, n_tokens, item_position))
            if len(chunk) + 1 > max(1, capacity) or (split and work < MIN_EFFICIENCY * added):
                yield chunk
                chunk, lower, earlier = [], item_layer, item_position
        chunk.append(i)
        layer, position = lower, earlier
    if chunk:
        yield chunk
