// AttributionView front end: a signed head-effect grid (one colour per head),
// the chosen head's edge-effect matrix (query rows x key columns) with its
// attention pattern drawn over it as dots and its measured cells outlined, a
// ranked edge list, the progress of the exact measurements streaming in (with
// a cancel), and "verify": exact knockouts / ablations requested from Python,
// whose result arrives as the `_verification` trait (so a reloaded page shows
// it again). Every label comes from Python, which knows what each number is.

import type { RenderProps } from "@anywidget/types";
import { decodeTensor, type Tensor } from "./lib/codec";
import { cssColor, divergingScale, formatValue, renderLegend, textColorOn } from "./lib/colors";
import { describeError } from "./lib/errors";
import { HeadGrid, thumbSize } from "./lib/head_grid";
import { Heatmap, type Cell } from "./lib/heatmap";
import { RpcError } from "./lib/rpc";
import { toggleGroup } from "./lib/style";
import { displayToken } from "./lib/tokens";
import { Tooltip } from "./lib/tooltip";
import { mountView } from "./lib/view";
import { ATTRIBUTION_REQUESTS, type AttributionModel, type VerifiedRow } from "./lib/contract.gen";
import type { ResultOf } from "./lib/contract";

// the synced traits: declared once in Python, generated into lib/contract.gen.ts
export type { AttributionModel };
type Method = AttributionModel["method"];
type Verified = ResultOf<typeof ATTRIBUTION_REQUESTS.verify_heads>;

const METHOD_LABEL: Record<Method, string> = {
  hybrid: "hybrid (measures heads and dominant edges within exact_budget)", qk_fix: "QK fix (AtP*)", linear: "linear",
};
const PLOT_PX = 380;
// At a long prompt the edge matrix's rows are a pixel or two tall and nearly all
// pale (the effects sit in a few queries, often the last): from LONG_PROMPT
// tokens it shows the FOCUS_ROWS queries and then the FOCUS_KEYS keys with the
// largest |effect| first, each in position order.
const LONG_PROMPT = 48;
const FOCUS_ROWS = 12;
const FOCUS_KEYS = 32;
type QueryRows = "top" | "all";
const SHOWN_ROWS = 20;

const EXTRA_CSS = `
.nbi-attribution .nbi-table { border-collapse: collapse; font-family: ui-monospace, monospace; font-size: 11px; }
.nbi-attribution .nbi-table td, .nbi-attribution .nbi-table th { padding: 1px 6px; text-align: right; border-bottom: 1px solid #eee; }
.nbi-attribution .nbi-table td:nth-child(-n+4) { white-space: nowrap; } /* component, positions with tokens, number: one line each; the status wraps */
.nbi-attribution .nbi-table tbody tr { cursor: pointer; }
.nbi-attribution .nbi-table tbody tr:hover { background: #f0f4ff; }
.nbi-attribution .nbi-list { max-height: 300px; overflow-y: auto; }
.nbi-attribution .nbi-summary { margin: 4px 0; font-weight: 600; }
.nbi-attribution .nbi-k { width: 4em; font: inherit; }
.nbi-attribution .nbi-overlay { position: absolute; left: 0; top: 0; pointer-events: none; }
.nbi-attribution .nbi-map-box { position: relative; }
.nbi-attribution .nbi-progress { color: #333; font-variant-numeric: tabular-nums; }
.nbi-attribution .nbi-stale { color: #8a5a00; font-weight: 400; }
/* Two columns (head grid | ranked list, the edge matrix below) up to 1,200 px of
   output, three side by side above, one below 640 px: the list never falls below
   the fold at the widths a notebook with its file browser open gives. Legends
   wrap inside their panel's width (fit-content), they do not widen it. */
.nbi-root.nbi-attribution { container-type: inline-size; }
.nbi-attribution .nbi-panels {
  display: grid; gap: 12px 16px; align-items: start;
  grid-template-columns: fit-content(320px) minmax(300px, 1fr); grid-template-areas: "grid list" "map map";
}
.nbi-attribution .nbi-grid-box { grid-area: grid; }
.nbi-attribution .nbi-map-box { grid-area: map; min-width: 0; }
.nbi-attribution .nbi-list-box { grid-area: list; min-width: 0; }
@container (min-width: 1200px) {
  .nbi-attribution .nbi-panels { grid-template-columns: fit-content(320px) fit-content(560px) minmax(300px, 1fr); grid-template-areas: "grid map list"; }
  .nbi-attribution .nbi-list { max-height: 520px; }
}
@container (max-width: 640px) {
  .nbi-attribution .nbi-panels { grid-template-columns: minmax(0, 1fr); grid-template-areas: "grid" "list" "map"; }
}
`;

