// LogitLensView front end: residual streams (rows) x positions (columns),
// coloured by the target's probability or the top token's, each cell
// labelled with the top token; hover shows all three numbers. The first paint
// (the output row, the last position of every row) comes from one forward; the
// other rows stream in, drawn grey ("not computed yet") until they land, and
// the progress line (words from Python) says what is computed and pending.

import type { RenderProps } from "@anywidget/types";
import { decodeTensor, type Tensor } from "./lib/codec";
import { formatValue, logScale, renderLegend, sequentialScale } from "./lib/colors";
import { fittedColumnWidth, watchWidth } from "./lib/fit";
import { Heatmap } from "./lib/heatmap";
import { toggleGroup } from "./lib/style";
import { displayToken } from "./lib/tokens";
import { Tooltip, type TooltipLine } from "./lib/tooltip";
import { mountView } from "./lib/view";
import { checkTrait } from "./lib/contract";
import { LOGIT_LENS_TRAITS, type LogitLensModel } from "./lib/contract.gen";

type Colour = "target" | "top";
type LensScale = "log" | "linear";
/** The log scale's floor: a target's probability is often 1e-5 .. 1e-3 until the last layers. */
const LOG_FLOOR = 1e-5;
/** Columns as wide as a top-token label needs, narrowed to fit the output area
 *  down to MIN_COL_PX (then the box scrolls); MARGIN_LEFT holds the row labels. */
const PREFERRED_COL_PX = 64, MIN_COL_PX = 3, MARGIN_LEFT = 52, ASSUMED_WIDTH_PX = 900;

/** Plot width of the lens for `cols` positions in `availablePx` of output area. */
export function lensPlotWidth(cols: number, availablePx: number): number {
  const preferred = Math.max(12, Math.min(PREFERRED_COL_PX, Math.floor(900 / Math.max(cols, 1))));
  return cols * fittedColumnWidth(cols, preferred, availablePx, MARGIN_LEFT + 2, MIN_COL_PX);
}

