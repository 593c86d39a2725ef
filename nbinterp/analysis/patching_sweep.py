"""Activation-patching sweeps: copy one site at a time from a clean run into
a corrupted one and measure how much of the clean logit difference comes back.

    effect = (ld_patched - ld_corrupted) / (ld_clean - ld_corrupted)

1 is full recovery, 0 no change. Sweeps cover the residual stream, the
attention output and the MLP output per (layer, position), and every head
(all positions) per (layer, head).

The whole grid is first ESTIMATED by attribution patching (Nanda 2023): the
first-order change of the metric when a site's corrupted activation is
replaced by the clean one, (clean - corrupted) . d metric / d activation at
the corrupted run, summed over the cell's slice. That costs the clean forward
and one forward + backward of the corrupted prompt, whatever the grid's size.
Exact cells are then computed in batches, largest |estimate| first, and
yielded as they arrive, so a view can stream them; `cancel()` stops after the
batch in flight.

Effects are normalised by the clean and corrupted metric of the two plain
runs (computed once, not repeated in every batch): patching nothing gives
0.0 and patching all of resid_pre at layer 0 gives 1.0, up to float32
rounding between a batched row and a one-row run (an ulp or so of the
logits, over the gap).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

from nbinterp.engine.batch import MIN_EFFICIENCY, PER_FORWARD, REMOTE_PER_FORWARD, RowPlan, forward_cost
from nbinterp.engine.plan import PATCH_SITES, Metric, Plan, parse_site
from nbinterp.engine.resume import CACHE_TOKENS, Resume, from_run
from nbinterp.engine.run import Run
from nbinterp.interventions.batch import Site
from nbinterp.errors import NbinterpError

if TYPE_CHECKING:
    from nbinterp.engine.model import Model

SWEEP_KINDS = ("resid_pre", "attn_out", "mlp_out", "head")
KIND_LABELS = {
    "resid_pre": "residual stream (entering the layer)",
    "attn_out": "attention output",
    "mlp_out": "MLP output",
    "head": "attention head (all positions)",
}
WINDOW = 4  # batches of cells ahead a batch may draw from (see PatchingSweep._next_batch)
TOKENS_PER_BATCH = 512  # rows x tokens per forward; small models are overhead-bound, so batch
MAX_BATCH = 64  # rows per forward when batch_size is not given (short suffixes fit many)


@dataclass
class PatchingSetup:
    """A clean / corrupted pair with its metric, ready to patch."""

    model: "Model"
    clean: "Run"
    corrupted_ids: torch.Tensor  # [1, T]
    metric: Metric
    clean_logit_diff: float
    corrupted_logit_diff: float
    corrupted: "Run | None" = None  # the corrupted run with its captures (attribution patching)
    # site -> per-layer d metric / d activation at the corrupted run, [T, width] ("z" for heads)
    gradients: dict[str, Any] = field(default_factory=dict)
    # leading tokens where every patchable activation is bitwise the same in both runs (`shared_prefix`)
    prefix: int = 0

    @property
    def n_tokens(self) -> int:
        return self.corrupted_ids.shape[1]

    def unchanged(self, site: Site) -> bool:
        """Whether patching `site` copies a value onto itself (a token of the shared prefix)."""
        return site[3] is not None and site[3] < self.prefix

    def resume_at(self, layer: int, position: int) -> "Resume | None":
        """Where a batch patched from (layer, position) on starts: the corrupted run's reads."""
        return from_run(self.corrupted, layer, position)

    @property
    def clean_tokens(self) -> list[str]:
        return self.clean.tokens

    @property
    def corrupted_tokens(self) -> list[str]:
        return self.model.tokenizer.convert_ids_to_tokens(self.corrupted_ids[0].tolist())