/** The `n` indices of largest `peak` (ties: the earlier) plus `selected`, in position order; all when n covers them. */
function largest(peak: number[], n: number, selected?: number): number[] {
  const all = peak.map((_, i) => i);
  if (n >= all.length) return all;
  const top = all.sort((a, b) => peak[b] - peak[a] || a - b).slice(0, n);
  if (selected !== undefined && selected >= 0 && selected < peak.length && !top.includes(selected)) top.push(selected);
  return top.sort((a, b) => a - b);
}

/** The query rows to draw: every one, or the `n` whose largest |effect| over keys is largest, plus the selected query. */
export function focusRows(effect: Tensor, n: number, selected?: number): number[] {
  const [rows, cols] = effect.shape;
  const peak = Array.from({ length: rows }, (_, q) => {
    let m = 0;
    for (let k = 0; k < cols; k++) m = Math.max(m, Math.abs(effect.values[q * cols + k]));
    return m;
  });
  return largest(peak, n, selected);
}

/** The key columns to draw for the query rows `rows`: every one, or the `n` whose largest |effect| in those rows is largest, plus the selected key. */
export function focusKeys(effect: Tensor, rows: number[], n: number, selected?: number): number[] {
  const cols = effect.shape[1];
  const peak = Array.from({ length: cols }, (_, k) => {
    let m = 0;
    for (const q of rows) m = Math.max(m, Math.abs(effect.values[q * cols + k]));
    return m;
  });
  return largest(peak, n, selected);
}

