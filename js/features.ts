// FeatureView front end: the prompt's tokens coloured by the selected
// feature; a click on a token lists its strongest features (from the top k
// per token Python sent); a click on a feature asks Python for its
// activation over the prompt, direct logit effect, density and top
// contexts (streamed from a corpus pass, with progress and cancel);
// steering sliders re-run the model through a latest-only runner; the SAE's
// reconstruction error per token in a second strip.

import type { RenderProps } from "@anywidget/types";
import { decodeTensor } from "./lib/codec";
import { type ColorScale, cssColor, divergingScale, formatValue, renderLegend, sequentialScale, textColorOn } from "./lib/colors";
import { FEATURES_REQUESTS, type FeaturesModel } from "./lib/contract.gen";
import { describeError } from "./lib/errors";
import { LatestOnly } from "./lib/latest";
import { toggleGroup } from "./lib/style";
import { displayToken, TokenStrip } from "./lib/tokens";
import { mountView } from "./lib/view";

// the synced traits: declared once in Python, generated into lib/contract.gen.ts
export type { FeaturesModel };
type Mode = FeaturesModel["steer_mode"];
type Steering = FeaturesModel["steering"];

/** The features of one token, strongest first, from the [T, k] top-k arrays. */
export function topFeaturesAt(values: Float32Array, indices: Float32Array, k: number, token: number): Array<{ feature: number; value: number }> {
  const out: Array<{ feature: number; value: number }> = [];
  if (token < 0 || k <= 0 || (token + 1) * k > values.length) return out;
  for (let j = 0; j < k; j++) out.push({ feature: Math.round(indices[token * k + j]), value: values[token * k + j] });
  return out;
}

/** A steering slider's range: "scale" multiplies the activation (1 = unchanged);
 *  "clamp" sets it, from below zero to twice the feature's largest activation. */
export function sliderRange(mode: Mode, maxActivation: number): { min: number; max: number; step: number; initial: number } {
  if (mode === "scale") return { min: -2, max: 6, step: 0.05, initial: 1 };
  const top = maxActivation > 0 && Number.isFinite(maxActivation) ? maxActivation : 1;
  const max = Number((2 * top).toPrecision(2)) || 2;
  return { min: -max / 2, max, step: max / 200, initial: Number(top.toPrecision(3)) };
}

/** Colours of an activation row: sequential from 0 when (nearly) nothing is
 *  negative, else diverging around 0, both to the largest magnitude. */
export function activationScale(values: ArrayLike<number>): ColorScale {
  let lo = 0;
  let hi = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (!Number.isFinite(v)) continue;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return -lo > 0.05 * hi ? divergingScale(Math.max(-lo, hi)) : sequentialScale(0, hi > 0 ? hi : 1);
}

const CSS = `
.nbi-features .nbi-cols { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; margin-top: 6px; }
.nbi-features .nbi-col { min-width: 240px; max-width: 420px; }
.nbi-features .nbi-col h4 { margin: 2px 0 4px; font-size: 12px; }
.nbi-features .nbi-feature-row { display: grid; grid-template-columns: 64px 110px 64px 40px; gap: 4px; align-items: center; cursor: pointer; }
.nbi-features .nbi-feature-row[data-selected="true"] { background: #e3ecfa; }
.nbi-features .nbi-bar { position: relative; height: 10px; background: #f1f1f1; }
.nbi-features .nbi-bar span { position: absolute; left: 0; top: 0; height: 10px; background: #3b518b; }
.nbi-features .nbi-num { font: 11px ui-monospace, monospace; text-align: right; }
.nbi-features .nbi-effects { display: grid; grid-template-columns: 1fr 1fr; gap: 8px; }
.nbi-features .nbi-effect { font: 11px ui-monospace, monospace; white-space: pre; }
.nbi-features .nbi-context { font: 11px ui-monospace, monospace; margin: 2px 0; }
.nbi-features .nbi-context span { padding: 0 1px; white-space: pre; border-radius: 2px; }
.nbi-features .nbi-context .nbi-peak { outline: 1px solid #e0115f; }
.nbi-features .nbi-steer-row { display: grid; grid-template-columns: 70px 150px 60px 24px; gap: 4px; align-items: center; }
.nbi-features .nbi-steer-row input { width: 150px; margin: 0; }
.nbi-features .nbi-topk-row { display: grid; grid-template-columns: 90px 60px 60px; gap: 6px; font: 11px ui-monospace, monospace; }
.nbi-features .nbi-recon { margin-top: 8px; border-top: 1px solid #ddd; padding-top: 4px; }
.nbi-features progress { width: 120px; }
`;

