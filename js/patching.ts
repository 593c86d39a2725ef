// PatchingView front end: one diverging heatmap per sweep kind (residual
// stream, attention output, MLP output over layer x position; heads over
// layer x head), filling in as Python streams cells, with progress, cancel
// and resume. Clicking a cell asks Python to open that component in the
// attention view or the ablation panel, rendered below the heatmaps.

import type { RenderProps } from "@anywidget/types";
import { decodeTensor, type EncodedTensor } from "./lib/codec";
import { divergingScale, formatValue, renderLegend } from "./lib/colors";
import { describeError } from "./lib/errors";
import { Heatmap, type Cell } from "./lib/heatmap";
import { toggleGroup } from "./lib/style";
import { displayToken } from "./lib/tokens";
import { Tooltip } from "./lib/tooltip";
import { mountView } from "./lib/view";

type Kind = "resid_pre" | "attn_out" | "mlp_out" | "head";
type OpenIn = "attention" | "ablation";

/** Mirrors the synced traits of nbinterp.widgets.patching.PatchingView. */
export interface PatchingModel {
  model_name: string;
  clean_tokens: string[];
  corrupted_tokens: string[];
  n_layers: number;
  n_heads: number;
  target: string;
  foil: string | null;
  clean_logit_diff: number;
  corrupted_logit_diff: number;
  kinds: Kind[];
  progress: { done?: number; total?: number; state?: string; elapsed_s?: number };
  open_in: OpenIn;
  selected: { kind?: Kind; layer?: number; index?: number };
  error: string;
  _effects: Partial<Record<Kind, { tensor: EncodedTensor; done: number }>>;
  _opened: string | null;
}

const TITLES: Record<Kind, string> = {
  resid_pre: "residual stream",
  attn_out: "attention output",
  mlp_out: "MLP output",
  head: "heads (all positions)",
};

const CSS = `
.nbi-patching .nbi-maps { display: flex; flex-wrap: wrap; gap: 18px; }
.nbi-patching .nbi-map-title { font-weight: 600; margin-bottom: 2px; }
.nbi-patching progress { width: 160px; }
.nbi-patching .nbi-opened { margin-top: 10px; border-top: 1px solid #ddd; padding-top: 6px; }
`;

/** Effects as drawn: cells not computed yet become NaN (drawn grey). */
export function withPending(values: Float32Array, done: number): Float32Array {
  const out = values.slice();
  for (let i = Math.max(0, done); i < out.length; i++) out[i] = NaN;
  return out;
}

