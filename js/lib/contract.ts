// The JS side of the Python <-> JS contract. Each view's traits and requests
// are declared once in Python (nbinterp/widgets/_contract.py);
// scripts/gen_contract.py writes their types and schemas into
// contract.gen.ts. This module checks untrusted values against a schema, so
// a reply or trait that does not match its declaration becomes a visible
// error in the widget instead of a crash deep in the drawing code.

import type { AnyModel } from "@anywidget/types";
import { checkEncoded, CodecError } from "./codec";
import type { DType } from "./codec";

export type Schema =
  | { kind: "int" | "number"; min?: number; max?: number }
  | { kind: "string" | "boolean" | "tensor" | "tensor_ref" | "widget_ref" }
  | { kind: "choice"; values: readonly string[] }
  | { kind: "nullable" | "list"; of: Schema }
  | { kind: "map"; of: Schema; keys?: readonly string[]; entry?: string }
  | { kind: "object"; fields: Readonly<Record<string, Schema>>; optional: readonly string[]; name?: string }
  | { kind: "either"; of: readonly Schema[] };

/** A tensor in a reply (Python's `_buffers.pack`): its bytes are reply buffer `buffer`. */
export interface TensorRef {
  dtype: DType;
  shape: number[];
  buffer: number;
  scale: number;
  offset: number;
}

/** One request of a view: its method name and the schemas of its params and
 *  result; P and R are the TypeScript types generated from the same declaration. */
export interface RequestSpec<P, R> {
  method: string;
  params: Schema;
  result: Schema;
  /** Never set: carries the types. */
  readonly __types?: { params: P; result: R };
}

export type ParamsOf<S> = S extends RequestSpec<infer P, unknown> ? P : never;
export type ResultOf<S> = S extends RequestSpec<unknown, infer R> ? R : never;

export class ContractError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ContractError";
  }
}

function shown(value: unknown): string {
  if (value === undefined) return "nothing";
  if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer) return "binary data";
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  return text.length > 80 ? `${text.slice(0, 60)}...` : text;
}

const describeNumber = (s: { kind: "int" | "number"; min?: number; max?: number }) =>
  `${s.kind === "int" ? "an integer" : "a number"}${s.min !== undefined && s.max !== undefined ? ` from ${s.min} to ${s.max}` : ""}`;

/**
 * The first way `value` breaks `schema`, as a message naming where
 * ("result.pattern.shape must be ..."), or null when it matches.
 * `buffers`: a reply's binary buffers, which tensor_ref indices point into.
 */
export function problem(schema: Schema, value: unknown, path: string, buffers?: readonly unknown[]): string | null {
  const fail = (expected: string, got: unknown = value) => `${path} must be ${expected}, got ${shown(got)}`;
  switch (schema.kind) {
    case "int":
    case "number": {
      const ok = typeof value === "number" && Number.isFinite(value) && (schema.kind === "number" || Number.isInteger(value))
        && (schema.min === undefined || value >= schema.min) && (schema.max === undefined || value <= schema.max);
      return ok ? null : fail(describeNumber(schema));
    }
    case "string":
      return typeof value === "string" ? null : fail("a string");
    case "boolean":
      return typeof value === "boolean" ? null : fail("true or false");
    case "choice":
      return typeof value === "string" && schema.values.includes(value) ? null : fail(`one of ${schema.values.join(", ")}`);
    case "nullable":
      return value === null ? null : problem(schema.of, value, path, buffers);
    case "widget_ref":
      return value === null || (typeof value === "string" && value.startsWith("anywidget:")) ? null : fail('"anywidget:<id>" or null');
    case "list": {
      if (!Array.isArray(value)) return fail("a list");
      for (let i = 0; i < value.length; i++) {
        const p = problem(schema.of, value[i], `${path}[${i}]`, buffers);
        if (p) return p;
      }
      return null;
    }
    case "map": {
      if (!isPlainObject(value)) return fail("an object");
      for (const [key, item] of Object.entries(value)) {
        if (schema.keys && !schema.keys.includes(key)) return `${path} has the key ${JSON.stringify(key)}; keys are ${schema.keys.join(", ")}`;
        const where = schema.entry ? schema.entry.replace("{key}", JSON.stringify(key)) : `${path}[${JSON.stringify(key)}]`;
        const p = problem(schema.of, item, where, buffers);
        if (p) return p;
      }
      return null;
    }
    case "object": {
      if (!isPlainObject(value)) return fail("an object");
      const unknown = Object.keys(value).filter((k) => !(k in schema.fields));
      if (unknown.length) return `${path} has unknown field${unknown.length > 1 ? "s" : ""} ${unknown.join(", ")}`;
      for (const [key, field] of Object.entries(schema.fields)) {
        const item = (value as Record<string, unknown>)[key];
        if (item === undefined) {
          if (schema.optional.includes(key)) continue;
          return `${path}.${key} is missing`;
        }
        const p = problem(field, item, `${path}.${key}`, buffers);
        if (p) return p;
      }
      return null;
    }
    case "either": {
      const problems: string[] = [];
      for (const option of schema.of) {
        const p = problem(option, value, path, buffers);
        if (!p) return null;
        problems.push(p);
      }
      return problems.join(" or ");
    }
    case "tensor":
      try {
        checkEncoded(value);
        return null;
      } catch (err) {
        if (err instanceof CodecError) return `${path}: ${err.message}`;
        throw err;
      }
    case "tensor_ref": {
      if (!isPlainObject(value)) return fail("a tensor {dtype, shape, buffer}");
      const t = value as Partial<TensorRef>;
      if (typeof t.buffer !== "number" || !Number.isInteger(t.buffer) || t.buffer < 0 || (buffers && t.buffer >= buffers.length)) {
        return `${path}.buffer must be the index of one of the reply's ${buffers?.length ?? "?"} buffers, got ${shown(t.buffer)}`;
      }
      if (!buffers) return null;
      try {
        checkEncoded({ ...t, data: buffers[t.buffer] });
        return null;
      } catch (err) {
        if (err instanceof CodecError) return `${path}: ${err.message}`;
        throw err;
      }
    }
  }
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value) && !ArrayBuffer.isView(value);
}

/** `value` as T if it matches `schema`; else a ContractError saying what is wrong. */
export function check<T>(schema: Schema, value: unknown, path: string, buffers?: readonly unknown[]): T {
  const p = problem(schema, value, path, buffers);
  if (p) throw new ContractError(p);
  return value as T;
}

/** A reply's result, checked against its request's declaration. */
export function checkResult<P, R>(spec: RequestSpec<P, R>, result: unknown, buffers: readonly unknown[]): R {
  const p = problem(spec.result, result, "result", buffers);
  if (p) throw new ContractError(`the reply to ${spec.method} does not match its declaration: ${p}`);
  return result as R;
}

/** One trait's value, checked against the view's declaration (contract.gen.ts *_TRAITS). */
export function checkTrait<T extends Record<string, any>, K extends keyof T & string>(
  model: AnyModel<T>,
  traits: Readonly<Record<keyof T, Schema>>,
  name: K,
): T[K] {
  const value = model.get(name);
  const p = problem(traits[name], value, name);
  if (p) throw new ContractError(`the ${name} trait does not match its declaration: ${p}`);
  return value;
}
