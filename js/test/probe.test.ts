import assert from "node:assert/strict";
import { test } from "node:test";
import { controlBand, verdictClass } from "../probe";

test("the control band is the random directions' min and max mean |change|", () => {
  assert.deepEqual(controlBand([0.05, 0.02, 0.09]), [0.02, 0.09]);
  assert.deepEqual(controlBand([0.3]), [0.3, 0.3]);
  const [low, high] = controlBand([]);
  assert.ok(Number.isNaN(low) && Number.isNaN(high));
});

test("each verdict gets its own style, an unknown one the neutral style", () => {
  assert.equal(verdictClass("present and used"), "nbi-verdict-used");
  assert.equal(verdictClass("present, not used"), "nbi-verdict-unused");
  assert.equal(verdictClass("not present"), "nbi-verdict-absent");
  assert.equal(verdictClass("something else"), "nbi-verdict-absent");
});
