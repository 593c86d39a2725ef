// Binary tensors from Python: `{dtype, shape, data, scale?, offset?}` where
// `data` arrives as a DataView (ipywidgets puts buffers back into the state)
// and the logical value is `offset + raw * scale`. Everything decodes to a
// Float32Array so drawing code has one input type.

export type DType = "float16" | "float32" | "uint8";

export interface EncodedTensor {
  dtype: DType;
  shape: number[];
  data: DataView | ArrayBuffer | Uint8Array;
  scale?: number;
  offset?: number;
}

export interface Tensor {
  shape: number[];
  values: Float32Array;
}

export class CodecError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CodecError";
  }
}

const ITEM_SIZE: Record<DType, number> = { float16: 2, float32: 4, uint8: 1 };

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** IEEE 754 half -> single, exact for every one of the 65,536 bit patterns. */
export function halfToFloat(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 0x1f) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

/** Single -> half, round to nearest even (for tests and JS-side encoding). */
export function floatToHalf(value: number): number {
  const f32 = new Float32Array([value]);
  const bits = new Uint32Array(f32.buffer)[0];
  const sign = (bits >>> 16) & 0x8000;
  const exponent = (bits >>> 23) & 0xff;
  let mantissa = bits & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0);
  let e = exponent - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mantissa |= 0x800000;
    const shift = 14 - e;
    let half = mantissa >> shift;
    const rest = mantissa & ((1 << shift) - 1);
    const midpoint = 1 << (shift - 1);
    if (rest > midpoint || (rest === midpoint && half & 1)) half += 1;
    return sign | half;
  }
  let half = (e << 10) | (mantissa >> 13);
  const rest = mantissa & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && half & 1)) half += 1;
  return sign | half;
}

let halfTable: Float32Array | null = null;
function halfLookup(): Float32Array {
  // A 256 KB table makes decoding 1M halves a plain indexed loop.
  if (!halfTable) {
    halfTable = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) halfTable[i] = halfToFloat(i);
  }
  return halfTable;
}

function asBytes(data: EncodedTensor["data"]): Uint8Array {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) {
    return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  }
  throw new CodecError("tensor data is not a binary buffer");
}

/** Checks the shape of an untrusted encoded tensor; throws CodecError. */
export function checkEncoded(x: unknown): EncodedTensor {
  if (typeof x !== "object" || x === null) throw new CodecError("tensor is missing");
  const t = x as Partial<EncodedTensor>;
  if (t.dtype === undefined || !(t.dtype in ITEM_SIZE)) {
    throw new CodecError(`unsupported dtype ${JSON.stringify(t.dtype)}`);
  }
  if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new CodecError("tensor shape must be a list of non-negative integers");
  }
  const bytes = asBytes(t.data as EncodedTensor["data"]);
  const expected = numel(t.shape) * ITEM_SIZE[t.dtype];
  if (bytes.byteLength !== expected) {
    throw new CodecError(
      `tensor of shape [${t.shape.join(", ")}] ${t.dtype} needs ${expected} bytes, got ${bytes.byteLength}`,
    );
  }
  for (const key of ["scale", "offset"] as const) {
    const v = t[key];
    if (v !== undefined && v !== null && !Number.isFinite(v)) {
      throw new CodecError(`tensor ${key} must be a finite number`);
    }
  }
  return t as EncodedTensor;
}

export function decodeTensor(x: unknown): Tensor {
  const t = checkEncoded(x);
  const bytes = asBytes(t.data);
  const n = numel(t.shape);
  const scale = t.scale ?? 1;
  const offset = t.offset ?? 0;
  const values = new Float32Array(n);
  // Typed views need aligned offsets; buffers sliced out of a websocket
  // frame may not be, so copy in that case.
  const aligned = (size: number) =>
    bytes.byteOffset % size === 0 ? bytes : bytes.slice();
  if (t.dtype === "uint8") {
    for (let i = 0; i < n; i++) values[i] = offset + bytes[i] * scale;
  } else if (t.dtype === "float16") {
    const b = aligned(2);
    const raw = new Uint16Array(b.buffer, b.byteOffset, n);
    const table = halfLookup();
    for (let i = 0; i < n; i++) values[i] = offset + table[raw[i]] * scale;
  } else {
    const b = aligned(4);
    const raw = new Float32Array(b.buffer, b.byteOffset, n);
    if (scale === 1 && offset === 0) values.set(raw);
    else for (let i = 0; i < n; i++) values[i] = offset + raw[i] * scale;
  }
  return { shape: t.shape.slice(), values };
}

/**
 * A tensor in a custom message: its metadata is in the JSON part with
 * `buffer` indexing the message's binary buffers.
 */
export function tensorFromMessage(meta: unknown, buffers: readonly DataView[]): Tensor {
  if (typeof meta !== "object" || meta === null) throw new CodecError("tensor metadata is missing");
  const index = (meta as { buffer?: unknown }).buffer;
  if (typeof index !== "number" || !Number.isInteger(index) || index < 0 || index >= buffers.length) {
    throw new CodecError(`tensor refers to buffer ${String(index)} of ${buffers.length}`);
  }
  return decodeTensor({ ...(meta as object), data: buffers[index] });
}
