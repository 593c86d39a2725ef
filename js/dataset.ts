// DatasetView front end: a single-prompt view's grid over a data set. Each
// cell is the mean over rows (diverging colour for effects, sequential for
// probabilities); the tooltip gives the 95% bootstrap interval, the share of
// rows agreeing in sign and the spread; clicking a cell asks Python for its
// rows sorted by value, and a row opens the single-prompt view below.

import type { RenderProps } from "@anywidget/types";
import { decodeTensor } from "./lib/codec";
import { checkTrait, type RequestSpec } from "./lib/contract";
import { DATASET_REQUESTS, DATASET_TRAITS, type DatasetCellRow, type DatasetModel, type DatasetPanel } from "./lib/contract.gen";
import { divergingScale, formatValue, renderLegend, sequentialScale, type ColorScale } from "./lib/colors";
import { describeError } from "./lib/errors";
import { Heatmap, type Cell } from "./lib/heatmap";
import { Tooltip, type TooltipLine } from "./lib/tooltip";
import { openedView } from "./lib/opened";
import { mountView } from "./lib/view";

export type { DatasetCellRow, DatasetModel, DatasetPanel };

const CALLS: Record<DatasetModel["kind"], string> = {
  attribute: "ni.attribute", ablate: "ni.ablate", patch: "ni.patch", logit_lens: "ni.logit_lens",
};
const STAT_FIELDS = ["n", "mean", "low", "high", "agree", "minimum", "q1", "median", "q3", "maximum"] as const;
export type Stats = Record<(typeof STAT_FIELDS)[number], Float32Array>;

const CSS = `
.nbi-dataset .nbi-maps { display: flex; flex-wrap: wrap; gap: 18px; max-width: 100%; }
.nbi-dataset .nbi-map-title { font-weight: 600; margin-bottom: 2px; }
.nbi-dataset progress { width: 160px; }
.nbi-dataset .nbi-rows { margin-top: 8px; max-height: 260px; overflow-y: auto; border: 1px solid #ddd; }
.nbi-dataset .nbi-rows[hidden] { display: none; }
.nbi-dataset table { border-collapse: collapse; width: 100%; }
.nbi-dataset td, .nbi-dataset th { padding: 1px 6px; text-align: left; border-bottom: 1px solid #eee; }
.nbi-dataset td.nbi-num { text-align: right; font-family: ui-monospace, monospace; white-space: nowrap; }
.nbi-dataset tr.nbi-row { cursor: pointer; }
.nbi-dataset tr.nbi-row:hover { background: #eef3fb; }
.nbi-dataset tr.nbi-row-open { background: #dfe8f7; }
.nbi-dataset .nbi-opened { margin-top: 10px; border-top: 1px solid #ddd; padding-top: 6px; }
`;

/** Cell size: square up to 40 px, at least 16 px tall (a readable row label) and 8 px wide. */
export function cellSize(cols: number, rows: number): { width: number; height: number } {
  const width = Math.max(8, Math.min(40, Math.floor(400 / Math.max(cols, rows, 1))));
  return { width, height: Math.max(16, width) };
}

/** The means as drawn: NaN (grey, hatched) where no row has the cell. */
export function drawnMeans(stats: Stats, start: number, size: number): Float32Array {
  const out = new Float32Array(size);
  for (let i = 0; i < size; i++) out[i] = stats.n[start + i] > 0 ? stats.mean[start + i] : NaN;
  return out;
}

/** One scale for every panel: symmetric around 0 for effects, 0 .. max for probabilities. */
export function scaleFor(stats: Stats, diverging: boolean): ColorScale {
  let peak = 0;
  for (let i = 0; i < stats.mean.length; i++) if (stats.n[i] > 0) peak = Math.max(peak, Math.abs(stats.mean[i]));
  if (!(peak > 0)) peak = diverging ? 1 : 1e-6;
  return diverging ? divergingScale(peak) : sequentialScale(0, peak);
}

/** The tooltip's numbers for cell i: mean, interval, sign agreement, spread. */
export function statLines(stats: Stats, i: number, unit: string, diverging: boolean): TooltipLine[] {
  const n = stats.n[i];
  if (!(n > 0)) return [["nbi-status", `no ${unit} has this cell (every ${unit} is shorter)`]];
  const units = `${n} ${unit}${n === 1 ? "" : "s"}`;
  const lines: TooltipLine[] = [["nbi-tip-value", `mean ${formatValue(stats.mean[i])} over ${units}`]];
  lines.push(n >= 2 ? ["nbi-tip-value", `95% CI [${formatValue(stats.low[i])}, ${formatValue(stats.high[i])}] (bootstrap over ${unit}s)`]
    : ["nbi-status", `no interval: one ${unit}`]);
  if (diverging) lines.push(`sign agreement: ${Math.round(100 * stats.agree[i])}% of ${unit}s share the mean's sign`);
  lines.push(`spread: min ${formatValue(stats.minimum[i])} \u00b7 q1 ${formatValue(stats.q1[i])} \u00b7 median ${formatValue(stats.median[i])} \u00b7 q3 ${formatValue(stats.q3[i])} \u00b7 max ${formatValue(stats.maximum[i])}`);
  return lines;
}

