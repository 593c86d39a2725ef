import assert from "node:assert/strict";
import { test } from "node:test";
import { CHART_WIDTH_PX, chartLayout, fmt, linePoints, progressText } from "../why_not";
import { attentionRow } from "../context_use";

test("why_not: numbers print with 3 decimals, a missing estimate as a dash", () => {
  assert.equal(fmt(0.94812), "0.948");
  assert.equal(fmt(-2.0604), "-2.060");
  assert.equal(fmt(null), "\u2013");
});

test("why_not: trajectory points span the width, probabilities clamped to the plot", () => {
  assert.equal(linePoints([0, 0.5, 1], 100, 50), "0.0,50.0 50.0,25.0 100.0,0.0");
  assert.equal(linePoints([1.5, -1], 10, 10), "0.0,0.0 10.0,10.0");
});

test("context_use: attention row of one head, or the mean of every head", () => {
  // 2 layers x 2 heads x 3 tokens
  const values = new Float32Array([1, 0, 0, 0, 1, 0, 0, 0, 1, 0.5, 0.5, 0]);
  assert.deepEqual(Array.from(attentionRow(values, 2, 2, 3, "L1.H0")), [0, 0, 1]);
  assert.deepEqual(Array.from(attentionRow(values, 2, 2, 3, "mean")), [0.375, 0.375, 0.25]);
});

test("the progress line says how many numbers are exact and how many are still estimates", () => {
  assert.equal(progressText(120, 300, "running", 3.25), "exact: 120 / 300 components (running, 3.3 s); 180 still shown as estimates");
  assert.equal(progressText(300, 300, "done", 12), "exact: 300 / 300 components (done, 12.0 s); every number measured");
});

test("why-not trajectory: a 30-layer model's 31 streams fit ~800 px, labels every k-th where steps are narrow", () => {
  assert.deepEqual(chartLayout(5), { width: 240, every: 1 }); // a small model keeps 60 px per stream
  const smol = chartLayout(31);
  assert.ok(smol.width <= CHART_WIDTH_PX && smol.width / 30 >= 24 && smol.every === 1);
  assert.deepEqual(chartLayout(81), { width: 800, every: 3 }); // 80 layers: 10 px steps, "L79" every 3rd
  assert.deepEqual(chartLayout(401), { width: 2400, every: 4 }); // never under 6 px a stream
});
