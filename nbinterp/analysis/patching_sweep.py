"""Activation-patching sweeps: copy one site at a time from a clean run into
a corrupted one and measure how much of the clean logit difference comes back.

    effect = (ld_patched - ld_corrupted) / (ld_clean - ld_corrupted)

1 is full recovery, 0 no change. Sweeps cover the residual stream, the
attention output and the MLP output per (layer, position), and every head
(all positions) per (layer, head). Cells are computed in batches and yielded
as they arrive, so a view can stream them; `cancel()` stops after the batch
in flight.

Every batch also carries the two reference rows (corrupted, unpatched; and
the whole residual stream at layer 0 patched, which *is* the clean run), and
its cells are normalised by those rows: patching nothing gives 0.0 and
patching all of resid_pre at layer 0 gives 1.0, up to float32 rounding
between rows of one batch (an ulp or so of the logits, over the gap).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

from nbinterp.engine.plan import parse_site
from nbinterp.interventions.batch import Site, patched_metrics
from nbinterp.errors import NbinterpError
from nbinterp.engine.plan import Metric

if TYPE_CHECKING:
    from nbinterp.engine.model import Model
    from nbinterp.engine.run import Run

SWEEP_KINDS = ("resid_pre", "attn_out", "mlp_out", "head")
KIND_LABELS = {
    "resid_pre": "residual stream (entering the layer)",
    "attn_out": "attention output",
    "mlp_out": "MLP output",
    "head": "attention head (all positions)",
}
TOKENS_PER_BATCH = 512  # rows x tokens per forward; small models are overhead-bound, so batch


@dataclass
class PatchingSetup:
    """A clean / corrupted pair with its metric, ready to patch."""

    model: "Model"
    clean: "Run"
    corrupted_ids: torch.Tensor  # [1, T]
    metric: Metric
    clean_logit_diff: float
    corrupted_logit_diff: float

    @property
    def n_tokens(self) -> int:
        return self.corrupted_ids.shape[1]

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
    clean_run = model.run(clean_ids, capture=("resid_pre", "attn_out", "mlp_out", "z"))
    corrupted_run = model.run(corrupted_ids, capture=())
    ld = lambda run: float(_metric_of(run.logits_at(metric.position), metric))  # noqa: E731
    setup = PatchingSetup(model, clean_run, corrupted_ids, metric, ld(clean_run), ld(corrupted_run))
    _check_gap(setup, [clean_run.logits_at(metric.position), corrupted_run.logits_at(metric.position)])
    return setup


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


def _reference_rows() -> list[list[Site]]:
    return [[], [("resid_pre", 0, None, None)]]


def effects_of(setup: PatchingSetup, patch_sets: Sequence[Sequence[Site]]) -> torch.Tensor:
    """Normalised effect of each patch set (one batched forward), float32 [n]."""
    raw = patched_metrics(setup.model, setup.corrupted_ids, setup.clean, _reference_rows() + list(patch_sets), setup.metric)
    corrupted, clean = raw[0], raw[1]
    return (raw[2:] - corrupted) / (clean - corrupted) + 0.0  # + 0.0: no "-0.0" on screen


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
    """Iterate to compute (`for cell in sweep`), or call `run()`; `effects`
    holds what is done so far (NaN where not yet computed)."""

    setup: PatchingSetup
    kinds: tuple[str, ...] = SWEEP_KINDS
    batch_size: int | None = None
    effects: dict[str, torch.Tensor] = field(init=False)
    done: int = field(init=False, default=0)
    _stop: threading.Event = field(init=False, default_factory=threading.Event)

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in SWEEP_KINDS]
        if unknown or not self.kinds:
            raise NbinterpError(f"kinds must be a non-empty selection of {SWEEP_KINDS}, got {self.kinds!r}")
        model = self.setup.model
        self.effects = {
            kind: torch.full((model.n_layers, model.n_heads if kind == "head" else self.setup.n_tokens), float("nan"))
            for kind in self.kinds
        }
        if self.batch_size is None:
            self.batch_size = max(1, min(64, TOKENS_PER_BATCH // self.setup.n_tokens))

    @property
    def total(self) -> int:
        return sum(t.numel() for t in self.effects.values())

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    @property
    def finished(self) -> bool:
        return self.done == self.total

    def cancel(self) -> None:
        """Stop after the batch in flight (safe to call from another thread)."""
        self._stop.set()

    def _cells(self) -> Iterator[tuple[str, int, int]]:
        for kind in self.kinds:
            rows, cols = self.effects[kind].shape
            for layer in range(rows):
                for index in range(cols):
                    yield kind, layer, index

    def __iter__(self) -> Iterator[Cell]:
        pending = list(self._cells())[self.done :]
        for start in range(0, len(pending), self.batch_size):
            if self._stop.is_set():
                return
            batch = pending[start : start + self.batch_size]
            sites = [
                [("head", layer, index, None) if kind == "head" else (kind, layer, None, index)]
                for kind, layer, index in batch
            ]
            effects = effects_of(self.setup, sites)
            for (kind, layer, index), effect in zip(batch, effects.tolist()):
                self.effects[kind][layer, index] = effect
                self.done += 1
                yield Cell(kind, layer, index, effect)

    def run(self) -> dict[str, torch.Tensor]:
        for _ in self:
            pass
        return self.effects


def sweep(
    model: "Model", clean: Any, corrupted: Any, target: str | int, foil: str | int | None = None, *,
    kinds: Sequence[str] = SWEEP_KINDS, position: int = -1, batch_size: int | None = None,
) -> PatchingSweep:
    """A patching sweep over `kinds` (nothing is computed until you iterate or `run()`)."""
    return PatchingSweep(prepare(model, clean, corrupted, target, foil, position), tuple(kinds), batch_size)
