// AblationPanel front end: a layer x head grid of scale sliders plus one per
// MLP, zero/mean toggle, reset and "copy as code"; the output side shows
// the top-k next tokens before vs after and the logit difference. Slider
// moves go to Python as "run" requests through a latest-only runner, so
// rapid moves never queue stale runs; the output is drawn from the `_result`
// trait, whoever changed it (a slider or Python code).

import type { RenderProps } from "@anywidget/types";
import { niceCeil, symmetricTicks, tickLabel } from "./lib/axis";
import { formatValue } from "./lib/colors";
import { describeError } from "./lib/errors";
import { LatestOnly } from "./lib/latest";
import { toggleGroup } from "./lib/style";
import { displayToken } from "./lib/tokens";
import { mountView } from "./lib/view";
import { checkTrait } from "./lib/contract";
import { ABLATION_REQUESTS, ABLATION_TRAITS, type AblationModel, type AblationSummary } from "./lib/contract.gen";

type Mode = AblationModel["ablation"];
type Ablations = AblationModel["ablations"];
type Summary = AblationSummary;
type TokenProbability = AblationSummary["top_k"][number];

const SCALE_MAX = 1.5;
/** A prompt longer than this is shown by its start and end (the whole prompt on hover). */
export const PROMPT_SHOWN_CHARS = 240;

/** `text` whole when short, else its first and last parts around an ellipsis that says how much is left out. */
export function middleOut(text: string, max = PROMPT_SHOWN_CHARS): string {
  const chars = Array.from(text);
  if (chars.length <= max) return text;
  const head = Math.ceil(max * 0.4), tail = max - head;
  return `${chars.slice(0, head).join("")} \u2026 (${chars.length - max} characters; hover for all) \u2026 ${chars.slice(-tail).join("")}`;
}
const SCALE_STEP = 0.05;

const CSS = `
.nbi-ablation .nbi-controls { border-collapse: collapse; }
.nbi-ablation .nbi-controls th { font-weight: 500; color: #444; padding: 0 2px; }
.nbi-ablation .nbi-controls td { padding: 1px 2px; text-align: center; border-radius: 3px; }
.nbi-ablation .nbi-controls td[data-changed="true"] { background: #fdecea; }
.nbi-ablation .nbi-controls td[data-changed="boost"] { background: #e3ecfa; }
.nbi-ablation .nbi-controls input[type=range] { width: 56px; margin: 0; display: block; }
.nbi-ablation .nbi-scale { font: 10px ui-monospace, monospace; color: #555; }
.nbi-ablation .nbi-out { min-width: 320px; }
.nbi-ablation .nbi-ld { margin-bottom: 8px; }
.nbi-ablation .nbi-ld-row { display: grid; grid-template-columns: 44px 300px 60px; gap: 6px; align-items: center; margin-top: 3px; }
.nbi-ablation .nbi-ld-bar { position: relative; height: 10px; width: 300px; background: #f1f1f1; }
.nbi-ablation .nbi-ld-bar span { position: absolute; top: 0; height: 10px; }
.nbi-ablation .nbi-ld-bar .nbi-zero { left: 150px; width: 1px; background: #888; }
.nbi-ablation .nbi-ld-axis { position: relative; height: 16px; width: 300px; margin-left: 50px; border-top: 1px solid #888; font: 10px ui-monospace, monospace; color: #444; }
.nbi-ablation .nbi-ld-axis span { position: absolute; top: 0; transform: translateX(-50%); padding-top: 3px; }
.nbi-ablation .nbi-ld-axis span::before { content: ""; position: absolute; left: 50%; top: -1px; width: 1px; height: 4px; background: #888; }
.nbi-ablation .nbi-row-target .nbi-tokcell, .nbi-ablation .nbi-row-foil .nbi-tokcell { font-weight: 700; }
.nbi-ablation .nbi-row-target { background: #eaf3e6; }
.nbi-ablation .nbi-row-foil { background: #f7ece3; }
.nbi-ablation .nbi-role { font: 9px system-ui, sans-serif; color: #555; margin-left: 3px; }
.nbi-ablation .nbi-outside { color: #777; font-size: 10px; margin-top: 2px; }
.nbi-ablation .nbi-topk { display: flex; gap: 16px; }
.nbi-ablation .nbi-topk-col { min-width: 150px; }
.nbi-ablation .nbi-row { display: grid; grid-template-columns: 96px 100px 44px; gap: 4px; align-items: center; }
.nbi-ablation .nbi-topk-after[data-changed="true"] .nbi-row { grid-template-columns: 96px 100px 44px 44px; }
.nbi-ablation .nbi-was { font: 10px ui-monospace, monospace; color: #666; text-align: right; }
.nbi-ablation .nbi-tokcell { display: flex; align-items: baseline; min-width: 0; }

.nbi-ablation .nbi-tok, .nbi-ablation .nbi-tracked-tok { font-family: ui-monospace, monospace; white-space: pre; overflow: hidden; text-overflow: ellipsis; }
.nbi-ablation .nbi-bar { position: relative; height: 10px; background: #f1f1f1; }
.nbi-ablation .nbi-bar .nbi-fill { position: absolute; left: 0; top: 0; height: 10px; }
.nbi-ablation .nbi-bar .nbi-tick { position: absolute; top: -2px; width: 2px; height: 14px; background: #222; }
.nbi-ablation .nbi-prob, .nbi-ablation .nbi-tracked-prob { font: 11px ui-monospace, monospace; text-align: right; }
.nbi-ablation .nbi-code { font: 11px ui-monospace, monospace; background: #f6f6f6; border: 1px solid #ddd; padding: 4px 6px; white-space: pre-wrap; word-break: break-all; margin-top: 6px; }
`;