function render({ model, el, signal }: RenderProps<FeaturesModel>): () => void {
  const { doc, root, rpc, errors, cleanups, guard, listen, dispose } = mountView(model, el, "features", { css: CSS });
  const tokens = model.get("tokens");
  const el_ = <K extends keyof HTMLElementTagNameMap>(tag: K, cls = "", text = "") => {
    const e = doc.createElement(tag);
    if (cls) e.className = cls;
    if (text) e.textContent = text;
    return e;
  };
  const button = (text: string, cls: string, onClick: () => void) => {
    const b = el_("button", `nbi-button ${cls}`, text);
    b.type = "button";
    b.addEventListener("click", () => guard(onClick));
    return b;
  };
  const shown = (reply: Promise<unknown>) => void reply.catch((err) => errors.show(describeError(err)));
  const select = (name: "selected_token" | "selected_feature", value: number) => {
    model.set(name, value);
    model.save_changes();
  };

  // Toolbar and the prompt strip
  const toolbar = el_("div", "nbi-toolbar");
  toolbar.append(el_("strong", "", `Features \u00b7 ${model.get("model_name")} \u00b7 ${model.get("source_label")}`));
  const status = el_("span", "nbi-status nbi-run-status");
  toolbar.append(status);
  root.append(toolbar);
  const caption = el_("div", "nbi-strip-caption nbi-caption");
  root.append(caption);
  const strip = new TokenStrip(root, {
    onHover: () => {},
    onClick: (i) => guard(() => select("selected_token", i)),
  });
  strip.setTokens(tokens);
  cleanups.push(() => strip.destroy());
  const legend = el_("div", "nbi-legend");
  root.append(legend);

  const cols = el_("div", "nbi-cols");
  const tokenCol = el_("div", "nbi-col nbi-token-features");
  const featureCol = el_("div", "nbi-col nbi-feature");
  const steerCol = el_("div", "nbi-col nbi-steering");
  cols.append(tokenCol, featureCol, steerCol);
  root.append(cols);
  const recon = el_("div", "nbi-recon");
  root.append(recon);

  // ------------------------------------------------------------ token panel
  let top: { values: Float32Array; indices: Float32Array; k: number } | null = null;
  function decodeTop() {
    const t = model.get("_top");
    if (!t.values || !t.indices) return;
    const values = decodeTensor(t.values);
    const indices = decodeTensor(t.indices);
    top = { values: values.values, indices: indices.values, k: values.shape[1] ?? 0 };
  }

  function drawTokenPanel() {
    const token = model.get("selected_token");
    strip.setActive(token);
    root.dataset.selectedToken = String(token);
    tokenCol.replaceChildren();
    if (token < 0 || !top) return;
    tokenCol.append(el_("h4", "", `token ${token} ${JSON.stringify(tokens[token] ?? "")}: its top ${top.k} features`));
    tokenCol.append(el_("div", "nbi-caption", "activation at this token, measured; click a feature to see it"));
    const rows = topFeaturesAt(top.values, top.indices, top.k, token);
    const peak = Math.max(...rows.map((r) => Math.abs(r.value)), 1e-12);
    const selected = model.get("selected_feature");
    for (const { feature, value } of rows) {
      const row = el_("div", "nbi-feature-row");
      row.dataset.feature = String(feature);
      row.dataset.selected = String(feature === selected);
      const bar = el_("span", "nbi-bar");
      const fill = el_("span");
      fill.style.width = `${(100 * Math.max(0, value)) / peak}%`;
      bar.append(fill);
      row.append(el_("span", "nbi-feature-id", `#${feature}`), bar, el_("span", "nbi-num nbi-feature-value", formatValue(value)));
      row.addEventListener("click", () => guard(() => select("selected_feature", feature)));
      tokenCol.append(row);
    }
  }

  // ------------------------------------------------------------ feature panel
  let activation: Float32Array | null = null;
  function drawFeature() {
    const info = model.get("feature_info");
    featureCol.replaceChildren();
    root.dataset.selectedFeature = String(info?.feature ?? -1);
    if (!info) {
      strip.setWeights(null, null);
      caption.textContent = "click a token, then one of its features";
      return;
    }
    activation = decodeTensor(info.activation).values;
    const scale = activationScale(activation);
    strip.setWeights(activation, scale);
    caption.textContent = `tokens coloured by feature #${info.feature}'s activation (measured); click a token for its top features`;
    renderLegend(legend, scale, `feature #${info.feature}`, { note: `largest ${formatValue(info.max)} at token ${info.argmax} ${JSON.stringify(tokens[info.argmax] ?? "")}` });
    const head = el_("h4", "", `feature #${info.feature}`);
    const steerButton = button("steer it", "nbi-add-steer", () => addSlider(info.feature, info.max));
    head.append(" ", steerButton);
    featureCol.append(head);
    // direct logit effect
    featureCol.append(el_("div", "nbi-caption nbi-direct-label", info.direct_label));
    if (info.direct_error) featureCol.append(el_("div", "nbi-status nbi-direct-error", info.direct_error));
    if (info.direct) {
      const grid = el_("div", "nbi-effects");
      for (const side of ["positive", "negative"] as const) {
        const col = el_("div", `nbi-effect nbi-effect-${side}`);
        col.append(el_("div", "nbi-label", side === "positive" ? "raises" : "lowers"));
        for (const e of info.direct[side]) col.append(el_("div", "", `${displayToken(e.token).padEnd(10)} ${e.value >= 0 ? "+" : ""}${formatValue(e.value)}`));
        grid.append(col);
      }
      featureCol.append(grid);
    }
    const ctx = el_("div", "nbi-contexts");
    featureCol.append(ctx);
    drawContexts();
    drawTokenPanel();
  }

  function drawContexts() {
    const box = featureCol.querySelector<HTMLElement>(".nbi-contexts");
    if (!box) return;
    const c = model.get("contexts");
    const selected = model.get("feature_info")?.feature;
    box.replaceChildren();
    if (!c) {  // the corpus pass has not reported yet
      root.dataset.contexts = "running";
      box.append(el_("div", "nbi-caption", "top contexts: waiting for the corpus pass"));
      return;
    }
    const state = c.state;
    root.dataset.contexts = state;
    const line = el_("div", "nbi-toolbar");
    const bar = doc.createElement("progress");
    bar.max = Math.max(c.total_docs, 1);
    bar.value = c.done_docs;
    const text = el_("span", "nbi-status nbi-progress", state === "unavailable" ? c.note :
      `corpus pass: ${c.done_docs} / ${c.total_docs} documents (${c.done_tokens} tokens) \u00b7 ${state}`);
    if (state !== "unavailable") line.append(bar);
    line.append(text);
    if (state === "running") line.append(button("cancel", "nbi-cancel", () => shown(rpc.call(FEATURES_REQUESTS.cancel_contexts, {}))));
    if (state === "cancelled") line.append(button("resume", "nbi-resume", () => shown(rpc.call(FEATURES_REQUESTS.resume_contexts, {}))));
    box.append(line);
    if (c.feature === null || c.feature !== selected) {
      if (state !== "unavailable" && state !== "error") box.append(el_("div", "nbi-caption", "top contexts: waiting for the corpus pass"));
      return;
    }
    box.dataset.feature = String(c.feature);
    const partial = state !== "done" ? ` (so far: ${c.done_docs} of ${c.total_docs} documents)` : "";
    if (c.density !== null) {
      box.append(el_("div", "nbi-density", `density: active (> 0) on ${(100 * c.density).toPrecision(3)}% of ${c.tokens_counted} corpus tokens, measured${partial}`));
    }
    box.append(el_("div", "nbi-label", `top ${c.items.length} contexts${partial}, each document once at its strongest token:`));
    const peak = Math.max(...c.items.map((i) => i.value), 1e-12);
    const scale = sequentialScale(0, peak);
    for (const item of c.items) {
      const row = el_("div", "nbi-context");
      row.title = `document ${item.doc}, token ${item.position}: ${formatValue(item.value)}`;
      item.tokens.forEach((t, j) => {
        const span = el_("span", item.start + j === item.position ? "nbi-peak" : "", displayToken(t));
        const v = item.activations[j];
        span.style.backgroundColor = cssColor(scale, v);
        span.style.color = textColorOn(scale, v);
        span.title = formatValue(v);
        row.append(span);
      });
      row.append(el_("span", "nbi-num", `  ${formatValue(item.value)}`));
      box.append(row);
    }
  }

  // ------------------------------------------------------------ steering
  let local: Steering = { ...model.get("steering") };
  let mode: Mode = model.get("steer_mode");
  const ranges = new Map<string, number>(); // feature -> its largest activation on the prompt
  let requestFailed = false;
  const runner = new LatestOnly<{ steering: Steering; mode: Mode }>(
    async (params) => {
      status.textContent = "running\u2026";
      root.dataset.busy = "true";
      await rpc.call(FEATURES_REQUESTS.steer, params);  // the reply is checked against the declaration
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
      adoptTraits();
      const result = model.get("_result");
      // the first run is the unsteered one, timed by nothing here: no "computed in 0.0 ms"
      status.textContent = result && result.compute_ms > 0 ? `computed in ${result.compute_ms.toFixed(1)} ms` : "";
      root.dataset.busy = "false";
    }),
  );
  cleanups.push(() => runner.dispose());
  const submit = () => runner.submit({ steering: { ...local }, mode });

  const modeToggle = toggleGroup<Mode>(doc, "steering mode", [["scale", "scale"], ["clamp", "clamp"]], (value) => {
    if (value === mode) return;
    mode = value;
    for (const key of Object.keys(local)) local[key] = sliderRange(mode, ranges.get(key) ?? 1).initial;
    drawSliders();
    submit();
  });
  const sliderBox = el_("div", "nbi-sliders");
  const output = el_("div", "nbi-steer-out");
  steerCol.append(el_("h4", "", "steering"), modeToggle.element, sliderBox, output);

  function addSlider(feature: number, maxActivation: number) {
    const key = String(feature);
    ranges.set(key, maxActivation);
    if (key in local) return;
    local[key] = sliderRange(mode, maxActivation).initial;
    drawSliders();
    submit();
  }

  function drawSliders() {
    modeToggle.set(mode);
    sliderBox.replaceChildren();
    const keys = Object.keys(local);
    if (!keys.length) sliderBox.append(el_("div", "nbi-caption", "select a feature and press \u201csteer it\u201d"));
    sliderBox.append(el_("div", "nbi-caption", mode === "scale" ? "multiply the feature's activation at every token (1 = unchanged)" : "set the feature's activation at every token to the value"));
    for (const key of keys) {
      const r = sliderRange(mode, ranges.get(key) ?? Math.abs(local[key]) ?? 1);
      const row = el_("div", "nbi-steer-row");
      row.dataset.feature = key;
      const input = el_("input");
      input.type = "range";
      input.min = String(Math.min(r.min, local[key]));
      input.max = String(Math.max(r.max, local[key]));
      input.step = String(r.step);
      input.value = String(local[key]);
      input.dataset.feature = key;
      input.setAttribute("aria-label", `steering value of feature ${key}`);
      const value = el_("span", "nbi-num nbi-steer-value", formatValue(local[key]));
      const remove = button("\u00d7", "nbi-remove", () => {
        delete local[key];
        drawSliders();
        submit();
      });
      remove.title = "stop steering this feature";
      row.append(el_("span", "", `#${key}`), input, value, remove);
      sliderBox.append(row);
    }
  }
  const onSlide = (event: Event) => guard(() => {
    const input = event.target as HTMLInputElement;
    const key = input.dataset.feature;
    if (!key) return;
    local[key] = Number(input.value);
    const label = input.parentElement?.querySelector(".nbi-steer-value");
    if (label) label.textContent = formatValue(local[key]);
    submit();
  });
  sliderBox.addEventListener("input", onSlide);
  cleanups.push(() => sliderBox.removeEventListener("input", onSlide));

  function adoptTraits() {
    if (runner.busy) return;
    local = { ...model.get("steering") };
    mode = model.get("steer_mode");
    drawSliders();
  }

  function drawOutput() {
    const result = model.get("_result");
    const baseline = model.get("_baseline");
    if (!result || !baseline) return;
    output.replaceChildren();
    const target = model.get("target");
    const foil = model.get("foil");
    if (result.logit_diff !== null && baseline.logit_diff !== null) {
      const what = foil !== null ? `logit(${JSON.stringify(target)}) \u2212 logit(${JSON.stringify(foil)})` : `logit(${JSON.stringify(target)})`;
      const line = el_("div", "nbi-metric");
      line.append(`${what}, last token, measured: `, el_("span", "nbi-metric-before", baseline.logit_diff.toFixed(4)), " \u2192 ", el_("strong", "nbi-metric-after", result.logit_diff.toFixed(4)));
      output.append(line);
    }
    output.append(el_("div", "nbi-label", "next token after steering: p (measured) \u00b7 before"));
    for (const e of result.top_k) {
      const row = el_("div", "nbi-topk-row");
      row.append(el_("span", "nbi-tok", displayToken(e.token)), el_("span", "nbi-prob", e.probability.toFixed(4)), el_("span", "nbi-was", e.before.toFixed(4)));
      output.append(row);
    }
    root.dataset.seq = String(result.seq);
    root.dataset.steering = JSON.stringify(result.steering);
    root.dataset.mode = result.mode;
    if (!runner.busy) {
      status.textContent = result.compute_ms > 0 ? `computed in ${result.compute_ms.toFixed(1)} ms` : "";
      root.dataset.busy = "false";
    }
  }

  // ------------------------------------------------------------ reconstruction
  let reconStrip: TokenStrip | null = null;
  function drawReconstruction() {
    const r = model.get("reconstruction");
    reconStrip?.destroy();
    reconStrip = null;
    recon.replaceChildren();
    if (r.exact) {
      recon.append(el_("div", "nbi-caption nbi-recon-note", "neurons are read directly: nothing is reconstructed, so there is no reconstruction error"));
      return;
    }
    const fvu = decodeTensor(r.fvu).values;
    recon.append(el_("h4", "", `SAE reconstruction error: FVU ${formatValue(r.fvu_total)} over the prompt (measured)`));
    recon.append(el_("div", "nbi-caption", "per token: ||x \u2212 x\u0302||\u00b2 / ||x \u2212 mean||\u00b2 (0 = exact, 1 = no better than the prompt's mean activation); hover a token"));
    const perToken = r.metric_change_per_token ? decodeTensor(r.metric_change_per_token).values : null;
    const scale = sequentialScale(0, 1);
    reconStrip = new TokenStrip(recon, {
      onHover: (i) => {
        if (i === null) return;
        const span = recon.querySelector<HTMLElement>(`.nbi-token[data-index="${i}"]`);
        if (span) span.title = `token ${i}: FVU ${formatValue(fvu[i])}` + (perToken ? ` \u00b7 metric change with the reconstruction here ${formatValue(perToken[i])}` : "");
      },
      onClick: (i) => guard(() => select("selected_token", i)),
    });
    reconStrip.setTokens(tokens);
    reconStrip.setWeights(fvu, scale);
    recon.dataset.fvu = Array.from(fvu, (v) => v.toFixed(4)).join(",");
    if (r.metric_change !== null && r.metric_change !== undefined) {
      recon.append(el_("div", "nbi-recon-metric",
        `metric with the reconstruction in place of the activation at every token: ${formatValue(r.metric_clean ?? 0)} \u2192 ${formatValue(r.metric_reconstructed ?? 0)} (change ${formatValue(r.metric_change)}, measured)` +
        (perToken ? "" : "; per token: not computed for prompts this long")));
    }
  }
  cleanups.push(() => reconStrip?.destroy());

  guard(() => {
    decodeTop();
    errors.show(model.get("error"));
    drawFeature();
    drawTokenPanel();
    adoptTraits();
    drawOutput();
    drawReconstruction();
    const info = model.get("feature_info");
    if (info) ranges.set(String(info.feature), info.max);
    root.dataset.drawn = "true";
  });
  listen("change:_top", () => { decodeTop(); drawTokenPanel(); });
  listen("change:selected_token", drawTokenPanel);
  listen("change:selected_feature", drawTokenPanel);
  listen("change:feature_info", () => {
    const info = model.get("feature_info");
    if (info) ranges.set(String(info.feature), info.max);
    drawFeature();
  });
  listen("change:contexts", drawContexts);
  listen("change:_result", () => { drawOutput(); adoptTraits(); });
  listen("change:steering", adoptTraits);
  listen("change:steer_mode", adoptTraits);
  listen("change:_baseline", drawOutput);
  listen("change:reconstruction", drawReconstruction);
  listen("change:error", () => errors.show(model.get("error")));

  signal?.addEventListener("abort", dispose, { once: true });
  return dispose;
}

export default { render };
