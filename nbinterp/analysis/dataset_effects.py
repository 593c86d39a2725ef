"""Effects over a data set: one number per (row, cell) for each single-prompt
view's grid, then per-cell statistics over the rows.

    attribute  every head zero-ablated alone: metric(ablated) - metric(clean)   grid layer x head
    ablate     the chosen ablations, each alone (and all together):              grid component x 1
               metric(ablated) - metric(clean); every head and MLP when none are chosen: layer x (heads, mlp)
    patch      counterfactual pairs: the clean row's activation patched into    grid layer x position
               its partner (the corrupted row): metric(patched) - metric(corrupted), in logit units
               (not divided by each pair's gap, which is tiny for some pairs and would dominate the mean);
               per kind resid_pre / attn_out / mlp_out by position, and head (all positions) by head
    logit_lens the probability of each row's target read through the final norm   grid stream x position
               and unembedding at every layer

metric = logit[target] - logit[foil] (logit[target] without a foil) at each
row's last token. Positions are counted from the END of each row: rows of
different token lengths line up on their last tokens (where the metric is
read), and a row shorter than a column has no value there (NaN, left out of
that cell's statistics).

Rows are computed in chunks through the engine's one batched runner
(`engine.batch.measure`; a chunk = rows of one token length, target and foil,
so no padding is needed), and `values` [units, cells] float64 is NaN until a
unit's chunk has run: cancelling keeps every row computed so far.

Statistics (`cell_stats`): mean over the rows that have the cell, a 95%
percentile bootstrap interval (rows resampled with replacement, one seeded
resample of rows shared by every cell), the share of rows whose sign equals
the mean's, and the spread (min, quartiles, max).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import torch

from nbinterp.analysis import dataset_runs
from nbinterp.analysis.chunked import ChunkedWork
from nbinterp.analysis.datasets import TokenizedSet
from nbinterp.engine.batch import RowPlan, batch_rows, measure
from nbinterp.engine.plan import PATCH_SITES, Metric, check_scale, component_key
from nbinterp.engine.weights import lens_of_streams
from nbinterp.errors import NbinterpError

if TYPE_CHECKING:
    from nbinterp.engine.model import Model

KINDS = ("attribute", "ablate", "patch", "logit_lens")
PATCH_KINDS = ("resid_pre", "attn_out", "mlp_out", "head")
PATCH_LABELS = {"resid_pre": "residual stream (entering the layer)", "attn_out": "attention output",
                "mlp_out": "MLP output", "head": "attention head (all positions)"}
MAX_CHUNK_UNITS = 16  # units per streamed step: progress moves at least every 16 rows
LENS_ELEMENTS = 1 << 26  # rows x streams x T x vocab float32 logits per lens chunk (~256 MB)
CHUNK = 256  # bootstrap resamples per vectorised step: memory ~ CHUNK x (units + cells)


@dataclass(frozen=True)
class Panel:
    """One heatmap of the grid: cells [start, start + rows x cols) in row-major order."""

    title: str
    row_axis: str  # what the rows are ("layer", "residual stream after", "component")
    col_axis: str
    row_labels: list[str]
    col_labels: list[str]
    start: int

    @property
    def size(self) -> int:
        return len(self.row_labels) * len(self.col_labels)

    def cell(self, row: int, col: int) -> int:
        return self.start + row * len(self.col_labels) + col


@dataclass
class CellStats:
    """Per cell, over the rows that have a value there (float64 [cells]; NaN where none)."""

    n: torch.Tensor  # long: rows with a value
    mean: torch.Tensor
    low: torch.Tensor  # 95% percentile bootstrap interval of the mean
    high: torch.Tensor
    agree: torch.Tensor  # share of rows whose sign equals the mean's sign
    minimum: torch.Tensor
    q1: torch.Tensor
    median: torch.Tensor
    q3: torch.Tensor
    maximum: torch.Tensor


def cell_stats(values: torch.Tensor, *, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> CellStats:
    """`values` [units, cells] (NaN: no value). The bootstrap resamples units
    with replacement among those with any value (one resample shared by every
    cell, so cells stay comparable); a cell's resampled mean is over the drawn
    units that have it."""
    values = values.double()
    present = values.isfinite()
    n = present.sum(0)
    filled = torch.where(present, values, torch.zeros((), dtype=torch.float64))
    with torch.no_grad():
        mean = filled.sum(0) / n
        mean = torch.where(n > 0, mean, torch.full_like(mean, float("nan")))
        sign = torch.sign(mean)
        agree = (present & (torch.sign(values) == sign)).sum(0).double() / n
        quartiles = torch.nanquantile(values, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64), dim=0) \
            if values.shape[0] else torch.full((5, values.shape[1]), float("nan"), dtype=torch.float64)
        low, high = _bootstrap(filled, present, n_resamples, seed, level)
    return CellStats(n, mean, low, high, agree, *quartiles)


def _bootstrap(filled: torch.Tensor, present: torch.Tensor, n_resamples: int, seed: int,
               level: float) -> tuple[torch.Tensor, torch.Tensor]:
    units = present.any(1).nonzero()[:, 0]
    cells = filled.shape[1]
    if len(units) < 2:  # one row has no spread to resample
        nan = torch.full((cells,), float("nan"), dtype=torch.float64)
        return nan, nan.clone()
    values, weights = filled[units], present[units].double()
    generator = torch.Generator().manual_seed(seed)
    means = []
    for start in range(0, n_resamples, CHUNK):
        size = min(CHUNK, n_resamples - start)
        picks = torch.randint(len(units), (size, len(units)), generator=generator)
        # how often each unit was drawn: a resample's sum is counts @ values
        counts = torch.zeros(size, len(units), dtype=torch.float64).scatter_add_(
            1, picks, torch.ones(size, len(units), dtype=torch.float64))
        means.append((counts @ values) / (counts @ weights))  # 0/0 -> NaN: no drawn unit has the cell
    tail = (1.0 - level) / 2
    bounds = torch.nanquantile(torch.cat(means), torch.tensor([tail, 1.0 - tail], dtype=torch.float64), dim=0)
    return bounds[0], bounds[1]


class DatasetEffects(ChunkedWork):
    """values [units, cells] of one view kind over a data set, filled chunk by
    chunk: iterate it (`for units in effects: ...`), `cancel()` it from another
    thread, iterate again to resume, or `run()` it. A unit is one row, or one
    counterfactual pair for "patch" (`unit_rows`)."""

    def __init__(self, kind: str, model: "Model", data: TokenizedSet, panels: list[Panel], what: str, unit: str,
                 unit_rows: list[tuple[int, ...]], chunks: list[list[int]],
                 compute: Callable[[list[int]], torch.Tensor], cell_keys: list[Any], diverging: bool = True) -> None:
        self.kind, self.model, self.data, self.panels = kind, model, data, panels
        # what each cell intervenes on, as the single-prompt view takes it: (layer, head),
        # {component: scale}, (kind, layer, head or position from the end) or (stream, position from the end)
        self.cell_keys = cell_keys
        self.what, self.unit, self.diverging = what, unit, diverging
        self.unit_rows = unit_rows
        self.n_cells = sum(panel.size for panel in panels)
        self.values = torch.full((len(unit_rows), self.n_cells), float("nan"), dtype=torch.float64)
        self.computed = torch.zeros(len(unit_rows), dtype=torch.bool)
        self.pending = list(chunks)
        self._compute = compute
        super().__init__()

    # ------------------------------------------------------------ progress
    @property
    def total(self) -> int:
        return len(self.unit_rows)

    @property
    def done(self) -> int:
        return int(self.computed.sum())

    def _step(self) -> list[int]:
        units = self.pending[0]
        self.values[units] = self._compute(units).double()
        self.computed[units] = True
        self.pending = self.pending[1:]
        return units

    def run(self) -> "DatasetEffects":
        for _ in self:
            pass
        return self

    # ------------------------------------------------------------- numbers
    def stats(self, *, n_resamples: int = 2000, seed: int = 0) -> CellStats:
        """`cell_stats` of the units computed so far."""
        return cell_stats(self.values[self.computed], n_resamples=n_resamples, seed=seed)

    def summary(self, *, n_resamples: int = 2000, seed: int = 0) -> "DatasetResult":
        """The numbers as they are now (copies), with their statistics."""
        return DatasetResult(self.kind, self.what, self.unit, list(self.panels), self.values.clone(),
                             self.computed.clone(), self.stats(n_resamples=n_resamples, seed=seed),
                             [self.unit_text(u) for u in range(self.total)])

    def unit_text(self, unit: int) -> str:
        rows = self.data.prompts.rows
        return " \u2192 ".join(rows[r].prompt for r in self.unit_rows[unit])

    def unit_group(self, unit: int) -> str:
        """The unit's group ("A", or "A → B" for a pair)."""
        rows = self.data.prompts.rows
        return " → ".join(rows[r].group for r in self.unit_rows[unit])

    def cell_name(self, cell: int) -> str:
        for panel in self.panels:
            if panel.start <= cell < panel.start + panel.size:
                row, col = divmod(cell - panel.start, len(panel.col_labels))
                return f"{panel.title}: {panel.row_axis} {panel.row_labels[row]}, {panel.col_axis} {panel.col_labels[col]}"
        raise NbinterpError(f"cell {cell} is out of range 0..{self.n_cells - 1}")

    def cell_values(self, cell: int) -> list[tuple[int, float]]:
        """(unit, value) of every computed unit that has `cell`, largest value first."""
        if not 0 <= cell < self.n_cells:
            raise NbinterpError(f"cell {cell} is out of range 0..{self.n_cells - 1}")
        column = self.values[:, cell]
        units = (self.computed & column.isfinite()).nonzero()[:, 0].tolist()
        return sorted(((u, float(column[u])) for u in units), key=lambda item: -item[1])

    def __repr__(self) -> str:
        return f"<DatasetEffects {self.kind}: {self.done}/{self.total} {self.unit}s x {self.n_cells} cells>"


