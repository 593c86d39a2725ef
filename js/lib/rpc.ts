// Request/response over the widget's custom messages. Traits hold state;
// these messages run actions ("fetch the row sums of layer 3 for token 12").
//
// Wire format (mirrored by nbinterp/widgets/_base.py):
//   JS -> Python  {kind: "request", id, method, params}   {kind: "cancel", id}
//   Python -> JS  {kind: "response", id, ok: true, result} + binary buffers
//                 {kind: "response", id, ok: false, error}
// Every view of a model sees every response, so ids carry a per-client
// prefix and a client ignores ids it did not issue. `call` sends a request
// declared in contract.gen.ts and checks the reply against its declaration.

import { checkResult, ContractError, type RequestSpec } from "./contract";

export interface MessageChannel {
  send(content: unknown, callbacks?: unknown, buffers?: ArrayBuffer[] | ArrayBufferView[]): void;
  on(event: "msg:custom", cb: (msg: any, buffers: DataView[]) => void): void;
  off(event: "msg:custom", cb: (msg: any, buffers: DataView[]) => void): void;
}

/** "malformed": the reply did not match the request's declaration. */
export type RpcFailure = "timeout" | "cancelled" | "remote" | "closed" | "malformed";

export class RpcError extends Error {
  constructor(message: string, readonly failure: RpcFailure) {
    super(message);
    this.name = "RpcError";
  }
}

export interface RpcReply<T> {
  result: T;
  buffers: DataView[];
}

interface Pending {
  method: string;
  resolve: (reply: RpcReply<any>) => void;
  reject: (err: RpcError) => void;
  timer: ReturnType<typeof setTimeout>;
  onAbort?: () => void;
  signal?: AbortSignal;
}

export interface RequestOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

let clientCount = 0;

export class RpcClient {
  private readonly pending = new Map<string, Pending>();
  private readonly prefix: string;
  private next = 0;
  private closed = false;
  private readonly listener = (msg: any, buffers: DataView[]) => this.receive(msg, buffers);

  constructor(private readonly channel: MessageChannel, private readonly defaultTimeoutMs = 30_000) {
    clientCount += 1;
    this.prefix = `${clientCount}-${Math.random().toString(36).slice(2, 8)}`;
    channel.on("msg:custom", this.listener);
  }

  get inFlight(): number {
    return this.pending.size;
  }

  request<T = unknown>(method: string, params: Record<string, unknown> = {}, options: RequestOptions = {}): Promise<RpcReply<T>> {
    if (this.closed) return Promise.reject(new RpcError("the view was closed", "closed"));
    const { signal } = options;
    if (signal?.aborted) return Promise.reject(new RpcError(`${method} cancelled`, "cancelled"));
    const id = `${this.prefix}-${++this.next}`;
    const timeoutMs = options.timeoutMs ?? this.defaultTimeoutMs;
    return new Promise<RpcReply<T>>((resolve, reject) => {
      const entry: Pending = {
        method, resolve, reject, signal,
        timer: setTimeout(() => {
          this.abandon(id, new RpcError(`${method} got no answer from the kernel in ${timeoutMs / 1000} s (is it busy or dead?)`, "timeout"));
        }, timeoutMs),
      };
      if (signal) {
        entry.onAbort = () => this.abandon(id, new RpcError(`${method} cancelled`, "cancelled"));
        signal.addEventListener("abort", entry.onAbort, { once: true });
      }
      this.pending.set(id, entry);
      this.channel.send({ kind: "request", id, method, params });
    });
  }

  /** A declared request (contract.gen.ts): typed params, and a result that
   *  matches its declaration or an RpcError("malformed") saying how not. */
  async call<P, R>(spec: RequestSpec<P, R>, params: P, options: RequestOptions = {}): Promise<RpcReply<R>> {
    const reply = await this.request<unknown>(spec.method, params as Record<string, unknown>, options);
    try {
      return { result: checkResult(spec, reply.result, reply.buffers), buffers: reply.buffers };
    } catch (err) {
      if (err instanceof ContractError) throw new RpcError(err.message, "malformed");
      throw err;
    }
  }

  /** Rejects every pending request and stops listening. */
  dispose(): void {
    this.closed = true;
    this.channel.off("msg:custom", this.listener);
    for (const id of [...this.pending.keys()]) {
      this.settle(id)?.reject(new RpcError("the view was closed", "closed"));
    }
  }

  private abandon(id: string, err: RpcError): void {
    const entry = this.settle(id);
    if (!entry) return;
    // Tell Python so it can drop work it has not started; a reply that
    // still arrives is ignored because the id is no longer pending.
    if (!this.closed) this.channel.send({ kind: "cancel", id });
    entry.reject(err);
  }

  private settle(id: string): Pending | undefined {
    const entry = this.pending.get(id);
    if (!entry) return undefined;
    this.pending.delete(id);
    clearTimeout(entry.timer);
    if (entry.onAbort) entry.signal?.removeEventListener("abort", entry.onAbort);
    return entry;
  }

  private receive(msg: any, buffers: DataView[]): void {
    if (!msg || msg.kind !== "response" || typeof msg.id !== "string") return;
    const entry = this.settle(msg.id);
    if (!entry) return;
    if (msg.ok === true) entry.resolve({ result: msg.result, buffers: buffers ?? [] });
    else entry.reject(new RpcError(typeof msg.error === "string" ? msg.error : `${entry.method} failed`, "remote"));
  }
}
