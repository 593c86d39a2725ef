// Colour scales as 256-entry RGBA lookup tables, shared by the heatmap, the
// thumbnails and the token strip. Sequential for magnitudes (attention
// probabilities, norms); signed diverging, centred on zero, for effects.

export type Lut = Uint8ClampedArray; // 256 * 4

// matplotlib's viridis at 9 stops: the Python static figure uses the same map.
const VIRIDIS = ["#440154", "#472c7a", "#3b518b", "#2c718e", "#21908d", "#27ad81", "#5cc863", "#aadc32", "#fde725"];
// ColorBrewer RdBu reversed: negative blue, zero white, positive red.
const RDBU = ["#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7", "#fddbc7", "#f4a582", "#d6604d", "#b2182b"];

function parseHex(hex: string): [number, number, number] {
  const v = parseInt(hex.slice(1), 16);
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

export function makeLut(stops: readonly string[]): Lut {
  const rgb = stops.map(parseHex);
  const lut = new Uint8ClampedArray(256 * 4);
  for (let i = 0; i < 256; i++) {
    const pos = (i / 255) * (rgb.length - 1);
    const j = Math.min(Math.floor(pos), rgb.length - 2);
    const f = pos - j;
    for (let c = 0; c < 3; c++) lut[i * 4 + c] = Math.round(rgb[j][c] * (1 - f) + rgb[j + 1][c] * f);
    lut[i * 4 + 3] = 255;
  }
  return lut;
}

export const VIRIDIS_LUT = makeLut(VIRIDIS);
export const DIVERGING_LUT = makeLut(RDBU);

export interface ColorScale {
  readonly lut: Lut;
  readonly vmin: number;
  readonly vmax: number;
  readonly kind: "sequential" | "diverging";
  /** How values map onto the bar: evenly ("linear", the default) or by ratio ("log"). */
  readonly transform?: "linear" | "log";
  /** LUT index 0..255 for a value; clamps, NaN maps to 0. */
  index(value: number): number;
}

export function sequentialScale(vmin: number, vmax: number, lut: Lut = VIRIDIS_LUT): ColorScale {
  const span = vmax > vmin ? vmax - vmin : 1;
  return {
    lut, vmin, vmax, kind: "sequential",
    index(value: number): number {
      const t = (value - vmin) / span;
      if (!(t > 0)) return 0;
      return t >= 1 ? 255 : Math.round(t * 255);
    },
  };
}

/** Log10 from vmin to vmax (both > 0): equal ratios get equal colour steps;
 *  values at or below vmin (zero included) get the first colour. */
export function logScale(vmin: number, vmax: number, lut: Lut = VIRIDIS_LUT): ColorScale {
  const hi = vmax > 0 ? vmax : 1;
  const lo = vmin > 0 && vmin < hi ? vmin : hi / 1000;
  const logLo = Math.log(lo);
  const span = Math.log(hi) - logLo;
  return {
    lut, vmin: lo, vmax: hi, kind: "sequential", transform: "log",
    index(value: number): number {
      if (!(value > lo)) return 0;
      const t = (Math.log(value) - logLo) / span;
      return t >= 1 ? 255 : Math.round(t * 255);
    },
  };
}

/** Symmetric around zero: -maxAbs is the first colour, +maxAbs the last. */
export function divergingScale(maxAbs: number, lut: Lut = DIVERGING_LUT): ColorScale {
  const m = maxAbs > 0 ? maxAbs : 1;
  return {
    lut, vmin: -m, vmax: m, kind: "diverging",
    index(value: number): number {
      const t = (value + m) / (2 * m);
      if (Number.isNaN(t)) return 128;
      return t <= 0 ? 0 : t >= 1 ? 255 : Math.round(t * 255);
    },
  };
}

export function cssColor(scale: ColorScale, value: number): string {
  const i = scale.index(value) * 4;
  const l = scale.lut;
  return `rgb(${l[i]}, ${l[i + 1]}, ${l[i + 2]})`;
}

/** Black or white, whichever reads better on the colour of `value`. */
export function textColorOn(scale: ColorScale, value: number): string {
  const i = scale.index(value) * 4;
  const l = scale.lut;
  const luminance = 0.2126 * l[i] + 0.7152 * l[i + 1] + 0.0722 * l[i + 2];
  return luminance > 140 ? "#111" : "#fff";
}

export function formatValue(value: number): string {
  if (!Number.isFinite(value)) return String(value);
  if (value === 0) return "0";
  const a = Math.abs(value);
  return a >= 1e-3 && a < 1e4 ? value.toPrecision(4) : value.toExponential(3);
}

/** Cells that hold no colour-scale value: drawn flat with diagonal hatching. */
export type NoValueKind = "missing" | "masked";
/** Fill and hatch of "missing" (NaN: not computed yet) and "masked" (-Infinity: the model cannot attend there). */
export const NO_VALUE_STYLE: Record<NoValueKind, { rgb: readonly [number, number, number]; hatch: string }> = {
  missing: { rgb: [230, 230, 230], hatch: "#7a7a7a" },
  masked: { rgb: [250, 250, 250], hatch: "#c4c4c4" },
};

/** Diagonal hatch lines across a rectangle (spacing in CSS px); the caller clips. */
export function hatchLines(ctx: CanvasRenderingContext2D, x: number, y: number, w: number, h: number, colour: string, spacing = 5): void {
  ctx.save();
  ctx.strokeStyle = colour;
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let d = -h; d < w; d += spacing) {
    ctx.moveTo(x + d, y + h);
    ctx.lineTo(x + d + h, y);
  }
  ctx.stroke();
  ctx.restore();
}