def prepare(
    model: "Model", clean: Any, corrupted: Any, target: str | int, foil: str | int | None = None, position: int = -1,
) -> PatchingSetup:
    """Checks the pair (equal token lengths, a difference to recover) and runs both once."""
    clean_ids, corrupted_ids = model.tokenize(clean), model.tokenize(corrupted)
    if clean_ids.shape[1] != corrupted_ids.shape[1]:
        tokens = lambda ids: model.tokenizer.convert_ids_to_tokens(ids[0].tolist())  # noqa: E731
        raise NbinterpError(
            f"clean and corrupted prompts must have the same number of tokens to patch position by position: "
            f"clean has {clean_ids.shape[1]} {tokens(clean_ids)}, corrupted has {corrupted_ids.shape[1]} "
            f"{tokens(corrupted_ids)}. Reword one so the tokens line up (swap names of equal token length)."
        )
    n_tokens = clean_ids.shape[1]
    if not -n_tokens <= position < n_tokens:
        raise NbinterpError(f"position {position} is outside the prompt's {n_tokens} tokens")
    metric = Metric.of(model, target, foil, position, n_tokens)
    clean_run = model.run(clean_ids, capture=ESTIMATE_SITES)
    # The corrupted run: the same captures and, in one backward, the metric's
    # gradient at every site a cell patches (what the estimate needs).
    captured = model.execute(corrupted_ids, Plan(), model.all_layers(ESTIMATE_SITES), metric, gradients=True,
                             grad_captures=("resid_pre", "attn_out", "mlp_out"))
    captured["grad_z"] = dict(enumerate(captured["grad_z"]))
    corrupted_run = Run(model, corrupted_ids, Plan(), captured, metric, {"gradients": True})
    ld = lambda run: float(_metric_of(run.logits_at(metric.position), metric))  # noqa: E731
    gradients = {site: captured[f"grad_{site}"] for site in ESTIMATE_SITES}
    setup = PatchingSetup(model, clean_run, corrupted_ids, metric, ld(clean_run), ld(corrupted_run), corrupted_run,
                          gradients, shared_prefix(clean_run, corrupted_run, model.n_layers))
    _check_gap(setup, [clean_run.logits_at(metric.position), corrupted_run.logits_at(metric.position)])
    return setup


ESTIMATE_SITES = ("resid_pre", "attn_out", "mlp_out", "z")


def shared_prefix(clean: "Run", corrupted: "Run", n_layers: int) -> int:
    """How many leading tokens have every patchable activation (each site, each
    layer) bitwise equal in the two runs: the tokens before the prompts first
    differ, as attention is causal. Patching there copies a value onto itself:
    such a cell's effect is exactly 0 with no forward, and a head patched at
    every token changes nothing before this point (the forward starts here).
    Checked on the numbers, not assumed from the tokens: a kernel that rounds
    the two runs differently only shortens the prefix."""
    n_tokens = len(corrupted)
    for site in ESTIMATE_SITES:
        for layer in range(n_layers):
            differs = (clean.captured(site, layer) != corrupted.captured(site, layer)).any(dim=-1).nonzero()
            if len(differs):
                n_tokens = min(n_tokens, int(differs[0]))
    return n_tokens


def estimate(setup: PatchingSetup, kind: str) -> torch.Tensor:
    """Attribution-patching estimate of every cell of `kind`, normalised like an
    effect: [layers, positions] (or [layers, heads]) float32. No forward: reads
    the two runs `prepare` made."""
    clean, corrupted, n_layers = setup.clean, setup.corrupted, setup.model.n_layers
    gap = setup.clean_logit_diff - setup.corrupted_logit_diff
    rows = []
    for layer in range(n_layers):
        if kind == "head":
            delta = clean.captured("z", layer).float() - corrupted.captured("z", layer).float()  # [T, H*D]
            product = delta * setup.gradients["z"][layer]
            rows.append(product.reshape(product.shape[0], setup.model.n_heads, -1).sum(dim=(0, 2)))
        else:
            delta = clean.captured(kind, layer).float() - corrupted.captured(kind, layer).float()  # [T, width]
            rows.append((delta * setup.gradients[kind][layer]).sum(dim=-1))
    return torch.stack(rows) / gap + 0.0


MIN_GAP = 1e-2  # the smallest clean - corrupted gap, as a fraction of the metric's scale (see _check_gap)


