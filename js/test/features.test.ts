import assert from "node:assert/strict";
import { test } from "node:test";
import { activationScale, sliderRange, topFeaturesAt } from "../features";

test("topFeaturesAt reads one token's row of the [T, k] top-k arrays", () => {
  const values = new Float32Array([5, 3, 1, 9, 8, 7]);
  const indices = new Float32Array([10, 20, 30, 4, 5, 6]);
  assert.deepEqual(topFeaturesAt(values, indices, 3, 1), [{ feature: 4, value: 9 }, { feature: 5, value: 8 }, { feature: 6, value: 7 }]);
  assert.deepEqual(topFeaturesAt(values, indices, 3, 0).map((r) => r.feature), [10, 20, 30]);
  assert.deepEqual(topFeaturesAt(values, indices, 3, 2), []); // past the last token
  assert.deepEqual(topFeaturesAt(values, indices, 3, -1), []);
});

test("sliderRange: scale starts at 1 (unchanged); clamp spans twice the largest activation", () => {
  assert.deepEqual(sliderRange("scale", 42), { min: -2, max: 6, step: 0.05, initial: 1 });
  const clamp = sliderRange("clamp", 7.3);
  assert.equal(clamp.max, 15);
  assert.equal(clamp.min, -7.5);
  assert.equal(clamp.initial, 7.3);
  assert.ok(clamp.initial <= clamp.max && clamp.initial >= clamp.min);
  const dead = sliderRange("clamp", 0);
  assert.equal(dead.initial, 1);
  assert.equal(dead.max, 2);
  assert.equal(sliderRange("clamp", NaN).initial, 1);
});

test("activationScale: sequential from 0 for non-negative rows, diverging when negatives matter", () => {
  const seq = activationScale([0, 1, 4, -0.01]);
  assert.equal(seq.kind, "sequential");
  assert.equal(seq.vmin, 0);
  assert.equal(seq.vmax, 4);
  assert.equal(seq.index(4), 255);
  assert.equal(seq.index(0), 0);
  const div = activationScale([-3, 1, 2]);
  assert.equal(div.kind, "diverging");
  assert.equal(div.vmax, 3);
  assert.equal(div.index(0), 128);
  assert.equal(activationScale([0, 0]).vmax, 1);
});
