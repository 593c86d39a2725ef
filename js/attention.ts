// AttentionView front end: a layer x head grid of thumbnails, the selected
// head large (query rows x key columns), a token strip, and a mode toggle.
// Python sends the thumbnails (uint8, block max) and the first head (float16)
// as traits; heads the user picks and layer-summed token rows are fetched
// on demand through requests.

import type { RenderProps } from "@anywidget/types";
import { decodeTensor, tensorFromMessage, type EncodedTensor, type Tensor } from "./lib/codec";
import { formatValue, renderLegend, sequentialScale } from "./lib/colors";
import { describeError } from "./lib/errors";
import { HeadGrid, thumbSize, type HeadRef } from "./lib/head_grid";
import { Heatmap, fullWindow, type Cell, type MatrixWindow } from "./lib/heatmap";
import { RpcError } from "./lib/rpc";
import { ByteLru } from "./lib/lru";
import { toggleGroup } from "./lib/style";
import { displayToken, TokenStrip } from "./lib/tokens";
import { mountView } from "./lib/view";

type Mode = "probabilities" | "value_weighted";
type Scope = "head" | "layer";
type Direction = "attends_to" | "attended_by";

/** Mirrors the synced traits of nbinterp.widgets.attention.AttentionView. */
export interface AttentionModel {
  model_name: string;
  tokens: string[];
  n_layers: number;
  n_heads: number;
  layer: number;
  head: number;
  mode: Mode;
  selected: { query?: number; key?: number };
  focus_token: number;
  strip_scope: Scope;
  strip_direction: Direction;
  zoom: { query_start?: number; query_stop?: number; key_start?: number; key_stop?: number };
  error: string;
  _thumbnails: { mode: Mode; side: number; head_max: number[]; tensor: EncodedTensor } | null;
  _pattern: { layer: number; head: number; mode: Mode; tensor: EncodedTensor } | null;
}

type HeadData = { tensor: Tensor; vmax: number };
const headKey = (r: { layer: number; head: number; mode: Mode }) => `${r.layer}:${r.head}:${r.mode}`;
// 64 MB of float32: sixteen heads at 1,024 tokens.
const HEAD_CACHE_BYTES = 64 * 2 ** 20;
const PREFETCH_DWELL_MS = 150;
const MODE_LABEL: Record<Mode, string> = { probabilities: "probabilities", value_weighted: "value-weighted norms" };
const PLOT_PX = 420;

