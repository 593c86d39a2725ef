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

/** A horizontal colour bar with its end values, built from text nodes only. */
export function renderLegend(container: HTMLElement, scale: ColorScale, label: string): void {
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
  container.append(title, lo, bar, hi);
}
