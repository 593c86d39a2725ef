// ProbeView front end: one row per residual stream with the probe's train
// and held-out accuracy (bars, chance marked), the usage test's result where
// it has run (mean |change| of the metric when the probe direction is
// projected out, next to the random directions' band) and the verdict.
// Clicking a row asks the kernel to run that layer's usage test (latest
// click wins). With per-position accuracy, a streams x positions heatmap.

import type { RenderProps } from "@anywidget/types";
import { decodeTensor } from "./lib/codec";
import { formatValue, renderLegend, sequentialScale } from "./lib/colors";
import { describeError } from "./lib/errors";
import { Heatmap } from "./lib/heatmap";
import { LatestOnly } from "./lib/latest";
import { RpcError } from "./lib/rpc";
import { Tooltip } from "./lib/tooltip";
import { mountView } from "./lib/view";
import { PROBE_REQUESTS, type ProbeModel, type UsageSummary } from "./lib/contract.gen";

// the synced traits and the usage test's numbers (Usage.summary()): declared
// once in Python, generated into lib/contract.gen.ts
export type { ProbeModel, UsageSummary };

const CSS = `
.nbi-probe table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
.nbi-probe th { text-align: left; font-weight: 600; color: #333; padding: 2px 8px; border-bottom: 1px solid #ccc; vertical-align: bottom; }
.nbi-probe td { padding: 3px 8px; border-bottom: 1px solid #eee; }
.nbi-probe tr.nbi-layer { cursor: pointer; }
.nbi-probe tr.nbi-layer:hover { background: #f3f6fc; }
.nbi-probe tr.nbi-selected { background: #e4ebf8; }
.nbi-probe .nbi-bar { position: relative; display: inline-block; width: 90px; height: 10px; background: #eee; margin-right: 6px; vertical-align: middle; }
.nbi-probe .nbi-bar span { position: absolute; left: 0; top: 0; bottom: 0; }
.nbi-probe .nbi-bar i { position: absolute; top: -2px; bottom: -2px; width: 2px; background: #d62728; }
.nbi-probe .nbi-verdict-used { color: #1a7f37; font-weight: 600; }
.nbi-probe .nbi-verdict-unused { color: #9a6700; font-weight: 600; }
.nbi-probe .nbi-verdict-absent { color: #777; }
.nbi-probe .nbi-explanation { max-width: 900px; margin-top: 6px; color: #333; }
`;

const fixed = (value: number | null | undefined, digits = 3) => (value === null || value === undefined || !Number.isFinite(value) ? "\u2013" : value.toFixed(digits));

export function verdictClass(verdict: string): string {
  if (verdict === "present and used") return "nbi-verdict-used";
  if (verdict === "present, not used") return "nbi-verdict-unused";
  return "nbi-verdict-absent";
}

/** [min, max] of the random directions' mean |change|: the control band. */
export function controlBand(values: readonly number[]): [number, number] {
  if (!values.length) return [NaN, NaN];
  return [Math.min(...values), Math.max(...values)];
}

