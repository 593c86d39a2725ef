// The hover box every view shows next to the pointer: lines of plain text
// (textContent, never HTML), each with an optional class for styling. It
// stays inside what the reader can see: the viewport cut down by every
// ancestor that clips (a notebook's output area scrolls and hides overflow),
// flipping to the pointer's left or above it near an edge.

/** A line: text; [class, text]; or [class of the value, label, value]. */
export type TooltipLine = string | [className: string, text: string] | [className: string, label: string, value: string];

export interface Box {
  left: number;
  top: number;
  right: number;
  bottom: number;
}

const OFFSET = 14;

/** Top-left corner (client px) for a box of `size` next to the pointer: right
 *  of and below it when that fits in `bounds`, else left of / above it; never
 *  past the bounds' top-left (a box larger than the bounds keeps its start in view). */
export function placeTooltip(
  pointer: { x: number; y: number }, size: { width: number; height: number }, bounds: Box, offset = OFFSET,
): { x: number; y: number } {
  const axis = (at: number, extent: number, lo: number, hi: number) => {
    if (at + offset + extent <= hi) return at + offset;
    const flipped = at - offset - extent;
    if (flipped >= lo) return flipped;
    // Fits neither side: as far towards the far edge as keeps it inside.
    return Math.max(lo, hi - extent);
  };
  return { x: axis(pointer.x, size.width, bounds.left, bounds.right), y: axis(pointer.y, size.height, bounds.top, bounds.bottom) };
}

/** The part of the viewport `el` can show: the window, cut down by each
 *  ancestor whose overflow clips (auto, scroll, hidden, clip). */
export function visibleBounds(el: Element): Box {
  const win = el.ownerDocument.defaultView;
  const box: Box = { left: 0, top: 0, right: win?.innerWidth ?? Infinity, bottom: win?.innerHeight ?? Infinity };
  for (let node = el.parentElement; node && win; node = node.parentElement) {
    const style = win.getComputedStyle(node);
    const clipsX = style.overflowX !== "visible";
    const clipsY = style.overflowY !== "visible";
    if (!clipsX && !clipsY) continue;
    const r = node.getBoundingClientRect();
    if (clipsX) {
      box.left = Math.max(box.left, r.left + node.clientLeft);
      box.right = Math.min(box.right, r.left + node.clientLeft + node.clientWidth);
    }
    if (clipsY) {
      box.top = Math.max(box.top, r.top + node.clientTop);
      box.bottom = Math.min(box.bottom, r.top + node.clientTop + node.clientHeight);
    }
  }
  return box;
}

export class Tooltip {
  readonly el: HTMLDivElement;

  constructor(private readonly root: HTMLElement) {
    this.el = root.ownerDocument.createElement("div");
    this.el.className = "nbi-tooltip";
    this.el.hidden = true;
  }

  show(lines: readonly TooltipLine[], event: MouseEvent): void {
    const doc = this.root.ownerDocument;
    this.el.replaceChildren(...lines.map((line) => {
      const div = doc.createElement("div");
      if (typeof line === "string") {
        div.textContent = line;
      } else if (line.length === 2) {
        if (line[0]) div.className = line[0];
        div.textContent = line[1];
      } else {
        const value = doc.createElement("span");
        value.className = line[0];
        value.textContent = line[2];
        div.append(line[1], value);
      }
      return div;
    }));
    this.el.hidden = false;
    // Measure first (hidden boxes have no size), then place.
    this.el.style.left = "0px";
    this.el.style.top = "0px";
    const size = { width: this.el.offsetWidth, height: this.el.offsetHeight };
    const { x, y } = placeTooltip({ x: event.clientX, y: event.clientY }, size, visibleBounds(this.root));
    const origin = this.root.getBoundingClientRect();
    this.el.style.left = `${x - origin.left}px`;
    this.el.style.top = `${y - origin.top}px`;
  }

  hide(): void {
    this.el.hidden = true;
  }
}
