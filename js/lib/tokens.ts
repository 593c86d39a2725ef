// The token strip. Tokens are untrusted text (a prompt may contain HTML):
// they only ever reach the DOM through textContent.

import { type ColorScale, cssColor, textColorOn } from "./colors";

/** Makes whitespace-only and control tokens visible without changing others. */
export function displayToken(token: string): string {
  return token
    .replace(/\n/g, "\u21b5")
    .replace(/\t/g, "\u21e5")
    .replace(/\r/g, "\u240d");
}

/** Shortens a label to at most `max` characters, marking the cut. */
export function truncateLabel(label: string, max: number): string {
  const chars = Array.from(label);
  return chars.length <= max ? label : chars.slice(0, Math.max(1, max - 1)).join("") + "\u2026";
}

export interface TokenStripHandlers {
  onHover(index: number | null): void;
  onClick(index: number): void;
}

export class TokenStrip {
  readonly element: HTMLDivElement;
  private spans: HTMLSpanElement[] = [];
  private active = -1;

  constructor(container: HTMLElement, private readonly handlers: TokenStripHandlers) {
    this.element = container.ownerDocument.createElement("div");
    this.element.className = "nbi-strip";
    // One delegated listener pair instead of 2 x T listeners.
    this.element.addEventListener("mouseover", this.onOver);
    this.element.addEventListener("mouseleave", this.onLeave);
    this.element.addEventListener("click", this.onClickEvent);
    container.append(this.element);
  }

  setTokens(tokens: readonly string[]): void {
    const doc = this.element.ownerDocument;
    this.spans = tokens.map((token, i) => {
      const span = doc.createElement("span");
      span.className = "nbi-token";
      span.dataset.index = String(i);
      span.textContent = displayToken(token);
      span.title = `token ${i}`;
      return span;
    });
    this.element.replaceChildren(...this.spans);
    this.active = -1;
  }

  /** Colours every token by its weight; null clears the colouring. */
  setWeights(weights: Float32Array | null, scale: ColorScale | null): void {
    for (let i = 0; i < this.spans.length; i++) {
      const style = this.spans[i].style;
      if (!weights || !scale) {
        style.backgroundColor = "";
        style.color = "";
      } else {
        style.backgroundColor = cssColor(scale, weights[i]);
        style.color = textColorOn(scale, weights[i]);
      }
    }
  }

  setActive(index: number): void {
    if (this.active >= 0 && this.spans[this.active]) this.spans[this.active].classList.remove("nbi-token-active");
    this.active = index;
    if (index >= 0 && this.spans[index]) this.spans[index].classList.add("nbi-token-active");
  }

  destroy(): void {
    this.element.removeEventListener("mouseover", this.onOver);
    this.element.removeEventListener("mouseleave", this.onLeave);
    this.element.removeEventListener("click", this.onClickEvent);
    this.element.remove();
  }

  private indexOf(target: EventTarget | null): number | null {
    const el = target as HTMLElement | null;
    const raw = el?.dataset?.index;
    return raw === undefined ? null : Number(raw);
  }

  private onOver = (e: Event) => {
    const i = this.indexOf(e.target);
    if (i !== null) this.handlers.onHover(i);
  };

  private onLeave = () => this.handlers.onHover(null);

  private onClickEvent = (e: Event) => {
    const i = this.indexOf(e.target);
    if (i !== null) this.handlers.onClick(i);
  };
}
