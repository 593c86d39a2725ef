import assert from "node:assert/strict";
import { test } from "node:test";
import { shownValues } from "../patching";

// cell 0 measured 0.5 (estimate 0.2), cell 1 not measured (estimate -0.4), cell 2 measured -1 (estimate -1)
const values = {
  exact: Float32Array.from([0.5, 0, -1]),
  measured: Float32Array.from([1, 0, 1]),
  estimate: Float32Array.from([0.2, -0.4, -1]),
};
const near = (got: Float32Array, want: number[]) =>
  want.forEach((w, i) => (Number.isNaN(w) ? assert.ok(Number.isNaN(got[i]), `cell ${i}`) : assert.ok(Math.abs(got[i] - w) < 1e-6, `cell ${i}: ${got[i]} vs ${w}`)));

test("patching maps: measured cells replace estimates; estimate, measured and difference modes", () => {
  near(shownValues(values, "best"), [0.5, -0.4, -1]);
  near(shownValues(values, "estimate"), [0.2, -0.4, -1]);
  near(shownValues(values, "measured"), [0.5, NaN, -1]);
  near(shownValues(values, "difference"), [0.3, NaN, 0]);  // the estimate under-reads cell 0; cell 1 is not measured
});