function render({ model, el }: RenderProps<ProbeModel>): () => void {
  const { doc, root, rpc, errors, cleanups, guard, listen, dispose } = mountView(model, el, "probe", { css: CSS, rpcTimeoutMs: 600_000 });
  const el_ = <K extends keyof HTMLElementTagNameMap>(tag: K, className = "", text = "") => {
    const node = doc.createElement(tag);
    if (className) node.className = className;
    if (text) node.textContent = text;
    return node;
  };

  const classes = model.get("classes");
  const toolbar = el_("div", "nbi-toolbar");
  const position = model.get("position");
  toolbar.append(
    el_("strong", "", `Linear probes \u00b7 ${model.get("model_name")}`),
    el_("span", "nbi-caption", `${classes.join(" vs ")} \u00b7 read at ${position === -1 ? "each prompt's last token" : `position ${position}`} \u00b7 `
      + `${model.get("n_train")} train / ${model.get("n_test")} held-out prompts \u00b7 L2-regularised logistic regression`),
  );
  const status = el_("span", "nbi-status nbi-progress");
  toolbar.append(status);
  root.append(toolbar);

  const table = el_("table", "nbi-probe-table");
  const head = el_("tr");
  const metricLabel = model.get("metric_label") || "the metric";
  const th = [
    ["stream", "residual stream read (L\u2009k: entering block k; final: the final norm's input)"],
    ["train acc.", "measured on the prompts the probe was fitted on"],
    ["held-out acc.", "measured on prompts the probe never saw (red mark: chance = always the commonest class)"],
    ["usage: mean |\u0394|", `mean |change| of ${metricLabel} over the held-out prompts when the probe direction is projected out of this stream`],
    ["control dirs", "the same for random directions that each remove as much of the stream as the probe direction (same rms projection): [min, max] over the seeds (the control band)"],
    ["gap before \u2192 after", `mean ${metricLabel} of ${classes[1] ?? "class 1"} minus ${classes[0] ?? "class 0"}, before and after`],
    ["P(token) per class before \u2192 after", "mean probability of the target token per class, measured with model.run"],
    ["verdict", "present: held-out accuracy above the threshold; used: |\u0394| well beyond every control direction"],
  ];
  for (const [text, title] of th) {
    const cell = el_("th", "", text);
    cell.title = title;
    head.append(cell);
  }
  const thead = el_("thead");
  thead.append(head);
  const tbody = el_("tbody");
  table.append(thead, tbody);
  const scroll = el_("div", "nbi-scroll-x");
  scroll.append(table);
  const explanation = el_("div", "nbi-explanation");
  const note = el_("div", "nbi-caption", "Click a row to run its usage test: the probe direction is projected out of that stream for every held-out prompt (model.run / the engine), "
    + `and ${metricLabel} is measured again, next to random directions that remove as much of the stream; `
    + "massive-activation positions (attention sinks, norm > 10x the median) are left unedited for both, as the verdict says.");
  root.append(scroll, explanation, note);

  const heatBox = el_("div", "nbi-scroll-x");
  const heatLegend = el_("div", "nbi-legend");
  const tooltip = new Tooltip(root);
  root.append(heatBox, heatLegend, tooltip.el);

  const runner = new LatestOnly<number>(
    async (layer) => {
      root.dataset.busy = "true";
      root.dataset.requested = String(layer);
      await rpc.call(PROBE_REQUESTS.usage, { layer });  // the reply is checked against the declaration
    },
    (err) => {
      if (!(err instanceof RpcError && err.failure === "closed")) errors.show(describeError(err));
    },
    () => {
      root.dataset.busy = "false";
      drawStatus();
    },
  );
  cleanups.push(() => runner.dispose());

  function drawStatus() {
    const p = model.get("progress");
    const where = p ? model.get("stream_labels")[p.layer] ?? `${p.layer}` : "";
    status.textContent = p?.state === "running" ? `usage test of ${where}: ${p.done} / ${p.total} forwards` : p?.state === "done" ? `usage test of ${where} done` : "";
    root.dataset.state = p?.state ?? "idle";
  }

  function drawTable() {
    const acc = model.get("_accuracy");
    const train = decodeTensor(acc.train);
    const test = decodeTensor(acc.test);
    const labels = model.get("stream_labels");
    const results = model.get("usage_results");
    const selected = model.get("selected_layer");
    const chance = model.get("chance");
    tbody.replaceChildren();
    labels.forEach((label, layer) => {
      const row = el_("tr", "nbi-layer");
      row.dataset.layer = String(layer);
      if (layer === selected) row.classList.add("nbi-selected");
      const bar = (value: number, colour: string, cls: string) => {
        const cell = el_("td", cls);
        const track = el_("span", "nbi-bar");
        const fill = el_("span");
        fill.style.width = `${Math.max(0, Math.min(1, value)) * 100}%`;
        fill.style.background = colour;
        const mark = el_("i");
        mark.style.left = `${Math.max(0, Math.min(1, chance)) * 100}%`;
        track.append(fill, mark);
        const text = el_("span", "nbi-value", fixed(value));
        cell.append(track, text);
        return cell;
      };
      const usage: UsageSummary | undefined = results[String(layer)];
      const [low, high] = usage ? controlBand(usage.control_mean_abs_change) : [NaN, NaN];
      const before = usage?.probability_before ?? null;
      const after = usage?.probability_after ?? null;
      const perClass = before && after && before.length
        ? classes.map((c, i) => `${c}: ${fixed(before[i])} \u2192 ${fixed(after[i])}`).join("; ")
        : "";
      const verdict = el_("td", `nbi-verdict ${usage ? verdictClass(usage.verdict) : ""}`, usage ? usage.verdict : "click to test");
      row.append(
        el_("td", "nbi-stream", label),
        bar(train.values[layer], "#8fa6d6", "nbi-train-acc"),
        bar(test.values[layer], "#3b518b", "nbi-test-acc"),
        el_("td", "nbi-usage-probe", usage ? fixed(usage.mean_abs_change) : ""),
        el_("td", "nbi-usage-control", usage ? `${fixed(low)} .. ${fixed(high)}` : ""),
        el_("td", "nbi-gap", usage ? `${fixed(usage.gap_before)} \u2192 ${fixed(usage.gap_after)}` : ""),
        el_("td", "nbi-probability", perClass ? `P(${usage?.probability_token ?? ""}) ${perClass}` : ""),
        verdict,
      );
      row.addEventListener("click", () => guard(() => {
        errors.clear();
        runner.submit(layer);
      }));
      tbody.append(row);
    });
    const shown = results[String(selected)];
    explanation.textContent = shown ? `${shown.stream}: ${shown.explanation}` : "";
    root.dataset.selected = String(selected);
  }

  let heatmap: Heatmap | null = null;
  function drawPositions() {
    const encoded = model.get("_position_accuracy");
    if (!encoded) return;
    const grid = decodeTensor(encoded);
    const [rows, cols] = grid.shape;
    const rowLabels = model.get("stream_labels");
    const colLabels = model.get("position_labels");
    if (!heatmap) {
      const cell = 36;
      heatmap = new Heatmap(heatBox, {
        plotWidth: cell * cols, plotHeight: 20 * rows, marginLeft: 52, marginTop: 60, cornerLabel: "stream \u2193",
        cellLabel: (c) => fixed(grid.values[c.row * cols + c.col], 2),
        onHover: (c, event) => guard(() => {
          if (!c) return tooltip.hide();
          tooltip.show([
            ["nbi-tip-where", `${rowLabels[c.row]} \u00b7 position ${colLabels[c.col] ?? c.col}`],
            ["nbi-tip-value", `held-out accuracy ${formatValue(grid.values[c.row * cols + c.col])}`],
          ], event);
        }),
      });
      cleanups.push(() => heatmap?.destroy());
    }
    const scale = sequentialScale(0, 1);
    heatmap.setLabels(rowLabels, colLabels);
    heatmap.setData(grid.values, rows, cols, scale);
    heatmap.draw();
    renderLegend(heatLegend, scale, "held-out probe accuracy", {
      note: "measured: a probe fitted per stream and position (positions counted from each prompt's end; the token where every prompt has the same one), scored on the held-out prompts",
    });
  }

  guard(() => {
    errors.show(model.get("error"));
    drawTable();
    drawPositions();
    drawStatus();
    root.dataset.busy = "false";
    root.dataset.drawn = "true";
  });
  listen("change:usage_results", drawTable);
  listen("change:selected_layer", drawTable);
  listen("change:_accuracy", drawTable);
  listen("change:_position_accuracy", drawPositions);
  listen("change:progress", drawStatus);
  listen("change:error", () => errors.show(model.get("error")));
  return () => dispose();
}

export default { render };
