// A 2D canvas heatmap for large matrices (1,024 x 1,024 and beyond). The
// visible window is reduced to at most one value per device pixel (block
// max, so a single sharp attention edge never disappears when zoomed out),
// painted through ImageData and scaled up without smoothing. Wheel zooms
// around the cursor, drag pans, double-click resets.
//
// Two values are not numbers on the scale and are drawn hatched instead:
// NaN ("missing": not computed yet) and -Infinity ("masked": a cell the
// model cannot attend to). A block max keeps a real value over -Infinity,
// so a zoomed-out block is masked only when every cell in it is.

import { hidpiCanvas } from "./canvas";
import { type ColorScale, drawClipMark, hatchLines, NO_VALUE_STYLE, type NoValueKind, textColorOn } from "./colors";

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

/** Block max of `win` into an outH x outW grid (outH <= rows, outW <= cols).
 *  `byMagnitude` (signed data on a diverging scale): each block shows its value
 *  of largest magnitude, sign kept, so a strong negative cell is not hidden
 *  behind the zeros around it. */
export function aggregateMax(
  values: Float32Array, cols: number, win: MatrixWindow, outW: number, outH: number, byMagnitude = false,
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
          // -Infinity (masked) only wins a block with nothing else in it
          if (byMagnitude ? v === v && (best === -Infinity || (v !== -Infinity && Math.abs(v) > Math.abs(best))) : v > best) best = v;
          if (v === v) any = true; // NaN marks "no value yet" and never wins
        }
      }
      out[y * outW + x] = any || r0 === r1 || c0 === c1 ? best : NaN;
    }
  }
  return out;
}

/** RGB of cells without a value (NaN): light grey, distinct from every scale (hatched on the heatmap). */
export const MISSING_RGB = NO_VALUE_STYLE.missing.rgb;
/** RGB of masked cells (-Infinity): near white, hatched lighter than missing ones. */
export const MASKED_RGB = NO_VALUE_STYLE.masked.rgb;

/** The kind of a value that has no colour on the scale, or null for a number. */
export function noValueKind(value: number): NoValueKind | null {
  if (value !== value) return "missing";
  return value === -Infinity ? "masked" : null;
}

/** Maps values through the scale into RGBA pixels (length values.length*4);
 *  NaN is MISSING_RGB, -Infinity MASKED_RGB. */
