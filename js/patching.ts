// PatchingView front end: one diverging heatmap per sweep kind (residual
// stream, attention output, MLP output over layer x position; heads over
// layer x head). The first paint is every cell's attribution-patching
// estimate; measured cells replace estimates as Python streams them, with
// progress, cancel and resume; a toggle shows the estimate, the measured
// cells, or measured - estimate (where the two disagree). Clicking a cell asks Python to open that component in the
// attention view or the ablation panel, rendered below the heatmaps.

import type { RenderProps } from "@anywidget/types";
import { decodeTensor } from "./lib/codec";
import { checkTrait, type RequestSpec } from "./lib/contract";
import { PATCHING_REQUESTS, PATCHING_TRAITS, type PatchingModel } from "./lib/contract.gen";
import { divergingScale, formatValue, renderLegend } from "./lib/colors";
import { describeError } from "./lib/errors";
import { fittedColumnWidth, watchWidth } from "./lib/fit";
import { Heatmap, type Cell } from "./lib/heatmap";
import { toggleGroup } from "./lib/style";
import { displayToken } from "./lib/tokens";
import { Tooltip } from "./lib/tooltip";
import { openedView } from "./lib/opened";
import { mountView } from "./lib/view";

type Kind = PatchingModel["kinds"][number];
type OpenIn = PatchingModel["open_in"];
type Show = PatchingModel["show"];

const SHOW_LABELS: readonly (readonly [Show, string])[] = [
  ["best", "measured, else estimate"], ["estimate", "estimate"], ["measured", "measured only"], ["difference", "measured \u2212 estimate"],
];
const SHOW_NOTES: Record<Show, string> = {
  best: "measured cells (one forward each: (metric patched \u2212 corrupted) / (clean \u2212 corrupted)) replace the attribution-patching estimate (first-order, from one forward + backward) as they land, largest estimate first",
  estimate: "estimated (attribution patching): (clean \u2212 corrupted activation) \u00b7 d metric / d activation at the corrupted run, over (clean \u2212 corrupted metric)",
  measured: "measured cells only, one forward each: (metric patched \u2212 corrupted) / (clean \u2212 corrupted); grey = not measured",
  difference: "measured \u2212 estimate where measured: where attribution patching's first-order picture is wrong; grey = not measured",
};

/** One kind's numbers as streamed: exact effects, which are measured, the estimates. */
export type KindValues = { exact: Float32Array; measured: Float32Array; estimate: Float32Array };

/** What a map draws in mode `show`: NaN (grey) where the mode has no number. */
export function shownValues(v: KindValues, show: Show): Float32Array {
  const out = new Float32Array(v.exact.length);
  for (let i = 0; i < out.length; i++) {
    const m = v.measured[i] === 1;
    out[i] = show === "estimate" ? v.estimate[i] : show === "measured" ? (m ? v.exact[i] : NaN)
      : show === "difference" ? (m ? v.exact[i] - v.estimate[i] : NaN) : (m ? v.exact[i] : v.estimate[i]);
  }
  return out;
}

const TITLES: Record<Kind, string> = {
  resid_pre: "residual stream",
  attn_out: "attention output",
  mlp_out: "MLP output",
  head: "heads (all positions)",
};

/** Rows tall enough for a 10-px layer label on every row; columns at least 8 px
 *  where the output area has room for them. */
export const MIN_ROW_PX = 16;
export const MIN_COL_PX = 8;
/** A long prompt's columns shrink to fit the output area down to this width
 *  (labels every k-th position, every token on hover, wheel zooms in); only
 *  narrower would they be unreadable, and the map scrolls in its box instead. */
export const MIN_FIT_COL_PX = 3;
/** Left margin of the layer labels ("L29"), and the width assumed before the view is laid out. */
const MARGIN_LEFT = 34;
const ASSUMED_WIDTH_PX = 900;
/** Cell size of a map with `cols` columns and `rows` rows: square up to 28 px,
 *  never under the minimums (`fittedColumnWidth` narrows a long prompt's to fit). */
