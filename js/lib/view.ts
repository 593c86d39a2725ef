// What every view sets up before drawing: a root element with scoped CSS, a
// visible error box wired to the `error` trait, listeners whose exceptions
// land in that box, the request/response client, and one list of cleanups.

import type { AnyModel } from "@anywidget/types";
import { describeError, ErrorBox } from "./errors";
import { RpcClient } from "./rpc";
import { injectStyle } from "./style";

export interface ViewScaffold<T extends { error: string }> {
  doc: Document;
  root: HTMLDivElement;
  rpc: RpcClient;
  errors: ErrorBox;
  cleanups: Array<() => void>;
  /** Run fn; show what it throws in the widget instead of the console. */
  guard(fn: () => void): void;
  /** model.on(event) with guard, removed on cleanup. */
  listen(event: string, handler: () => void): void;
  /** Set traits and sync them to Python in one message. */
  save(changes: Partial<T>): void;
  /** Run the cleanups (latest first) and remove the root. */
  dispose(): void;
}

export function mountView<T extends { error: string }>(
  model: AnyModel<T>,
  el: HTMLElement,
  name: string,
  options: { css?: string; rpcTimeoutMs?: number } = {},
): ViewScaffold<T> {
  const doc = el.ownerDocument;
  const root = doc.createElement("div");
  root.className = `nbi-root nbi-${name}`;
  el.append(root);
  injectStyle(root, options.css ?? "");
  const rpc = new RpcClient(model, options.rpcTimeoutMs);
  const cleanups: Array<() => void> = [() => rpc.dispose()];
  const save = (changes: Partial<T>) => {
    for (const [key, value] of Object.entries(changes)) model.set(key as keyof T, value as never);
    model.save_changes();
  };
  const errors = new ErrorBox(root, () => save({ error: "" } as Partial<T>));
  const guard = (fn: () => void) => {
    try {
      fn();
    } catch (err) {
      errors.show(describeError(err));
    }
  };
  const listen = (event: string, handler: () => void) => {
    const guarded = () => guard(handler);
    model.on(event, guarded);
    cleanups.push(() => model.off(event, guarded));
  };
  const dispose = () => {
    for (const fn of cleanups.splice(0).reverse()) fn();
    root.remove();
  };
  return { doc, root, rpc, errors, cleanups, guard, listen, save, dispose };
}
