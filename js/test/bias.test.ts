import assert from "node:assert/strict";
import { test } from "node:test";
import { axisFor, estimateErrorText, percentOf, progressText } from "../bias";

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

test("bias: the progress line says which shares are estimates and when they are being made", () => {
  assert.equal(progressText({ done: 3, total: 20, state: "done", elapsed_s: 2 }), "3 / 20 components measured \u00b7 done \u00b7 2.0 s");
  assert.equal(progressText({ done: 24, total: 24, state: "done", elapsed_s: 1, estimated: 132 }),
    "24 / 24 components measured \u00b7 132 estimated only (outside the exact budget) \u00b7 done \u00b7 1.0 s");
  assert.match(progressText({ done: 0, total: 156, state: "running", estimating: true }), /estimating every share/);
  assert.match(progressText({ done: 5, total: 24, state: "running", estimating: false }), /measuring \(each zero-ablated/);
});

test("bias: the estimates' error in words, nothing without estimates", () => {
  assert.equal(estimateErrorText(null), "");
  assert.equal(estimateErrorText({ n: 24, max_abs_error: 0.0471, correlation: 0.883 }),
    "estimated shares (attribution patching) vs measured on 24 components: max |error| 4.7 points of share, correlation 0.88");
  assert.ok(!estimateErrorText({ n: 1, max_abs_error: 0.1, correlation: null }).includes("correlation"));
});
