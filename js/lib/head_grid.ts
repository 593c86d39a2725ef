// A layer x head grid of small heatmaps on one canvas (144 thumbnails are
// 144 drawImage calls, not 144 DOM nodes). Click picks a head.

import { hidpiCanvas } from "./canvas";
import type { ColorScale } from "./colors";
import { axisTicks, paintPixels } from "./heatmap";

export interface HeadRef {
  layer: number;
  head: number;
}

export interface HeadGridOptions {
  nLayers: number;
  nHeads: number;
  thumbPx: number;
  onClick?(ref: HeadRef): void;
  onHover?(ref: HeadRef | null, event: PointerEvent): void;
}

const GAP = 2;
const MARGIN_LEFT = 28;
const MARGIN_TOP = 16;

/** Thumbnail size in CSS px so the heads fit about `widthBudget` px across
 *  and the layers `heightBudget` px down (a deep, narrow model such as 30 x 9
 *  gets taller thumbnails than a square budget would give it). */
export function thumbSize(nLayers: number, nHeads: number, widthBudget = 360, heightBudget = widthBudget): number {
  const fit = Math.min(Math.floor(widthBudget / Math.max(nHeads, 1)), Math.floor(heightBudget / Math.max(nLayers, 1)));
  return Math.max(12, Math.min(56, fit - GAP));
}

/** Which heads (or layers) get a header: every one whose label fits in a
 *  thumbnail step, else every k-th (k = 1, 2, 5, 10, ...) so labels never run
 *  together; `labelPx` is the widest label's width. Hover names every head. */
export function headerTicks(n: number, stepPx: number, labelPx: number): number[] {
  return axisTicks(0, n, stepPx, labelPx + 3);
}

export class HeadGrid {
  readonly canvas: HTMLCanvasElement;
  private readonly ctx: CanvasRenderingContext2D;
  private readonly tile: HTMLCanvasElement;
  private values: Float32Array | null = null;
  private side = 0;
  private scale: ColorScale | null = null;
  private selected: HeadRef | null = null;
  private readonly dpr: number;

  constructor(container: HTMLElement, private readonly opts: HeadGridOptions) {
    const doc = container.ownerDocument;
    const w = MARGIN_LEFT + opts.nHeads * (opts.thumbPx + GAP);
    const h = MARGIN_TOP + opts.nLayers * (opts.thumbPx + GAP);
    ({ canvas: this.canvas, ctx: this.ctx, dpr: this.dpr } = hidpiCanvas(doc, "nbi-head-grid", w, h));
    // Geometry for scripts and tests that point at a thumbnail.
    Object.assign(this.canvas.dataset, {
      layers: String(opts.nLayers), heads: String(opts.nHeads), thumbPx: String(opts.thumbPx),
      gap: String(GAP), marginLeft: String(MARGIN_LEFT), marginTop: String(MARGIN_TOP),
    });
    this.tile = doc.createElement("canvas");
    this.canvas.addEventListener("click", this.onClickEvent);
    this.canvas.addEventListener("pointermove", this.onMove);
    this.canvas.addEventListener("pointerleave", this.onLeave);
    container.append(this.canvas);
  }

  /** `values` holds nLayers * nHeads tiles of side x side, row-major. */
  setThumbnails(values: Float32Array, side: number, scale: ColorScale): void {
    const expected = this.opts.nLayers * this.opts.nHeads * side * side;
    if (values.length !== expected) throw new Error(`thumbnails have ${values.length} values, expected ${expected}`);
    this.values = values;
    this.side = side;
    this.scale = scale;
  }

  setSelected(ref: HeadRef | null): void {
    this.selected = ref;
  }

  /** Top-left corner of a thumbnail in CSS px, relative to the canvas. */
  origin(ref: HeadRef): { x: number; y: number } {
    const step = this.opts.thumbPx + GAP;
    return { x: MARGIN_LEFT + ref.head * step, y: MARGIN_TOP + ref.layer * step };
  }

  refAt(clientX: number, clientY: number): HeadRef | null {
    const rect = this.canvas.getBoundingClientRect();
    const step = this.opts.thumbPx + GAP;
    const head = Math.floor((clientX - rect.left - MARGIN_LEFT) / step);
    const layer = Math.floor((clientY - rect.top - MARGIN_TOP) / step);
    if (head < 0 || head >= this.opts.nHeads || layer < 0 || layer >= this.opts.nLayers) return null;
    return { layer, head };
  }

  draw(): void {
    const { ctx, opts, dpr } = this;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.fillStyle = "#444";
    ctx.font = "10px sans-serif";
    ctx.textBaseline = "middle";
    ctx.textAlign = "center";
    const step = opts.thumbPx + GAP;
    const headTicks = headerTicks(opts.nHeads, step, ctx.measureText(`H${opts.nHeads - 1}`).width);
    const layerTicks = headerTicks(opts.nLayers, step, 8); // 10-px text stacked: 11 px apart
    this.canvas.dataset.headTicks = headTicks.join(",");
    this.canvas.dataset.layerTicks = layerTicks.join(",");
    for (const h of headTicks) ctx.fillText(`H${h}`, this.origin({ layer: 0, head: h }).x + opts.thumbPx / 2, MARGIN_TOP / 2);
    ctx.textAlign = "right";
    for (const l of layerTicks) ctx.fillText(`L${l}`, MARGIN_LEFT - 4, this.origin({ layer: l, head: 0 }).y + opts.thumbPx / 2);
    if (this.values && this.scale) {
      const side = this.side;
      this.tile.width = side;
      this.tile.height = side;
      const tctx = this.tile.getContext("2d");
      if (!tctx) return;
      const image = tctx.createImageData(side, side);
      ctx.imageSmoothingEnabled = false;
      for (let l = 0; l < opts.nLayers; l++) {
        for (let h = 0; h < opts.nHeads; h++) {
          const start = (l * opts.nHeads + h) * side * side;
          paintPixels(this.values.subarray(start, start + side * side), this.scale, image.data);
          tctx.putImageData(image, 0, 0);
          const { x, y } = this.origin({ layer: l, head: h });
          ctx.drawImage(this.tile, 0, 0, side, side, x, y, opts.thumbPx, opts.thumbPx);
        }
      }
    }
    if (this.selected) {
      const { x, y } = this.origin(this.selected);
      ctx.strokeStyle = "#e0115f";
      ctx.lineWidth = 2;
      ctx.strokeRect(x - 1, y - 1, opts.thumbPx + 2, opts.thumbPx + 2);
    }
  }

  destroy(): void {
    this.canvas.removeEventListener("click", this.onClickEvent);
    this.canvas.removeEventListener("pointermove", this.onMove);
    this.canvas.removeEventListener("pointerleave", this.onLeave);
    this.canvas.remove();
  }

  private onClickEvent = (e: MouseEvent) => {
    const ref = this.refAt(e.clientX, e.clientY);
    if (ref) this.opts.onClick?.(ref);
  };

  private onMove = (e: PointerEvent) => this.opts.onHover?.(this.refAt(e.clientX, e.clientY), e);

  private onLeave = (e: PointerEvent) => this.opts.onHover?.(null, e);
}