function render({ model, el }: RenderProps<LogitLensModel>): () => void {
  const { doc, root, errors, cleanups, guard, dispose } = mountView(model, el, "logit-lens");

  const target = model.get("target");
  let colour: Colour = target !== null ? "target" : "top";
  const toolbar = doc.createElement("div");
  toolbar.className = "nbi-toolbar";
  const title = doc.createElement("strong");
  title.textContent = `Logit lens \u00b7 ${model.get("model_name")}`;
  const toggle = toggleGroup<Colour>(doc, "colour by", [["target", `p(${JSON.stringify(target)})`], ["top", "p(top token)"]], (value) => {
    colour = value;
    guard(draw);
  });
  // Log by default when colouring by a target: its probability is tiny until the last layers,
  // so on a linear 0..1 scale every cell but the last rows is the same dark colour.
  let lensScale: LensScale = target !== null ? "log" : "linear";
  const scaleToggle = toggleGroup<LensScale>(doc, "colour scale", [["log", "log"], ["linear", "linear"]], (value) => {
    lensScale = value;
    guard(draw);
  });
  scaleToggle.element.title = `log: ${formatValue(LOG_FLOOR)} .. 1, equal ratios equal colour steps \u00b7 linear: 0 .. 1`;
  toolbar.append(title);
  if (target !== null) toolbar.append(toggle.element);
  toolbar.append(scaleToggle.element);
  root.append(toolbar);

  const tokens = model.get("tokens");
  const rows = model.get("row_labels");
  const cellH = 20;
  const box = doc.createElement("div");
  box.className = "nbi-scroll-x"; // past the least column width a long prompt scrolls here, inside the output area
  const legend = doc.createElement("div");
  legend.className = "nbi-legend";
  const progressLine = doc.createElement("div");
  progressLine.className = "nbi-strip-caption";
  const tooltip = new Tooltip(root);
  root.append(progressLine, box, legend, tooltip.el);

  let top: Tensor | null = null;
  let targetP: Tensor | null = null;
  let computed: Tensor | null = null;
  const isComputed = (i: number) => !computed || computed.values[i] !== 0;
  const topTokens = () => model.get("top_tokens");
  const heatmap = new Heatmap(box, {
    plotWidth: lensPlotWidth(tokens.length, el.clientWidth || ASSUMED_WIDTH_PX), plotHeight: cellH * rows.length,
    marginLeft: MARGIN_LEFT, marginTop: 90,
    cornerLabel: "after \u2193",
    cellLabel: (cell) => displayToken(topTokens()[cell.row]?.[cell.col] ?? ""),
    onHover: (cell, event) => guard(() => {
      if (!cell || !top) return tooltip.hide();
      const i = cell.row * tokens.length + cell.col;
      if (!isComputed(i)) {
        return tooltip.show([["nbi-tip-where", `${rows[cell.row]} \u00b7 position ${cell.col} \u00b7 not computed yet`]], event);
      }
      const lines: TooltipLine[] = [
        ["nbi-tip-where", `${rows[cell.row]} \u00b7 position ${cell.col} ${JSON.stringify(tokens[cell.col] ?? "")}`],
        ["nbi-tip-top", `top ${JSON.stringify(topTokens()[cell.row]?.[cell.col] ?? "")} ${formatValue(top.values[i])}`],
      ];
      if (targetP) lines.push(["nbi-tip-value", `p(${JSON.stringify(target)}) ${formatValue(targetP.values[i])}`]);
      tooltip.show(lines, event);
    }),
    // Axis labels are cut to fit; hovering one shows it whole.
    onAxisHover: (label, event) => tooltip.show([["nbi-tip-where", label.axis === "row"
      ? `${rows[label.index]}`
      : `position ${label.index} ${JSON.stringify(tokens[label.index] ?? "")}`]], event),
  });
  heatmap.setLabels(rows, tokens.map(displayToken));
  cleanups.push(() => heatmap.destroy());
  // The whole prompt in the width the output area has (and again when it changes).
  cleanups.push(watchWidth(root, (px) => {
    heatmap.resize(lensPlotWidth(tokens.length, px), cellH * rows.length);
    root.dataset.fittedTo = String(px);
  }));

  function draw() {
    const lens = checkTrait(model, LOGIT_LENS_TRAITS, "_lens");
    top = decodeTensor(lens.top_probabilities);
    targetP = lens.target_probabilities ? decodeTensor(lens.target_probabilities) : null;
    computed = lens.computed ? decodeTensor(lens.computed) : null;
    const shown = colour === "target" && targetP ? targetP : top;
    const scale = lensScale === "log" ? logScale(LOG_FLOOR, 1) : sequentialScale(0, 1);
    // NaN is the heatmap's "no value yet" (grey): the wire sends 0 there, the mask says so
    const values = Float32Array.from(shown.values, (v, i) => (isComputed(i) ? v : NaN));
    heatmap.setData(values, shown.shape[0], shown.shape[1], scale);
    heatmap.draw();
    toggle.set(colour);
    scaleToggle.set(lensScale);
    root.dataset.scale = lensScale;
    renderLegend(legend, scale, colour === "target" && targetP ? `p(${JSON.stringify(target)})` : "p(top token)", {
      note: "measured: each residual stream read through the final norm and the unembedding (logit lens), softmax over the vocabulary; " +
        (lensScale === "log" ? `log scale ${formatValue(LOG_FLOOR)} .. 1 (smaller probabilities get the first colour)` : "linear scale 0 .. 1") +
        " \u00b7 top tokens are written in cells wide enough: wheel zooms in (labels follow), drag pans, double-click resets; hover shows every number",
    });
    root.dataset.colour = colour;
    root.dataset.drawn = "true";
  }

  function drawProgress() {
    const p = model.get("progress");
    progressLine.textContent = p.state === "done" && p.done === p.total ? "" : `${p.label} \u00b7 ${p.elapsed_s.toFixed(1)} s`;
    root.dataset.progress = `${p.done}/${p.total}:${p.state}`;
  }

  guard(() => {
    errors.show(model.get("error"));
    draw();
    drawProgress();
  });
  const onProgress = () => guard(drawProgress);
  model.on("change:progress", onProgress);
  cleanups.push(() => model.off("change:progress", onProgress));
  const onLens = () => guard(draw);
  const onError = () => errors.show(model.get("error"));
  model.on("change:_lens", onLens);
  model.on("change:error", onError);
  cleanups.push(() => model.off("change:_lens", onLens), () => model.off("change:error", onError));

  return () => {
    dispose();
  };
}

export default { render };