def _check_gap(setup: PatchingSetup, logits: list[torch.Tensor]) -> None:
    """Refuses a pair whose metric barely moves: every effect is divided by
    clean - corrupted, so a tiny gap turns ordinary perturbations into huge
    "recoveries" (23.163 vs 23.161 gave effects of +-27.5 on the 1 = restored
    scale). The scale is the larger of the two metric values and the spread
    (std over the vocabulary) of the logits at the metric's position: the
    spread is the model's own unit of "a logit moved" and does not depend on
    the logits' arbitrary offset; the values cover a metric far from zero.
    Below 1% of that scale a site that moves the metric by a tenth of a
    typical logit spread already reads as an effect of 10 or more, and float32
    rounding of the logits (~1e-6 relative) starts to show in the effects."""
    clean, corrupted = setup.clean_logit_diff, setup.corrupted_logit_diff
    spread = max(float(row.float().std()) for row in logits)
    scale = max(abs(clean), abs(corrupted), spread)
    gap = abs(clean - corrupted)
    if gap <= MIN_GAP * scale:  # <=: also refuses the exact tie (and an all-zero scale)
        what = "logit" if setup.metric.foil is None else "logit difference"
        foil_hint = "" if setup.metric.foil is not None else " or give a foil so the metric is a logit difference"
        raise NbinterpError(
            f"the clean and corrupted prompts give almost the same {what} (clean {clean:.6g}, corrupted "
            f"{corrupted:.6g}, gap {gap:.3g}, under {MIN_GAP:g} x the metric's scale {scale:.3g}): there is "
            f"nothing to recover, and every effect would be divided by that gap. Pick a corrupted prompt that "
            f"changes the answer{foil_hint}."
        )


def _metric_of(logits: torch.Tensor, metric: Metric) -> torch.Tensor:
    """The metric from the logits [vocab] at its position."""
    value = logits[metric.target]
    return value if metric.foil is None else value - logits[metric.foil]


def effects_of(setup: PatchingSetup, patch_sets: Sequence[Sequence[Site]]) -> torch.Tensor:
    """Normalised effect of each patch set (one batched forward of exactly these
    rows: the reference metrics are the setup's), float32 [n]."""
    out = torch.zeros(len(patch_sets))
    # a patch set only of tokens the two runs share copies values onto themselves: exactly 0
    run = [i for i, sites in enumerate(patch_sets) if not all(setup.unchanged(site) for site in sites)]
    if run:
        out[run] = _run_effects(setup, [patch_sets[i] for i in run])
    return out + 0.0  # + 0.0: no "-0.0" on screen


def _run_effects(setup: PatchingSetup, patch_sets: Sequence[Sequence[Site]]) -> torch.Tensor:
    n = len(patch_sets)
    rows = RowPlan(setup.model, n, setup.n_tokens)
    for slot, sites in enumerate(patch_sets):
        for kind, layer, head, position in sites:
            rows.patch(slot, kind, layer, head, position, setup.clean.captured(PATCH_SITES[kind][0], layer))
    # A patch at layer l and token p leaves every layer below l, and every token
    # before p, as in the corrupted run: the forward starts there (nbinterp.engine.resume).
    layer, position = batch_start(setup, [site for sites in patch_sets for site in sites])
    saved = setup.model.execute(setup.corrupted_ids.repeat(n, 1), rows.plan, {}, setup.metric, gradients=False,
                                logits="none", resume=setup.resume_at(layer, position))
    raw = saved["metric"].reshape(n).cpu().double()
    corrupted, clean = setup.corrupted_logit_diff, setup.clean_logit_diff
    return ((raw - corrupted) / (clean - corrupted)).float()


def batch_start(setup: PatchingSetup, sites: Sequence[Site]) -> tuple[int, int]:
    """(lowest patched layer, first patched token) of a batch; a head patch covers every token.
    Tokens the two runs share change nothing (`shared_prefix`), and tokens after the
    metric's position cannot move it: the start lies between the two."""
    layer = min((site[1] for site in sites), default=0)
    position = min((max(0 if site[3] is None else site[3], setup.prefix) for site in sites), default=0)
    return layer, min(position, setup.metric.position)


def patching_effect(
    model: "Model", clean: Any, corrupted: Any, sites: Sequence[Any], target: str | int, foil: str | int | None = None,
    position: int = -1,
) -> float:
    """The normalised effect of patching `sites` (the engine's syntax, e.g.
    [("resid_pre", 0, None)] or [("head", 3, 1, None)]) from clean into corrupted."""
    setup = prepare(model, clean, corrupted, target, foil, position)
    return float(effects_of(setup, [[parse_site(model.shape, site, setup.n_tokens) for site in sites]])[0])


@dataclass(frozen=True)
class Cell:
    """One computed cell: `index` is the position, or the head for kind "head"."""

    kind: str
    layer: int
    index: int
    effect: float


