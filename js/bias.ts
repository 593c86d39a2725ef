// BiasView front end: the gap between two groups with its 95% interval, the
// components' measured shares of it (bars, largest first), and after
// `reduce` the held-out gap before / after with the side effects on
// capability prompts. Shares outside the exact budget are estimates
// (attribution patching): drawn pale and hatched, labelled "est.", with the
// estimates' error against the measured shares beside them. Everything is drawn from traits; the components'
// shares stream in as Python measures them (progress, cancel, resume).

import type { RenderProps } from "@anywidget/types";
import { checkTrait, type RequestSpec } from "./lib/contract";
import { BIAS_REQUESTS, BIAS_TRAITS, type BiasModel, type BiasReduction, type ComponentShare, type ShareEstimateError, type SideEffect } from "./lib/contract.gen";
import { describeError } from "./lib/errors";
import { mountView } from "./lib/view";

// the synced traits: declared once in Python, generated into lib/contract.gen.ts
export type { BiasModel, BiasReduction, ComponentShare, ShareEstimateError, SideEffect };

const CSS = `
.nbi-bias .nbi-row { display: flex; align-items: center; gap: 6px; font-size: 11px; margin: 1px 0; }
.nbi-bias .nbi-label { width: 110px; text-align: right; font-family: monospace; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.nbi-bias .nbi-track { position: relative; width: 320px; height: 14px; background: #f3f3f3; }
.nbi-bias .nbi-bar { position: absolute; top: 2px; height: 10px; }
.nbi-bias .nbi-estimated .nbi-bar { opacity: 0.5; background-image: repeating-linear-gradient(45deg, transparent 0 3px, rgba(255,255,255,0.8) 3px 5px); }
.nbi-bias .nbi-zero { position: absolute; top: 0; bottom: 0; width: 1px; background: #444; }
.nbi-bias .nbi-interval { position: absolute; top: 6px; height: 2px; background: #000; }
.nbi-bias .nbi-value { min-width: 150px; font-family: monospace; white-space: nowrap; }
.nbi-bias h4 { margin: 8px 0 2px; font-size: 12px; }
.nbi-bias progress { width: 160px; }
.nbi-bias table { border-collapse: collapse; font-size: 11px; }
.nbi-bias td, .nbi-bias th { padding: 1px 8px; text-align: right; }
`;

/** Where a value sits on a track spanning [lo, hi], in percent (clamped). */
export function percentOf(value: number, lo: number, hi: number): number {
  if (!(hi > lo)) return 50;
  return Math.min(100, Math.max(0, ((value - lo) / (hi - lo)) * 100));
}

/** A symmetric-enough axis [lo, hi] that holds 0 and every value, padded by 5%. */
export function axisFor(values: number[]): [number, number] {
  const finite = values.filter((v) => Number.isFinite(v));
  let lo = Math.min(0, ...finite), hi = Math.max(0, ...finite);
  if (hi === lo) hi = lo + 1;
  const pad = (hi - lo) * 0.05;
  return [lo - pad, hi + pad];
}

type Progress = BiasModel["progress"];

/** The progress line: components measured of the total, the state in words, seconds spent. */
export function progressText(p: Progress): string {
  const done = p.done ?? 0, total = p.total ?? 0;
  const state = p.state ?? "running";
  const words = state === "cancelled"
    ? (done === 0 ? "not measured yet: resume (or b.components) measures them" : "cancelled: resume continues, nothing measured is lost")
    : state === "running"
      ? (p.estimating ? "estimating every share (gradient x activation) to choose which to measure"
        : "measuring (each zero-ablated alone on every row)")
      : state;
  const estimated = p.estimated ? ` \u00b7 ${p.estimated} estimated only (outside the exact budget)` : "";
  return `${done} / ${total} components measured${estimated} \u00b7 ${words} \u00b7 ${(p.elapsed_s ?? 0).toFixed(1)} s`;
}

/** The estimates' error against the measured shares, in words ("" without estimates). */
export function estimateErrorText(e: ShareEstimateError | null): string {
  if (!e) return "";
  const r = e.correlation === null ? "" : `, correlation ${e.correlation.toFixed(2)}`;
  return `estimated shares (attribution patching) vs measured on ${e.n} components: ` +
    `max |error| ${(100 * e.max_abs_error).toFixed(1)} points of share${r}`;
}

