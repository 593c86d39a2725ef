// A visible error box inside the widget: errors from Python (the `error`
// trait) and from the front end itself (bad data, failed requests) land here
// instead of only in a console nobody reads.

export class ErrorBox {
  readonly element: HTMLDivElement;
  private readonly text: HTMLSpanElement;

  constructor(container: HTMLElement, onDismiss: () => void) {
    const doc = container.ownerDocument;
    this.element = doc.createElement("div");
    this.element.className = "nbi-error";
    this.element.setAttribute("role", "alert");
    this.element.hidden = true;
    this.text = doc.createElement("span");
    this.text.className = "nbi-error-text";
    const close = doc.createElement("button");
    close.type = "button";
    close.className = "nbi-error-close";
    close.textContent = "dismiss";
    close.addEventListener("click", () => {
      this.clear();
      onDismiss();
    });
    this.element.append(this.text, close);
    container.append(this.element);
  }

  show(message: string): void {
    if (!message) return this.clear();
    this.text.textContent = message;
    this.element.hidden = false;
  }

  clear(): void {
    this.text.textContent = "";
    this.element.hidden = true;
  }
}

export function describeError(err: unknown): string {
  if (err instanceof Error) return `${err.name === "Error" ? "" : err.name + ": "}${err.message}`;
  return String(err);
}
