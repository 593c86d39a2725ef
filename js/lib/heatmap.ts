// A 2D canvas heatmap for large matrices (1,024 x 1,024 and beyond). The
// visible window is reduced to at most one value per device pixel (block
// max, so a single sharp attention edge never disappears when zoomed out),
// painted through ImageData and scaled up without smoothing. Wheel zooms
// around the cursor, drag pans, double-click resets.

import { hidpiCanvas } from "./canvas";
import { type ColorScale, textColorOn } from "./colors";
import { truncateLabel } from "./tokens";

/** Half-open index ranges of the visible rows and columns. */
export interface MatrixWindow {
  row0: number;
  row1: number;
  col0: number;
  col1: number;
}

export interface Cell {
  row: number;
  col: number;
}

export function fullWindow(rows: number, cols: number): MatrixWindow {
  return { row0: 0, row1: rows, col0: 0, col1: cols };
}

/** Block max of `win` into an outH x outW grid (outH <= rows, outW <= cols). */
export function aggregateMax(
  values: Float32Array, cols: number, win: MatrixWindow, outW: number, outH: number,
): Float32Array {
  const out = new Float32Array(outW * outH);
  const vr = win.row1 - win.row0;
  const vc = win.col1 - win.col0;
  // Column block boundaries are the same for every row: compute them once.
  const colStart = new Int32Array(outW + 1);
  for (let x = 0; x <= outW; x++) colStart[x] = win.col0 + Math.floor((x * vc) / outW);
  for (let y = 0; y < outH; y++) {
    const r0 = win.row0 + Math.floor((y * vr) / outH);
    const r1 = win.row0 + Math.floor(((y + 1) * vr) / outH);
    for (let x = 0; x < outW; x++) {
      const c0 = colStart[x];
      const c1 = colStart[x + 1];
      let best = -Infinity;
      let any = false;
      for (let r = r0; r < r1; r++) {
        const base = r * cols;
        for (let c = c0; c < c1; c++) {
          const v = values[base + c];
          if (v > best) best = v;
          if (v === v) any = true; // NaN marks "no value yet" and never wins
        }
      }
      out[y * outW + x] = any || r0 === r1 || c0 === c1 ? best : NaN;
    }
  }
  return out;
}

/** RGB of cells without a value (NaN): light grey, distinct from every scale. */
export const MISSING_RGB = [230, 230, 230] as const;

/** Maps values through the scale into RGBA pixels (length values.length*4); NaN is MISSING_RGB. */
export function paintPixels(values: Float32Array, scale: ColorScale, out?: Uint8ClampedArray): Uint8ClampedArray {
  const px = out ?? new Uint8ClampedArray(values.length * 4);
  const lut = scale.lut;
  for (let i = 0; i < values.length; i++) {
    const k = i * 4;
    if (values[i] !== values[i]) {
      px[k] = MISSING_RGB[0];
      px[k + 1] = MISSING_RGB[1];
      px[k + 2] = MISSING_RGB[2];
      px[k + 3] = 255;
      continue;
    }
    const j = scale.index(values[i]) * 4;
    px[k] = lut[j];
    px[k + 1] = lut[j + 1];
    px[k + 2] = lut[j + 2];
    px[k + 3] = 255;
  }
  return px;
}

/** Zooms by `factor` (>1 in) keeping (row, col) under the cursor; clamped. */
export function zoomWindow(
  win: MatrixWindow, rows: number, cols: number, row: number, col: number, factor: number, minCells = 4,
): MatrixWindow {
  const axis = (lo: number, hi: number, n: number, at: number) => {
    const span = hi - lo;
    const size = Math.max(Math.min(minCells, n), Math.min(n, Math.round(span / factor)));
    const frac = span > 0 ? (at - lo) / span : 0.5;
    let start = Math.round(at - frac * size);
    start = Math.max(0, Math.min(n - size, start));
    return [start, start + size] as const;
  };
  const [row0, row1] = axis(win.row0, win.row1, rows, row);
  const [col0, col1] = axis(win.col0, win.col1, cols, col);
  return { row0, row1, col0, col1 };
}