function render({ model, el }: RenderProps<BiasModel>): () => void {
  const { doc, root, rpc, errors, cleanups, guard, listen, dispose } = mountView(model, el, "bias", { css: CSS });
  const call = <P, R>(spec: RequestSpec<P, R>, params: P) =>
    rpc.call(spec, params).catch((err) => errors.show(describeError(err)));
  const summary = doc.createElement("div");
  summary.className = "nbi-verdict";
  const gapBox = doc.createElement("div");
  const toolbar = doc.createElement("div");
  toolbar.className = "nbi-toolbar nbi-measuring";
  const meter = doc.createElement("progress");
  const status = doc.createElement("span");
  status.className = "nbi-status nbi-progress";
  const button = (label: string, spec: RequestSpec<Record<string, never>, unknown>) => {
    const b = Object.assign(doc.createElement("button"), { type: "button", className: `nbi-button nbi-${label}`, textContent: label });
    b.addEventListener("click", () => call(spec, {}));
    return b;
  };
  const cancel = button("cancel", BIAS_REQUESTS.cancel);
  const resume = button("resume", BIAS_REQUESTS.resume);
  toolbar.append(meter, status, cancel, resume);
  const componentBox = doc.createElement("div");
  const reductionBox = doc.createElement("div");
  root.append(summary, gapBox, toolbar, componentBox, reductionBox);

  function bar(label: string, value: number, axis: [number, number], colour: string, interval?: number[], text?: string) {
    const row = doc.createElement("div");
    row.className = "nbi-row";
    const name = Object.assign(doc.createElement("span"), { className: "nbi-label", textContent: label, title: label });
    const track = Object.assign(doc.createElement("span"), { className: "nbi-track" });
    const zero = percentOf(0, ...axis), at = percentOf(value, ...axis);
    const fill = Object.assign(doc.createElement("span"), { className: "nbi-bar" });
    fill.style.left = `${Math.min(zero, at)}%`;
    fill.style.width = `${Math.abs(at - zero)}%`;
    fill.style.background = colour;
    const zeroLine = Object.assign(doc.createElement("span"), { className: "nbi-zero" });
    zeroLine.style.left = `${zero}%`;
    track.append(fill, zeroLine);
    if (interval && interval.length === 2) {
      const whisker = Object.assign(doc.createElement("span"), { className: "nbi-interval" });
      const a = percentOf(interval[0], ...axis), b = percentOf(interval[1], ...axis);
      whisker.style.left = `${a}%`;
      whisker.style.width = `${Math.max(0.5, b - a)}%`;
      track.append(whisker);
    }
    const shown = Object.assign(doc.createElement("span"), { className: "nbi-value", textContent: text ?? value.toFixed(3) });
    row.dataset.value = String(value);
    row.append(name, track, shown);
    return row;
  }

  function drawGap() {
    const [a, b] = model.get("group_names");
    const [low, high] = model.get("ci");
    const gap = model.get("gap");
    const [meanA, meanB] = model.get("group_means");
    const [nA, nB] = model.get("group_sizes");
    const foil = model.get("foil");
    const target = JSON.stringify(model.get("target"));
    const metric = foil ? `logit(${target}) - logit(${JSON.stringify(foil)})` : `logit(${target})`;
    summary.textContent = `${model.get("model_name")}: mean ${metric} over ${a} (${nA} rows) minus ${b} (${nB} rows)` +
      (model.get("paired") ? ", counterfactual pairs" : "");
    const axis = axisFor([low, high, meanA, meanB]);
    const crosses = low <= 0 && 0 <= high;
    gapBox.replaceChildren(
      Object.assign(doc.createElement("h4"), { textContent: "gap (measured), 95% bootstrap interval" }),
      bar(`mean ${a}`, meanA, axis, "#8fa8d0"),
      bar(`mean ${b}`, meanB, axis, "#8fa8d0"),
      bar("gap", gap, axis, crosses ? "#bbb" : "#4c72b0", [low, high],
        `${gap.toFixed(3)} [${low.toFixed(3)}, ${high.toFixed(3)}]`),
      Object.assign(doc.createElement("div"), {
        className: "nbi-status",
        textContent: `permutation test of the group labels: p = ${model.get("p_value").toPrecision(3)}` +
          (crosses ? " \u00b7 the interval crosses 0: no difference shown" : ""),
      }),
    );
    gapBox.dataset.gap = String(gap);
  }

  // Python publishes when a chunk lands; between publishes the clock runs here, from Python's last figure
  let clock: ReturnType<typeof setInterval> | undefined;
  cleanups.push(() => clearInterval(clock));
  function drawProgress() {
    const p = checkTrait(model, BIAS_TRAITS, "progress");
    const state = p.state ?? "running";
    meter.max = Math.max(p.total ?? 0, 1);
    meter.value = p.done ?? 0;
    const received = Date.now();
    const paint = () => {
      const running = state === "running" ? (Date.now() - received) / 1000 : 0;
      status.textContent = progressText({ ...p, elapsed_s: (p.elapsed_s ?? 0) + running });
    };
    paint();
    clearInterval(clock);
    clock = state === "running" ? setInterval(paint, 1000) : undefined;
    cancel.hidden = state !== "running";
    resume.hidden = state !== "cancelled";
    root.dataset.state = state;
    root.dataset.done = String(p.done ?? 0);
  }

  function drawComponents() {
    const shown = model.get("components_shown");
    const measured = model.get("n_components");
    const total = model.get("progress").total ?? measured;
    if (!measured) {
      componentBox.replaceChildren(Object.assign(doc.createElement("div"), {
        className: "nbi-status", textContent: "no component measured yet",
      }));
      return;
    }
    const axis = axisFor(shown.map((c) => c.share));
    const estimated = model.get("progress").estimated ?? 0;
    const of = measured < total ? `${measured} measured so far (of ${total})` : `${total} measured`;
    const rest = estimated ? ` + ${estimated} estimated` : "";
    const error = estimateErrorText(model.get("estimates_vs_measured"));
    componentBox.replaceChildren(
      Object.assign(doc.createElement("h4"), {
        textContent: `share of the gap per component (measured: each zero-ablated alone on every row` +
          `${estimated ? "; est.: attribution-patching estimate, not measured" : ""}), ${shown.length} largest of ${of}${rest}`,
      }),
      ...shown.map((c) => {
        const row = bar(c.name, c.share, axis, c.share >= 0 ? "#dd8452" : "#8172b3", undefined,
          `${c.measured ? "" : "est. "}${(100 * c.share).toFixed(1)}% \u00b7 gap ${c.gap_ablated.toFixed(2)}`);
        row.dataset.component = c.name;
        row.dataset.measured = String(c.measured);
        if (!c.measured) row.classList.add("nbi-estimated");
        row.title = c.measured ? `${c.name} zero-ablated: gap ${c.gap_ablated.toFixed(4)} (measured)`
          : `${c.name}: gap ${c.gap_ablated.toFixed(4)} if zero-ablated, estimated by attribution patching (not measured)`;
        return row;
      }),
      ...(error ? [Object.assign(doc.createElement("div"), { className: "nbi-status nbi-estimate-error", textContent: error })] : []),
    );
  }

  function drawReduction() {
    const r = model.get("reduction");
    if (!r) {
      reductionBox.replaceChildren(Object.assign(doc.createElement("div"), {
        className: "nbi-status", textContent: "b.reduce(k=3) shows the held-out gap before / after here",
      }));
      return;
    }
    const axis = axisFor([...r.ci_before, ...r.ci_after]);
    const table = doc.createElement("table");
    const head = table.createTHead().insertRow();
    for (const t of ["task", "n", "accuracy before", "after", "logit diff before", "after"]) {
      head.append(Object.assign(doc.createElement("th"), { textContent: t }));
    }
    const fmt = (v: number | null, digits = 2) => (v === null ? "\u2013" : v.toFixed(digits));
    for (const s of r.side_effects) {
      const tr = table.createTBody().insertRow();
      tr.dataset.task = s.task;
      for (const t of [s.task, String(s.n), fmt(s.accuracy_before), fmt(s.accuracy_after), fmt(s.logit_diff_before), fmt(s.logit_diff_after)]) {
        tr.insertCell().textContent = t;
      }
    }
    reductionBox.replaceChildren(
      Object.assign(doc.createElement("h4"), {
        textContent: `held-out gap (${r.n_held_out} rows), ${r.method === "ablate" ? "ablating" : "projecting out"} ${r.removed.join(", ")}`,
      }),
      bar("before", r.gap_before, axis, "#4c72b0", r.ci_before,
        `${r.gap_before.toFixed(3)} [${r.ci_before[0].toFixed(3)}, ${r.ci_before[1].toFixed(3)}]`),
      bar("after", r.gap_after, axis, "#55a868", r.ci_after,
        `${r.gap_after.toFixed(3)} [${r.ci_after[0].toFixed(3)}, ${r.ci_after[1].toFixed(3)}]`),
      Object.assign(doc.createElement("h4"), { textContent: "side effects: the same intervention on capability prompts" }),
      r.side_effects.length ? table : Object.assign(doc.createElement("div"), { className: "nbi-status", textContent: "no capability prompts" }),
    );
  }

  guard(() => {
    errors.show(model.get("error"));
    drawGap();
    drawProgress();
    drawComponents();
    drawReduction();
    root.dataset.drawn = "true";
  });
  listen("change:components_shown", drawComponents);
  listen("change:n_components", drawComponents);
  listen("change:estimates_vs_measured", drawComponents);
  listen("change:progress", () => {
    drawProgress();
    drawComponents();
  });
  listen("change:reduction", drawReduction);
  listen("change:error", () => errors.show(model.get("error")));
  return () => dispose();
}

export default { render };
