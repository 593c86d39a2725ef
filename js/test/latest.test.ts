import assert from "node:assert/strict";
import { test } from "node:test";
import { divergingScale } from "../lib/colors";
import { aggregateMax, fullWindow, MISSING_RGB, paintPixels } from "../lib/heatmap";
import { LatestOnly } from "../lib/latest";

function deferred() {
  let resolve!: () => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<void>((res, rej) => { resolve = res; reject = rej; });
  return { promise, resolve, reject };
}

const tick = () => new Promise((r) => setTimeout(r, 0));

test("50 rapid submits run the first and the last value only", async () => {
  const runs: number[] = [];
  const gates: Array<ReturnType<typeof deferred>> = [];
  let idle = 0;
  const runner = new LatestOnly<number>((v) => {
    runs.push(v);
    const gate = deferred();
    gates.push(gate);
    return gate.promise;
  }, undefined, () => idle++);
  for (let i = 1; i <= 50; i++) runner.submit(i);
  assert.deepEqual(runs, [1]);
  assert.equal(runner.busy, true);
  gates[0].resolve();
  await tick();
  assert.deepEqual(runs, [1, 50]);
  assert.equal(idle, 0);
  gates[1].resolve();
  await tick();
  assert.equal(runner.busy, false);
  assert.equal(idle, 1);
});

test("a failed run reports its error and the next value still runs", async () => {
  const errors: unknown[] = [];
  const runs: string[] = [];
  const runner = new LatestOnly<string>(async (v) => {
    runs.push(v);
    if (v === "abc") throw new Error("refused");
  }, (err) => errors.push(err));
  runner.submit("abc");
  runner.submit("0.5");
  await tick();
  await tick();
  assert.deepEqual(runs, ["abc", "0.5"]);
  assert.equal(errors.length, 1);
  assert.equal(runner.busy, false);
});

test("a disposed runner drops what is pending", async () => {
  const runs: number[] = [];
  const gate = deferred();
  const runner = new LatestOnly<number>((v) => { runs.push(v); return gate.promise; });
  runner.submit(1);
  runner.submit(2);
  runner.dispose();
  gate.resolve();
  await tick();
  assert.deepEqual(runs, [1]);
});

test("cells not computed yet are NaN and paint grey; a block with one value shows it", () => {
  const values = Float32Array.from([0.5, -1, NaN, NaN]);
  assert.deepEqual(Array.from(values.slice(0, 2)), [0.5, -1]);
  assert.ok(Number.isNaN(values[2]) && Number.isNaN(values[3]));
  const px = paintPixels(values, divergingScale(1));
  assert.deepEqual(Array.from(px.slice(8, 11)), [...MISSING_RGB]);
  assert.notDeepEqual(Array.from(px.slice(0, 3)), [...MISSING_RGB]);
  const reduced = aggregateMax(Float32Array.from([NaN, NaN, NaN, 0.25]), 2, fullWindow(2, 2), 1, 2);
  assert.ok(Number.isNaN(reduced[0]));
  assert.equal(reduced[1], 0.25);
});
