import assert from "node:assert/strict";
import { test } from "node:test";
import { drawnMeans, scaleFor, statLines, type Stats } from "../dataset";

// three cells: two rows each in cells 0 and 1, none in cell 2 (every row too short)
const f = (xs: number[]) => Float32Array.from(xs);
const stats: Stats = {
  n: f([2, 2, 0]), mean: f([0.5, -1.5, 0]), low: f([0.1, -2, 0]), high: f([0.9, -1, 0]), agree: f([1, 0.5, 0]),
  minimum: f([0.2, -2, 0]), q1: f([0.3, -1.8, 0]), median: f([0.5, -1.5, 0]), q3: f([0.7, -1.2, 0]), maximum: f([0.8, -1, 0]),
};
const text = (line: unknown) => (typeof line === "string" ? line : (line as string[])[(line as string[]).length - 1]);

test("dataset view: a cell without rows is drawn as missing, not as 0", () => {
  const drawn = drawnMeans(stats, 0, 3);
  assert.equal(drawn[0], 0.5);
  assert.ok(Number.isNaN(drawn[2]));
  assert.deepEqual(Array.from(drawnMeans(stats, 1, 1)), [-1.5]);
});

test("dataset view: one scale for every panel, symmetric for effects, 0..max for probabilities", () => {
  const diverging = scaleFor(stats, true);
  assert.equal(diverging.vmin, -1.5);
  assert.equal(diverging.vmax, 1.5);
  const sequential = scaleFor(stats, false);
  assert.equal(sequential.vmin, 0);
  assert.equal(sequential.vmax, 1.5);
});

test("dataset view: the tooltip says mean, interval, sign agreement and spread in words", () => {
  const lines = statLines(stats, 1, "pair", true).map(text);
  assert.match(lines[0], /^mean -1\.5\d* over 2 pairs$/);
  assert.match(lines[1], /95% CI \[-2(\.0+)?, -1(\.0+)?\] \(bootstrap over pairs\)/);
  assert.match(lines[2], /sign agreement: 50% of pairs share the mean's sign/);
  assert.match(lines[3], /^spread: min -2/);
  assert.match(text(statLines(stats, 2, "row", true)[0]), /no row has this cell/);
  assert.ok(!statLines(stats, 0, "row", false).map(text).some((l) => l.includes("sign agreement")));
  const single = { ...stats, n: f([1, 2, 0]) };
  assert.match(text(statLines(single, 0, "row", true)[1]), /no interval: one row/);
});
