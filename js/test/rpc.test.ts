import assert from "node:assert/strict";
import { test } from "node:test";
import { RpcClient, RpcError } from "../lib/rpc";
import { displayToken, truncateLabel } from "../lib/tokens";

class FakeChannel {
  sent: any[] = [];
  listeners: Array<(msg: any, buffers: DataView[]) => void> = [];
  send(content: unknown) { this.sent.push(content); }
  on(_e: "msg:custom", cb: (msg: any, buffers: DataView[]) => void) { this.listeners.push(cb); }
  off(_e: "msg:custom", cb: (msg: any, buffers: DataView[]) => void) { this.listeners = this.listeners.filter((f) => f !== cb); }
  reply(msg: any, buffers: DataView[] = []) { for (const cb of [...this.listeners]) cb(msg, buffers); }
}

test("a response resolves the request with the same id, with its buffers", async () => {
  const channel = new FakeChannel();
  const rpc = new RpcClient(channel);
  const pending = rpc.request("token_weights", { layer: 1 });
  const { id, kind, method, params } = channel.sent[0];
  assert.deepEqual({ kind, method, params }, { kind: "request", method: "token_weights", params: { layer: 1 } });
  const buffer = new DataView(new ArrayBuffer(4));
  channel.reply({ kind: "response", id: "someone-else", ok: true, result: "not mine" });
  channel.reply({ kind: "response", id, ok: true, result: { n: 3 } }, [buffer]);
  const reply = await pending;
  assert.deepEqual(reply.result, { n: 3 });
  assert.equal(reply.buffers[0], buffer);
  assert.equal(rpc.inFlight, 0);
});

test("two clients on one model never take each other's responses", async () => {
  const channel = new FakeChannel();
  const a = new RpcClient(channel), b = new RpcClient(channel);
  const pa = a.request("m"), pb = b.request("m");
  const [ida, idb] = channel.sent.map((m) => m.id);
  assert.notEqual(ida, idb);
  channel.reply({ kind: "response", id: idb, ok: true, result: "b" });
  channel.reply({ kind: "response", id: ida, ok: true, result: "a" });
  assert.equal((await pa).result, "a");
  assert.equal((await pb).result, "b");
});

test("an error response rejects with the kernel's message", async () => {
  const channel = new FakeChannel();
  const rpc = new RpcClient(channel);
  const pending = rpc.request("m");
  channel.reply({ kind: "response", id: channel.sent[0].id, ok: false, error: "layer 9 is out of range 0..3" });
  await assert.rejects(pending, (e: unknown) => e instanceof RpcError && e.failure === "remote" && /out of range/.test(e.message));
});

test("timeout rejects, tells Python to cancel, and ignores the late reply", async () => {
  const channel = new FakeChannel();
  const rpc = new RpcClient(channel, 20);
  const pending = rpc.request("slow");
  await assert.rejects(pending, (e: unknown) => e instanceof RpcError && e.failure === "timeout");
  assert.deepEqual(channel.sent[1], { kind: "cancel", id: channel.sent[0].id });
  channel.reply({ kind: "response", id: channel.sent[0].id, ok: true, result: 1 });
  assert.equal(rpc.inFlight, 0);
});

test("abort cancels; dispose rejects what is pending and stops listening", async () => {
  const channel = new FakeChannel();
  const rpc = new RpcClient(channel);
  const controller = new AbortController();
  const cancelled = rpc.request("m", {}, { signal: controller.signal });
  controller.abort();
  await assert.rejects(cancelled, (e: unknown) => e instanceof RpcError && e.failure === "cancelled");
  assert.equal(channel.sent[1].kind, "cancel");
  const open = rpc.request("m");
  rpc.dispose();
  await assert.rejects(open, (e: unknown) => e instanceof RpcError && e.failure === "closed");
  assert.equal(channel.listeners.length, 0);
  await assert.rejects(rpc.request("m"), /closed/);
});

test("token labels show whitespace and are truncated by characters", () => {
  assert.equal(displayToken("a\nb\t"), "a\u21b5b\u21e5");
  assert.equal(displayToken("<img src=x onerror=alert(1)>"), "<img src=x onerror=alert(1)>");
  assert.equal(truncateLabel("abcdef", 4), "abc\u2026");
  assert.equal(truncateLabel("\u{1F600}\u{1F600}", 2), "\u{1F600}\u{1F600}");
});

test("the byte-bounded LRU evicts the least recently used first and keeps the newest", async () => {
  const { ByteLru } = await import("../lib/lru");
  const lru = new ByteLru<string>(10);
  lru.set("a", "A", 4);
  lru.set("b", "B", 4);
  assert.equal(lru.get("a"), "A"); // a is now the most recent
  lru.set("c", "C", 4);
  assert.deepEqual([lru.has("a"), lru.has("b"), lru.has("c")], [true, false, true]);
  assert.equal(lru.bytes, 8);
  lru.set("huge", "H", 100);
  assert.deepEqual([lru.size, lru.get("huge")], [1, "H"]);
});
