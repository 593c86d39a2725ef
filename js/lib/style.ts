// Widget CSS, injected into the widget's own element and scoped under the
// root class, so two views on a page (or another library) never collide.

const BASE_CSS = `
.nbi-root { position: relative; font: 12px/1.4 system-ui, sans-serif; color: #222; background: #fff; padding: 6px; }
.nbi-root .nbi-toolbar { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin-bottom: 6px; }
.nbi-root .nbi-toggle { display: inline-flex; border: 1px solid #bbb; border-radius: 4px; overflow: hidden; }
.nbi-root .nbi-toggle button { border: 0; background: #f4f4f4; padding: 2px 8px; cursor: pointer; font: inherit; }
.nbi-root .nbi-toggle button[aria-pressed="true"] { background: #3b518b; color: #fff; }
.nbi-root .nbi-button { border: 1px solid #bbb; border-radius: 4px; background: #f4f4f4; padding: 2px 8px; cursor: pointer; font: inherit; }
.nbi-root .nbi-status { color: #555; }
.nbi-root .nbi-label, .nbi-root .nbi-caption { color: #555; }
.nbi-root .nbi-panels { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.nbi-root canvas { display: block; }
.nbi-root .nbi-head-grid, .nbi-root .nbi-heatmap { cursor: crosshair; }
.nbi-root .nbi-legend { display: flex; flex-wrap: wrap; align-items: center; gap: 6px; margin-top: 4px; max-width: 640px; }
.nbi-root .nbi-legend-scale { color: #555; }
.nbi-root .nbi-legend-swatch { display: inline-flex; align-items: center; gap: 3px; color: #444; }
.nbi-root .nbi-legend-swatch canvas { border: 1px solid #bbb; }
.nbi-root .nbi-legend-note { flex-basis: 100%; color: #555; }
.nbi-root .nbi-scroll-x { overflow-x: auto; max-width: 100%; }
.nbi-root .nbi-legend-bar { width: 160px; height: 10px; image-rendering: pixelated; }
.nbi-root .nbi-strip-caption { margin: 6px 0 2px; color: #555; min-height: 1.4em; }
.nbi-root .nbi-strip { max-height: 120px; overflow-y: auto; border: 1px solid #ddd; padding: 4px; line-height: 1.9; }
.nbi-root .nbi-token { display: inline-block; white-space: pre; padding: 0 1px; line-height: 1.5; margin-right: 1px; border-radius: 2px; cursor: pointer; font-family: ui-monospace, monospace; }
.nbi-root .nbi-token-active { outline: 2px solid #e0115f; }
.nbi-root .nbi-tooltip { position: absolute; pointer-events: none; background: rgba(255,255,255,0.96); border: 1px solid #999; border-radius: 3px; padding: 4px 6px; z-index: 10; white-space: pre; box-shadow: 0 1px 4px rgba(0,0,0,0.2); }
.nbi-root .nbi-tip-value { font-weight: 600; }
.nbi-root .nbi-error { display: flex; gap: 8px; align-items: flex-start; background: #fdecea; color: #611a15; border: 1px solid #f5c2c0; border-radius: 4px; padding: 6px 8px; margin-bottom: 6px; white-space: pre-wrap; }
.nbi-root .nbi-error[hidden] { display: none; }
.nbi-root .nbi-error-text { flex: 1; }
`;

export function injectStyle(root: HTMLElement, extraCss = ""): HTMLStyleElement {
  const style = root.ownerDocument.createElement("style");
  style.textContent = BASE_CSS + extraCss;
  root.append(style);
  return style;
}

export function toggleGroup<T extends string>(
  doc: Document, label: string, options: readonly (readonly [T, string])[], onPick: (value: T) => void,
): { element: HTMLElement; set(value: T): void } {
  const element = doc.createElement("span");
  element.className = "nbi-toggle";
  element.setAttribute("role", "group");
  element.setAttribute("aria-label", label);
  const buttons = options.map(([value, text]) => {
    const b = doc.createElement("button");
    b.type = "button";
    b.dataset.value = value;
    b.textContent = text;
    b.addEventListener("click", () => onPick(value));
    return b;
  });
  element.append(...buttons);
  return {
    element,
    set(value: T) {
      for (const b of buttons) b.setAttribute("aria-pressed", String(b.dataset.value === value));
    },
  };
}
