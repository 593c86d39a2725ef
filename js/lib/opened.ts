// A single-prompt view the kernel opened from a cell (a model reference in
// `_opened`), rendered below the grid by the host's widget manager. One
// helper for every grid that opens views (patching, data sets).
import type { RenderProps } from "@anywidget/types";

type Host = RenderProps<never>["host"];

export interface OpenedView {
  /** Show `ref`'s view under a caption (`caption` fills it once it is in the page); null clears. */
  draw(ref: string | null, caption: (el: HTMLElement) => void): Promise<void>;
  /** Stop a render in flight (view teardown). */
  dispose(): void;
}

export function openedView(doc: Document, container: HTMLElement, root: HTMLElement, host: Host | undefined): OpenedView {
  let abort: AbortController | null = null;
  return {
    async draw(ref, caption) {
      abort?.abort();
      container.replaceChildren();
      container.hidden = !ref;
      if (!ref) return;
      const label = Object.assign(doc.createElement("div"), { className: "nbi-status nbi-opened-caption" });
      const box = doc.createElement("div");
      container.append(label, box);
      root.dataset.opened = ref;
      caption(label);
      if (!host?.getWidget) return;
      const controller = new AbortController();
      abort = controller;
      const widget = await host.getWidget(ref);
      if (!controller.signal.aborted) await widget.render({ el: box, signal: controller.signal });
    },
    dispose() {
      abort?.abort();
    },
  };
}