@dataclass
class DatasetResult:
    """A view's numbers over a data set (`view.result`): `values` [units, cells]
    float64 (NaN: not computed, or the row has no such position), `stats` per
    cell over the computed units, `panels` say which cells form which grid."""

    kind: str
    what: str  # what one value is, in words
    unit: str  # "row", or "pair" for patching
    panels: list[Panel]
    values: torch.Tensor
    computed: torch.Tensor  # bool [units]
    stats: CellStats
    texts: list[str]  # each unit's prompt(s)

    def grid(self, panel: int | str = 0, what: str = "mean") -> torch.Tensor:
        """[rows, cols] of one panel (by index or title): a `CellStats` field."""
        chosen = next((p for p in self.panels if p.title == panel), None) if isinstance(panel, str) else self.panels[panel]
        if chosen is None:
            raise NbinterpError(f"no panel {panel!r}; the panels are {[p.title for p in self.panels]}")
        values = getattr(self.stats, what)[chosen.start : chosen.start + chosen.size]
        return values.reshape(len(chosen.row_labels), len(chosen.col_labels))


# ---------------------------------------------------------------- builders
def _chunks(model: "Model", data: TokenizedSet, rows: Sequence[int], per_forward: int,
            limit: int = MAX_CHUNK_UNITS) -> list[list[int]]:
    """Rows grouped by (length, target, foil), each group cut so a chunk's
    rows x `per_forward` interventions fill about one forward."""
    out = []
    for (n_tokens, _, _), members in dataset_runs.buckets(data, rows).items():
        size = max(1, min(limit, batch_rows(model, n_tokens) // max(1, per_forward)))
        out += [members[i : i + size] for i in range(0, len(members), size)]
    return out


def _metric_effects(model: "Model", data: TokenizedSet, items: Sequence[Any],
                    fill: Callable[[RowPlan, int, Any], None], order: Callable[[Any], Any] | None) -> Callable:
    def compute(rows: list[int]) -> torch.Tensor:
        measured = dataset_runs.measured_metrics(model, data, items, fill, rows=rows, order=order)
        return measured.effects.T  # [rows, items]
    return compute


def _metric_words(data: TokenizedSet) -> str:
    """'logit(t) - logit(f)' when every row shares them, else the per-row wording."""
    rows = data.prompts.rows
    targets, foils = {str(r.target) for r in rows}, {str(r.foil) for r in rows}
    if len(targets) == 1 and len(foils) == 1:
        row = rows[0]
        return f"logit({row.target!r})" + ("" if row.foil is None else f" - logit({row.foil!r})")
    return "logit(target) - logit(foil) of each row"


def head_effects(model: "Model", data: TokenizedSet) -> DatasetEffects:
    """Every head zero-ablated alone (its output-projection input set to 0, as
    ni.attribute measures heads), on every row."""
    heads = [(layer, head) for layer in range(model.n_layers) for head in range(model.n_heads)]
    panel = Panel("attention heads", "layer", "head", [str(i) for i in range(model.n_layers)],
                  [str(i) for i in range(model.n_heads)], 0)
    fill = lambda plan, slot, key: plan.ablate_head(slot, key[0], key[1])  # noqa: E731
    units = list(range(len(data)))
    return DatasetEffects(
        "attribute", model, data, [panel], f"change of {_metric_words(data)} when the head is zero-ablated (exact)",
        "row", [(r,) for r in units], _chunks(model, data, units, len(heads) + 1),
        _metric_effects(model, data, heads, fill, order=lambda key: key[0]), heads)


def ablation_effects(model: "Model", data: TokenizedSet, ablations: Mapping[Any, Any] | None = None) -> DatasetEffects:
    """Each chosen ablation alone ({"L3.H1": 0.0, "L2.mlp": 0.5}: component ->
    scale, 0 removes it) and, with more than one, all of them together; with
    none chosen every head and MLP zero-ablated alone (grid layer x head + mlp)."""
    units = list(range(len(data)))
    if not ablations:
        keys = dataset_runs.every_component(model)
        items = [[(layer, head, 0.0)] for layer, head in keys]
        panel = Panel("every component zero-ablated alone", "layer", "component",
                      [str(i) for i in range(model.n_layers)], [*(f"H{h}" for h in range(model.n_heads)), "mlp"], 0)
    else:
        if not isinstance(ablations, Mapping):
            raise NbinterpError('ablate= is a dict of component -> scale, e.g. {"L3.H1": 0.0, "L2.mlp": 0.5}')
        parsed = {}
        for key, scale in ablations.items():
            layer, head = model.parse_component(key)
            parsed[component_key(layer, head)] = (layer, head, check_scale(scale, repr(key)))
        items = [[value] for value in parsed.values()]
        names = [f"{name} \u00d7 {value[2]:g}" for name, value in parsed.items()]
        if len(parsed) > 1:
            items.append(list(parsed.values()))
            names.append("all together")
        panel = Panel("chosen ablations", "ablation", "", names, ["effect"], 0)

    def fill(plan: RowPlan, slot: int, item: list[tuple[int, Any, float]]) -> None:
        for layer, head, scale in item:
            if head == "mlp":
                plan.scale_mlp(slot, layer, scale)
            else:
                plan.ablate_head(slot, layer, int(head), scale)

    return DatasetEffects(
        "ablate", model, data, [panel], f"change of {_metric_words(data)} under the ablation (exact)", "row",
        [(r,) for r in units], _chunks(model, data, units, len(items) + 1),
        _metric_effects(model, data, items, fill, order=lambda item: item[0][0]),
        [{component_key(layer, head): scale for layer, head, scale in item} for item in items])


def counterfactual_pairs(data: TokenizedSet) -> list[tuple[int, int]]:
    """(clean row, corrupted row): each row of the first group with its partner."""
    prompts = data.prompts
    if not prompts.paired:
        unpaired = next(i for i, row in enumerate(prompts.rows) if row.partner is None)
        raise NbinterpError(
            f"patching over a data set needs counterfactual pairs, and row {unpaired} "
            f"({prompts.rows[unpaired].prompt!r}) has no partner: build the set with PromptSet.from_templates "
            "(two groups: the i-th values pair up) or give a partner column to PromptSet.from_dataframe")
    first = prompts.groups[0]
    return [(i, int(row.partner)) for i, row in enumerate(prompts.rows) if row.group == first]  # type: ignore[arg-type]


def patch_effects(model: "Model", data: TokenizedSet, kinds: Sequence[str] = PATCH_KINDS) -> DatasetEffects:
    """Per counterfactual pair (clean = the first group's row, corrupted = its
    partner): every cell of `kinds` patched from clean into corrupted, one at a
    time. Pairs of different lengths line up from the end."""
    if isinstance(kinds, str) or not kinds or any(k not in PATCH_KINDS for k in kinds):
        raise NbinterpError(f"kinds is a list drawn from {list(PATCH_KINDS)}, got {kinds!r}")
    kinds = tuple(dict.fromkeys(kinds))
    pairs = counterfactual_pairs(data)
    width = max(len(data.input_ids[clean]) for clean, _ in pairs)
    layers = [str(i) for i in range(model.n_layers)]
    offsets = [str(p - width) for p in range(width)]  # -width .. -1: from the end
    panels, cells, start = [], [], 0
    for kind in kinds:
        cols = [str(h) for h in range(model.n_heads)] if kind == "head" else offsets
        panel = Panel(PATCH_LABELS[kind], "layer", "head" if kind == "head" else "position from the end",
                      layers, cols, start)
        panels.append(panel)
        start += panel.size
        cells += [(kind, layer, col) for layer in range(model.n_layers) for col in range(len(cols))]
    captures = tuple(dict.fromkeys(PATCH_SITES[kind][0] for kind in kinds))

    def compute(units: list[int]) -> torch.Tensor:
        out = torch.full((len(units), len(cells)), float("nan"), dtype=torch.float64)
        for i, unit in enumerate(units):
            clean_row, corrupted_row = pairs[unit]
            n_tokens = len(data.input_ids[corrupted_row])
            clean = model.run(data.input_ids[clean_row].tolist(), capture=captures)
            present = [c for c, (kind, _, col) in enumerate(cells) if kind == "head" or col >= width - n_tokens]

            def fill(plan: RowPlan, slot: int, c: int) -> None:
                kind, layer, col = cells[c]
                head, position = (col, None) if kind == "head" else (None, col - (width - n_tokens))
                plan.patch(slot, kind, layer, head, position, clean.captured(PATCH_SITES[kind][0], layer))

            metric = Metric(data.targets[corrupted_row], data.foils[corrupted_row], n_tokens - 1)
            measured = measure(model, data.input_ids[corrupted_row][None], present, fill, metric,
                               order=lambda c: cells[c][1])
            out[i, present] = measured.effects[:, 0]
        return out

    clean_words = f"{data.prompts.groups[0]!r} row"
    return DatasetEffects(
        "patch", model, data, panels,
        f"change of {_metric_words(data)} on the corrupted row when the {clean_words}'s activation is patched in (exact)",
        "pair", [tuple(pair) for pair in pairs], [[u] for u in range(len(pairs))], compute,
        [(kind, layer, col if kind == "head" else col - width) for kind, layer, col in cells])


def lens_probabilities(model: "Model", data: TokenizedSet) -> DatasetEffects:
    """Each row's target probability read through the model's final norm and
    unembedding at every residual stream (embeddings, after each block) and
    position (from the end)."""
    n_layers = model.n_layers
    width = max(len(ids) for ids in data.input_ids)
    labels = ["embed"] + [f"L{layer}" for layer in range(n_layers)]
    panel = Panel("logit lens", "residual stream after", "position from the end", labels,
                  [str(p - width) for p in range(width)], 0)
    units = list(range(len(data)))
    streams_per_row = n_layers + 1

    def compute(rows: list[int]) -> torch.Tensor:
        n_tokens = len(data.input_ids[rows[0]])
        ids = torch.stack([data.input_ids[r] for r in rows])
        captured, _ = model.capture_batch(list(ids), {"resid_pre": set(range(n_layers)), "resid_final": {n_layers}})
        out = torch.full((len(rows), streams_per_row, width), float("nan"), dtype=torch.float64)
        streams = {}
        for i in range(len(rows)):
            for s in range(streams_per_row):
                resid = captured["resid_final"][n_layers] if s == n_layers else captured["resid_pre"][s]
                streams[i * streams_per_row + s] = resid[i].reshape(n_tokens, -1)
        entries = lens_of_streams(model, streams, (data.targets[rows[0]],))
        for key, entry in entries.items():
            i, s = divmod(key, streams_per_row)
            out[i, s, width - n_tokens:] = entry.token_probabilities.reshape(-1).double().cpu()
        return out.reshape(len(rows), -1)

    per_row = streams_per_row * width * model.shape.vocab_size
    limit = max(1, min(MAX_CHUNK_UNITS, LENS_ELEMENTS // per_row))
    targets = {str(row.target) for row in data.prompts.rows}
    what = f"probability of the target, p({data.prompts.rows[0].target!r})" if len(targets) == 1 else \
        "probability of each row's target"
    return DatasetEffects("logit_lens", model, data, [panel], what, "row", [(r,) for r in units],
                          _chunks(model, data, units, 1, limit), compute,
                          [(stream, p - width) for stream in range(streams_per_row) for p in range(width)], diverging=False)