export function paintPixels(values: Float32Array, scale: ColorScale, out?: Uint8ClampedArray): Uint8ClampedArray {
  const px = out ?? new Uint8ClampedArray(values.length * 4);
  const lut = scale.lut;
  for (let i = 0; i < values.length; i++) {
    const k = i * 4;
    const none = noValueKind(values[i]);
    if (none) {
      const rgb = NO_VALUE_STYLE[none].rgb;
      px[k] = rgb[0];
      px[k + 1] = rgb[1];
      px[k + 2] = rgb[2];
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

/** Indices to label on an axis showing [start, stop) at cellPx per cell: every
 *  `step`-th index, step the smallest of 1, 2, 5, 10, 20, 50, ... that leaves
 *  minSpacingPx between labels. Labels sit on multiples of the step, so a pan
 *  never moves a label off its cell or renumbers the ones that stay. */
export function axisTicks(start: number, stop: number, cellPx: number, minSpacingPx = 11): number[] {
  if (!(cellPx > 0) || stop <= start) return [];
  let step = 1;
  search: for (let mag = 1; mag < 1e9; mag *= 10) {
    for (const m of [1, 2, 5]) {
      step = m * mag;
      if (step * cellPx >= minSpacingPx) break search;
    }
  }
  const ticks: number[] = [];
  for (let i = Math.ceil(start / step) * step; i < stop; i += step) ticks.push(i);
  return ticks;
}

/** `text` as it fits in `maxPx` by `measure` (the canvas's measureText):
 *  whole, or the longest prefix that fits with an ellipsis (at least one
 *  character). The full text is always in the hover tooltip. */
export function fitText(text: string, maxPx: number, measure: (s: string) => number): string {
  if (measure(text) <= maxPx) return text;
  const chars = Array.from(text);
  let lo = 1;
  let hi = chars.length - 1;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (measure(chars.slice(0, mid).join("") + "\u2026") <= maxPx) lo = mid;
    else hi = mid - 1;
  }
  return chars.slice(0, Math.max(1, lo)).join("") + "\u2026";
}

/** Which axis label is under a point: x, y relative to the plot's top-left
 *  corner (negative = in the margin); a row label left of the plot, a column
 *  label above it; null elsewhere. */
export function axisLabelAt(
  x: number, y: number, plotWidth: number, plotHeight: number, win: MatrixWindow,
): { axis: "row" | "col"; index: number } | null {
  if (x < 0 && y >= 0 && y < plotHeight) return { axis: "row", index: win.row0 + Math.floor((y / plotHeight) * (win.row1 - win.row0)) };
  if (y < 0 && x >= 0 && x < plotWidth) return { axis: "col", index: win.col0 + Math.floor((x / plotWidth) * (win.col1 - win.col0)) };
  return null;
}

/** Runs of no-value pixels per row of a reduced grid: [y, x0, x1, kind]. */
export function noValueRuns(reduced: Float32Array, outW: number, outH: number): Array<[number, number, number, NoValueKind]> {
  const runs: Array<[number, number, number, NoValueKind]> = [];
  for (let y = 0; y < outH; y++) {
    let x = 0;
    while (x < outW) {
      const kind = noValueKind(reduced[y * outW + x]);
      if (!kind) {
        x++;
        continue;
      }
      let end = x + 1;
      while (end < outW && noValueKind(reduced[y * outW + end]) === kind) end++;
      runs.push([y, x, end, kind]);
      x = end;
    }
  }
  return runs;
}

export interface HeatmapOptions {
  plotWidth: number;
  plotHeight: number;
  marginLeft: number;
  marginTop: number;
  cornerLabel?: string;
  /** Text drawn inside a cell (e.g. a logit-lens top token) where cells are large enough. */
  cellLabel?(cell: Cell): string;
  /** Mark cells whose value lies beyond the scale's ends (clipped to the end colour). */
  markClipped?: boolean;
  /** Signed values (a diverging scale): zoomed out, a block shows its value of largest magnitude, not its max. */
  signed?: boolean;
  /** Least spacing between axis labels in CSS px (default 11 for 10-px text). */
  labelSpacing?: number;
  onHover?(cell: Cell | null, event: PointerEvent): void;
  /** The pointer is over an axis label (left or top margin): show its full text. */
  onAxisHover?(label: { axis: "row" | "col"; index: number }, event: PointerEvent): void;
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
  private readonly opts: HeatmapOptions;

  constructor(container: HTMLElement, opts: HeatmapOptions) {
    const doc = container.ownerDocument;
    this.opts = { ...opts };
    const w = opts.marginLeft + opts.plotWidth;
    const h = opts.marginTop + opts.plotHeight;
    ({ canvas: this.canvas, ctx: this.ctx, dpr: this.dpr } = hidpiCanvas(doc, "nbi-heatmap", w, h));
    this.recordSize();
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

  /** The plot's size in CSS px (the margins stay), e.g. to fit a container that was resized. */
  get plotSize(): { width: number; height: number } {
    return { width: this.opts.plotWidth, height: this.opts.plotHeight };
  }

  /** Gives the plot a new size (the margins stay) and redraws; the window, data and marker are kept. */
  resize(plotWidth: number, plotHeight: number): void {
    if (plotWidth === this.opts.plotWidth && plotHeight === this.opts.plotHeight) return;
    this.opts.plotWidth = plotWidth;
    this.opts.plotHeight = plotHeight;
    const w = this.opts.marginLeft + plotWidth, h = this.opts.marginTop + plotHeight;
    this.canvas.style.width = `${w}px`;
    this.canvas.style.height = `${h}px`;
    this.canvas.width = Math.round(w * this.dpr);
    this.canvas.height = Math.round(h * this.dpr);
    this.recordSize();
    this.draw();
  }

  private recordSize(): void {
    const { opts } = this;
    Object.assign(this.canvas.dataset, {
      marginLeft: String(opts.marginLeft), marginTop: String(opts.marginTop),
      plotWidth: String(opts.plotWidth), plotHeight: String(opts.plotHeight),
    });
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
    Object.assign(this.canvas.dataset, { rows: String(rows), cols: String(cols) });
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
    const reduced = aggregateMax(this.values, this.cols, this.win, outW, outH, this.opts.signed ?? false);
    this.offscreen.width = outW;
    this.offscreen.height = outH;
    const octx = this.offscreen.getContext("2d");
    if (!octx) return;
    const image = octx.createImageData(outW, outH);
    paintPixels(reduced, this.scale, image.data);
    octx.putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(this.offscreen, 0, 0, outW, outH, opts.marginLeft, opts.marginTop, opts.plotWidth, opts.plotHeight);
    this.drawHatching(reduced, outW, outH);
    this.drawClipped();
    this.drawLabels();
    this.drawCellLabels();
    this.drawMarker();
  }

  /** Hatches the no-value cells so they never pass for a colour of the scale. */
  private drawHatching(reduced: Float32Array, outW: number, outH: number): void {
    const { ctx, opts } = this;
    const px = opts.plotWidth / outW;
    const py = opts.plotHeight / outH;
    const counts: Record<NoValueKind, number> = { missing: 0, masked: 0 };
    for (const kind of ["missing", "masked"] as const) {
      const path = new Path2D();
      for (const [y, x0, x1, k] of noValueRuns(reduced, outW, outH)) {
        if (k !== kind) continue;
        counts[kind] += x1 - x0;
        path.rect(opts.marginLeft + x0 * px, opts.marginTop + y * py, (x1 - x0) * px, py);
      }
      if (!counts[kind]) continue;
      ctx.save();
      ctx.clip(path);
      hatchLines(ctx, opts.marginLeft, opts.marginTop, opts.plotWidth, opts.plotHeight, NO_VALUE_STYLE[kind].hatch);
      ctx.restore();
    }
    this.canvas.dataset.missingPixels = String(counts.missing);
    this.canvas.dataset.maskedPixels = String(counts.masked);
  }

  private drawClipped(): void {
    if (!this.opts.markClipped || !this.values || !this.scale) return;
    const { ctx, opts, scale, values } = this;
    const { row0, row1, col0, col1 } = this.win;
    const cellH = opts.plotHeight / (row1 - row0);
    const cellW = opts.plotWidth / (col1 - col0);
    let clipped = 0;
    for (let r = row0; r < row1; r++) {
      for (let c = col0; c < col1; c++) {
        const v = values[r * this.cols + c];
        if (!(v > scale.vmax || v < scale.vmin)) continue;
        clipped++;
        drawClipMark(ctx, opts.marginLeft + (c - col0) * cellW, opts.marginTop + (r - row0) * cellH, cellW, cellH);
      }
    }
    this.canvas.dataset.clipped = String(clipped);
  }

  private drawCellLabels(): void {
    const label = this.opts.cellLabel;
    if (!label || !this.values || !this.scale) return;
    const { ctx, opts } = this;
    const { row0, row1, col0, col1 } = this.win;
    const cellH = opts.plotHeight / (row1 - row0);
    const cellW = opts.plotWidth / (col1 - col0);
    if (cellH < 11 || cellW < 22) return;
    ctx.font = `${Math.min(11, Math.floor(cellH) - 2)}px sans-serif`;
    const measure = (s: string) => ctx.measureText(s).width;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    for (let r = row0; r < row1; r++) {
      for (let c = col0; c < col1; c++) {
        const text = label({ row: r, col: c });
        if (!text) continue;
        ctx.fillStyle = textColorOn(this.scale, this.values[r * this.cols + c]);
        ctx.fillText(fitText(text, cellW - 3, measure), opts.marginLeft + (c - col0 + 0.5) * cellW, opts.marginTop + (r - row0 + 0.5) * cellH);
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
    // As many labels as fit at the label spacing, each the label of its own
    // cell (index and token where the caller gives both).
    const spacing = opts.labelSpacing ?? 11;
    const rowTicks = axisTicks(row0, row1, cellH, spacing);
    const colTicks = axisTicks(col0, col1, cellW, spacing);
    this.canvas.dataset.rowTicks = rowTicks.join(",");
    this.canvas.dataset.colTicks = colTicks.join(",");
    ctx.font = `${cellH >= 14 && rowTicks.length === row1 - row0 ? 11 : 10}px sans-serif`;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const measure = (s: string) => ctx.measureText(s).width;
    for (const r of rowTicks) {
      ctx.fillText(fitText(this.rowLabels[r] ?? String(r), opts.marginLeft - 6, measure), opts.marginLeft - 4, opts.marginTop + (r - row0 + 0.5) * cellH);
    }
    ctx.save();
    ctx.font = "10px sans-serif";
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    for (const c of colTicks) {
      ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
      ctx.translate(opts.marginLeft + (c - col0 + 0.5) * cellW, opts.marginTop - 4);
      ctx.rotate(-Math.PI / 2);
      ctx.fillText(fitText(this.colLabels[c] ?? String(c), opts.marginTop - 6, measure), 0, 0);
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
    const cell = this.cellAt(e.clientX, e.clientY);
    this.opts.onHover?.(cell, e);
    if (!cell && this.opts.onAxisHover && this.values) {
      const rect = this.canvas.getBoundingClientRect();
      const hit = axisLabelAt(e.clientX - rect.left - this.opts.marginLeft, e.clientY - rect.top - this.opts.marginTop,
        this.opts.plotWidth, this.opts.plotHeight, this.win);
      if (hit) this.opts.onAxisHover(hit, e);
    }
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