export interface LegendExtra {
  /** Small keys after the bar: hatched swatches ("not computed yet") or a symbol ("beyond the scale"). */
  swatches?: Array<{ label: string; kind: NoValueKind | "clipped" }>;
  /** A sentence under the bar (what the scale is, what the number means). */
  note?: string;
}

/** A horizontal colour bar with its end values, built from text nodes only.
 *  The end labels carry the scale's name ("log" / "linear") so a reader never
 *  has to guess how colours map to numbers. */
export function renderLegend(container: HTMLElement, scale: ColorScale, label: string, extra: LegendExtra = {}): void {
  const doc = container.ownerDocument;
  container.replaceChildren();
  const title = doc.createElement("span");
  title.className = "nbi-legend-label";
  title.textContent = label;
  const lo = doc.createElement("span");
  lo.className = "nbi-legend-min";
  lo.textContent = formatValue(scale.vmin);
  const bar = doc.createElement("canvas");
  bar.className = "nbi-legend-bar";
  bar.width = 256;
  bar.height = 1;
  const ctx = bar.getContext("2d");
  if (ctx) {
    const img = ctx.createImageData(256, 1);
    img.data.set(scale.lut);
    ctx.putImageData(img, 0, 0);
  }
  const hi = doc.createElement("span");
  hi.className = "nbi-legend-max";
  hi.textContent = formatValue(scale.vmax);
  const kind = doc.createElement("span");
  kind.className = "nbi-legend-scale";
  kind.textContent = scale.transform === "log" ? "(log scale)" : "(linear scale)";
  container.append(title, lo, bar, hi, kind);
  for (const swatch of extra.swatches ?? []) {
    const item = doc.createElement("span");
    item.className = `nbi-legend-swatch nbi-legend-${swatch.kind}`;
    const box = doc.createElement("canvas");
    box.width = 16;
    box.height = 12;
    const c = box.getContext("2d");
    if (c && swatch.kind === "clipped") {
      c.fillStyle = cssColor(scale, scale.vmax);
      c.fillRect(0, 0, 16, 12);
      drawClipMark(c, 0, 0, 16, 12);
    } else if (c && swatch.kind !== "clipped") {
      const style = NO_VALUE_STYLE[swatch.kind];
      c.fillStyle = `rgb(${style.rgb.join(",")})`;
      c.fillRect(0, 0, 16, 12);
      hatchLines(c, 0, 0, 16, 12, style.hatch, 4);
    }
    item.append(box, swatch.label);
    container.append(item);
  }
  if (extra.note) {
    const note = doc.createElement("div");
    note.className = "nbi-legend-note";
    note.textContent = extra.note;
    container.append(note);
  }
}

/** The mark of a cell whose value lies beyond the colour scale (drawn in its corner). */
export function drawClipMark(ctx: CanvasRenderingContext2D, x: number, y: number, w: number, h: number): void {
  const s = Math.max(4, Math.min(w, h) * 0.45);
  ctx.save();
  ctx.fillStyle = "#111";
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(x + w, y);
  ctx.lineTo(x + w, y + s);
  ctx.lineTo(x + w - s, y);
  ctx.closePath();
  ctx.fill();
  ctx.stroke();
  ctx.restore();
}
