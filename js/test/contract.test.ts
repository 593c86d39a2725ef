import assert from "node:assert/strict";
import { test } from "node:test";
import type { AnyModel } from "@anywidget/types";
import { floatToHalf } from "../lib/codec";
import { check, checkResult, checkTrait, ContractError, problem } from "../lib/contract";
import {
  ABLATION_REQUESTS, ATTENTION_REQUESTS, ATTENTION_TRAITS, ATTRIBUTION_TRAITS, FEATURES_TRAITS, LOGIT_LENS_TRAITS, PROBE_TRAITS,
  type LogitLensModel, type RankedEdge,
} from "../lib/contract.gen";
import { RpcClient, RpcError } from "../lib/rpc";

const float32 = (...values: number[]) => new DataView(new Float32Array(values).buffer);
const weightsRef = { dtype: "float32", shape: [3], buffer: 0, scale: 1, offset: 0 };

test("a declared reply that matches is accepted as is", () => {
  const result = checkResult(ATTENTION_REQUESTS.token_weights, { weights: weightsRef }, [float32(0.1, 0.2, 0.7)]);
  assert.deepEqual(result.weights.shape, [3]);
  const half = new DataView(new Uint16Array([floatToHalf(0.5)]).buffer);
  const pattern = { pattern: { dtype: "float16", shape: [1, 1], buffer: 0, scale: 1, offset: 0 } };
  assert.equal(problem(ATTENTION_REQUESTS.head_pattern.result, pattern, "result", [half]), null); // `masked` is optional
});

