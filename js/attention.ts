// AttentionView front end: a layer x head grid of thumbnails, the selected
// head large (query rows x key columns), a token strip, and a mode toggle.
// Python sends the thumbnails (uint8, block max) and the first head (float16)
// as traits; heads the user picks and layer-summed token rows are fetched
// on demand through requests.

import type { RenderProps } from "@anywidget/types";
import { decodeTensor, tensorFromMessage, type Tensor } from "./lib/codec";
import { formatValue, logScale, renderLegend, sequentialScale, type ColorScale } from "./lib/colors";
import { describeError } from "./lib/errors";
import { HeadGrid, thumbSize, type HeadRef } from "./lib/head_grid";
import { Heatmap, fullWindow, type Cell, type MatrixWindow } from "./lib/heatmap";
import { RpcError } from "./lib/rpc";
import { ByteLru } from "./lib/lru";
import {
  displayMatrix, excludesSink, firstKeyShare, logFloor, SCALE_CHOICES, SINK_CHOICES, SINK_SHARE,
  type DisplayMatrix, type ScaleChoice, type SinkChoice,
} from "./lib/scales";
import { toggleGroup } from "./lib/style";
import { displayToken, TokenStrip } from "./lib/tokens";
import { Tooltip, type TooltipLine } from "./lib/tooltip";
import { mountView } from "./lib/view";
import { checkTrait } from "./lib/contract";
import { ATTENTION_REQUESTS, ATTENTION_TRAITS, type AttentionModel } from "./lib/contract.gen";

type Mode = AttentionModel["mode"];
type Scope = AttentionModel["strip_scope"];
type Direction = AttentionModel["strip_direction"];

type HeadData = { tensor: Tensor; vmax: number; sinkShare?: number; shown?: { key: string; display: DisplayMatrix } };
const headKey = (r: { layer: number; head: number; mode: Mode }) => `${r.layer}:${r.head}:${r.mode}`;
// 64 MB of float32: sixteen heads at 1,024 tokens.
const HEAD_CACHE_BYTES = 64 * 2 ** 20;
const PREFETCH_DWELL_MS = 150;
const MODE_LABEL: Record<Mode, string> = { probabilities: "probabilities", value_weighted: "value-weighted norms" };
/** What a cell's number is, for legends and tooltips. */
const QUANTITY: Record<Mode, string> = {
  probabilities: "attention probability (measured: this run's softmax, recomputed in float32)",
  value_weighted: "||a_ij v_j W_O|| (measured: value-weighted norm)",
};
/** Plot side: 12 px per token (every token labelled at 10-px text) between
 *  420 and 600 px; longer prompts label every k-th token and zoom for more.
 *  600 keeps grid + heatmap side by side in JupyterLab's ~970-px output area. */
export function plotSide(nTokens: number): number {
  return Math.max(420, Math.min(600, nTokens * 12));
}
/** Least px between axis labels: 10-px text packed 10 px apart (every 2nd token at T=113 on 600 px). */
export const ATTENTION_LABEL_SPACING = 10;
/** Room for the rotated key labels ("index token") above the plot. */
const HEATMAP_MARGIN_TOP = 110;
const toMask = (t: Tensor): Uint8Array => Uint8Array.from(t.values, (v) => (v > 0.5 ? 1 : 0));

