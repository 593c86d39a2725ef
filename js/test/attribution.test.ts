import assert from "node:assert/strict";
import { test } from "node:test";
import { focusKeys, focusRows } from "../attribution";

const matrix = (rows: number[][]) => ({
  values: Float32Array.from(rows.flat()), shape: [rows.length, rows[0].length], dtype: "float32",
}) as unknown as Parameters<typeof focusRows>[0];

test("focusRows keeps every row when asked for as many, else the rows of largest |effect|, in position order", () => {
  const m = matrix([[0, 0, 0], [0.1, 0, 0], [0, -0.9, 0], [0.2, 0, 0], [0, 0, 0.5]]);
  assert.deepEqual(focusRows(m, 5), [0, 1, 2, 3, 4]);
  assert.deepEqual(focusRows(m, 2), [2, 4]); // |-0.9| and 0.5: sign does not matter, order is by position
  assert.deepEqual(focusRows(m, 3), [2, 3, 4]);
});

test("focusRows keeps the selected query in view and breaks ties by position", () => {
  const m = matrix([[0.3, 0], [0, 0], [0.3, 0], [0.3, 0]]);
  assert.deepEqual(focusRows(m, 2), [0, 2]); // three rows tie at 0.3: the earliest two
  assert.deepEqual(focusRows(m, 2, 1), [0, 1, 2]); // the clicked query joins the focused rows
  assert.deepEqual(focusRows(m, 2, 2), [0, 2]); // already shown: nothing added
});

test("focusKeys ranks keys by their largest |effect| within the shown queries only, and keeps the selected key", () => {
  const m = matrix([[0.9, 0, 0, 0], [0, 0.1, 0, 0], [0, 0, -0.4, 0.2]]);
  assert.deepEqual(focusKeys(m, [1, 2], 2), [2, 3]); // key 0's 0.9 is in query 0, not shown
  assert.deepEqual(focusKeys(m, [0, 1, 2], 2), [0, 2]);
  assert.deepEqual(focusKeys(m, [1, 2], 2, 0), [0, 2, 3]);
  assert.deepEqual(focusKeys(m, [1, 2], 4), [0, 1, 2, 3]);
});
