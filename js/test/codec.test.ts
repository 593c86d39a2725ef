import assert from "node:assert/strict";
import { test } from "node:test";
import { CodecError, decodeTensor, floatToHalf, halfToFloat, tensorFromMessage } from "../lib/codec";

test("every finite float16 bit pattern survives half -> float -> half", () => {
  for (let bits = 0; bits < 0x10000; bits++) {
    const exponent = (bits >> 10) & 0x1f;
    if (exponent === 0x1f) continue; // inf / NaN
    assert.equal(floatToHalf(halfToFloat(bits)), bits, `bits 0x${bits.toString(16)}`);
  }
});

test("float16 decoding of known values, specials and subnormals", () => {
  assert.equal(halfToFloat(0x3c00), 1);
  assert.equal(halfToFloat(0xc000), -2);
  assert.equal(halfToFloat(0x7bff), 65504);
  assert.equal(halfToFloat(0x0001), 2 ** -24);
  assert.equal(halfToFloat(0x7c00), Infinity);
  assert.ok(Number.isNaN(halfToFloat(0x7e00)));
  assert.equal(floatToHalf(0.1), 0x2e66);
  assert.equal(floatToHalf(1e6), 0x7c00);
});

test("decodes a float16 tensor with scale from an unaligned DataView", () => {
  const payload = new Uint8Array(1 + 6);
  const view = new DataView(payload.buffer, 1, 6); // odd byteOffset, as a sliced websocket frame can be
  [0.5, -0.25, 3].forEach((v, i) => view.setUint16(i * 2, floatToHalf(v), true));
  const t = decodeTensor({ dtype: "float16", shape: [3], data: view, scale: 256 });
  assert.deepEqual([...t.values], [128, -64, 768]);
  assert.deepEqual(t.shape, [3]);
});

test("uint8 with offset and scale maps 0..255 onto [min, max]", () => {
  const t = decodeTensor({ dtype: "uint8", shape: [2, 2], data: new Uint8Array([0, 255, 51, 102]), scale: 0.01, offset: -1 });
  const expected = [-1, -1 + 2.55, -1 + 0.51, -1 + 1.02];
  t.values.forEach((v, i) => assert.ok(Math.abs(v - expected[i]) < 1e-6, `${v} vs ${expected[i]}`));
});

test("float32 passes through exactly", () => {
  const src = new Float32Array([0.1234567, 1e-30, -7]);
  const t = decodeTensor({ dtype: "float32", shape: [3], data: new DataView(src.buffer) });
  assert.deepEqual([...t.values], [...src]);
});

test("rejects wrong byte counts, unknown dtypes and bad shapes with a message", () => {
  assert.throws(() => decodeTensor({ dtype: "float16", shape: [4], data: new Uint8Array(6) }), /needs 8 bytes, got 6/);
  assert.throws(() => decodeTensor({ dtype: "int64", shape: [1], data: new Uint8Array(8) }), CodecError);
  assert.throws(() => decodeTensor({ dtype: "uint8", shape: [-1], data: new Uint8Array(0) }), /non-negative integers/);
  assert.throws(() => decodeTensor({ dtype: "uint8", shape: [1], data: [1] }), /not a binary buffer/);
  assert.throws(() => decodeTensor(null), /missing/);
});

test("message tensors point at their buffer by index", () => {
  const buffers = [new DataView(new Float32Array([1, 2]).buffer)];
  assert.deepEqual([...tensorFromMessage({ dtype: "float32", shape: [2], buffer: 0 }, buffers).values], [1, 2]);
  assert.throws(() => tensorFromMessage({ dtype: "float32", shape: [2], buffer: 1 }, buffers), /buffer 1 of 1/);
});