function render({ model, el, host }: RenderProps<PatchingModel>): () => void {
  const { doc, root, rpc, errors, cleanups, guard, listen, dispose } = mountView(model, el, "patching", { css: CSS });
  const call = (method: string, params: Record<string, unknown> = {}) =>
    rpc.request(method, params).catch((err) => errors.show(describeError(err)));

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
  cancel.addEventListener("click", () => call("cancel"));
  const resume = doc.createElement("button");
  resume.type = "button";
  resume.className = "nbi-button nbi-resume";
  resume.textContent = "resume";
  resume.addEventListener("click", () => call("resume"));
  const openToggle = toggleGroup<OpenIn>(doc, "click opens", [["attention", "attention view"], ["ablation", "ablation panel"]], (open_in) => {
    model.set("open_in", open_in);
    model.save_changes();
    openToggle.set(open_in);
  });
  const openLabel = doc.createElement("span");
  openLabel.className = "nbi-status";
  openLabel.textContent = "click a cell to open it in:";
  toolbar.append(title, bar, progressText, cancel, resume, openLabel, openToggle.element);
  root.append(toolbar);

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
  const columnLabels = (kind: Kind) => (kind === "head" ? Array.from({ length: nHeads }, (_, h) => `H${h}`) : tokens.map(displayToken));
  const rowLabels = Array.from({ length: nLayers }, (_, l) => `L${l}`);
  const heatmaps = new Map<Kind, Heatmap>();

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
    box.append(heading);
    maps.append(box);
    const cols = kind === "head" ? nHeads : tokens.length;
    const cellPx = Math.max(8, Math.min(28, Math.floor(360 / Math.max(cols, nLayers))));
    const heatmap = new Heatmap(box, {
      plotWidth: cols * cellPx, plotHeight: nLayers * cellPx, marginLeft: 34, marginTop: kind === "head" ? 28 : 70,
      onHover: (cell, event) => guard(() => {
        if (!cell) return tooltip.hide();
        const value = heatmap.valueAt(cell);
        tooltip.show([TITLES[kind], describe(kind, cell),
          ["nbi-tip-value", Number.isNaN(value) ? "not computed yet" : `effect ${formatValue(value)}`]], event);
      }),
      onClick: (cell) => {
        if (Number.isNaN(heatmap.valueAt(cell))) return;
        heatmap.setMarker(cell);
        heatmap.draw();
        call("open", { kind, layer: cell.row, index: cell.col, open_in: model.get("open_in") });
      },
    });
    heatmap.canvas.dataset.kind = kind;
    heatmap.setLabels(rowLabels, columnLabels(kind));
    heatmaps.set(kind, heatmap);
    cleanups.push(() => heatmap.destroy());
  }

  let lastEffects: PatchingModel["_effects"] | null = null;
  function drawMaps() {
    const effects = model.get("_effects");
    if (!effects || effects === lastEffects) return;
    lastEffects = effects;
    const decoded = new Map<Kind, { values: Float32Array; shape: number[] }>();
    let maxAbs = 1;
    for (const [kind, entry] of Object.entries(effects) as Array<[Kind, { tensor: EncodedTensor; done: number }]>) {
      const tensor = decodeTensor(entry.tensor);
      const values = withPending(tensor.values, entry.done);
      for (const v of values) if (Math.abs(v) > maxAbs) maxAbs = Math.abs(v);
      decoded.set(kind, { values, shape: tensor.shape });
    }
    // One scale for every map, so colours compare across them; 1 = full recovery.
    const scale = divergingScale(maxAbs);
    for (const [kind, { values, shape }] of decoded) {
      const heatmap = heatmaps.get(kind);
      if (!heatmap) continue;
      heatmap.setData(values, shape[0], shape[1], scale);
      heatmap.draw();
    }
    renderLegend(legend, scale, "patching effect (1 = clean restored, 0 = corrupted)");
    root.dataset.drawn = "true";
  }

  function drawProgress() {
    const p = model.get("progress");
    const done = p.done ?? 0;
    const total = p.total ?? 0;
    bar.max = Math.max(total, 1);
    bar.value = done;
    const state = p.state ?? "running";
    progressText.textContent = `${done} / ${total} cells \u00b7 ${state} \u00b7 ${(p.elapsed_s ?? 0).toFixed(1)} s`;
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

  let openedAbort: AbortController | null = null;
  async function drawOpened() {
    const ref = model.get("_opened");
    openedAbort?.abort();
    opened.replaceChildren();
    opened.hidden = !ref;
    if (!ref) return;
    const sel = model.get("selected");
    const caption = doc.createElement("div");
    caption.className = "nbi-status nbi-opened-caption";
    caption.textContent = sel.kind ? `opened ${TITLES[sel.kind]} \u00b7 ${describe(sel.kind, { row: sel.layer ?? 0, col: sel.index ?? 0 })}` : "opened";
    const box = doc.createElement("div");
    opened.append(caption, box);
    root.dataset.opened = ref;
    if (!host?.getWidget) {
      caption.textContent += " \u00b7 display it with grid.opened";
      return;
    }
    const controller = new AbortController();
    openedAbort = controller;
    const widget = await host.getWidget(ref);
    if (!controller.signal.aborted) await widget.render({ el: box, signal: controller.signal });
  }
  cleanups.push(() => openedAbort?.abort());

  guard(() => {
    openToggle.set(model.get("open_in"));
    errors.show(model.get("error"));
    drawSummary();
    drawProgress();
    drawMaps();
  });
  drawOpened().catch((err) => errors.show(describeError(err)));
  listen("change:_effects", drawMaps);
  listen("change:progress", drawProgress);
  listen("change:open_in", () => openToggle.set(model.get("open_in")));
  listen("change:_opened", () => void drawOpened().catch((err) => errors.show(describeError(err))));
  listen("change:error", () => errors.show(model.get("error")));

  return () => {
    dispose();
  };
}

export default { render };
