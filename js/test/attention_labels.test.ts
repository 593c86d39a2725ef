import assert from "node:assert/strict";
import { test } from "node:test";
import { headerTicks, thumbSize } from "../lib/head_grid";
import { axisLabelAt, axisTicks, fitText } from "../lib/heatmap";
import { displayMatrix, excludesSink, firstKeyShare } from "../lib/scales";
import { ATTENTION_LABEL_SPACING, plotSide } from "../attention";

// 6 px per character, like 10-px sans-serif roughly; the helpers only need monotonicity.
const mono = (s: string) => Array.from(s).length * 6;

test("fitText keeps whole labels that fit and cuts the rest to the pixel budget with an ellipsis", () => {
  assert.equal(fitText("12 grandfather", 100, mono), "12 grandfather"); // 84 px: whole
  const cut = fitText("12 grandfather", 60, mono);
  assert.equal(cut, "12 grandf\u2026"); // 9 characters + the ellipsis = 60 px
  assert.ok(mono(cut) <= 60 && mono(fitText("12 grandfather", 66, mono)) > 60);
  assert.equal(fitText("\u2039filename\u203a", 1, mono), "\u2039\u2026"); // never empty
});

test("head headers: every head while 'H<n>' fits its step, else every k-th (1, 2, 5, 10 ...), never overlapping", () => {
  const widthOf = (n: number) => mono(`H${n - 1}`);
  assert.deepEqual(headerTicks(9, 20, widthOf(9)), [0, 1, 2, 3, 4, 5, 6, 7, 8]);
  for (const [heads, step] of [[9, 14], [16, 14], [32, 12], [64, 12], [12, 18]] as const) {
    const ticks = headerTicks(heads, step, widthOf(heads));
    assert.ok(ticks.length >= 1 && ticks[0] === 0);
    const gapPx = (ticks[1] ?? heads) - ticks[0];
    assert.ok(gapPx * step >= widthOf(heads), `${heads} heads at ${step} px: labels ${ticks} overlap`);
  }
});

test("thumbnails of a deep narrow model (30 x 9) use the height beside the heatmap", () => {
  const square = thumbSize(30, 9); // the old square budget: 360 / 30
  const tall = thumbSize(30, 9, 360, plotSide(40) + 110);
  assert.equal(square, 12);
  assert.ok(tall >= 17, `30 layers got ${tall}-px thumbnails`);
  assert.ok(9 * (tall + 2) <= 360 && 30 * (tall + 2) <= plotSide(40) + 110);
  assert.equal(thumbSize(12, 12), 28); // a square model is unchanged
});

test("every token is labelled at T=40 on the default plot, and labels never crowd at T=256 or 1,024", () => {
  assert.equal(axisTicks(0, 40, plotSide(40) / 40, ATTENTION_LABEL_SPACING).length, 40);
  for (const n of [256, 1024]) {
    const ticks = axisTicks(0, n, plotSide(n) / n, ATTENTION_LABEL_SPACING);
    assert.ok((ticks[1] - ticks[0]) * (plotSide(n) / n) >= ATTENTION_LABEL_SPACING);
  }
});

test("axisLabelAt maps the margins to the row or column under the pointer", () => {
  const win = { row0: 10, row1: 20, col0: 0, col1: 40 };
  assert.deepEqual(axisLabelAt(-5, 55, 400, 100, win), { axis: "row", index: 15 });
  assert.deepEqual(axisLabelAt(395, -30, 400, 100, win), { axis: "col", index: 39 });
  assert.equal(axisLabelAt(10, 10, 400, 100, win), null); // inside the plot: a cell, not a label
  assert.equal(axisLabelAt(-5, -5, 400, 100, win), null); // the corner
});

/** A causal 4 x 4 head whose queries 1.. put `sink` on key 0 and spread the rest evenly. */
function sinkHead(sink: number): { raw: Float32Array; masked: Uint8Array } {
  const n = 4;
  const raw = new Float32Array(n * n);
  const masked = new Uint8Array(n * n);
  for (let q = 0; q < n; q++) {
    for (let k = 0; k < n; k++) {
      if (k > q) masked[q * n + k] = 1;
      else raw[q * n + k] = q === 0 ? 1 : k === 0 ? sink : (1 - sink) / q;
    }
  }
  return { raw, masked };
}

test("key 0's share ignores query 0 (it can only see key 0) and decides 'auto'", () => {
  const { raw, masked } = sinkHead(0.9);
  assert.ok(Math.abs(firstKeyShare(raw, 4, 4, masked) - 0.9) < 1e-6);
  assert.ok(Math.abs(firstKeyShare(sinkHead(0.2).raw, 4, 4, masked) - 0.2) < 1e-6);
  assert.equal(excludesSink("auto", 0.9), true);
  assert.equal(excludesSink("auto", 0.2), false);
  assert.equal(excludesSink("exclude", 0.2), true);
  assert.equal(excludesSink("include", 0.9), false);
});

test("excluding key 0 takes the scale's max over keys 1.. and the legend says so", () => {
  const { raw, masked } = sinkHead(0.9);
  const all = displayMatrix(raw, 4, 4, "linear", masked, "p");
  const noSink = displayMatrix(raw, 4, 4, "linear", masked, "p", true);
  assert.equal(all.scale.vmax, 1);
  assert.ok(Math.abs(noSink.scale.vmax - 0.1) < 1e-6); // (1 - 0.9) / 1 at query 1, key 1
  assert.match(noSink.description, /key 0 \(the sink\) left out of the scale/);
  assert.doesNotMatch(all.description, /sink/);
  assert.ok(noSink.scale.index(0.05) > 100 && all.scale.index(0.05) < 20); // a 0.05 cell is visible only without the sink
  const row = displayMatrix(raw, 4, 4, "row", masked, "p", true);
  assert.ok(Math.abs(row.values[3 * 4 + 1] - 1) < 1e-6); // row 3: keys 1..3 equal, each is the row's max over keys 1..
  assert.ok(row.values[3 * 4] > 1); // key 0 beyond the scale: top colour
});