function render({ model, el, host }: RenderProps<DatasetModel>): () => void {
  const { doc, root, rpc, errors, cleanups, guard, listen, dispose } = mountView(model, el, "dataset", { css: CSS });
  const call = <P, R>(spec: RequestSpec<P, R>, params: P) =>
    rpc.call(spec, params).catch((err) => { errors.show(describeError(err)); return null; });
  const unit = model.get("unit");
  const diverging = model.get("diverging");

  const toolbar = doc.createElement("div");
  toolbar.className = "nbi-toolbar";
  const title = doc.createElement("strong");
  title.textContent = `${CALLS[model.get("kind")]} over a data set \u00b7 ${model.get("model_name")}`;
  const bar = doc.createElement("progress");
  const progressText = doc.createElement("span");
  progressText.className = "nbi-status nbi-progress";
  const button = (label: string, cls: string, onClick: () => void) => {
    const b = Object.assign(doc.createElement("button"), { type: "button", className: `nbi-button ${cls}`, textContent: label });
    b.addEventListener("click", onClick);
    return b;
  };
  const cancel = button("cancel", "nbi-cancel", () => void call(DATASET_REQUESTS.cancel, {}));
  const resume = button("resume", "nbi-resume", () => void call(DATASET_REQUESTS.resume, {}));
  toolbar.append(title, bar, progressText, cancel, resume);
  const summary = Object.assign(doc.createElement("div"), { className: "nbi-status nbi-summary" });
  const maps = Object.assign(doc.createElement("div"), { className: "nbi-maps" });
  const legend = Object.assign(doc.createElement("div"), { className: "nbi-legend" });
  const rowsCaption = Object.assign(doc.createElement("div"), { className: "nbi-status nbi-rows-caption" });
  const rowsBox = Object.assign(doc.createElement("div"), { className: "nbi-rows", hidden: true });
  const opened = Object.assign(doc.createElement("div"), { className: "nbi-opened", hidden: true });
  const tooltip = new Tooltip(root);
  root.append(toolbar, summary, maps, legend, rowsCaption, rowsBox, opened, tooltip.el);

  const panels = model.get("panels");
  const heatmaps: Heatmap[] = [];
  let stats: Stats | null = null;
  const cellOf = (p: DatasetPanel, at: Cell) => p.start + at.row * p.col_labels.length + at.col;
  const where = (p: DatasetPanel, at: Cell) =>
    `${p.row_axis} ${p.row_labels[at.row]}${p.col_axis ? ` \u00b7 ${p.col_axis} ${p.col_labels[at.col]}` : ""}`;

  panels.forEach((panel, index) => {
    const box = Object.assign(doc.createElement("div"), { className: "nbi-map" });
    const axes = panel.col_axis ? ` \u00b7 ${panel.row_axis} \u00d7 ${panel.col_axis}` : "";
    const heading = Object.assign(doc.createElement("div"), { className: "nbi-map-title", textContent: `${panel.title}${axes}` });
    const scroller = Object.assign(doc.createElement("div"), { className: "nbi-scroll-x" });
    box.append(heading, scroller);
    maps.append(box);
    const rows = panel.row_labels.length, cols = panel.col_labels.length;
    const size = cellSize(cols, rows);
    const longest = Math.max(...panel.row_labels.map((l) => l.length), 2);
    const heatmap = new Heatmap(scroller, {
      plotWidth: cols * size.width, plotHeight: rows * size.height, marginLeft: Math.min(160, 12 + 7 * longest), marginTop: 30,
      onHover: (at, event) => guard(() => {
        if (!at || !stats) return tooltip.hide();
        tooltip.show([panel.title, where(panel, at), ...statLines(stats, cellOf(panel, at), unit, diverging),
          ["nbi-status", `click: list the ${unit}s of this cell`]], event);
      }),
      onClick: (at) => {
        for (const h of heatmaps) h.setMarker(h === heatmap ? at : null);
        for (const h of heatmaps) h.draw();
        void listRows(cellOf(panel, at));
      },
    });
    heatmap.canvas.dataset.panel = String(index);
    heatmap.setLabels(panel.row_labels, panel.col_labels);
    heatmaps.push(heatmap);
    cleanups.push(() => heatmap.destroy());
  });

  function drawMaps() {
    const encoded = checkTrait(model, DATASET_TRAITS, "_stats");
    if (!encoded || !encoded.mean) return;
    const decoded = {} as Stats;
    for (const name of STAT_FIELDS) decoded[name] = decodeTensor(encoded[name]).values;
    stats = decoded;
    const scale = scaleFor(decoded, diverging);
    panels.forEach((panel, i) => {
      const h = heatmaps[i];
      h.setData(drawnMeans(decoded, panel.start, panel.row_labels.length * panel.col_labels.length),
        panel.row_labels.length, panel.col_labels.length, scale);
      h.draw();
    });
    drawLegend();
    root.dataset.drawn = "true";
  }

  /** The legend counts the rows from `progress`, which may land after `_stats` in one update: drawn on both. */
  function drawLegend() {
    if (!stats) return;
    const done = checkTrait(model, DATASET_TRAITS, "progress").done;
    renderLegend(legend, scaleFor(stats, diverging), `mean over ${done} ${unit}s`, {
      swatches: [{ label: `no ${unit} has this cell (or none computed yet)`, kind: "missing" }],
      note: `each ${unit}: ${model.get("what")}; hover a cell for its 95% bootstrap interval, sign agreement and spread`,
    });
  }

  function drawProgress() {
    const p = checkTrait(model, DATASET_TRAITS, "progress");
    bar.max = Math.max(p.total, 1);
    bar.value = p.done;
    const words = p.state === "cancelled" ? `cancelled: ${p.done} ${unit}s kept, resume to compute the rest` : p.state;
    progressText.textContent = `${p.done} / ${p.total} ${unit}s \u00b7 ${words} \u00b7 ${p.elapsed_s.toFixed(1)} s`;
    cancel.hidden = p.state !== "running";
    resume.hidden = p.state !== "cancelled";
    root.dataset.state = p.state;
    root.dataset.done = String(p.done);
    summary.textContent = `${model.get("what")} \u00b7 each cell: the mean over ${p.done} of ${model.get("n_units")} ${unit}s`;
  }

  let listed = -1;
  async function listRows(cell: number) {
    listed = cell;
    const answer = await call(DATASET_REQUESTS.cell_rows, { cell });
    if (!answer || listed !== cell) return;
    const reply = answer.result;
    const table = doc.createElement("table");
    const head = table.createTHead().insertRow();
    for (const t of ["#", "group", unit === "pair" ? "clean \u2192 corrupted" : "prompt", diverging ? "effect" : "probability"]) head.append(Object.assign(doc.createElement("th"), { textContent: t }));
    const body = table.createTBody();
    for (const row of reply.rows) {
      const tr = body.insertRow();
      tr.className = "nbi-row";
      tr.dataset.unit = String(row.unit);
      tr.title = "open the single-prompt view of this " + unit;
      tr.insertCell().textContent = String(row.unit);
      tr.insertCell().textContent = row.group;
      tr.insertCell().textContent = row.text;
      Object.assign(tr.insertCell(), { className: "nbi-num", textContent: formatValue(row.value) });
      tr.addEventListener("click", () => {
        for (const other of body.querySelectorAll("tr")) other.classList.toggle("nbi-row-open", other === tr);
        void call(DATASET_REQUESTS.open_row, { unit: row.unit, cell });
      });
    }
    const cut = reply.n > reply.rows.length ? ` (the ${reply.rows.length / 2} largest and smallest shown)` : "";
    rowsCaption.textContent = `${reply.name}: ${reply.n} ${unit}s, largest value first${cut}; click one to open its single-prompt view`;
    rowsBox.replaceChildren(table);
    rowsBox.hidden = false;
    rowsBox.dataset.cell = String(cell);
  }

  const openedBox = openedView(doc, opened, root, host);
  const drawOpened = () => openedBox.draw(model.get("_opened"), (caption) => {
    const sel = model.get("selected");
    caption.textContent = `opened ${unit} ${sel.unit ?? ""} in ${CALLS[model.get("kind")]}` +
      (typeof host?.getWidget === "function" ? "" : " \u00b7 display it with view.opened");
  });
  cleanups.push(() => openedBox.dispose());

  guard(() => {
    errors.show(model.get("error"));
    drawProgress();
    drawMaps();
    const sel = model.get("selected");
    if (sel.cell !== undefined) void listRows(sel.cell);
  });
  drawOpened().catch((err) => errors.show(describeError(err)));
  listen("change:_stats", drawMaps);
  listen("change:progress", () => { drawProgress(); drawLegend(); });
  listen("change:_opened", () => void drawOpened().catch((err) => errors.show(describeError(err))));
  listen("change:error", () => errors.show(model.get("error")));
  return () => dispose();
}

export default { render };
