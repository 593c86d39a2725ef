"""The exact sweep's batching (`PatchingSweep._next_batch`): which cells share a
forward. Checked on the cost model the scheduler steers by (no timing here:
benchmarks/bench_real_model.py measures the seconds), on a stand-in for a
30-layer model so no forward runs."""

from __future__ import annotations

import random
from types import SimpleNamespace

from nbinterp.analysis.patching_sweep import MAX_BATCH, PatchingSweep
from nbinterp.engine.batch import forward_cost

N_LAYERS, N_HEADS, N_TOKENS, PREFIX = 30, 9, 64, 3


def stand_in(order: list[tuple[str, int, int]], batch_size: int | None = None) -> PatchingSweep:
    """A sweep over `order` (largest estimate first) whose setup has only what scheduling reads."""
    model = SimpleNamespace(n_layers=N_LAYERS, n_heads=N_HEADS, remote=False)
    setup = SimpleNamespace(model=model, n_tokens=N_TOKENS, prefix=PREFIX,
                            metric=SimpleNamespace(position=N_TOKENS - 1))
    sweep = PatchingSweep.__new__(PatchingSweep)  # no model, no estimate: the order is given
    sweep.setup, sweep.batch_size, sweep.order, sweep.done = setup, batch_size, list(order), 0
    return sweep


def start(cell: tuple[str, int, int]) -> tuple[int, int]:
    kind, layer, index = cell
    return layer, max(PREFIX, 0 if kind == "head" else index)


def schedule_cost(sweep: PatchingSweep) -> tuple[float, list[list[tuple[str, int, int]]]]:
    """Every batch the sweep would run, and their total modelled time."""
    total, batches = 0.0, []
    while sweep.done < len(sweep.order):
        batch = sweep._next_batch()
        batches.append(batch)
        run = [c for c in batch if c[0] == "head" or c[2] >= PREFIX]
        if run:
            layer, position = min(start(c)[0] for c in run), min(start(c)[1] for c in run)
            total += forward_cost(len(run), N_LAYERS - layer, N_TOKENS, position)
        sweep.done += len(batch)
    return total, batches


def chunked_cost(order: list[tuple[str, int, int]], rows: int) -> float:
    """The same cells in estimate order, `rows` a forward (each forward from its cells' earliest start)."""
    total = 0.0
    for i in range(0, len(order), rows):
        run = [c for c in order[i : i + rows] if c[0] == "head" or c[2] >= PREFIX]
        if run:
            layer, position = min(start(c)[0] for c in run), min(start(c)[1] for c in run)
            total += forward_cost(len(run), N_LAYERS - layer, N_TOKENS, position)
    return total


def test_a_batch_takes_cells_that_start_near_it_not_far_above() -> None:
    lead, same, near, far = ("resid_pre", 0, 3), ("attn_out", 0, 3), ("mlp_out", 1, 4), ("resid_pre", 28, 62)
    sweep = stand_in([lead, far, same, near])
    batch = sweep._next_batch()
    assert batch == [lead, same, near]  # the far cell would run 30 blocks x 61 tokens for 2 x 2 of its own
    assert sweep.order[: len(batch) + 1] == [lead, same, near, far]  # the order holds what is left


def test_shared_prefix_cells_ride_along_without_a_row() -> None:
    free = [("resid_pre", layer, 1) for layer in range(5)]
    sweep = stand_in(free + [("mlp_out", 29, 63)])
    assert sweep._next_batch() == free + [("mlp_out", 29, 63)]


def test_batch_size_caps_the_rows() -> None:
    order = [("resid_pre", layer, 63) for layer in range(N_LAYERS)]
    _, batches = schedule_cost(stand_in(order, batch_size=4))
    assert max(map(len, batches)) == 4 and sum(map(len, batches)) == N_LAYERS


def test_the_whole_grid_of_an_early_differing_pair_costs_far_less_than_estimate_order_chunks() -> None:
    # every resid / attn / mlp cell and every head, in a shuffled "estimate" order
    cells = [(kind, layer, p) for kind in ("resid_pre", "attn_out", "mlp_out") for layer in range(N_LAYERS)
             for p in range(N_TOKENS)] + [("head", layer, h) for layer in range(N_LAYERS) for h in range(N_HEADS)]
    random.Random(0).shuffle(cells)
    cost, batches = schedule_cost(stand_in(cells))
    assert sorted(c for b in batches for c in b) == sorted(cells)
    assert max(len([c for c in b if c[0] == "head" or c[2] >= PREFIX]) for b in batches) <= MAX_BATCH
    # the work itself: each cell's own row from its own start
    work = sum(forward_cost(1, N_LAYERS - start(c)[0], N_TOKENS, start(c)[1])
               - forward_cost(0, N_LAYERS - start(c)[0], N_TOKENS, start(c)[1])
               for c in cells if c[0] == "head" or c[2] >= PREFIX)
    best_chunks = min(chunked_cost(cells, rows) for rows in (4, 8, 16, 32))
    assert cost < 0.75 * best_chunks, (cost, best_chunks)
    assert cost < 1.6 * work, (cost, work)