function render({ model, el, signal }: RenderProps<AblationModel>): () => void {
  const { doc, root, rpc, errors, cleanups, guard, listen, dispose } = mountView(model, el, "ablation", { css: CSS });

  const nLayers = model.get("n_layers");
  const nHeads = model.get("n_heads");
  // What the sliders show; differs from the trait only while runs are pending.
  let local: Ablations = { ...model.get("ablations") };
  let mode: Mode = model.get("ablation");

  // A refused request's message stays up until a request succeeds.
  let requestFailed = false;
  const runner = new LatestOnly<{ ablations: Ablations; ablation: Mode }>(
    async (params) => {
      status.textContent = "running\u2026";
      root.dataset.busy = "true";
      await rpc.call(ABLATION_REQUESTS.run, params);
      if (requestFailed) {
        requestFailed = false;
        errors.show(model.get("error"));
      }
    },
    (err) => {
      requestFailed = true;
      errors.show(describeError(err));
    },
    () => guard(() => {
      // Settled on the final values: show Python's state (a refused value snaps back).
      adoptTraits();
      const result = model.get("_result");
      status.textContent = result ? `computed in ${result.compute_ms.toFixed(1)} ms` : "";
      root.dataset.busy = "false";
    }),
  );
  cleanups.push(() => runner.dispose());
  const submit = () => runner.submit({ ablations: { ...local }, ablation: mode });

  // Toolbar
  const toolbar = doc.createElement("div");
  toolbar.className = "nbi-toolbar";
  const title = doc.createElement("strong");
  title.textContent = `Ablation \u00b7 ${model.get("model_name")}`;
  const modeToggle = toggleGroup<Mode>(doc, "ablation", [["zero", "zero"], ["mean", "mean"]], (value) => {
    mode = value;
    modeToggle.set(mode);
    submit();
  });
  modeToggle.element.title = "heads move towards zero, or towards their mean output over the reference prompts (MLPs always towards zero)";
  const button = (text: string, cls: string, onClick: () => void) => {
    const b = doc.createElement("button");
    b.type = "button";
    b.className = `nbi-button ${cls}`;
    b.textContent = text;
    b.addEventListener("click", () => guard(onClick));
    return b;
  };
  const codeBox = doc.createElement("pre");
  codeBox.className = "nbi-code";
  codeBox.hidden = true;
  const reset = button("reset", "nbi-reset", () => {
    local = {};
    syncSliders();
    submit();
  });
  const copy = button("copy as code", "nbi-copy", () => {
    const code = model.get("_result")?.code ?? "";
    codeBox.textContent = code;
    codeBox.hidden = false;
    const clipboard = doc.defaultView?.navigator.clipboard;
    clipboard?.writeText(code).then(
      () => (copyStatus.textContent = "copied"),
      () => (copyStatus.textContent = "select the code below to copy it"),
    );
  });
  const copyStatus = doc.createElement("span");
  copyStatus.className = "nbi-status";
  const status = doc.createElement("span");
  status.className = "nbi-status nbi-run-status";
  toolbar.append(title, modeToggle.element, reset, copy, copyStatus, status);
  root.append(toolbar);

  const prompt = doc.createElement("div");
  prompt.className = "nbi-status nbi-prompt";
  const target = model.get("target");
  const foil = model.get("foil");
  prompt.title = model.get("prompt");
  prompt.textContent = `prompt: ${JSON.stringify(middleOut(model.get("prompt")))}` + (target !== null ? ` \u00b7 target ${JSON.stringify(target)}` : "") + (foil !== null ? ` vs ${JSON.stringify(foil)}` : "");
  root.append(prompt);

  // Panels: control grid | output
  const panels = doc.createElement("div");
  panels.className = "nbi-panels";
  const table = doc.createElement("table");
  table.className = "nbi-controls";
  const output = doc.createElement("div");
  output.className = "nbi-out";
  panels.append(table, output);
  root.append(panels, codeBox);

  const sliders = new Map<string, { input: HTMLInputElement; label: HTMLSpanElement; cell: HTMLTableCellElement }>();
  const header = table.insertRow();
  header.append(doc.createElement("th"));
  for (let h = 0; h < nHeads; h++) {
    const th = doc.createElement("th");
    th.textContent = `H${h}`;
    header.append(th);
  }
  const mlpHead = doc.createElement("th");
  mlpHead.textContent = "MLP";
  header.append(mlpHead);
  for (let l = 0; l < nLayers; l++) {
    const row = table.insertRow();
    const th = doc.createElement("th");
    th.textContent = `L${l}`;
    row.append(th);
    for (let h = 0; h <= nHeads; h++) {
      const key = h === nHeads ? `L${l}.mlp` : `L${l}.H${h}`;
      const cell = row.insertCell();
      const input = doc.createElement("input");
      input.type = "range";
      input.min = "0";
      input.max = String(SCALE_MAX);
      input.step = String(SCALE_STEP);
      input.value = "1";
      input.dataset.component = key;
      input.setAttribute("aria-label", `scale of ${key}`);
      input.title = `${key}: scale its output (0 removes it, 1 leaves it)`;
      const label = doc.createElement("span");
      label.className = "nbi-scale";
      cell.append(input, label);
      sliders.set(key, { input, label, cell });
    }
  }
  const onSlide = (event: Event) => guard(() => {
    const input = event.target as HTMLInputElement;
    const key = input.dataset.component;
    if (!key) return;
    const value = Number(input.value);
    if (value === 1) delete local[key];
    else local[key] = value;
    paintSlider(key);
    submit();
  });
  table.addEventListener("input", onSlide);
  cleanups.push(() => table.removeEventListener("input", onSlide));

  function paintSlider(key: string) {
    const s = sliders.get(key);
    if (!s) return;
    const value = local[key] ?? 1;
    s.label.textContent = value === 1 ? "1" : formatValue(value);
    s.cell.dataset.changed = value === 1 ? "false" : value < 1 ? "true" : "boost";
  }

  function syncSliders() {
    for (const [key, s] of sliders) {
      const value = local[key] ?? 1;
      if (Number(s.input.value) !== value) s.input.value = String(value);
      paintSlider(key);
    }
    modeToggle.set(mode);
  }

  type Role = "target" | "foil";
  type Row = TokenProbability & { role?: Role; outside?: boolean };
  function probabilityRows(entries: Row[], withBefore: boolean, colour: string, showBefore = false): HTMLElement[] {
    const rows: HTMLElement[] = [];
    for (const e of entries) {
      if (e.outside && !rows.some((r) => r.classList.contains("nbi-outside"))) {
        const note = doc.createElement("div");
        note.className = "nbi-outside";
        note.textContent = `\u2026 outside the top ${entries.filter((x) => !x.outside).length}:`;
        rows.push(note);
      }
      const row = doc.createElement("div");
      row.className = "nbi-row" + (e.role ? ` nbi-row-${e.role}` : "") + (e.outside ? " nbi-row-outside" : "");
      row.dataset.token = String(e.id);
      if (e.role) row.dataset.role = e.role;
      const cell = doc.createElement("span");
      cell.className = "nbi-tokcell";
      // Rows outside the top k keep their own classes: .nbi-tok / .nbi-prob are the top k.
      const tok = doc.createElement("span");
      tok.className = e.outside ? "nbi-tracked-tok" : "nbi-tok";
      tok.textContent = displayToken(e.token);
      tok.title = JSON.stringify(e.token) + (e.role ? ` (the ${e.role})` : "");
      cell.append(tok);
      if (e.role) {
        const role = doc.createElement("span");
        role.className = "nbi-role";
        role.textContent = e.role;
        cell.append(role);
      }
      const bar = doc.createElement("span");
      bar.className = "nbi-bar";
      const fill = doc.createElement("span");
      fill.className = "nbi-fill";
      fill.style.width = `${(100 * Math.min(1, Math.max(0, e.probability))).toFixed(1)}%`;
      fill.style.background = colour;
      bar.append(fill);
      if (withBefore) {
        const tick = doc.createElement("span");
        tick.className = "nbi-tick";
        tick.style.left = `${(100 * Math.min(1, Math.max(0, e.before))).toFixed(1)}%`;
        tick.title = `before: ${formatValue(e.before)}`;
        bar.append(tick);
      }
      const prob = doc.createElement("span");
      prob.className = e.outside ? "nbi-tracked-prob" : "nbi-prob";
      // Outside the top k a probability is often under 1e-4: keep its digits.
      prob.textContent = e.outside && e.probability < 1e-4 ? e.probability.toExponential(1) : e.probability.toFixed(4);
      row.append(cell, bar, prob);
      if (showBefore) {
        const was = doc.createElement("span");
        was.className = "nbi-was";
        was.textContent = e.outside && e.before < 1e-4 ? e.before.toExponential(1) : e.before.toFixed(4);
        row.append(was);
      }
      rows.push(row);
    }
    return rows;
  }

  /** The top-k rows, the target and foil marked; either one outside the
   *  top k is added below it, so its probability is always on screen. */
  function withTracked(summary: Summary): Row[] {
    const tracked: Array<[Role, TokenProbability | null | undefined]> = [["target", summary.target], ["foil", summary.foil]];
    const rows: Row[] = summary.top_k.map((e) => {
      const hit = tracked.find(([, t]) => t && t.id === e.id);
      return hit ? { ...e, role: hit[0] } : e;
    });
    for (const [role, t] of tracked) if (t && !summary.top_k.some((e) => e.id === t.id)) rows.push({ ...t, role, outside: true });
    return rows;
  }

  function logitDiffBlock(what: string, before: number, after: number, changed: boolean): HTMLElement {
    const ld = doc.createElement("div");
    ld.className = "nbi-ld";
    const head = doc.createElement("div");
    head.append(`${what} at the last position (measured${changed ? "" : "; nothing ablated, after = before"}):`);
    ld.append(head);
    const span = niceCeil(Math.max(Math.abs(before), Math.abs(after), 1e-6));
    const px = (v: number) => (150 * Math.max(-span, Math.min(span, v))) / span;
    const barRow = (label: string, value: number, cls: string, colour: string) => {
      const row = doc.createElement("div");
      row.className = `nbi-ld-row ${cls}-row`;
      const name = doc.createElement("span");
      name.className = "nbi-label";
      name.textContent = label;
      const bar = doc.createElement("div");
      bar.className = "nbi-ld-bar";
      const fill = doc.createElement("span");
      const w = Math.abs(px(value));
      fill.style.left = `${value >= 0 ? 150 : 150 - w}px`;
      fill.style.width = `${w}px`;
      fill.style.background = colour;
      const zero = doc.createElement("span");
      zero.className = "nbi-zero";
      bar.append(fill, zero);
      const number = doc.createElement(cls === "nbi-ld-after" ? "strong" : "span");
      number.className = cls;
      number.textContent = value.toFixed(4);
      row.append(name, bar, number);
      return row;
    };
    ld.append(barRow("before", before, "nbi-ld-before", "#9aa5b8"));
    ld.append(barRow("after", after, "nbi-ld-after", after >= 0 ? "#b2182b" : "#2166ac"));
    const axis = doc.createElement("div");
    axis.className = "nbi-ld-axis";
    axis.dataset.span = String(span);
    for (const t of symmetricTicks(span)) {
      const tick = doc.createElement("span");
      tick.style.left = `${150 + px(t)}px`;
      tick.textContent = tickLabel(t);
      axis.append(tick);
    }
    ld.append(axis);
    return ld;
  }

  function drawOutput() {
    const result = checkTrait(model, ABLATION_TRAITS, "_result");
    const baseline = checkTrait(model, ABLATION_TRAITS, "_baseline");
    if (!result || !baseline) return;
    const parts: HTMLElement[] = [];
    const changed = Object.keys(result.ablations).length > 0;
    if (result.logit_diff !== null && baseline.logit_diff !== null) {
      const what = foil !== null ? `logit(${JSON.stringify(target)}) \u2212 logit(${JSON.stringify(foil)})` : `logit(${JSON.stringify(target)})`;
      parts.push(logitDiffBlock(what, baseline.logit_diff, result.logit_diff, changed));
    }
    const topk = doc.createElement("div");
    topk.className = "nbi-topk";
    const column = (cls: string, heading: string, rows: HTMLElement[]) => {
      const col = doc.createElement("div");
      col.className = `nbi-topk-col ${cls}`;
      const h = doc.createElement("div");
      h.className = "nbi-status";
      h.textContent = heading;
      col.append(h, ...rows);
      return col;
    };
    const after = column("nbi-topk-after", changed ? "after \u00b7 | and right column: before" : "after (nothing ablated: same as before)",
      probabilityRows(withTracked(result), changed, "#3b518b", changed));
    after.dataset.changed = String(changed);
    topk.append(
      column("nbi-topk-before", `before (no ablation) \u00b7 p(next token), measured`, probabilityRows(withTracked(baseline), false, "#9aa5b8")),
      after,
    );
    parts.push(topk);
    output.replaceChildren(...parts);
    root.dataset.seq = String(result.seq);
    root.dataset.ablations = JSON.stringify(result.ablations);
    root.dataset.ablation = result.ablation;
    if (!codeBox.hidden) codeBox.textContent = result.code;
    if (!runner.busy) {
      status.textContent = `computed in ${result.compute_ms.toFixed(1)} ms`;
      root.dataset.busy = "false";
    }
    root.dataset.drawn = "true";
  }

  /** Python's ablations win unless the user is mid-gesture (runs pending). */
  function adoptTraits() {
    if (runner.busy) return;
    local = { ...model.get("ablations") };
    mode = model.get("ablation");
    syncSliders();
  }

  guard(() => {
    syncSliders();
    errors.show(model.get("error"));
    drawOutput();
  });
  listen("change:_result", () => {
    drawOutput();
    adoptTraits();
  });
  listen("change:ablations", adoptTraits);
  listen("change:ablation", adoptTraits);
  listen("change:_baseline", drawOutput);
  listen("change:error", () => errors.show(model.get("error")));

  signal?.addEventListener("abort", dispose, { once: true });
  return dispose;
}

export default { render };
