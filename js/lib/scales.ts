// The colour-scale choices of a non-negative matrix (attention probabilities,
// value-weighted norms): what each cell is drawn as, and the scale's name for
// the legend. Masked cells become -Infinity (drawn hatched, never a colour).
//
// Why a choice: in a causal head query q spreads over q + 1 keys, so a
// diffuse row holds about 1/(q+1). On a linear 0..max scale the first rows
// (one visible key, probability 1) set the top colour and every row past a
// few dozen tokens is the bottom colour. A log scale gives equal ratios equal
// colour steps, so 1/512 and 1 are both visible and a colour still means the
// same number everywhere; per-row shows where each query looks, but a colour
// no longer compares across rows.

import { type ColorScale, formatValue, logScale, sequentialScale } from "./colors";

export type ScaleChoice = "linear" | "log" | "row";

export const SCALE_CHOICES: ReadonlyArray<readonly [ScaleChoice, string]> = [
  ["log", "log"],
  ["linear", "linear"],
  ["row", "per row"],
];

/** The log scale's floor: a tenth of a uniform row over all `nKeys` keys, relative to `vmax`. */
export function logFloor(vmax: number, nKeys: number): number {
  return vmax / (10 * Math.max(1, nKeys));
}

export interface DisplayMatrix {
  /** What the heatmap draws: scaled values, -Infinity where masked. */
  values: Float32Array;
  scale: ColorScale;
  /** One line for the legend: how a colour maps to the number. */
  description: string;
}

/** The values of a rows x cols matrix as drawn under `choice`; `masked`
 *  (1 = the model cannot attend there) may be null. `quantity` names the
 *  number ("attention probability"). */
export function displayMatrix(
  raw: Float32Array, rows: number, cols: number, choice: ScaleChoice, masked: Uint8Array | null, quantity: string,
): DisplayMatrix {
  const values = new Float32Array(rows * cols);
  let vmax = 0;
  for (let i = 0; i < raw.length; i++) if (!(masked && masked[i]) && raw[i] > vmax) vmax = raw[i];
  if (choice === "row") {
    for (let r = 0; r < rows; r++) {
      let rowMax = 0;
      for (let c = 0; c < cols; c++) {
        const i = r * cols + c;
        if (!(masked && masked[i]) && raw[i] > rowMax) rowMax = raw[i];
      }
      for (let c = 0; c < cols; c++) {
        const i = r * cols + c;
        values[i] = masked && masked[i] ? -Infinity : rowMax > 0 ? raw[i] / rowMax : 0;
      }
    }
    return {
      values, scale: sequentialScale(0, 1),
      description: `per-row scale: each query row \u00f7 its own max (0 .. 1 = that row's max); colours do not compare across rows \u00b7 ${quantity}`,
    };
  }
  for (let i = 0; i < raw.length; i++) values[i] = masked && masked[i] ? -Infinity : raw[i];
  if (choice === "log") {
    const scale = logScale(logFloor(vmax, cols), vmax);
    return {
      values, scale,
      description: `log scale from max/(10 \u00d7 ${cols} keys) = ${formatValue(scale.vmin)} to the head's max ${formatValue(scale.vmax)}; smaller values (and 0) get the first colour \u00b7 ${quantity}`,
    };
  }
  return { values, scale: sequentialScale(0, vmax), description: `linear scale, 0 .. the head's max ${formatValue(vmax)} \u00b7 ${quantity}` };
}
