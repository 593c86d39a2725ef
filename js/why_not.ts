// WhyNotView front end: the logit-lens trajectory of expected vs actual at the
// answer position (critical layer marked), the ranked inhibitors (measured
// ablation effects; gradient estimates in their own, marked column), the
// missing components with their measured restore shares, the restore of the
// top k, and buttons that open the attention view or the ablation panel.
// The first answer is the gradient estimates (rows marked "estimate"); the
// exact numbers stream in with a progress line, a cancel and a resume.

import type { RenderProps } from "@anywidget/types";
import { decodeTensor } from "./lib/codec";
import { WHY_NOT_REQUESTS } from "./lib/contract.gen";
import { describeError } from "./lib/errors";
import { mountView } from "./lib/view";
import type { InhibitorRow, MissingRow, RestoreResult, WhyNotModel } from "./lib/contract.gen";

// the synced traits and their rows: declared once in Python, generated into lib/contract.gen.ts
export type { InhibitorRow, MissingRow, RestoreResult, WhyNotModel };

const CSS = `
.nbi-why-not table { border-collapse: collapse; font-size: 12px; margin: 4px 0 10px; }
.nbi-why-not td, .nbi-why-not th { padding: 2px 8px; text-align: right; border-bottom: 1px solid #eee; }
.nbi-why-not td:first-child, .nbi-why-not th:first-child { text-align: left; }
.nbi-why-not .nbi-estimate { color: #777; font-style: italic; }
.nbi-why-not .nbi-nothing { color: #a33; }
.nbi-why-not h4 { margin: 10px 0 2px; font-size: 13px; }
.nbi-why-not button { font-size: 11px; margin-left: 2px; }
`;

/** Signed number with 3 decimals (the view's one number format; tests compare against it). */
export function fmt(value: number | null): string {
  return value === null ? "\u2013" : value.toFixed(3);
}

/** The progress line: how many components are measured exactly, and what the rest are. */
export function progressText(done: number, total: number, state: string, elapsedS: number): string {
  const rest = total - done;
  const tail = rest === 0 ? "every number measured" : `${rest} still shown as estimates`;
  return `exact: ${done} / ${total} components (${state}, ${elapsedS.toFixed(1)} s); ${tail}`;
}

/** SVG polyline points for values on [0, 1] over `width` x `height` (row i at x = i step). */
export function linePoints(values: ArrayLike<number>, width: number, height: number): string {
  const n = values.length;
  const step = n > 1 ? width / (n - 1) : 0;
  return Array.from(values, (v, i) => `${(i * step).toFixed(1)},${(height - Math.max(0, Math.min(1, v)) * height).toFixed(1)}`).join(" ");
}

/** The trajectory chart's width: 60 px per stream where they fit in ~800 px (a
 *  30-layer model's 31 streams at 26 px), never under 6; and which streams
 *  get an x label (every k-th, k the least that leaves 24 px for "L29"). */
export const CHART_WIDTH_PX = 800;
export function chartLayout(streams: number): { width: number; every: number } {
  const step = Math.max(6, Math.min(60, Math.floor(CHART_WIDTH_PX / Math.max(streams - 1, 1))));
  return { width: step * Math.max(streams - 1, 1), every: Math.max(1, Math.ceil(24 / step)) };
}