function render({ model, el }: RenderProps<AttentionModel>): () => void {
  const { doc, root, rpc, errors, cleanups, guard, listen, save, dispose } = mountView(model, el, "attention");

  // Toolbar
  const toolbar = doc.createElement("div");
  toolbar.className = "nbi-toolbar";
  const title = doc.createElement("strong");
  const modeToggle = toggleGroup<Mode>(doc, "values", [["probabilities", "probabilities"], ["value_weighted", "value-weighted"]], (mode) => save({ mode }));
  const scopeToggle = toggleGroup<Scope>(doc, "token strip scope", [["head", "this head"], ["layer", "sum over layer"]], (strip_scope) => save({ strip_scope }));
  const directionToggle = toggleGroup<Direction>(doc, "token strip direction", [["attends_to", "attends to"], ["attended_by", "attended by"]], (strip_direction) => save({ strip_direction }));
  const resetZoom = doc.createElement("button");
  resetZoom.type = "button";
  resetZoom.className = "nbi-button";
  resetZoom.textContent = "reset zoom";
  resetZoom.addEventListener("click", () => save({ zoom: {} }));
  const status = doc.createElement("span");
  status.className = "nbi-status";
  toolbar.append(title, modeToggle.element, scopeToggle.element, directionToggle.element, resetZoom, status);
  root.append(toolbar);

  // Panels: head grid | heatmap + legend
  const panels = doc.createElement("div");
  panels.className = "nbi-panels";
  const gridBox = doc.createElement("div");
  const mapBox = doc.createElement("div");
  const legend = doc.createElement("div");
  legend.className = "nbi-legend";
  panels.append(gridBox, mapBox);
  root.append(panels);

  const tooltip = doc.createElement("div");
  tooltip.className = "nbi-tooltip";
  tooltip.hidden = true;
  const showTooltip = (lines: Array<[string, string, string]>, event: MouseEvent) => {
    tooltip.replaceChildren(...lines.map(([cls, label, value]) => {
      const line = doc.createElement("div");
      const v = doc.createElement("span");
      v.className = cls;
      v.textContent = value;
      line.append(label, v);
      return line;
    }));
    const box = root.getBoundingClientRect();
    tooltip.hidden = false;
    // Keep it inside the widget: flip to the cursor's left near the right edge.
    const x = event.clientX - box.left;
    const left = x + 14 + tooltip.offsetWidth > box.width ? x - 14 - tooltip.offsetWidth : x + 14;
    tooltip.style.left = `${Math.max(0, left)}px`;
    tooltip.style.top = `${event.clientY - box.top + 14}px`;
  };

  const nLayers = model.get("n_layers");
  const nHeads = model.get("n_heads");
  let thumbs: { tensor: Tensor; side: number; headMax: number[]; mode: Mode } | null = null;
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
    const p = model.get("_pattern");
    if (p && p !== lastPatternTrait) {
      lastPatternTrait = p;
      remember(headKey(p), headData(decodeTensor(p.tensor)));
    }
    return heads.get(headKey(current())) ?? null;
  };
  const patternIsCurrent = () => currentPattern() !== null;

  function fetchHead(ref: HeadRef & { mode: Mode }): void {
    const key = headKey(ref);
    if (heads.has(key) || inFlight.has(key)) return;
    const controller = new AbortController();
    inFlight.set(key, controller);
    rpc.request<{ pattern: unknown }>("head_pattern", { ...ref }, { signal: controller.signal })
      .then(({ result, buffers }) => {
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
    nLayers, nHeads, thumbPx: thumbSize(nLayers, nHeads),
    onClick: (ref) => save({ layer: ref.layer, head: ref.head }),
    onHover: (ref, event) => {
      clearTimeout(prefetchTimer);
      if (!ref) return void (tooltip.hidden = true);
      // Resting on a thumbnail fetches that head, so a click shows it at once.
      const target = { ...ref, mode: model.get("mode") };
      prefetchTimer = setTimeout(() => {
        cancelFetchesExcept(headKey(current()), headKey(target));
        fetchHead(target);
      }, PREFETCH_DWELL_MS);
      const max = thumbs?.headMax[ref.layer * nHeads + ref.head];
      showTooltip([["nbi-tip-head", "", `layer ${ref.layer} head ${ref.head}`], ["nbi-tip-max", "max ", max === undefined ? "?" : formatValue(max)]], event);
    },
  });
  cleanups.push(() => grid.destroy());

  const heatmap = new Heatmap(mapBox, {
    plotWidth: PLOT_PX, plotHeight: PLOT_PX, marginLeft: 92, marginTop: 72, cornerLabel: "query \u2193 key \u2192",
    onHover: (cell, event) => guard(() => {
      if (!cell || !patternIsCurrent()) return void (tooltip.hidden = true);
      const c = current();
      showTooltip([
        ["nbi-tip-head", "", `layer ${c.layer} head ${c.head} \u00b7 ${MODE_LABEL[c.mode]}`],
        ["nbi-tip-query", "query ", tokenLabel(cell.row)],
        ["nbi-tip-key", "key ", tokenLabel(cell.col)],
        ["nbi-tip-value", "", formatValue(heatmap.valueAt(cell))],
      ], event);
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
  root.append(tooltip);

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
    scopeToggle.set(model.get("strip_scope"));
    directionToggle.set(model.get("strip_direction"));
  }

  function drawGrid() {
    const t = model.get("_thumbnails");
    if (!t) return;
    if (t !== lastThumbs) {
      thumbs = { tensor: decodeTensor(t.tensor), side: t.side, headMax: t.head_max, mode: t.mode };
      lastThumbs = t;
    }
    if (!thumbs) return;
    // Each thumbnail is already normalised to its own max in Python.
    grid.setThumbnails(thumbs.tensor.values, thumbs.side, sequentialScale(0, 1));
    grid.setSelected(current());
    grid.draw();
  }
  let lastThumbs: AttentionModel["_thumbnails"] = null;

  function drawHeatmap() {
    const c = current();
    const pattern = currentPattern();
    if (pattern) {
      const [rows, cols] = pattern.tensor.shape;
      const scale = sequentialScale(0, pattern.vmax);
      heatmap.setData(pattern.tensor.values, rows, cols, scale);
      const tokens = model.get("tokens");
      heatmap.setLabels(tokens.map(displayToken), tokens.map(displayToken));
      heatmap.setWindow(zoomWindow());
      renderLegend(legend, scale, MODE_LABEL[c.mode]);
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
      const side = thumbs.side;
      const start = (c.layer * nHeads + c.head) * side * side;
      heatmap.setData(thumbs.tensor.values.slice(start, start + side * side), side, side, sequentialScale(0, 1));
      heatmap.setLabels([], []);
    }
    const sel = model.get("selected");
    heatmap.setMarker(sel && sel.query !== undefined && sel.key !== undefined ? { row: sel.query, col: sel.key } : null);
    heatmap.draw();
    if (patternIsCurrent() && model.get("_thumbnails")) {
      root.dataset.pattern = `${c.layer}:${c.head}:${c.mode}`;
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
    rpc.request<{ weights: unknown }>("token_weights", { layer: c.layer, token: focus, mode: c.mode, direction }, { signal: controller.signal })
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
  for (const name of ["layer", "head", "mode", "strip_scope", "strip_direction", "focus_token"]) listen(`change:${name}`, redrawAll);
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