function render({ model, el }: RenderProps<AttributionModel>): () => void {
  const { doc, root, rpc, errors, cleanups, guard, listen, save, dispose } = mountView(model, el, "attribution", { css: EXTRA_CSS, rpcTimeoutMs: 300_000 });
  const el_ = <K extends keyof HTMLElementTagNameMap>(tag: K, cls = "", text = "") => {
    const node = doc.createElement(tag);
    if (cls) node.className = cls;
    if (text) node.textContent = text;
    return node;
  };
  const button = (text: string, onClick: () => void) => {
    const b = el_("button", "nbi-button", text);
    b.type = "button";
    b.addEventListener("click", onClick);
    return b;
  };
  const tokenLabel = (i: number) => `${i} ${JSON.stringify(displayToken(model.get("tokens")[i] ?? ""))}`;

  // ---------------------------------------------------------------- toolbar
  const toolbar = el_("div", "nbi-toolbar");
  const title = el_("strong");
  const methodToggle = toggleGroup<Method>(doc, "estimate",
    [["hybrid", "hybrid"], ["qk_fix", METHOD_LABEL.qk_fix], ["linear", "linear"]], (method) => save({ method }));
  const kInput = el_("input", "nbi-k");
  kInput.type = "number";
  kInput.min = "1";
  kInput.max = "500";
  kInput.value = "20";
  kInput.setAttribute("aria-label", "k");
  const status = el_("span", "nbi-status");
  const progressText = el_("span", "nbi-progress");
  const stopButton = button("cancel", () => {
    const running = model.get("progress").state === "running";
    const reply = running ? rpc.call(ATTRIBUTION_REQUESTS.cancel, {}) : rpc.call(ATTRIBUTION_REQUESTS.resume, {});
    reply.catch((err) => errors.show(describeError(err)));
  });
  let pending: AbortController | null = null;
  const verify = (call: (signal: AbortSignal) => Promise<{ result: Verified }>, what: string) => {
    pending?.abort();
    const controller = new AbortController();
    pending = controller;
    status.textContent = `verifying ${what}\u2026`;
    call(controller.signal)
      .then(({ result }) => { status.textContent = `verified ${result.n} in ${result.seconds.toFixed(2)} s`; })
      .catch((err) => {
        if (!(err instanceof RpcError && err.failure === "cancelled")) {
          status.textContent = "";
          errors.show(describeError(err));
        }
      });
  };
  const verifyTop = button("verify top k", () => verify(
    (signal) => rpc.call(ATTRIBUTION_REQUESTS.verify_top_k, { k: Number(kInput.value) }, { signal }), `the top ${kInput.value} edges`));
  const verifyHead = button("verify head", () => verify(
    (signal) => rpc.call(ATTRIBUTION_REQUESTS.verify_head, { layer: model.get("layer"), head: model.get("head") }, { signal }), "the head"));
  const verifyHeads = button("verify all heads", () => verify((signal) => rpc.call(ATTRIBUTION_REQUESTS.verify_heads, {}, { signal }), "every head"));
  const verifyEdge = button("verify edge", () => {
    const s = model.get("selected");
    const { query, key } = s;
    if (query === undefined || key === undefined) return errors.show("click a cell of the edge matrix first");
    verify((signal) => rpc.call(ATTRIBUTION_REQUESTS.verify_edge, { layer: model.get("layer"), head: model.get("head"), query, key }, { signal }), "the edge");
  });
  toolbar.append(title, methodToggle.element, kInput, verifyTop, verifyEdge, verifyHead, verifyHeads, status);
  const progressBar = el_("div", "nbi-toolbar");
  progressBar.append(progressText, stopButton);
  root.append(toolbar, progressBar);

  // ----------------------------------------------------------------- panels
  const panels = el_("div", "nbi-panels");
  const gridBox = el_("div", "nbi-grid-box");
  const gridCaption = el_("div", "nbi-strip-caption", "head effects (click a head)");
  const gridLegend = el_("div", "nbi-legend");
  const mapBox = el_("div", "nbi-map-box");
  const mapLegend = el_("div", "nbi-legend");
  const listBox = el_("div", "nbi-list-box");
  const listCaption = el_("div", "nbi-strip-caption");
  const listScroll = el_("div", "nbi-list");
  listBox.append(listCaption, listScroll);
  panels.append(gridBox, mapBox, listBox);
  root.append(panels);
  const verifyBox = el_("div");
  root.append(verifyBox);
  const tooltip = new Tooltip(root);
  root.append(tooltip.el);

  const nLayers = model.get("n_layers");
  const nHeads = model.get("n_heads");
  let heads: Tensor | null = null;
  let headMeasured: Tensor | null = null;
  let headPending = "";
  const grid = new HeadGrid(gridBox, {
    nLayers, nHeads, thumbPx: thumbSize(nLayers, nHeads, 240),
    onClick: (ref) => save({ layer: ref.layer, head: ref.head, selected: {} }),
    onHover: (ref, event) => {
      if (!ref || !heads) return tooltip.hide();
      const i = ref.layer * nHeads + ref.head;
      // the words come from Python: "measured" only once measured
      const how = headMeasured?.values[i] ? "zero-ablation effect (measured)" : `zero-ablation effect, gradient x activation ${headPending}`;
      tooltip.show([`layer ${ref.layer} head ${ref.head}`, `${how}: ${formatValue(heads.values[i])}`], event);
    },
  });
  gridBox.append(gridCaption, gridLegend);
  cleanups.push(() => grid.destroy());

  let matrix: { effect: Tensor; measured: Tensor; status: Tensor; statusLabels: string[]; attention: Tensor; key: string; method: Method } | null = null;
  let shown: number[] = []; // the query of each drawn row
  let shownKeys: number[] = []; // the key of each drawn column
  let rowsMode: QueryRows | null = null; // null until the user picks: decided by the prompt's length
  const heatmap = new Heatmap(mapBox, {
    plotWidth: PLOT_PX, plotHeight: PLOT_PX, marginLeft: 92, marginTop: 72, cornerLabel: "query \u2193 key \u2192", signed: true,
    onHover: (cell, event) => guard(() => {
      if (!cell || !matrix) return tooltip.hide();
      const n = matrix.effect.shape[1];
      const query = shown[cell.row], key = shownKeys[cell.col];
      const i = query * n + key;
      const status = matrix.statusLabels[matrix.status.values[i]] ?? "estimate";
      tooltip.show([
        `L${model.get("layer")}.H${model.get("head")} \u00b7 query ${tokenLabel(query)} \u2192 key ${tokenLabel(key)}`,
        `knockout effect, ${status}: ${formatValue(matrix.effect.values[i])}`,
        `attention: ${formatValue(matrix.attention.values[i])}`,
      ], event);
    }),
    onClick: (cell: Cell) => save({ selected: { query: shown[cell.row], key: shownKeys[cell.col] } }),
    onWindowChange: () => drawOverlay(),
  });
  cleanups.push(() => heatmap.destroy());
  const overlay = el_("canvas", "nbi-overlay");
  const rowsToggle = toggleGroup<QueryRows>(doc, "query rows",
    [["top", "the largest effects' queries and keys"], ["all", "every query and key"]],
    (mode) => { rowsMode = mode; drawMatrix(); });
  const rowsBar = el_("div", "nbi-toolbar");
  rowsBar.append(el_("span", "nbi-status", "edge matrix:"), rowsToggle.element);
  mapBox.append(overlay, mapLegend, rowsBar);

  // ----------------------------------------------------------------- drawing
  function drawGrid() {
    const h = model.get("_heads");
    if (!h) return;
    heads = decodeTensor(h.tensor);
    headMeasured = decodeTensor(h.measured);
    headPending = h.pending;
    let nMeasured = 0;
    if (headMeasured) for (const v of headMeasured.values) nMeasured += v ? 1 : 0;
    let max = 0;
    for (const v of heads.values) max = Math.max(max, Math.abs(v));
    const scale = divergingScale(max);
    grid.setThumbnails(heads.values, 1, scale);
    grid.setSelected({ layer: model.get("layer"), head: model.get("head") });
    grid.draw();
    const count = h.method === "hybrid" ? ` \u00b7 ${nMeasured} of ${heads.values.length} heads measured` : "";
    renderLegend(gridLegend, scale, `${h.label}${count} (blue: the head helps the target)`);
    gridBox.dataset.measured = String(nMeasured);
  }

  let lastMatrix: AttributionModel["_edge_matrix"] = null;
  function drawMatrix() {
    const m = model.get("_edge_matrix");
    if (!m) return;
    if (m !== lastMatrix) {
      matrix = {
        effect: decodeTensor(m.effect), measured: decodeTensor(m.measured), attention: decodeTensor(m.attention),
        status: decodeTensor(m.status), statusLabels: m.status_labels,
        key: `${m.layer}:${m.head}:${m.method}`, method: m.method,
      };
      lastMatrix = m;
    }
    if (!matrix) return;
    const [rows, cols] = matrix.effect.shape;
    let max = 0;
    for (const v of matrix.effect.values) max = Math.max(max, Math.abs(v));
    const scale = divergingScale(max); // the whole matrix's: colours mean the same in both row modes
    const s = model.get("selected");
    const mode: QueryRows = rowsMode ?? (rows >= LONG_PROMPT ? "top" : "all");
    rowsToggle.set(mode);
    rowsBar.hidden = rows <= FOCUS_ROWS;
    const top = mode === "top";
    shown = focusRows(matrix.effect, top ? FOCUS_ROWS : rows, s.query);
    shownKeys = focusKeys(matrix.effect, shown, top ? FOCUS_KEYS : cols, s.key);
    const values = new Float32Array(shown.length * shownKeys.length);
    shown.forEach((query, r) => shownKeys.forEach((key, c) => { values[r * shownKeys.length + c] = matrix!.effect.values[query * cols + key]; }));
    heatmap.setData(values, shown.length, shownKeys.length, scale);
    // position and token, as the list names them: at a long prompt only every k-th is labelled
    const tokens = model.get("tokens").map((t, i) => `${i} ${displayToken(t)}`);
    heatmap.setLabels(shown.map((query) => tokens[query]), shownKeys.map((key) => tokens[key]));
    const row = s.query === undefined ? -1 : shown.indexOf(s.query);
    const col = s.key === undefined ? -1 : shownKeys.indexOf(s.key);
    heatmap.setMarker(row >= 0 && col >= 0 ? { row, col } : null);
    heatmap.draw();
    const which = shown.length < rows
      ? ` \u00b7 shown: the ${shown.length} of ${rows} queries and ${shownKeys.length} of ${cols} keys with the largest |effect|, in position order`
      : "";
    renderLegend(mapLegend, scale, `${m.label} \u00b7 dots: attention${which}`);
    root.dataset.queryRows = shown.join(",");
    root.dataset.keyColumns = shownKeys.join(",");
    drawOverlay();
    root.dataset.matrix = matrix.key;
    root.dataset.drawn = "true";
  }

  /** Attention probability as dot area in each visible cell, over the effects. */
  function drawOverlay() {
    const dpr = doc.defaultView?.devicePixelRatio || 1;
    const c = heatmap.canvas;
    overlay.style.width = c.style.width;
    overlay.style.height = c.style.height;
    overlay.width = c.width;
    overlay.height = c.height;
    const ctx = overlay.getContext("2d");
    if (!ctx || !matrix) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, overlay.width, overlay.height);
    const win = heatmap.window;
    const left = Number(c.dataset.marginLeft), top = Number(c.dataset.marginTop);
    const cw = Number(c.dataset.plotWidth) / (win.col1 - win.col0);
    const ch = Number(c.dataset.plotHeight) / (win.row1 - win.row0);
    if (Math.min(cw, ch) < 4) return; // too dense for dots: the tooltip still tells
    const n = matrix.attention.shape[1];
    // measured cells: outlined, so measured and estimated numbers look different
    ctx.strokeStyle = "#111";
    ctx.lineWidth = Math.max(1, Math.min(2, Math.min(cw, ch) / 8));
    for (let r = win.row0; r < win.row1; r++) {
      const q = shown[r];
      for (let c = win.col0; c < win.col1; c++) {
        const k = shownKeys[c];
        if (k <= q && matrix.measured.values[q * n + k]) ctx.strokeRect(left + (c - win.col0) * cw + 1, top + (r - win.row0) * ch + 1, cw - 2, ch - 2);
      }
    }
    ctx.fillStyle = "rgba(20, 20, 20, 0.55)";
    for (let r = win.row0; r < win.row1; r++) {
      const q = shown[r];
      for (let c = win.col0; c < win.col1; c++) {
        const k = shownKeys[c];
        const a = k <= q ? matrix.attention.values[q * n + k] : 0;
        if (a < 0.02) continue;
        const radius = 0.5 * Math.min(cw, ch) * Math.sqrt(a) * 0.9;
        ctx.beginPath();
        ctx.arc(left + (c - win.col0 + 0.5) * cw, top + (r - win.row0 + 0.5) * ch, radius, 0, 2 * Math.PI);
        ctx.fill();
      }
    }
  }

  function table(headers: string[], rows: Array<Array<string | number>>, onRow?: (i: number) => void, colorCols: number[] = [], scale = divergingScale(1)) {
    const t = el_("table", "nbi-table");
    const head = el_("thead");
    const tr = el_("tr");
    for (const h of headers) tr.append(el_("th", "", h));
    head.append(tr);
    const body = el_("tbody");
    rows.forEach((row, i) => {
      const r = el_("tr");
      row.forEach((cell, j) => {
        const td = el_("td", "", typeof cell === "number" ? formatValue(cell) : cell);
        if (colorCols.includes(j) && typeof cell === "number") {
          td.style.backgroundColor = cssColor(scale, cell);
          td.style.color = textColorOn(scale, cell);
        }
        r.append(td);
      });
      if (onRow) r.addEventListener("click", () => onRow(i));
      body.append(r);
    });
    t.append(head, body);
    return t;
  }

  function drawList() {
    const e = model.get("_edges");
    if (!e) return;
    let max = 0;
    for (const edge of e.rows) max = Math.max(max, Math.abs(edge.effect));
    const rows = e.rows.map((edge) => [
      `L${edge.layer}.H${edge.head}`, tokenLabel(edge.query), tokenLabel(edge.key), edge.effect, edge.status,
    ]);
    listCaption.textContent = `top edges by |effect| \u00b7 ${METHOD_LABEL[e.method]}: ${e.label}; click to show`;
    listScroll.replaceChildren(
      table(["head", "query", "key", "effect", "what it is"], rows, (i) => {
        const edge = e.rows[i];
        save({ layer: edge.layer, head: edge.head, selected: { query: edge.query, key: edge.key } });
      }, [3], divergingScale(max)));
  }

  function drawVerification() {
    const v = model.get("_verification");
    if (!v) return verifyBox.replaceChildren(el_("div", "nbi-strip-caption", "verify runs exact knockouts / ablations and compares them with the estimate"));
    const n = v.rows.length;
    const edges = v.kind === "edge knockout";
    const s = v.summary;
    const num = (x: number | null, digits = 3) => (x === null ? "n/a" : x.toFixed(digits));
    const stale = edges && v.view_method !== null && v.view_method !== model.get("method");
    const summary = el_("div", "nbi-summary",
      `${v.label} \u00b7 Spearman ${num(s.spearman)} \u00b7 recall@${s.k} ${num(s.recall_at_k, 2)} \u00b7 MAE ${s.mae === null ? "n/a" : formatValue(s.mae)} over ${s.scope} \u00b7 clean logit diff ${formatValue(v.clean_metric)} \u00b7 ${v.seconds.toFixed(2)} s`);
    let max = 0;
    for (const r of v.rows) max = Math.max(max, Math.abs(r.measured), Math.abs(r.estimate));
    const where = (r: VerifiedRow) => (r.query !== null && r.key !== null
      ? [`L${r.layer}.H${r.head}`, tokenLabel(r.query), tokenLabel(r.key)] : [`L${r.layer}.H${r.head}`]);
    const rows = v.rows.slice(0, SHOWN_ROWS).map((r) => [...where(r), r.estimate, r.measured, r.estimate - r.measured]);
    const headers = edges ? ["head", "query", "key", "estimate", "measured", "error"] : ["head", "estimate", "measured", "error"];
    const k = edges ? 3 : 1;
    if (stale && v.view_method !== null) {
      summary.append(el_("span", "nbi-stale",
        ` \u00b7 this check was of the ${METHOD_LABEL[v.view_method]} numbers; the view now shows ${METHOD_LABEL[model.get("method")]}: verify again to check those`));
    }
    const caption = el_("div", "nbi-strip-caption", n > SHOWN_ROWS ? `first ${SHOWN_ROWS} of ${n} rows` : `${n} rows`);
    verifyBox.replaceChildren(summary, table(headers, rows, undefined, [k, k + 1], divergingScale(max)), caption);
  }

  function updateStatus() {
    title.textContent = `Attribution \u00b7 ${model.get("model_name")} \u00b7 logit(${JSON.stringify(model.get("target"))})${model.get("foil") ? ` \u2212 logit(${JSON.stringify(model.get("foil"))})` : ""} = ${formatValue(model.get("metric"))}`;
    methodToggle.set(model.get("method"));
    gridCaption.textContent = `head effects \u00b7 ${METHOD_LABEL[model.get("method")]} \u00b7 selected L${model.get("layer")}.H${model.get("head")}`;
  }

  function drawProgress() {
    const p = model.get("progress");
    const total = p.total;
    root.dataset.progress = `${p.done}/${total}:${p.state}`;
    if (!total) {
      progressText.textContent = "estimates only: nothing measured exactly (exact_budget=0 or nothing dominant)";
      stopButton.hidden = true;
      return;
    }
    const heads = p.heads_total ? `${p.heads_total} head ablations, then ` : "";
    const what = `exact measurements (${heads}${total - p.heads_total} dominant-edge knockouts, largest estimate first, within the budget)`;
    const state = { running: "measuring", done: "done", cancelled: "cancelled", error: "stopped by an error" }[p.state];
    progressText.textContent = `${what}: ${p.done} / ${total} \u00b7 ${state} \u00b7 ${p.elapsed_s.toFixed(1)} s` +
      (p.state === "running" ? " \u00b7 estimated numbers are replaced as they arrive" : "");
    stopButton.hidden = p.state === "done";
    stopButton.textContent = p.state === "running" ? "cancel" : "resume";
  }

  function redrawAll() {
    updateStatus();
    drawProgress();
    drawGrid();
    drawMatrix();
    drawList();
    drawVerification();
  }

  guard(() => {
    errors.show(model.get("error"));
    redrawAll();
  });
  listen("change:_heads", drawGrid);
  listen("change:_edge_matrix", drawMatrix);
  listen("change:_edges", drawList);
  listen("change:_verification", drawVerification);
  listen("change:progress", drawProgress);
  listen("change:selected", drawMatrix);
  for (const name of ["layer", "head", "method"]) listen(`change:${name}`, () => { updateStatus(); drawGrid(); });
  listen("change:method", drawVerification);
  listen("change:error", () => errors.show(model.get("error")));

  return () => {
    pending?.abort();
    dispose();
  };
}

export default { render };