function render({ model, el, host }: RenderProps<WhyNotModel>): () => void {
  const { doc, root, rpc, errors, cleanups, guard, listen, dispose } = mountView(model, el, "why-not", { css: CSS });
  const svgNS = "http://www.w3.org/2000/svg";
  const header = doc.createElement("div");
  const chart = doc.createElement("div");
  const inhibitors = doc.createElement("div");
  const missing = doc.createElement("div");
  const restore = doc.createElement("div");
  const opened = doc.createElement("div");
  opened.className = "nbi-opened";
  const status = doc.createElement("div");
  status.className = "nbi-progress";
  root.append(header, status, chart, inhibitors, missing, restore, opened);

  const open = (layer: number, head: number | null, where: "attention" | "ablation") =>
    rpc.call(WHY_NOT_REQUESTS.open, { layer, head, open_in: where }).catch((err) => errors.show(describeError(err)));

  function button(label: string, onClick: () => void): HTMLButtonElement {
    const b = doc.createElement("button");
    b.textContent = label;
    b.addEventListener("click", () => guard(onClick));
    return b;
  }

  function table(headings: string[], rows: Array<Array<string | Node>>, className: string): HTMLTableElement {
    const t = doc.createElement("table");
    t.className = className;
    const head = t.createTHead().insertRow();
    for (const h of headings) {
      const th = doc.createElement("th");
      th.textContent = h;
      head.append(th);
    }
    const body = t.createTBody();
    for (const row of rows) {
      const tr = body.insertRow();
      for (const cell of row) {
        const td = tr.insertCell();
        if (typeof cell === "string") td.textContent = cell;
        else td.append(cell);
      }
    }
    return t;
  }

  function drawHeader() {
    const refs = model.get("reference_metrics");
    header.textContent = `Why not ${JSON.stringify(model.get("expected"))}? ${model.get("model_name")} says ` +
      `${JSON.stringify(model.get("actual_token"))}: logit(expected) \u2212 logit(actual) = ${fmt(model.get("metric"))}` +
      (refs.length ? ` here, ${refs.map(fmt).join(", ")} in the reference${refs.length > 1 ? "s" : ""}` : "");
    header.className = "nbi-summary";
  }

  function drawChart() {
    const t = model.get("_trajectory");
    const expected = decodeTensor(t.expected_probability).values;
    const actual = decodeTensor(t.actual_probability).values;
    const expectedRank = decodeTensor(t.expected_rank).values;
    const actualRank = decodeTensor(t.actual_rank).values;
    const labels = model.get("row_labels");
    const { width, every } = chartLayout(labels.length);
    const height = 90, pad = 36; // the left padding holds "embed", which ends at its point
    const svg = doc.createElementNS(svgNS, "svg");
    svg.setAttribute("width", String(width + 2 * pad));
    svg.setAttribute("height", String(height + 40));
    const g = doc.createElementNS(svgNS, "g");
    g.setAttribute("transform", `translate(${pad},10)`);
    svg.append(g);
    const critical = model.get("critical_layer");
    if (critical !== null) {
      const x = (critical + 1) * (labels.length > 1 ? width / (labels.length - 1) : 0);
      const line = doc.createElementNS(svgNS, "line");
      for (const [k, v] of [["x1", x], ["x2", x], ["y1", 0], ["y2", height]] as const) line.setAttribute(k, String(v));
      line.setAttribute("stroke", "#c33");
      line.setAttribute("stroke-dasharray", "4 3");
      line.setAttribute("class", "nbi-critical");
      g.append(line);
    }
    for (const [values, colour, cls] of [[expected, "#1f77b4", "nbi-expected"], [actual, "#ff7f0e", "nbi-actual"]] as const) {
      const poly = doc.createElementNS(svgNS, "polyline");
      poly.setAttribute("points", linePoints(values, width, height));
      poly.setAttribute("fill", "none");
      poly.setAttribute("stroke", colour);
      poly.setAttribute("stroke-width", "2");
      poly.setAttribute("class", cls);
      g.append(poly);
    }
    labels.forEach((label, i) => {
      if (i % every !== 0) return;
      const text = doc.createElementNS(svgNS, "text");
      text.setAttribute("x", String(i * (labels.length > 1 ? width / (labels.length - 1) : 0)));
      text.setAttribute("y", String(height + 16));
      text.setAttribute("font-size", "10");
      // "embed" is wider than a narrow step: it ends at its point, in the left padding, clear of "L0"
      text.setAttribute("text-anchor", i === 0 && labels.length > 1 ? "end" : "middle");
      text.textContent = label;
      g.append(text);
    });
    const caption = doc.createElement("div");
    caption.className = "nbi-status";
    caption.textContent = `measured (logit lens at the answer position): p(${JSON.stringify(model.get("expected"))}) blue, ` +
      `p(${JSON.stringify(model.get("actual_token"))}) orange; ` +
      (critical === null ? "expected ends on top" : critical < 0 ? "actual is ahead from the embeddings on" : `critical layer L${critical}: actual stays ahead after it`);
    const ranks = table(["stream", ...labels], [
      ["rank expected", ...Array.from(expectedRank, (v) => String(v))],
      ["rank actual", ...Array.from(actualRank, (v) => String(v))],
    ], "nbi-ranks");
    // 31 streams of ranks up to the vocabulary's size are wider than the output area: they scroll in their own box
    const rankBox = doc.createElement("div");
    rankBox.className = "nbi-scroll-x";
    rankBox.append(ranks);
    chart.replaceChildren(svg, caption, rankBox);
  }

  // Python publishes when measurements land; between publishes the clock runs here, from Python's last figure
  let clock: ReturnType<typeof setInterval> | undefined;
  cleanups.push(() => clearInterval(clock));
  function drawProgress() {
    const p = model.get("progress");
    const stop = button(p.state === "running" ? "cancel" : "resume", () => {
      const sent = p.state === "running" ? rpc.call(WHY_NOT_REQUESTS.cancel, {}) : rpc.call(WHY_NOT_REQUESTS.resume, {});
      sent.catch((err) => errors.show(describeError(err)));
    });
    status.dataset.state = p.state;
    const text = doc.createTextNode("");
    const received = Date.now();
    const paint = () => {
      text.data = progressText(p.done, p.total, p.state, p.elapsed_s + (p.state === "running" ? (Date.now() - received) / 1000 : 0));
    };
    paint();
    status.replaceChildren(text);
    if (p.done < p.total && p.state !== "error") status.append(" ", stop);
    clearInterval(clock);
    clock = p.state === "running" ? setInterval(paint, 1000) : undefined;
  }

  /** A measured number, or the estimate standing in for it (marked). */
  function measuredCell(value: number, measured: boolean): Node {
    return Object.assign(doc.createElement("span"), {
      className: measured ? "nbi-measured" : "nbi-estimate", textContent: measured ? fmt(value) : `${fmt(value)} (estimate)`,
    });
  }

  function drawInhibitors() {
    const rows = model.get("inhibitor_list").slice(0, 12).map((r) => [
      r.name, measuredCell(r.effect, r.measured),
      Object.assign(doc.createElement("span"), { className: "nbi-estimate", textContent: fmt(r.estimate) }),
      button("attention", () => open(r.layer, r.head, "attention")), button("ablate", () => open(r.layer, r.head, "ablation")),
    ]);
    const title = doc.createElement("h4");
    title.textContent = "Inhibitors: zero-ablation effect on the logit difference (measured rows first; > 0 pushes against expected)";
    inhibitors.replaceChildren(title, table(["component", "effect", "gradient (estimated)", "", ""], rows, "nbi-inhibitors"));
  }

  function drawMissing() {
    const list = model.get("missing_list");
    const title = doc.createElement("h4");
    if (!list.length) {
      title.textContent = "Missing components: pass references=[prompt where the model says expected]";
      missing.replaceChildren(title);
      return;
    }
    title.textContent = "Missing: share of the gap restored by patching each in from the reference at the answer (measured rows first)";
    const rows = list.slice(0, 12).map((r) => {
      const cls = r.label === "restores nothing" ? "nbi-nothing" : r.measured ? "" : "nbi-estimate";
      const label = Object.assign(doc.createElement("span"), { textContent: r.label, className: cls });
      return [r.name, measuredCell(r.restore_share, r.measured), label,
        Object.assign(doc.createElement("span"), { className: "nbi-estimate", textContent: fmt(r.estimate) }),
        `${fmt(r.attention_here)} / ${fmt(r.attention_reference)}`, `${fmt(r.norm_here)} / ${fmt(r.norm_reference)}`,
        button("attention", () => open(r.layer, r.head, "attention"))];
    });
    missing.replaceChildren(title, table(["component", "restore share", "", "first-order (estimated)", "attention to span here / ref", "norm here / ref", ""], rows, "nbi-missing"));
  }

  function drawRestore() {
    const r = model.get("restored");
    if (!r) return restore.replaceChildren();
    const title = doc.createElement("h4");
    title.textContent = `Restore the top ${r.k} together: ${fmt(r.together_share)} of the gap (measured)`;
    title.className = "nbi-together";
    const rows = r.components.map((name, i) => [name, fmt(r.single_shares[i]), r.labels[i]]);
    const k = doc.createElement("input");
    k.type = "number";
    k.min = "1";
    k.value = String(r.k);
    k.style.width = "4em";
    const again = button("restore top k", () => {
      rpc.call(WHY_NOT_REQUESTS.restore, { k: Number(k.value) }).catch((err) => errors.show(describeError(err)));
    });
    restore.replaceChildren(title, table(["component", "alone (measured)", ""], rows, "nbi-restore"), k, again);
  }

  let openedAbort: AbortController | null = null;
  async function drawOpened() {
    const ref = model.get("_opened");
    openedAbort?.abort();
    opened.replaceChildren();
    if (!ref) return;
    root.dataset.opened = ref;
    if (!host?.getWidget) {
      opened.textContent = "opened: display it with view.opened";
      return;
    }
    const controller = new AbortController();
    openedAbort = controller;
    const box = doc.createElement("div");
    opened.append(box);
    const widget = await host.getWidget(ref);
    if (!controller.signal.aborted) await widget.render({ el: box, signal: controller.signal });
  }
  cleanups.push(() => openedAbort?.abort());

  guard(() => {
    errors.show(model.get("error"));
    drawHeader();
    drawChart();
    drawInhibitors();
    drawMissing();
    drawRestore();
    drawProgress();
    root.dataset.drawn = "true";
  });
  listen("change:restored", drawRestore);
  listen("change:progress", drawProgress);
  listen("change:inhibitor_list", drawInhibitors);
  listen("change:missing_list", drawMissing);
  listen("change:error", () => errors.show(model.get("error")));
  listen("change:_opened", () => { drawOpened().catch((err) => errors.show(describeError(err))); });
  return () => dispose();
}

export default { render };