export function cellSize(cols: number, rows: number): { width: number; height: number } {
  const width = Math.max(MIN_COL_PX, Math.min(28, Math.floor(360 / Math.max(cols, rows, 1))));
  return { width, height: Math.max(MIN_ROW_PX, width) };
}
/** The plot width of a map of `cols` columns in `availablePx` of output area. */
export function plotWidthFor(cols: number, rows: number, availablePx: number): number {
  return cols * fittedColumnWidth(cols, cellSize(cols, rows).width, availablePx, MARGIN_LEFT + 2, MIN_FIT_COL_PX);
}
/** The colour scale is fixed: 0 = no effect, +1 = the clean metric restored,
 *  -1 = as far the other way; values beyond are clipped and marked. */
export const EFFECT_SCALE_MAX = 1;

const CSS = `
.nbi-patching .nbi-maps { display: flex; flex-wrap: wrap; gap: 18px; max-width: 100%; }
.nbi-patching .nbi-map { max-width: 100%; }
.nbi-patching .nbi-map-title { font-weight: 600; margin-bottom: 2px; }
.nbi-patching progress { width: 160px; }
.nbi-patching .nbi-opened { margin-top: 10px; border-top: 1px solid #ddd; padding-top: 6px; }
`;

function render({ model, el, host }: RenderProps<PatchingModel>): () => void {
  const { doc, root, rpc, errors, cleanups, guard, listen, dispose } = mountView(model, el, "patching", { css: CSS });
  const call = <P, R>(spec: RequestSpec<P, R>, params: P) =>
    rpc.call(spec, params).catch((err) => errors.show(describeError(err)));

  // Toolbar
  const toolbar = doc.createElement("div");
  toolbar.className = "nbi-toolbar";
  const title = doc.createElement("strong");
  title.textContent = `Activation patching \u00b7 ${model.get("model_name")}`;
  const bar = doc.createElement("progress");
  const progressText = doc.createElement("span");
  progressText.className = "nbi-status nbi-progress";
  const cancel = doc.createElement("button");
  cancel.type = "button";
  cancel.className = "nbi-button nbi-cancel";
  cancel.textContent = "cancel";
  cancel.addEventListener("click", () => call(PATCHING_REQUESTS.cancel, {}));
  const resume = doc.createElement("button");
  resume.type = "button";
  resume.className = "nbi-button nbi-resume";
  resume.textContent = "resume";
  resume.addEventListener("click", () => call(PATCHING_REQUESTS.resume, {}));
  const openToggle = toggleGroup<OpenIn>(doc, "click opens", [["attention", "attention view"], ["ablation", "ablation panel"]], (open_in) => {
    model.set("open_in", open_in);
    model.save_changes();
    openToggle.set(open_in);
  });
  const openLabel = doc.createElement("span");
  openLabel.className = "nbi-status";
  openLabel.textContent = "click a cell to open it in:";
  const showToggle = toggleGroup<Show>(doc, "show", SHOW_LABELS, (show) => {
    model.set("show", show);
    model.save_changes();
    showToggle.set(show);
    lastEffects = null;
    drawMaps();
  });
  toolbar.append(title, bar, progressText, cancel, resume, openLabel, openToggle.element);
  root.append(toolbar);
  const showBar = doc.createElement("div");
  showBar.className = "nbi-toolbar nbi-show";
  const showLabel = doc.createElement("span");
  showLabel.className = "nbi-status";
  showLabel.textContent = "show:";
  showBar.append(showLabel, showToggle.element);
  root.append(showBar);

  const summary = doc.createElement("div");
  summary.className = "nbi-status nbi-summary";
  root.append(summary);
  const maps = doc.createElement("div");
  maps.className = "nbi-maps";
  const legend = doc.createElement("div");
  legend.className = "nbi-legend";
  root.append(maps, legend);
  const tooltip = new Tooltip(root);
  const opened = doc.createElement("div");
  opened.className = "nbi-opened";
  opened.hidden = true;
  root.append(opened, tooltip.el);

  const nLayers = model.get("n_layers");
  const nHeads = model.get("n_heads");
  const tokens = model.get("clean_tokens");
  const corrupted = model.get("corrupted_tokens");
  const columnLabels = (kind: Kind) => (kind === "head" ? Array.from({ length: nHeads }, (_, h) => `H${h}`) : tokens.map((t, i) => `${i} ${displayToken(t)}`));
  const rowLabels = Array.from({ length: nLayers }, (_, l) => `L${l}`);
  const heatmaps = new Map<Kind, Heatmap>();
  const columns = (kind: Kind) => (kind === "head" ? nHeads : tokens.length);

  const describe = (kind: Kind, cell: Cell) => {
    if (kind === "head") return `layer ${cell.row} head ${cell.col}`;
    const clean = JSON.stringify(tokens[cell.col] ?? "");
    const corr = corrupted[cell.col] !== tokens[cell.col] ? ` (corrupted ${JSON.stringify(corrupted[cell.col] ?? "")})` : "";
    return `layer ${cell.row} \u00b7 position ${cell.col} ${clean}${corr}`;
  };

  for (const kind of model.get("kinds")) {
    const box = doc.createElement("div");
    box.className = `nbi-map nbi-map-${kind}`;
    const heading = doc.createElement("div");
    heading.className = "nbi-map-title";
    heading.textContent = TITLES[kind];
    const scroller = doc.createElement("div");
    scroller.className = "nbi-scroll-x";
    box.append(heading, scroller);
    maps.append(box);
    const cols = columns(kind);
    const cell = cellSize(cols, nLayers);
    const heatmap = new Heatmap(scroller, {
      plotWidth: plotWidthFor(cols, nLayers, el.clientWidth || ASSUMED_WIDTH_PX), plotHeight: nLayers * cell.height,
      marginLeft: MARGIN_LEFT, marginTop: kind === "head" ? 28 : 80,
      markClipped: true,
      signed: true,
      onHover: (at, event) => guard(() => {
        if (!at) return tooltip.hide();
        const value = heatmap.valueAt(at);
        const beyond = Math.abs(value) > EFFECT_SCALE_MAX ? " (beyond \u00b11: drawn at the end colour)" : "";
        const v = kindValues.get(kind);
        const i = at.row * cols + at.col;
        const measured = v !== undefined && v.measured[i] === 1;
        const est = v === undefined ? NaN : v.estimate[i];
        tooltip.show([TITLES[kind], describe(kind, at),
          ["nbi-tip-value", measured ? `measured ${formatValue(v.exact[i])}` : "measured: not yet"],
          ["nbi-tip-value", Number.isNaN(est) ? "estimate: none" : `estimate ${formatValue(est)} (attribution patching)`],
          ...(measured ? [["nbi-tip-value", `measured \u2212 estimate ${formatValue(v.exact[i] - est)}`] as [string, string]] : []),
          ["nbi-status", `drawn: ${Number.isNaN(value) ? "nothing in this mode" : formatValue(value)}${beyond}`]], event);
      }),
      onClick: (at) => {
        if (!kindValues.has(kind)) return;
        showMarker(kind, at);
        call(PATCHING_REQUESTS.open, { kind, layer: at.row, index: at.col, open_in: model.get("open_in") });
      },
    });
    heatmap.canvas.dataset.kind = kind;
    heatmap.setLabels(rowLabels, columnLabels(kind));
    heatmaps.set(kind, heatmap);
    cleanups.push(() => heatmap.destroy());
  }
  // The whole prompt in the width the output area has (and again when it changes).
  cleanups.push(watchWidth(maps, (px) => {
    for (const [kind, heatmap] of heatmaps) heatmap.resize(plotWidthFor(columns(kind), nLayers, px), heatmap.plotSize.height);
    root.dataset.fittedTo = String(px);
  }));

  /** One red marker on screen: the cell last opened (cleared in every other map). */
  function showMarker(kind: Kind | undefined, at: Cell | null) {
    for (const [k, heatmap] of heatmaps) {
      heatmap.setMarker(k === kind ? at : null);
      heatmap.draw();
    }
  }
  function markSelected() {
    const sel = model.get("selected");
    showMarker(sel.kind, sel.kind && sel.layer !== undefined && sel.index !== undefined ? { row: sel.layer, col: sel.index } : null);
  }

  let lastEffects: PatchingModel["_effects"] | null = null;
  const kindValues = new Map<Kind, KindValues>();
  function drawMaps() {
    const effects = checkTrait(model, PATCHING_TRAITS, "_effects");
    if (!effects || effects === lastEffects) return;
    lastEffects = effects;
    const show = checkTrait(model, PATCHING_TRAITS, "show");
    const decoded = new Map<Kind, { values: Float32Array; shape: number[] }>();
    let nMeasured = 0;
    let nCells = 0;
    for (const kind of model.get("kinds")) {
      const entry = effects[kind];
      if (!entry) continue;  // not streamed yet
      const tensor = decodeTensor(entry.tensor);
      const v = { exact: tensor.values, measured: decodeTensor(entry.measured).values, estimate: decodeTensor(entry.estimate).values };
      kindValues.set(kind, v);
      nMeasured += entry.done;
      nCells += tensor.values.length;
      decoded.set(kind, { values: shownValues(v, show), shape: tensor.shape });
    }
    root.dataset.show = show;
    // One fixed scale for every map and every frame: a colour keeps its
    // meaning while cells stream in, and compares across maps.
    const scale = divergingScale(EFFECT_SCALE_MAX);
    for (const [kind, { values, shape }] of decoded) {
      const heatmap = heatmaps.get(kind);
      if (!heatmap) continue;
      heatmap.setData(values, shape[0], shape[1], scale);
      heatmap.draw();
    }
    const heading = nMeasured === 0 ? "estimated (attribution patching)" : `${nMeasured} of ${nCells} cells measured, the rest estimated`;
    renderLegend(legend, scale, show === "difference" ? "measured \u2212 estimate" : `patching effect \u00b7 ${heading}`, {
      swatches: [{ label: "no number in this mode", kind: "missing" }, { label: "beyond \u00b11 (clipped; hover for the value)", kind: "clipped" }],
      note: `${SHOW_NOTES[show]}; 1 = the clean metric restored, 0 = no change from corrupted, fixed scale \u22121 .. 1` +
        " \u00b7 wheel on a map zooms (labels follow), drag pans, double-click resets; hover names the token",
    });
    root.dataset.drawn = "true";
  }

  function drawProgress() {
    const p = checkTrait(model, PATCHING_TRAITS, "progress");
    const done = p.done ?? 0;
    const total = p.total ?? 0;
    bar.max = Math.max(total, 1);
    bar.value = done;
    const state = p.state ?? "running";
    // stopped before any cell was measured (exact=False, or an early cancel): the grid is all estimate
    const words = state === "cancelled" && done === 0 ? "estimates only, nothing measured: resume to measure" : state;
    progressText.textContent = `${done} / ${total} cells \u00b7 ${words} \u00b7 ${(p.elapsed_s ?? 0).toFixed(1)} s`;
    cancel.hidden = state !== "running";
    resume.hidden = state !== "cancelled";
    root.dataset.state = state;
    root.dataset.done = String(done);
  }

  function drawSummary() {
    const foil = model.get("foil");
    const what = foil !== null ? `logit(${JSON.stringify(model.get("target"))}) \u2212 logit(${JSON.stringify(foil)})` : `logit(${JSON.stringify(model.get("target"))})`;
    summary.textContent = `${what}: clean ${model.get("clean_logit_diff").toFixed(3)}, corrupted ${model.get("corrupted_logit_diff").toFixed(3)}`;
  }

  const openedBox = openedView(doc, opened, root, host);
  const drawOpened = () => openedBox.draw(model.get("_opened"), () => drawCaption());
  cleanups.push(() => openedBox.dispose());
  /** The caption names the cell in `selected` (Python sets it with `_opened`, in one message). */
  function drawCaption() {
    const caption = opened.querySelector<HTMLElement>(".nbi-opened-caption");
    if (!caption) return;
    const sel = model.get("selected");
    caption.textContent = (sel.kind ? `opened ${TITLES[sel.kind]} \u00b7 ${describe(sel.kind, { row: sel.layer ?? 0, col: sel.index ?? 0 })}` : "opened") +
      (typeof host?.getWidget === "function" ? "" : " \u00b7 display it with grid.opened");
    root.dataset.selected = sel.kind ? `${sel.kind}:${sel.layer}:${sel.index}` : "";
  }

  guard(() => {
    openToggle.set(model.get("open_in"));
    showToggle.set(model.get("show"));
    errors.show(model.get("error"));
    drawSummary();
    drawProgress();
    drawMaps();
    markSelected();
  });
  drawOpened().catch((err) => errors.show(describeError(err)));
  listen("change:_effects", drawMaps);
  listen("change:progress", drawProgress);
  listen("change:selected", () => {
    markSelected();
    drawCaption();
  });
  listen("change:open_in", () => openToggle.set(model.get("open_in")));
  listen("change:show", () => {
    showToggle.set(model.get("show"));
    lastEffects = null;
    drawMaps();
  });
  listen("change:_opened", () => void drawOpened().catch((err) => errors.show(describeError(err))));
  listen("change:error", () => errors.show(model.get("error")));

  return () => {
    dispose();
  };
}

export default { render };