@dataclass
class PatchingSweep:
    """Iterate to compute exact cells (`for cell in sweep`), or call `run()`.
    `estimates` holds every cell's attribution-patching estimate at once;
    `effects` the exact cells done so far (NaN where not computed). Exact
    cells come largest |estimate| first, within the `layers` / `positions`
    selected (None: all; heads cover every position and follow `layers`)."""

    setup: PatchingSetup
    kinds: tuple[str, ...] = SWEEP_KINDS
    batch_size: int | None = None
    layers: tuple[int, ...] | None = None
    positions: tuple[int, ...] | None = None
    effects: dict[str, torch.Tensor] = field(init=False)
    estimates: dict[str, torch.Tensor] = field(init=False)
    order: list[tuple[str, int, int]] = field(init=False)
    done: int = field(init=False, default=0)
    _stop: threading.Event = field(init=False, default_factory=threading.Event)

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in SWEEP_KINDS]
        if unknown or not self.kinds or len(set(self.kinds)) != len(self.kinds):
            raise NbinterpError(f"kinds must be a non-empty selection of {SWEEP_KINDS}, got {self.kinds!r}")
        model, n_tokens = self.setup.model, self.setup.n_tokens
        self.layers = _selection(self.layers, model.n_layers, "layers", "layer")
        self.positions = _selection(self.positions, n_tokens, "positions", "position")
        self.effects = {
            kind: torch.full((model.n_layers, model.n_heads if kind == "head" else n_tokens), float("nan"))
            for kind in self.kinds
        }
        self.estimates = {kind: estimate(self.setup, kind) for kind in self.kinds}
        cells = [
            (kind, layer, index) for kind in self.kinds for layer in self.layers
            for index in (range(model.n_heads) if kind == "head" else self.positions)
        ]
        # stable sort: equal estimates keep the kind / layer / index order
        self.order = sorted(cells, key=lambda c: -abs(float(self.estimates[c[0]][c[1], c[2]])))

    @property
    def total(self) -> int:
        """Exact cells selected."""
        return len(self.order)

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    @property
    def finished(self) -> bool:
        return self.done == self.total

    def cancel(self) -> None:
        """Stop after the batch in flight (safe to call from another thread)."""
        self._stop.set()

    def resume(self) -> None:
        """Clear a cancel: iterating again picks up at the next cell."""
        self._stop.clear()

    def measured(self, kind: str) -> torch.Tensor:
        """[layers, cols] bool: which cells of `kind` are exact now."""
        return ~self.effects[kind].isnan()

    def __iter__(self) -> Iterator[Cell]:
        while self.done < self.total:
            if self._stop.is_set():
                return
            batch = self._next_batch()
            sites = [
                [("head", layer, index, None) if kind == "head" else (kind, layer, None, index)]
                for kind, layer, index in batch
            ]
            effects = effects_of(self.setup, sites)
            for (kind, layer, index), effect in zip(batch, effects.tolist()):
                self.effects[kind][layer, index] = effect
                self.done += 1
                yield Cell(kind, layer, index, effect)

    def _next_batch(self) -> list[tuple[str, int, int]]:
        """The next cells (`order`'s pending part is reordered to match): the
        largest pending |estimate|, then, from the next WINDOW batches' worth,
        the cells that add least waste to the forward.

        A forward runs the blocks from its lowest patched layer and the tokens
        from its first patched one (`nbinterp.engine.resume`), for every row: a
        cell that starts higher or later than the batch pays for work it does
        not need, one that starts lower or earlier makes every row pay more,
        and each forward has a fixed cost per call and per block run
        (`forward_cost`). A cell joins while the time it adds buys at least
        MIN_EFFICIENCY of its own work, best first: while fixed costs dominate
        the batch fills up, and rows that would mostly run blocks or tokens
        they do not need go to a later batch. The order by |estimate| holds to
        within a window."""
        pending = self.order[self.done :]
        n_layers, n_tokens, metric = self.setup.model.n_layers, self.setup.n_tokens, self.setup.metric
        prefix, remote = self.setup.prefix, self.setup.model.remote is not False
        window = pending[: WINDOW * (self.batch_size or MAX_BATCH)]
        # free cells (the shared prefix: exactly 0) take no row, unless a batch_size counts cells
        free = torch.tensor([c[0] != "head" and c[2] < prefix for c in window])
        layers = torch.tensor([c[1] for c in window], dtype=torch.float64)
        positions = torch.tensor([min(max(0 if c[0] == "head" else c[2], prefix), metric.position) for c in window],
                                 dtype=torch.float64)
        if remote:
            positions.zero_()  # a remote forward runs every token (only blocks are skipped)
        fixed = REMOTE_PER_FORWARD if remote else PER_FORWARD
        cost = lambda rows, layer, position: forward_cost(rows, n_layers - layer, n_tokens, position, fixed)  # noqa: E731
        # the work a cell needs (its own row from its own start), in the units of `forward_cost`
        work = cost(1, layers, positions) - cost(0, layers, positions)
        counted = torch.ones(len(window), dtype=torch.bool) if self.batch_size is not None else ~free
        chosen = torch.zeros(len(window), dtype=torch.bool)
        chosen[0] = True
        chosen |= free & ~counted  # ride along, no row
        layer0, position0, rows = layers[0], positions[0], int(counted[0])
        if free[0] and not counted[0]:
            layer0, position0 = torch.tensor(float(n_layers)), torch.tensor(float(n_tokens))  # nothing runs yet
        while True:
            lower, earlier = torch.minimum(layers, layer0), torch.minimum(positions, position0)
            added = cost(rows + 1, lower, earlier) - (cost(rows, layer0, position0) if rows else 0.0)
            efficiency = torch.where(~chosen & counted & (rows + 1 <= self._capacities(earlier)), work / added,
                                     torch.tensor(float("-inf")))
            best = int(efficiency.argmax())  # the first of equals: the larger estimate
            if efficiency[best] == float("-inf") or (rows and float(efficiency[best]) < MIN_EFFICIENCY):
                break
            chosen[best] = True
            layer0, position0, rows = lower[best], earlier[best], rows + 1
        picked = chosen.nonzero().flatten().tolist()
        batch = [window[i] for i in picked]
        left = [c for i, c in enumerate(window) if not chosen[i]]
        self.order[self.done :] = batch + left + pending[len(window) :]
        return batch

    def _capacities(self, positions: torch.Tensor) -> torch.Tensor:
        """Rows per forward for batches whose tokens start at `positions` (batch_size when given):
        `rows_for`'s token and cache budgets, capped at MAX_BATCH; float64 like `positions`."""
        if self.batch_size is not None:
            return torch.full_like(positions, float(self.batch_size))
        n_tokens = self.setup.n_tokens
        rows = torch.div(TOKENS_PER_BATCH, (n_tokens - positions).clamp(min=1), rounding_mode="floor")
        rows = torch.where(positions > 0, rows.clamp(max=CACHE_TOKENS // n_tokens), rows)
        return rows.clamp(min=1, max=MAX_BATCH)

    def run(self) -> dict[str, torch.Tensor]:
        for _ in self:
            pass
        return self.effects


def _selection(chosen: Sequence[int] | None, size: int, name: str, what: str) -> tuple[int, ...]:
    """A layers= / positions= argument as sorted distinct indices (negative ones count from the end)."""
    if chosen is None:
        return tuple(range(size))
    if not isinstance(chosen, (list, tuple, range)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in chosen):
        raise NbinterpError(f"{name} is a list of {what} numbers, e.g. {name}=[0, 3, -1], not {chosen!r}")
    bad = [i for i in chosen if not -size <= i < size]
    if bad or not chosen:
        raise NbinterpError(f"{name}={list(chosen)!r}: pick {what}s in 0..{size - 1} (negative from the end), at least one")
    return tuple(sorted({i % size for i in chosen}))


def sweep(
    model: "Model", clean: Any, corrupted: Any, target: str | int, foil: str | int | None = None, *,
    kinds: Sequence[str] = SWEEP_KINDS, position: int = -1, batch_size: int | None = None,
    layers: Sequence[int] | None = None, positions: Sequence[int] | None = None,
) -> PatchingSweep:
    """A patching sweep over `kinds`: the estimate is there at once, exact cells
    are computed when you iterate or `run()`."""
    return PatchingSweep(prepare(model, clean, corrupted, target, foil, position), tuple(kinds), batch_size,
                         layers, positions)  # type: ignore[arg-type] - checked and made tuples by _selection
