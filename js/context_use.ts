// ContextUseView front end: the prompt's tokens coloured by attention from the
// answer position (the mean of every head, or one head picked in the ratio
// grid), the context span outlined, the per-head Lookback ratios, the
// knockout of all attention into the context and the verdict.

import type { RenderProps } from "@anywidget/types";
import { decodeTensor } from "./lib/codec";
import { cssColor, sequentialScale, textColorOn } from "./lib/colors";
import { displayToken } from "./lib/tokens";
import { mountView } from "./lib/view";
import type { ContextUseModel, KnockoutResult } from "./lib/contract.gen";

// the synced traits: declared once in Python, generated into lib/contract.gen.ts
export type { ContextUseModel, KnockoutResult };

const CSS = `
.nbi-context-use .nbi-token { display: inline-block; padding: 1px 3px; margin: 1px; border-radius: 2px; font-family: monospace; font-size: 12px; }
.nbi-context-use .nbi-in-context { outline: 2px solid #c33; }
.nbi-context-use .nbi-answer { text-decoration: underline; }
.nbi-context-use table { border-collapse: collapse; font-size: 11px; margin: 6px 0; }
.nbi-context-use td, .nbi-context-use th { padding: 2px 6px; text-align: center; cursor: pointer; }
.nbi-context-use td.nbi-selected { outline: 2px solid #000; }
.nbi-context-use .nbi-verdict { font-weight: bold; margin: 6px 0; }
`;

/** Attention from the answer to every token: the mean over all heads, or one head's row. */
export function attentionRow(values: Float32Array, layers: number, heads: number, tokens: number, selected: string): Float32Array {
  const out = new Float32Array(tokens);
  const match = /^L(\d+)\.H(\d+)$/.exec(selected);
  if (match) {
    const offset = (Number(match[1]) * heads + Number(match[2])) * tokens;
    out.set(values.subarray(offset, offset + tokens));
    return out;
  }
  for (let i = 0; i < layers * heads; i++) for (let t = 0; t < tokens; t++) out[t] += values[i * tokens + t] / (layers * heads);
  return out;
}

function render({ model, el }: RenderProps<ContextUseModel>): () => void {
  const { doc, root, errors, guard, listen, save, dispose } = mountView(model, el, "context-use", { css: CSS });
  const verdict = doc.createElement("div");
  verdict.className = "nbi-verdict";
  const reason = doc.createElement("div");
  reason.className = "nbi-status nbi-reason";
  const strip = doc.createElement("div");
  strip.className = "nbi-strip";
  const stripCaption = doc.createElement("div");
  stripCaption.className = "nbi-status";
  const grid = doc.createElement("div");
  root.append(verdict, reason, stripCaption, strip, grid);
  const scale = sequentialScale(0, 1);

  function drawVerdict() {
    const k = model.get("knockout_result");
    const score = model.get("detector_score");
    verdict.textContent = `context ${model.get("verdict_text")} \u00b7 answer ${JSON.stringify(k.answer_before)} \u2192 ` +
      `${JSON.stringify(k.answer_after)} with ${k.n_edges} attention edges into the context knocked out (measured)` +
      (score === null ? "" : ` \u00b7 detector P(context followed) ${score.toFixed(3)} (estimated)`);
    verdict.dataset.verdict = model.get("verdict_text");
    reason.textContent = `${model.get("reason")} \u00b7 thresholds: "used" if the answer changes, "partly" if P(answer) falls below ${model.get("partly_ratio")} of itself, else "ignored"`;
  }

  function drawStrip() {
    const tokens = model.get("tokens");
    const attention = decodeTensor(model.get("_attention"));
    const [layers, heads, n] = attention.shape;
    const selected = model.get("selected");
    const row = attentionRow(attention.values, layers, heads, n, selected);
    const start = model.get("context_start"), end = model.get("context_end"), position = model.get("position");
    strip.replaceChildren(...tokens.map((token, i) => {
      const span = doc.createElement("span");
      span.className = "nbi-token" + (i >= start && i < end ? " nbi-in-context" : "") + (i === position ? " nbi-answer" : "");
      span.textContent = displayToken(token);
      span.style.backgroundColor = cssColor(scale, row[i]);
      span.style.color = textColorOn(scale, row[i]);
      span.dataset.weight = row[i].toFixed(4);
      span.title = `token ${i}: attention ${row[i].toFixed(3)}`;
      return span;
    }));
    stripCaption.textContent = `attention from the answer position (${selected === "mean" ? "mean of every head" : selected}); the context is outlined`;
  }

  function drawGrid() {
    const ratio = decodeTensor(model.get("_ratio"));
    const [layers, heads] = ratio.shape;
    const table = doc.createElement("table");
    table.className = "nbi-ratios";
    const head = table.createTHead().insertRow();
    const corner = doc.createElement("th");
    corner.textContent = "mean";
    corner.addEventListener("click", () => guard(() => save({ selected: "mean" })));
    head.append(corner);
    for (let h = 0; h < heads; h++) head.append(Object.assign(doc.createElement("th"), { textContent: `H${h}` }));
    const body = table.createTBody();
    for (let l = 0; l < layers; l++) {
      const tr = body.insertRow();
      tr.append(Object.assign(doc.createElement("th"), { textContent: `L${l}` }));
      for (let h = 0; h < heads; h++) {
        const value = ratio.values[l * heads + h];
        const td = tr.insertCell();
        const name = `L${l}.H${h}`;
        td.textContent = value.toFixed(3);
        td.dataset.head = name;
        td.style.backgroundColor = cssColor(scale, value);
        td.style.color = textColorOn(scale, value);
        if (model.get("selected") === name) td.className = "nbi-selected";
        td.addEventListener("click", () => guard(() => save({ selected: name })));
      }
    }
    const caption = doc.createElement("div");
    caption.className = "nbi-status";
    caption.textContent = "Lookback ratio per head (measured): mean attention to a context token / (that + mean attention to any other token), at the answer; click a head";
    grid.replaceChildren(caption, table);
  }

  guard(() => {
    errors.show(model.get("error"));
    drawVerdict();
    drawStrip();
    drawGrid();
    root.dataset.drawn = "true";
  });
  listen("change:selected", () => { drawStrip(); drawGrid(); });
  listen("change:error", () => errors.show(model.get("error")));
  return () => dispose();
}

export default { render };
