// A canvas sized in CSS pixels and backed at the device pixel ratio, so
// heatmaps stay sharp on high-DPI screens.

export interface HiDpiCanvas {
  canvas: HTMLCanvasElement;
  ctx: CanvasRenderingContext2D;
  dpr: number;
}

export function hidpiCanvas(doc: Document, className: string, width: number, height: number): HiDpiCanvas {
  const dpr = doc.defaultView?.devicePixelRatio || 1;
  const canvas = doc.createElement("canvas");
  canvas.className = className;
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  canvas.width = Math.round(width * dpr);
  canvas.height = Math.round(height * dpr);
  const ctx = canvas.getContext("2d");
  if (!ctx) throw new Error("this browser gives no 2D canvas context");
  return { canvas, ctx, dpr };
}
