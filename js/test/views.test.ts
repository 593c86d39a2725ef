import assert from "node:assert/strict";
import { test } from "node:test";
import { niceCeil, symmetricTicks, tickLabel } from "../lib/axis";
import { divergingScale, logScale } from "../lib/colors";
import { aggregateMax, axisTicks, noValueRuns, paintPixels, MASKED_RGB, MISSING_RGB } from "../lib/heatmap";
import { displayMatrix, logFloor } from "../lib/scales";
import { placeTooltip } from "../lib/tooltip";
import { cellSize, MIN_FIT_COL_PX, MIN_ROW_PX, plotWidthFor } from "../patching";
import { fittedColumnWidth } from "../lib/fit";
import { ATTENTION_LABEL_SPACING, plotSide } from "../attention";

test("axis labels sit on multiples of a step chosen from pixel spacing, stable under a pan", () => {
  // 113 tokens on the old 420-px plot (3.7 px/cell) gave every 4th index.
  const cell = plotSide(113) / 113;
  const ticks = axisTicks(0, 113, cell, ATTENTION_LABEL_SPACING); // 10-px text, 10 px apart
  assert.equal(ticks[1] - ticks[0], 2); // 5.3 px per cell: every 2nd index, not every 4th
  assert.deepEqual(axisTicks(0, 10, 20), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  // A panned window labels the same indices where the windows overlap.
  const a = axisTicks(37, 77, 3, 12);
  const b = axisTicks(41, 81, 3, 12);
  assert.ok(a.every((i) => i % 5 === 0) && b.every((i) => i % 5 === 0));
  assert.deepEqual(a.filter((i) => i >= 41), b.filter((i) => i < 77));
  assert.deepEqual(axisTicks(0, 1024, 640 / 1024, 12), Array.from({ length: 52 }, (_, k) => k * 20));
});

test("log scale: equal ratios get equal colour steps; at or below the floor the first colour", () => {
  const s = logScale(1e-3, 1);
  assert.equal(s.index(1), 255);
  assert.equal(s.index(1e-3), 0);
  assert.equal(s.index(0), 0);
  assert.equal(s.index(Math.sqrt(1e-3)), 128); // the geometric middle
  assert.equal(s.transform, "log");
  assert.equal(s.index(1e-2) - s.index(1e-3), s.index(1e-1) - s.index(1e-2));
});

test("a diffuse long causal head is visible on the log scale, near black on linear", () => {
  const n = 512;
  const raw = new Float32Array(n * n);
  const masked = new Uint8Array(n * n);
  for (let q = 0; q < n; q++) for (let k = 0; k < n; k++) {
    if (k > q) masked[q * n + k] = 1;
    else raw[q * n + k] = 1 / (q + 1);
  }
  const at = (q: number, k: number) => q * n + k;
  const log = displayMatrix(raw, n, n, "log", masked, "p");
  const linear = displayMatrix(raw, n, n, "linear", masked, "p");
  assert.ok(linear.scale.index(log.values[at(400, 3)]) <= 1, "linear: row 400 is the darkest colour");
  assert.ok(log.scale.index(log.values[at(400, 3)]) > 60, "log: row 400 is well above the darkest colour");
  assert.equal(log.values[at(3, 400)], -Infinity);
  assert.match(log.description, /log scale/);
  assert.equal(log.scale.vmin, logFloor(1, n));
  const row = displayMatrix(raw, n, n, "row", masked, "p");
  assert.equal(row.values[at(400, 3)], 1);
  assert.match(row.description, /per-row/);
});

test("masked (-Infinity) and missing (NaN) cells paint their own colours and form hatch runs", () => {
  const values = Float32Array.from([0.5, -Infinity, -Infinity, NaN, 0.1, NaN]);
  const px = paintPixels(values, divergingScale(1));
  assert.deepEqual([...px.slice(4, 7)], [...MASKED_RGB]);
  assert.deepEqual([...px.slice(12, 15)], [...MISSING_RGB]);
  assert.deepEqual(noValueRuns(values, 6, 1), [[0, 1, 3, "masked"], [0, 3, 4, "missing"], [0, 5, 6, "missing"]]);
  // a block with one real value keeps it; an all-masked block stays masked
  const reduced = aggregateMax(Float32Array.from([-Infinity, 0.2, -Infinity, -Infinity]), 2, { row0: 0, row1: 2, col0: 0, col1: 2 }, 1, 2);
  assert.deepEqual([...reduced], [Math.fround(0.2), -Infinity]);
});

test("the tooltip flips left / up near the visible edges and never leaves them", () => {
  const bounds = { left: 0, top: 0, right: 800, bottom: 600 };
  const size = { width: 200, height: 80 };
  assert.deepEqual(placeTooltip({ x: 100, y: 100 }, size, bounds), { x: 114, y: 114 });
  assert.deepEqual(placeTooltip({ x: 750, y: 580 }, size, bounds), { x: 750 - 14 - 200, y: 580 - 14 - 80 });
  const wide = placeTooltip({ x: 120, y: 50 }, { width: 700, height: 30 }, bounds);
  assert.ok(wide.x >= 0 && wide.x + 700 <= 800);
});

test("patching maps: every layer row tall enough for its label; the effect scale is fixed", () => {
  for (const cols of [4, 20, 95, 400]) {
    const c = cellSize(cols, 4);
    assert.ok(c.height >= MIN_ROW_PX && c.width >= 8);
    assert.deepEqual(axisTicks(0, 4, c.height), [0, 1, 2, 3]);
  }
});

test("logit-difference axis: round span and labels", () => {
  assert.equal(niceCeil(19.89), 20);
  assert.equal(niceCeil(2.3), 2.5);
  assert.equal(niceCeil(0.07), 0.1);
  assert.deepEqual(symmetricTicks(20).map(tickLabel), ["-20", "-10", "0", "10", "20"]);
});

test("wide maps: a long prompt's columns shrink to fit the output area, never under the least readable width", () => {
  assert.equal(fittedColumnWidth(14, 25, 900, 36), 25); // a short prompt keeps its preferred cells
  assert.equal(fittedColumnWidth(252, 8, 900, 36, 3), 3); // (900 - 36) / 252 = 3.4
  assert.equal(fittedColumnWidth(512, 8, 900, 36, 3), 3); // too long to fit: the least width, the box scrolls
  assert.equal(fittedColumnWidth(0, 8, 900, 36, 3), 8);
  for (const [cols, px] of [[14, 900], [128, 700], [252, 856], [252, 1000], [300, 1300]] as const) {
    const width = plotWidthFor(cols, 30, px);
    assert.ok(width + 36 <= px, `${cols} columns in ${px} px: plot ${width} px`);
    assert.ok(width / cols >= MIN_FIT_COL_PX);
  }
  assert.equal(plotWidthFor(600, 30, 856), 600 * MIN_FIT_COL_PX); // past the least width it scrolls
});

test("ablation panel: a long prompt is shown by its start and end, a short one whole", async () => {
  const { middleOut } = await import("../ablation");
  assert.equal(middleOut("When Mary and John went to the store"), "When Mary and John went to the store");
  const long = "a".repeat(100) + "MIDDLE" + "z".repeat(200);
  const shown = middleOut(long, 100);
  assert.ok(shown.startsWith("a".repeat(40)) && shown.endsWith("z".repeat(60)) && !shown.includes("MIDDLE"));
  assert.ok(shown.includes("(206 characters; hover for all)"));
});