test("a malformed reply is rejected with a message that says where", () => {
  const spec = ATTENTION_REQUESTS.token_weights;
  const cases: Array<[unknown, unknown[], RegExp]> = [
    [{}, [float32(1, 2, 3)], /result\.weights is missing/],
    [{ weights: weightsRef, extra: 1 }, [float32(1, 2, 3)], /unknown field extra/],
    [{ weights: { ...weightsRef, buffer: 2 } }, [float32(1, 2, 3)], /result\.weights\.buffer must be the index of one of the reply's 1 buffers, got 2/],
    [{ weights: weightsRef }, [float32(1, 2)], /result\.weights: tensor of shape \[3\] float32 needs 12 bytes, got 8/],
    [{ weights: { ...weightsRef, dtype: "int64" } }, [float32(1, 2, 3)], /unsupported dtype "int64"/],
    ["weights", [], /result must be an object, got "weights"/],
  ];
  for (const [result, buffers, message] of cases) {
    assert.throws(() => checkResult(spec, result, buffers), (e: unknown) => e instanceof ContractError && message.test(e.message)
      && e.message.startsWith("the reply to token_weights does not match its declaration"), String(message));
  }
  assert.match(problem(ABLATION_REQUESTS.run.result, { seq: 1.5 }, "result") ?? "", /result\.seq must be an integer, got 1\.5/);
  assert.match(problem(ABLATION_REQUESTS.run.params, { ablations: { "L0.H1": 2 } }, "params") ?? "", /the scale of "L0\.H1" must be a number from 0 to 1\.5, got 2/);
});

test("trait schemas: choices, nullables, optional fields, lists", () => {
  assert.equal(check(ATTENTION_TRAITS.mode, "value_weighted", "mode"), "value_weighted");
  assert.throws(() => check(ATTENTION_TRAITS.mode, "softmax", "mode"), /mode must be one of probabilities, value_weighted, got "softmax"/);
  assert.equal(problem(ATTENTION_TRAITS._pattern, null, "_pattern"), null);
  assert.equal(problem(ATTENTION_TRAITS.selected, {}, "selected"), null);
  assert.match(problem(ATTENTION_TRAITS.selected, { query: "3" }, "selected") ?? "", /selected\.query must be an integer/);
  assert.match(problem(ATTENTION_TRAITS.tokens, ["a", 2], "tokens") ?? "", /tokens\[1\] must be a string, got 2/);
});

test("the data traits of the attribution, feature and probe views are typed field by field", () => {
  const edge: RankedEdge = { layer: 1, head: 0, query: 4, key: 2, effect: -0.5, measured: true, status: "measured" };
  const edges = { method: "hybrid", label: "knockout effect", rows: [edge] };
  assert.equal(problem(ATTRIBUTION_TRAITS._edges, edges, "_edges"), null);
  assert.match(problem(ATTRIBUTION_TRAITS._edges, { ...edges, rows: [{ ...edge, measured: 1 }] }, "_edges") ?? "",
    /_edges\.rows\[0\]\.measured must be true or false, got 1/);
  assert.match(problem(ATTRIBUTION_TRAITS._edges, { ...edges, method: "exact" }, "_edges") ?? "", /_edges\.method must be one of hybrid, qk_fix, linear/);
  assert.match(problem(ATTRIBUTION_TRAITS.progress, { done: 1, total: 2, heads_total: 0, state: "paused", elapsed_s: 0 }, "progress") ?? "",
    /progress\.state must be one of running, done, cancelled, error/);
  const contexts = { state: "done", note: "", done_docs: 1, total_docs: 1, done_tokens: 5, total_tokens: 5, tokens_counted: 5,
    feature: 3, items: [{ doc: 0, position: 2, value: 1.5, start: 0, tokens: ["a"], activations: [1.5] }], density: 0.2 };
  assert.equal(problem(FEATURES_TRAITS.contexts, contexts, "contexts"), null);
  assert.match(problem(FEATURES_TRAITS.contexts, { ...contexts, items: [{ doc: 0 }] }, "contexts") ?? "", /contexts\.items\[0\]\.position is missing/);
  assert.match(problem(PROBE_TRAITS.thresholds, { present_accuracy: 0.8 }, "thresholds") ?? "", /thresholds\.above_chance is missing/);
});

test("checkTrait reads a trait and throws a ContractError when it drifted", () => {
  const state: Partial<LogitLensModel> = { _lens: { top_probabilities: { dtype: "float32", shape: [1, 2], data: float32(0.5, 0.25), scale: 1, offset: 0 } } };
  const model = { get: (key: keyof LogitLensModel) => state[key] } as unknown as AnyModel<LogitLensModel>;
  assert.deepEqual(checkTrait(model, LOGIT_LENS_TRAITS, "_lens").top_probabilities.shape, [1, 2]);
  state._lens = { top_probabilities: { dtype: "float32", shape: [2, 2], data: float32(0.5, 0.25), scale: 1, offset: 0 } };
  assert.throws(() => checkTrait(model, LOGIT_LENS_TRAITS, "_lens"), /the _lens trait does not match its declaration: _lens\.top_probabilities: tensor of shape \[2, 2\] float32 needs 16 bytes, got 8/);
});

class FakeChannel {
  sent: any[] = [];
  listeners: Array<(msg: any, buffers: DataView[]) => void> = [];
  send(content: unknown) { this.sent.push(content); }
  on(_e: "msg:custom", cb: (msg: any, buffers: DataView[]) => void) { this.listeners.push(cb); }
  off(_e: "msg:custom", cb: (msg: any, buffers: DataView[]) => void) { this.listeners = this.listeners.filter((f) => f !== cb); }
  reply(msg: any, buffers: DataView[] = []) { for (const cb of [...this.listeners]) cb(msg, buffers); }
}

test("rpc.call sends the declared method and rejects a malformed reply as an RpcError the view can show", async () => {
  const channel = new FakeChannel();
  const rpc = new RpcClient(channel);
  const params = { layer: 0, token: 2, mode: "probabilities", direction: "attends_to" } as const;
  const good = rpc.call(ATTENTION_REQUESTS.token_weights, params);
  assert.deepEqual({ method: channel.sent[0].method, params: channel.sent[0].params }, { method: "token_weights", params });
  channel.reply({ kind: "response", id: channel.sent[0].id, ok: true, result: { weights: weightsRef } }, [float32(1, 2, 3)]);
  assert.deepEqual((await good).result.weights.shape, [3]);

  const bad = rpc.call(ATTENTION_REQUESTS.token_weights, params);
  channel.reply({ kind: "response", id: channel.sent[1].id, ok: true, result: { weights: { ...weightsRef, shape: "3" } } }, [float32(1, 2, 3)]);
  await assert.rejects(bad, (e: unknown) => e instanceof RpcError && e.failure === "malformed"
    && /the reply to token_weights does not match its declaration: result\.weights/.test(e.message));
  assert.equal(rpc.inFlight, 0);
});
