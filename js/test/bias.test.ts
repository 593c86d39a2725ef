import assert from "node:assert/strict";
import { test } from "node:test";
import { axisFor, percentOf } from "../bias";

test("bias: values sit on the track in percent, clamped to it", () => {
  assert.equal(percentOf(0, -1, 1), 50);
  assert.equal(percentOf(1, 0, 4), 25);
  assert.equal(percentOf(9, 0, 4), 100);
  assert.equal(percentOf(-9, 0, 4), 0);
  assert.equal(percentOf(3, 2, 2), 50); // an empty span: the middle, never NaN
});

test("bias: the axis holds 0 and every value, padded by 5%", () => {
  const [lo, hi] = axisFor([0.5, 2]);
  assert.ok(lo < 0 && Math.abs(lo + 0.1) < 1e-12 && Math.abs(hi - 2.1) < 1e-12);
  const [lo2, hi2] = axisFor([-3, -1]);
  assert.ok(lo2 < -3 && hi2 > 0);
  assert.deepEqual(axisFor([]), [-0.05, 1.05]);
});