function render({ model, el }: RenderProps<AttentionModel>): () => void {
  const { doc, root, rpc, errors, cleanups, guard, listen, save, dispose } = mountView(model, el, "attention");

  // Toolbar
  const toolbar = doc.createElement("div");
  toolbar.className = "nbi-toolbar";
  const title = doc.createElement("strong");
  const modeToggle = toggleGroup<Mode>(doc, "values", [["probabilities", "probabilities"], ["value_weighted", "value-weighted"]], (mode) => save({ mode }));
  const scaleToggle = toggleGroup<ScaleChoice>(doc, "colour scale", SCALE_CHOICES, (color_scale) => save({ color_scale }));
  scaleToggle.element.title = "log: equal ratios, equal colour steps (default beyond 32 tokens) \u00b7 linear: 0 .. the head's max \u00b7 per row: each query row \u00f7 its own max";
  const scaleLabel = doc.createElement("span");
  scaleLabel.className = "nbi-label";
  scaleLabel.textContent = "colour:";
  const sinkToggle = toggleGroup<SinkChoice>(doc, "key 0 on the colour scale", SINK_CHOICES, (sink_scale) => save({ sink_scale }));
  sinkToggle.element.title = `key 0 (attention sink) on the colour scale \u00b7 auto: left out when it holds more than ${SINK_SHARE * 100}% of the head's attention (mean over queries 1..) \u00b7 exclude: always left out \u00b7 include: always on the scale`;
  sinkToggle.element.classList.add("nbi-sink-toggle");
  const scopeToggle = toggleGroup<Scope>(doc, "token strip scope", [["head", "this head"], ["layer", "sum over layer"]], (strip_scope) => save({ strip_scope }));
  const directionToggle = toggleGroup<Direction>(doc, "token strip direction", [["attends_to", "attends to"], ["attended_by", "attended by"]], (strip_direction) => save({ strip_direction }));
  const resetZoom = doc.createElement("button");
  resetZoom.type = "button";
  resetZoom.className = "nbi-button";
  resetZoom.textContent = "reset zoom";
  resetZoom.addEventListener("click", () => save({ zoom: {} }));
  const status = doc.createElement("span");
  status.className = "nbi-status";
  toolbar.append(title, modeToggle.element, scaleLabel, scaleToggle.element, sinkToggle.element, scopeToggle.element, directionToggle.element, resetZoom, status);
  root.append(toolbar);

  // Panels: head grid | heatmap + legend
  const panels = doc.createElement("div");
  panels.className = "nbi-panels";
  const gridBox = doc.createElement("div");
  const gridCaption = doc.createElement("div");
  gridCaption.className = "nbi-caption nbi-grid-caption";
  const mapBox = doc.createElement("div");
  const legend = doc.createElement("div");
  legend.className = "nbi-legend";
  panels.append(gridBox, mapBox);
  root.append(panels);

  const tooltip = new Tooltip(root);
  const showTooltip = (lines: TooltipLine[], event: MouseEvent) => tooltip.show(lines, event);
  const hideTooltip = () => tooltip.hide();

  const nLayers = model.get("n_layers");
  const nHeads = model.get("n_heads");
  let thumbs: { tensor: Tensor; side: number; headMax: number[]; mode: Mode; masked: Uint8Array } | null = null;
  // One [T, T] mask per layer (1 = the model cannot attend there), fetched once.
  const masks = new Map<number, Uint8Array>();
  let hoverToken: number | null = null;
  let stripRequest: AbortController | null = null;
  let zoomTimer: ReturnType<typeof setTimeout> | undefined;
  cleanups.push(() => clearTimeout(zoomTimer));

  const tokenLabel = (i: number) => `${i} ${JSON.stringify(displayToken(model.get("tokens")[i] ?? ""))}`;
  const current = (): HeadRef & { mode: Mode } => ({ layer: model.get("layer"), head: model.get("head"), mode: model.get("mode") });
  // Heads on screen or seen recently, decoded. Python pushes a head it
  // changed itself (the `_pattern` trait); the view pulls one the user picked
  // (request "head_pattern"), so no head crosses the wire twice.
  const heads = new ByteLru<HeadData>(HEAD_CACHE_BYTES);
  const inFlight = new Map<string, AbortController>();
  let lastPatternTrait: AttentionModel["_pattern"] = null;
  cleanups.push(() => inFlight.forEach((c) => c.abort()));

  const headData = (tensor: Tensor): HeadData => {
    let vmax = 0;
    for (const v of tensor.values) if (v > vmax) vmax = v;
    return { tensor, vmax };
  };
  const remember = (key: string, data: HeadData) => heads.set(key, data, data.tensor.values.byteLength);
  /** The on-screen head if it is here, else null (and the caller fetches it). */
  const currentPattern = (): HeadData | null => {
    const p = checkTrait(model, ATTENTION_TRAITS, "_pattern");
    if (p && p !== lastPatternTrait) {
      lastPatternTrait = p;
      remember(headKey(p), headData(decodeTensor(p.tensor)));
      masks.set(p.layer, toMask(decodeTensor(p.masked)));
    }
    const data = heads.get(headKey(current())) ?? null;
    return data && masks.has(current().layer) ? data : null;
  };
  /** Key 0's share of the head (mean over queries 1..), computed once per head. */
  const sinkShareOf = (data: HeadData, layer: number): number => {
    const [rows, cols] = data.tensor.shape;
    data.sinkShare ??= firstKeyShare(data.tensor.values, rows, cols, masks.get(layer) ?? null);
    return data.sinkShare;
  };
  /** The head as drawn under the chosen colour scale and sink choice (computed once per head and choice). */
  const shownOf = (data: HeadData, layer: number): DisplayMatrix => {
    const choice = model.get("color_scale");
    const exclude = excludesSink(model.get("sink_scale"), sinkShareOf(data, layer));
    const key = `${choice}:${exclude}`;
    if (data.shown?.key !== key) {
      const [rows, cols] = data.tensor.shape;
      data.shown = { key, display: displayMatrix(data.tensor.values, rows, cols, choice, masks.get(layer) ?? null, QUANTITY[model.get("mode")], exclude) };
    }
    return data.shown.display;
  };
  const patternIsCurrent = () => currentPattern() !== null;

  function fetchHead(ref: HeadRef & { mode: Mode }): void {
    const key = headKey(ref);
    if (heads.has(key) || inFlight.has(key)) return;
    const controller = new AbortController();
    inFlight.set(key, controller);
    rpc.call(ATTENTION_REQUESTS.head_pattern, { ...ref, with_mask: !masks.has(ref.layer) }, { signal: controller.signal })
      .then(({ result, buffers }) => {
        if (result.masked !== undefined) masks.set(ref.layer, toMask(tensorFromMessage(result.masked, buffers)));
        remember(key, headData(tensorFromMessage(result.pattern, buffers)));
        if (headKey(current()) === key) guard(() => { updateStatus(); drawHeatmap(); updateStrip(); });
      })
      .catch((err) => {
        if (!(err instanceof RpcError && err.failure === "cancelled")) errors.show(describeError(err));
      })
      .finally(() => inFlight.delete(key));
  }

  /** Drops fetches for heads no longer wanted (the user clicked on). */
  function cancelFetchesExcept(...keep: string[]): void {
    for (const [key, controller] of inFlight) if (!keep.includes(key)) controller.abort();
  }
  let prefetchTimer: ReturnType<typeof setTimeout> | undefined;
  cleanups.push(() => clearTimeout(prefetchTimer));

  const grid = new HeadGrid(gridBox, {
    // Layers may use the heatmap's height (plot + its top margin) so deep models get readable thumbnails;
    // heads what is left of a ~950-px output area beside the heatmap (at least 200 px), so both sit side by side.
    nLayers, nHeads, thumbPx: thumbSize(nLayers, nHeads, Math.max(200, 950 - 100 - plotSide(model.get("tokens").length) - 16 - 28),
      plotSide(model.get("tokens").length) + HEATMAP_MARGIN_TOP),
    onClick: (ref) => save({ layer: ref.layer, head: ref.head }),
    onHover: (ref, event) => {
      clearTimeout(prefetchTimer);
      if (!ref) return hideTooltip();
      // Resting on a thumbnail fetches that head, so a click shows it at once.
      const target = { ...ref, mode: model.get("mode") };
      prefetchTimer = setTimeout(() => {
        cancelFetchesExcept(headKey(current()), headKey(target));
        fetchHead(target);
      }, PREFETCH_DWELL_MS);
      const max = thumbs?.headMax[ref.layer * nHeads + ref.head];
      const sinkOut = thumbnailCache?.shown.sinkExcluded[ref.layer * nHeads + ref.head] === 1;
      showTooltip([
        ["nbi-tip-head", "", `layer ${ref.layer} head ${ref.head}`],
        ["nbi-tip-max", `max ${MODE_LABEL[model.get("mode")]} `, max === undefined ? "?" : formatValue(max)],
        sinkOut ? "thumbnail scaled to its max over keys 1.. (key 0 left out)" : "thumbnail scaled to this max",
      ], event);
    },
  });
  cleanups.push(() => grid.destroy());
  // The caption wraps at the grid's width, so it never widens the grid's column past the thumbnails.
  gridCaption.style.maxWidth = `${Math.max(200, grid.canvas.getBoundingClientRect().width || parseFloat(grid.canvas.style.width) || 200)}px`;

  const plotPx = plotSide(model.get("tokens").length);
  const heatmap = new Heatmap(mapBox, {
    plotWidth: plotPx, plotHeight: plotPx, marginLeft: 100, marginTop: HEATMAP_MARGIN_TOP, labelSpacing: ATTENTION_LABEL_SPACING, cornerLabel: "query \u2193 key \u2192",
    onHover: (cell, event) => guard(() => {
      const pattern = currentPattern();
      if (!cell || !pattern) return hideTooltip();
      const c = current();
      const [, cols] = pattern.tensor.shape;
      const i = cell.row * cols + cell.col;
      const lines: TooltipLine[] = [
        ["nbi-tip-head", "", `layer ${c.layer} head ${c.head} \u00b7 ${MODE_LABEL[c.mode]}`],
        ["nbi-tip-query", "query ", tokenLabel(cell.row)],
        ["nbi-tip-key", "key ", tokenLabel(cell.col)],
      ];
      if (masks.get(c.layer)?.[i]) {
        lines.push(["nbi-tip-masked", "", "masked: the model cannot attend here"]);
      } else {
        lines.push(["nbi-tip-value", `${c.mode === "probabilities" ? "probability" : "norm"} `, formatValue(pattern.tensor.values[i])]);
        const shown = shownOf(pattern, c.layer);
        if (model.get("color_scale") === "row") lines.push(["nbi-tip-scaled", "\u00f7 row max = ", formatValue(shown.values[i])]);
      }
      showTooltip(lines, event);
    }),
    onAxisHover: (label, event) => guard(() => {
      if (!currentPattern()) return;
      showTooltip([[`nbi-tip-${label.axis === "row" ? "query" : "key"}`, label.axis === "row" ? "query " : "key ", tokenLabel(label.index)]], event);
    }),
    onClick: (cell: Cell) => save({ selected: { query: cell.row, key: cell.col } }),
    onWindowChange: (win: MatrixWindow) => {
      clearTimeout(zoomTimer);
      // Debounced: a wheel gesture is dozens of events; Python needs the last.
      zoomTimer = setTimeout(() => {
        const [rows, cols] = heatmap.shape;
        const full = win.row0 === 0 && win.col0 === 0 && win.row1 === rows && win.col1 === cols;
        save({ zoom: full ? {} : { query_start: win.row0, query_stop: win.row1, key_start: win.col0, key_stop: win.col1 } });
      }, 200);
    },
  });
  cleanups.push(() => heatmap.destroy());
  mapBox.append(legend);
  gridBox.append(gridCaption);

  const stripCaption = doc.createElement("div");
  stripCaption.className = "nbi-strip-caption";
  root.append(stripCaption);
  const strip = new TokenStrip(root, {
    onHover: (i) => {
      hoverToken = i;
      updateStrip();
    },
    onClick: (i) => save({ focus_token: model.get("focus_token") === i ? -1 : i }),
  });
  cleanups.push(() => strip.destroy());
  root.append(tooltip.el);

  function zoomWindow(): MatrixWindow {
    const z = model.get("zoom") ?? {};
    const [rows, cols] = heatmap.shape;
    if (z.query_start === undefined || z.key_start === undefined) return fullWindow(rows, cols);
    return { row0: z.query_start, row1: z.query_stop ?? rows, col0: z.key_start, col1: z.key_stop ?? cols };
  }

  function updateStatus() {
    const c = current();
    title.textContent = `Attention \u00b7 ${model.get("model_name")}`;
    status.textContent = `layer ${c.layer} \u00b7 head ${c.head} \u00b7 ${model.get("tokens").length} tokens${patternIsCurrent() ? "" : " \u00b7 loading\u2026"}`;
    modeToggle.set(c.mode);
    scaleToggle.set(model.get("color_scale"));
    sinkToggle.set(model.get("sink_scale"));
    scopeToggle.set(model.get("strip_scope"));
    directionToggle.set(model.get("strip_direction"));
  }

  /** The thumbnails as drawn: each tile is already divided by its head's max
   *  in Python; the colour scale applies on top, masked blocks hatched. */
  function thumbnailDisplay(): ThumbnailDisplay | null {
    if (!thumbs) return null;
    const { side, tensor, masked } = thumbs;
    const choice = model.get("color_scale");
    const sinkChoice = model.get("sink_scale");
    const nTokens = model.get("tokens").length;
    const out = new Float32Array(tensor.values.length);
    const sinkExcluded = new Uint8Array(nLayers * nHeads);
    for (let l = 0; l < nLayers; l++) {
      const mask = masked.subarray(l * side * side, (l + 1) * side * side);
      for (let h = 0; h < nHeads; h++) {
        const start = (l * nHeads + h) * side * side;
        let tile = tensor.values.subarray(start, start + side * side);
        const exclude = excludesSink(sinkChoice, firstKeyShare(tile, side, side, mask));
        if (exclude && side > 1 && choice !== "row") {
          // Re-divide by the max over pixel columns 1.. so key 0 no longer sets the top colour.
          let max = 0;
          for (let i = 0; i < tile.length; i++) if (i % side > 0 && !mask[i] && tile[i] > max) max = tile[i];
          if (max > 0) tile = tile.map((v) => v / max);
        }
        sinkExcluded[l * nHeads + h] = exclude ? 1 : 0;
        out.set(displayMatrix(tile, side, side, choice, mask, "", exclude).values, start);
      }
    }
    const scale = choice === "log" ? logScale(logFloor(1, nTokens), 1) : sequentialScale(0, 1);
    return { values: out, scale, sinkExcluded };
  }
  type ThumbnailDisplay = { values: Float32Array; scale: ColorScale; sinkExcluded: Uint8Array };
  let thumbnailCache: { key: string; shown: ThumbnailDisplay } | null = null;

  function drawGrid() {
    const t = checkTrait(model, ATTENTION_TRAITS, "_thumbnails");
    if (!t) return;
    if (t !== lastThumbs) {
      thumbs = { tensor: decodeTensor(t.tensor), side: t.side, headMax: t.head_max, mode: t.mode, masked: toMask(decodeTensor(t.masked)) };
      lastThumbs = t;
      thumbnailCache = null;
    }
    if (!thumbs) return;
    const key = `${model.get("color_scale")}:${model.get("sink_scale")}`;
    if (thumbnailCache?.key !== key) {
      const shown = thumbnailDisplay();
      if (!shown) return;
      thumbnailCache = { key, shown };
    }
    grid.setThumbnails(thumbnailCache.shown.values, thumbs.side, thumbnailCache.shown.scale);
    grid.setSelected(current());
    grid.draw();
    const n = model.get("tokens").length;
    const block = Math.ceil(n / thumbs.side);
    const scaleName = { log: "log scale", linear: "linear scale", row: "per-row scale" }[model.get("color_scale")];
    let nExcluded = 0;
    for (const e of thumbnailCache.shown.sinkExcluded) nExcluded += e;
    const firstColumn = block > 1 ? `the first pixel column (keys 0..${block - 1})` : "key 0";
    gridCaption.textContent = `Thumbnails: each head \u00f7 its own max (hover a head for it), ${scaleName}` +
      (block > 1 ? `; one pixel = the max of ${block}\u00d7${block} cells` : "") +
      `; ${firstColumn} left out of the scale in ${nExcluded} of ${nLayers * nHeads} heads` +
      (model.get("sink_scale") === "auto" ? ` (auto: where it holds > ${SINK_SHARE * 100}% of the pixels' row totals)` : "") +
      "; hatched: masked.";
    gridCaption.dataset.sinkExcluded = String(nExcluded);
  }
  let lastThumbs: AttentionModel["_thumbnails"] = null;

  function drawHeatmap() {
    const c = current();
    const pattern = currentPattern();
    if (pattern) {
      const [rows, cols] = pattern.tensor.shape;
      const shown = shownOf(pattern, c.layer);
      heatmap.setData(shown.values, rows, cols, shown.scale);
      const tokens = model.get("tokens");
      const labels = tokens.map((t, i) => `${i} ${displayToken(t)}`);
      heatmap.setLabels(labels, labels);
      heatmap.setWindow(zoomWindow());
      const what = c.mode === "probabilities" ? "attention probability" : "||a v W_O||";
      renderLegend(legend, shown.scale, model.get("color_scale") === "row" ? `${what} \u00f7 row max` : what, {
        swatches: [{ label: "masked (cannot attend)", kind: "masked" }],
        note: `${shown.description} \u00b7 key 0 holds ${(100 * sinkShareOf(pattern, c.layer)).toFixed(1)}% of each query's ${c.mode === "probabilities" ? "attention" : "total norm"} on average (queries 1..; sink setting: ${model.get("sink_scale")})`,
      });
      legend.dataset.scale = model.get("color_scale");
      const share = sinkShareOf(pattern, c.layer);
      legend.dataset.sinkExcluded = String(excludesSink(model.get("sink_scale"), share));
      legend.dataset.sinkShare = String(share);
      legend.dataset.vmax = String(shown.scale.vmax);
    } else {
      // After this task: a click sets layer and head one after the other.
      queueMicrotask(() => {
        if (patternIsCurrent()) return;
        cancelFetchesExcept(headKey(current()));
        fetchHead(current());
      });
    }
    if (!pattern && thumbs) {
      // Placeholder until the full-resolution head arrives: its thumbnail.
      const shown = thumbnailCache?.shown ?? thumbnailDisplay();
      if (shown) {
        const side = thumbs.side;
        const start = (c.layer * nHeads + c.head) * side * side;
        heatmap.setData(shown.values.slice(start, start + side * side), side, side, shown.scale);
        heatmap.setLabels([], []);
      }
    }
    const sel = model.get("selected");
    heatmap.setMarker(sel && sel.query !== undefined && sel.key !== undefined ? { row: sel.query, col: sel.key } : null);
    heatmap.draw();
    if (patternIsCurrent() && model.get("_thumbnails")) {
      root.dataset.pattern = `${c.layer}:${c.head}:${c.mode}`;
      root.dataset.scale = model.get("color_scale");
      root.dataset.drawn = "true";
    }
  }
  function updateStrip() {
    const focus = hoverToken ?? (model.get("focus_token") >= 0 ? model.get("focus_token") : null);
    strip.setActive(focus ?? -1);
    stripRequest?.abort();
    stripRequest = null;
    if (focus === null) {
      strip.setWeights(null, null);
      stripCaption.textContent = "hover or click a token to see where it looks";
      return;
    }
    const c = current();
    const direction = model.get("strip_direction");
    const scope = model.get("strip_scope");
    const caption = `${tokenLabel(focus)} ${direction === "attends_to" ? "attends to" : "is attended by"} \u00b7 ${scope === "head" ? `layer ${c.layer} head ${c.head}` : `sum over the heads of layer ${c.layer}`} \u00b7 ${MODE_LABEL[c.mode]}`;
    const apply = (weights: Float32Array) => {
      let max = 0;
      for (const w of weights) if (w > max) max = w;
      strip.setWeights(weights, sequentialScale(0, max));
      stripCaption.textContent = `${caption} \u00b7 max ${formatValue(max)}`;
    };
    if (scope === "head") {
      const pattern = currentPattern();
      if (!pattern) return;
      const [rows, cols] = pattern.tensor.shape;
      const v = pattern.tensor.values;
      apply(direction === "attends_to" ? v.slice(focus * cols, (focus + 1) * cols) : Float32Array.from({ length: rows }, (_, q) => v[q * cols + focus]));
      return;
    }
    const controller = new AbortController();
    stripRequest = controller;
    stripCaption.textContent = `${caption} \u00b7 loading\u2026`;
    rpc.call(ATTENTION_REQUESTS.token_weights, { layer: c.layer, token: focus, mode: c.mode, direction }, { signal: controller.signal })
      .then(({ result, buffers }) => {
        if (!controller.signal.aborted) apply(tensorFromMessage(result.weights, buffers).values);
      })
      .catch((err) => {
        if (!(err instanceof RpcError && err.failure === "cancelled")) errors.show(describeError(err));
      });
  }

  function redrawAll() {
    updateStatus();
    drawGrid();
    drawHeatmap();
    updateStrip();
  }

  guard(() => {
    strip.setTokens(model.get("tokens"));
    errors.show(model.get("error"));
    redrawAll();
  });
  listen("change:_thumbnails", () => { drawGrid(); drawHeatmap(); });
  listen("change:_pattern", () => { updateStatus(); drawHeatmap(); updateStrip(); });
  for (const name of ["layer", "head", "mode", "color_scale", "sink_scale", "strip_scope", "strip_direction", "focus_token"]) listen(`change:${name}`, redrawAll);
  listen("change:selected", drawHeatmap);
  listen("change:zoom", () => { heatmap.setWindow(zoomWindow()); heatmap.draw(); });
  listen("change:error", () => errors.show(model.get("error")));
  listen("change:tokens", () => { strip.setTokens(model.get("tokens")); redrawAll(); });

  return () => {
    stripRequest?.abort();
    dispose();
  };
}

export default { render };