export function panWindow(win: MatrixWindow, rows: number, cols: number, dRows: number, dCols: number): MatrixWindow {
  const shift = (lo: number, hi: number, n: number, d: number) => {
    const s = Math.max(-lo, Math.min(n - hi, Math.round(d)));
    return [lo + s, hi + s] as const;
  };
  const [row0, row1] = shift(win.row0, win.row1, rows, dRows);
  const [col0, col1] = shift(win.col0, win.col1, cols, dCols);
  return { row0, row1, col0, col1 };
}

export interface HeatmapOptions {
  plotWidth: number;
  plotHeight: number;
  marginLeft: number;
  marginTop: number;
  cornerLabel?: string;
  /** Text drawn inside a cell (e.g. a logit-lens top token) where cells are large enough. */
  cellLabel?(cell: Cell): string;
  onHover?(cell: Cell | null, event: PointerEvent): void;
  onClick?(cell: Cell): void;
  onWindowChange?(win: MatrixWindow): void;
}

export class Heatmap {
  readonly canvas: HTMLCanvasElement;
  private readonly ctx: CanvasRenderingContext2D;
  private readonly offscreen: HTMLCanvasElement;
  private values: Float32Array | null = null;
  private rows = 0;
  private cols = 0;
  private scale: ColorScale | null = null;
  private rowLabels: readonly string[] = [];
  private colLabels: readonly string[] = [];
  private win: MatrixWindow = fullWindow(0, 0);
  private marker: Cell | null = null;
  private drag: { x: number; y: number; win: MatrixWindow; moved: boolean } | null = null;
  private readonly dpr: number;

  constructor(container: HTMLElement, private readonly opts: HeatmapOptions) {
    const doc = container.ownerDocument;
    const w = opts.marginLeft + opts.plotWidth;
    const h = opts.marginTop + opts.plotHeight;
    ({ canvas: this.canvas, ctx: this.ctx, dpr: this.dpr } = hidpiCanvas(doc, "nbi-heatmap", w, h));
    Object.assign(this.canvas.dataset, {
      marginLeft: String(opts.marginLeft), marginTop: String(opts.marginTop),
      plotWidth: String(opts.plotWidth), plotHeight: String(opts.plotHeight),
    });
    this.offscreen = doc.createElement("canvas");
    this.canvas.addEventListener("pointermove", this.onPointerMove);
    this.canvas.addEventListener("pointerleave", this.onPointerLeave);
    this.canvas.addEventListener("pointerdown", this.onPointerDown);
    this.canvas.addEventListener("pointerup", this.onPointerUp);
    this.canvas.addEventListener("wheel", this.onWheel, { passive: false });
    this.canvas.addEventListener("dblclick", this.onDoubleClick);
    container.append(this.canvas);
  }

  get window(): MatrixWindow {
    return { ...this.win };
  }

  get shape(): [number, number] {
    return [this.rows, this.cols];
  }

  setData(values: Float32Array, rows: number, cols: number, scale: ColorScale): void {
    if (values.length !== rows * cols) throw new Error(`heatmap data has ${values.length} values, expected ${rows} x ${cols}`);
    const reshaped = rows !== this.rows || cols !== this.cols;
    this.values = values;
    this.rows = rows;
    this.cols = cols;
    this.scale = scale;
    if (reshaped) this.win = fullWindow(rows, cols);
  }

  setLabels(rowLabels: readonly string[], colLabels: readonly string[]): void {
    this.rowLabels = rowLabels;
    this.colLabels = colLabels;
  }

  /** Sets the visible window (clamped); returns what was applied. */
  setWindow(win: MatrixWindow): MatrixWindow {
    const clamp = (v: number, n: number) => Math.max(0, Math.min(n, Math.round(v)));
    const row0 = clamp(win.row0, this.rows);
    const col0 = clamp(win.col0, this.cols);
    const row1 = Math.max(row0 + 1, clamp(win.row1, this.rows));
    const col1 = Math.max(col0 + 1, clamp(win.col1, this.cols));
    this.win = this.rows && this.cols ? { row0, row1, col0, col1 } : fullWindow(this.rows, this.cols);
    return this.window;
  }

