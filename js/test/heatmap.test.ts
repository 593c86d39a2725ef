import assert from "node:assert/strict";
import { test } from "node:test";
import { divergingScale, formatValue, sequentialScale, VIRIDIS_LUT } from "../lib/colors";
import { aggregateMax, fullWindow, paintPixels, panWindow, zoomWindow } from "../lib/heatmap";

function naiveBlockMax(values: Float32Array, cols: number, r0: number, r1: number, c0: number, c1: number): number {
  let best = -Infinity;
  for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) best = Math.max(best, values[r * cols + c]);
  return best;
}

test("aggregateMax equals a naive block max, for uneven blocks too", () => {
  const rows = 37, cols = 53;
  const values = Float32Array.from({ length: rows * cols }, (_, i) => Math.sin(i * 12.9898) * 43758.5453 % 1);
  const win = { row0: 3, row1: 37, col0: 5, col1: 50 };
  const outW = 10, outH = 7;
  const out = aggregateMax(values, cols, win, outW, outH);
  for (let y = 0; y < outH; y++) {
    for (let x = 0; x < outW; x++) {
      const r0 = 3 + Math.floor((y * 34) / outH), r1 = 3 + Math.floor(((y + 1) * 34) / outH);
      const c0 = 5 + Math.floor((x * 45) / outW), c1 = 5 + Math.floor(((x + 1) * 45) / outW);
      assert.equal(out[y * outW + x], naiveBlockMax(values, cols, r0, r1, c0, c1));
    }
  }
});

test("a single sharp entry survives reduction of 1,024 x 1,024 to 100 x 100", () => {
  const n = 1024;
  const values = new Float32Array(n * n);
  values[700 * n + 3] = 1;
  const out = aggregateMax(values, n, fullWindow(n, n), 100, 100);
  assert.equal(out.reduce((a, b) => a + b, 0), 1);
  assert.equal(out[Math.floor((700 * 100) / n) * 100 + 0], 1);
});

test("at one cell per pixel aggregation is the identity", () => {
  const values = Float32Array.from({ length: 12 }, (_, i) => i);
  assert.deepEqual([...aggregateMax(values, 4, fullWindow(3, 4), 4, 3)], [...values]);
});

test("zoom keeps the cell under the cursor and stays inside the matrix", () => {
  const win = zoomWindow(fullWindow(100, 100), 100, 100, 80.5, 10.5, 2);
  assert.deepEqual([win.row1 - win.row0, win.col1 - win.col0], [50, 50]);
  assert.ok(win.row0 <= 80 && 80 < win.row1 && win.col0 <= 10 && 10 < win.col1);
  const tiny = zoomWindow(win, 100, 100, 80, 10, 1000);
  assert.equal(tiny.row1 - tiny.row0, 4);
  assert.deepEqual(zoomWindow(tiny, 100, 100, 80, 10, 1e-6), fullWindow(100, 100));
});

test("pan clamps at the edges", () => {
  const win = { row0: 10, row1: 20, col0: 90, col1: 100 };
  assert.deepEqual(panWindow(win, 100, 100, -50, 5), { row0: 0, row1: 10, col0: 90, col1: 100 });
});

test("colour scales clamp, centre diverging at zero and paint through the LUT", () => {
  const seq = sequentialScale(0, 2);
  assert.deepEqual([seq.index(-1), seq.index(0), seq.index(1), seq.index(2), seq.index(5), seq.index(NaN)], [0, 0, 128, 255, 255, 0]);
  const div = divergingScale(4);
  assert.deepEqual([div.index(-4), div.index(0), div.index(4)], [0, 128, 255]);
  const px = paintPixels(new Float32Array([0, 2]), seq);
  assert.deepEqual([...px.slice(0, 4)], [...VIRIDIS_LUT.slice(0, 4)]);
  assert.deepEqual([...px.slice(4, 8)], [...VIRIDIS_LUT.slice(255 * 4, 256 * 4)]);
  assert.deepEqual([VIRIDIS_LUT[0], VIRIDIS_LUT[1], VIRIDIS_LUT[2]], [0x44, 0x01, 0x54]);
});

test("values print with four significant digits", () => {
  assert.equal(formatValue(0.068603515625), "0.06860");
  assert.equal(formatValue(1), "1.000");
  assert.equal(formatValue(0), "0");
  assert.equal(formatValue(2.5e-5), "2.500e-5");
});

test("aggregateMax by magnitude: a strong negative cell shows through the zeros of its block, masked only alone", () => {
  const values = Float32Array.from([0, -0.5, 0.25, 0, /* row 2 */ -Infinity, -Infinity, -Infinity, 0.125]);
  assert.deepEqual(Array.from(aggregateMax(values, 4, fullWindow(2, 4), 2, 2)), [0, 0.25, -Infinity, 0.125]);
  const signed = aggregateMax(values, 4, fullWindow(2, 4), 2, 2, true);
  assert.deepEqual(Array.from(signed), [-0.5, 0.25, -Infinity, 0.125]); // all exact in float32
  assert.ok(Number.isNaN(aggregateMax(Float32Array.from([NaN, NaN]), 2, fullWindow(1, 2), 1, 1, true)[0]));
});
