// The hover box every view shows next to the pointer: lines of plain text
// (textContent, never HTML), each with an optional class for styling.

export type TooltipLine = string | [className: string, text: string];

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
      const [className, text] = typeof line === "string" ? ["", line] : line;
      const div = doc.createElement("div");
      if (className) div.className = className;
      div.textContent = text;
      return div;
    }));
    const box = this.root.getBoundingClientRect();
    this.el.style.left = `${event.clientX - box.left + 14}px`;
    this.el.style.top = `${event.clientY - box.top + 14}px`;
    this.el.hidden = false;
  }

  hide(): void {
    this.el.hidden = true;
  }
}