  setMarker(cell: Cell | null): void {
    this.marker = cell;
  }

  /** Value of one cell of the current data, or NaN outside it. */
  valueAt(cell: Cell): number {
    if (!this.values || cell.row < 0 || cell.row >= this.rows || cell.col < 0 || cell.col >= this.cols) return NaN;
    return this.values[cell.row * this.cols + cell.col];
  }

  cellAt(clientX: number, clientY: number): Cell | null {
    if (!this.values) return null;
    const rect = this.canvas.getBoundingClientRect();
    const x = (clientX - rect.left - this.opts.marginLeft) / this.opts.plotWidth;
    const y = (clientY - rect.top - this.opts.marginTop) / this.opts.plotHeight;
    if (x < 0 || x >= 1 || y < 0 || y >= 1) return null;
    const { row0, row1, col0, col1 } = this.win;
    return { row: row0 + Math.floor(y * (row1 - row0)), col: col0 + Math.floor(x * (col1 - col0)) };
  }

  draw(): void {
    const { ctx, opts, dpr } = this;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, opts.marginLeft + opts.plotWidth, opts.marginTop + opts.plotHeight);
    if (!this.values || !this.scale || !this.rows || !this.cols) return;
    const { row0, row1, col0, col1 } = this.win;
    const outW = Math.max(1, Math.min(col1 - col0, Math.round(opts.plotWidth * dpr)));
    const outH = Math.max(1, Math.min(row1 - row0, Math.round(opts.plotHeight * dpr)));
    const reduced = aggregateMax(this.values, this.cols, this.win, outW, outH);
    this.offscreen.width = outW;
    this.offscreen.height = outH;
    const octx = this.offscreen.getContext("2d");
    if (!octx) return;
    const image = octx.createImageData(outW, outH);
    paintPixels(reduced, this.scale, image.data);
    octx.putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(this.offscreen, 0, 0, outW, outH, opts.marginLeft, opts.marginTop, opts.plotWidth, opts.plotHeight);
    this.drawLabels();
    this.drawCellLabels();
    this.drawMarker();
  }

  private drawCellLabels(): void {
    const label = this.opts.cellLabel;
    if (!label || !this.values || !this.scale) return;
    const { ctx, opts } = this;
    const { row0, row1, col0, col1 } = this.win;
    const cellH = opts.plotHeight / (row1 - row0);
    const cellW = opts.plotWidth / (col1 - col0);
    if (cellH < 11 || cellW < 22) return;
    const maxChars = Math.max(2, Math.floor(cellW / 6.5));
    ctx.font = `${Math.min(11, Math.floor(cellH) - 2)}px sans-serif`;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    for (let r = row0; r < row1; r++) {
      for (let c = col0; c < col1; c++) {
        const text = label({ row: r, col: c });
        if (!text) continue;
        ctx.fillStyle = textColorOn(this.scale, this.values[r * this.cols + c]);
        ctx.fillText(truncateLabel(text, maxChars), opts.marginLeft + (c - col0 + 0.5) * cellW, opts.marginTop + (r - row0 + 0.5) * cellH);
      }
    }
  }

  destroy(): void {
    this.canvas.removeEventListener("pointermove", this.onPointerMove);
    this.canvas.removeEventListener("pointerleave", this.onPointerLeave);
    this.canvas.removeEventListener("pointerdown", this.onPointerDown);
    this.canvas.removeEventListener("pointerup", this.onPointerUp);
    this.canvas.removeEventListener("wheel", this.onWheel);
    this.canvas.removeEventListener("dblclick", this.onDoubleClick);
    this.canvas.remove();
    this.values = null;
  }

  private drawLabels(): void {
    const { ctx, opts } = this;
    const { row0, row1, col0, col1 } = this.win;
    const cellH = opts.plotHeight / (row1 - row0);
    const cellW = opts.plotWidth / (col1 - col0);
    ctx.fillStyle = "#444";
    ctx.font = "10px sans-serif";
    if (opts.cornerLabel) {
      ctx.textAlign = "left";
      ctx.textBaseline = "top";
      ctx.fillText(opts.cornerLabel, 2, 2);
    }
    // Token labels where a row is tall enough to read; index ticks otherwise.
    const rowStep = cellH >= 9 ? 1 : Math.ceil(14 / cellH);
    const fontRow = Math.min(12, Math.max(8, Math.floor(cellH) - 1));
    ctx.font = `${cellH >= 9 ? fontRow : 10}px sans-serif`;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const maxChars = Math.max(3, Math.floor(opts.marginLeft / 6.5));
    for (let r = row0; r < row1; r += rowStep) {
      const text = cellH >= 9 ? truncateLabel(this.rowLabels[r] ?? String(r), maxChars) : String(r);
      ctx.fillText(text, opts.marginLeft - 4, opts.marginTop + (r - row0 + 0.5) * cellH);
    }
    const colStep = cellW >= 9 ? 1 : Math.ceil(14 / cellW);
    ctx.save();
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    const maxColChars = Math.max(3, Math.floor(opts.marginTop / 6.5));
    for (let c = col0; c < col1; c += colStep) {
      const text = cellW >= 9 ? truncateLabel(this.colLabels[c] ?? String(c), maxColChars) : String(c);
      ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
      ctx.translate(opts.marginLeft + (c - col0 + 0.5) * cellW, opts.marginTop - 4);
      ctx.rotate(-Math.PI / 2);
      ctx.fillText(text, 0, 0);
    }
    ctx.restore();
  }

  private drawMarker(): void {
    const m = this.marker;
    if (!m) return;
    const { row0, row1, col0, col1 } = this.win;
    if (m.row < row0 || m.row >= row1 || m.col < col0 || m.col >= col1) return;
    const { ctx, opts } = this;
    const cellH = opts.plotHeight / (row1 - row0);
    const cellW = opts.plotWidth / (col1 - col0);
    ctx.strokeStyle = "#e0115f";
    ctx.lineWidth = 2;
    ctx.strokeRect(
      opts.marginLeft + (m.col - col0) * cellW - 1, opts.marginTop + (m.row - row0) * cellH - 1,
      Math.max(cellW, 2) + 2, Math.max(cellH, 2) + 2,
    );
  }

  private changeWindow(win: MatrixWindow): void {
    this.win = win;
    this.draw();
    this.opts.onWindowChange?.(this.window);
  }

  private onPointerMove = (e: PointerEvent) => {
    if (this.drag) {
      const { row0, row1, col0, col1 } = this.drag.win;
      const dx = e.clientX - this.drag.x;
      const dy = e.clientY - this.drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 4) this.drag.moved = true;
      if (this.drag.moved) {
        const dCols = (-dx / this.opts.plotWidth) * (col1 - col0);
        const dRows = (-dy / this.opts.plotHeight) * (row1 - row0);
        this.changeWindow(panWindow(this.drag.win, this.rows, this.cols, dRows, dCols));
        return;
      }
    }
    this.opts.onHover?.(this.cellAt(e.clientX, e.clientY), e);
  };

  private onPointerLeave = (e: PointerEvent) => {
    this.drag = null;
    this.opts.onHover?.(null, e);
  };

  private onPointerDown = (e: PointerEvent) => {
    if (e.button !== 0) return;
    this.drag = { x: e.clientX, y: e.clientY, win: this.window, moved: false };
  };

  private onPointerUp = (e: PointerEvent) => {
    const drag = this.drag;
    this.drag = null;
    if (drag && !drag.moved) {
      const cell = this.cellAt(e.clientX, e.clientY);
      if (cell) this.opts.onClick?.(cell);
    }
  };

  private onWheel = (e: WheelEvent) => {
    const cell = this.cellAt(e.clientX, e.clientY);
    if (!cell) return;
    e.preventDefault();
    const factor = e.deltaY < 0 ? 1.25 : 0.8;
    this.changeWindow(zoomWindow(this.win, this.rows, this.cols, cell.row + 0.5, cell.col + 0.5, factor));
  };

  private onDoubleClick = () => {
    this.changeWindow(fullWindow(this.rows, this.cols));
  };
}
