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

/** Whether key 0 (the attention sink) is left out of the colour scale:
 *  "auto" leaves it out when it holds most of the head (share > 0.5). */
export type SinkChoice = "auto" | "exclude" | "include";
export const SINK_CHOICES: ReadonlyArray<readonly [SinkChoice, string]> = [
  ["auto", "auto"],
  ["exclude", "exclude key 0"],
  ["include", "include key 0"],
];
/** Share of key 0 above which "auto" leaves it out of the scale. */
export const SINK_SHARE = 0.5;

/** Mean over query rows 1.. of key 0's share of the row's total (for
 *  probabilities, the attention paid to key 0). Row 0 can see only key 0,
 *  so it says nothing about a sink and is left out. */
export function firstKeyShare(raw: Float32Array, rows: number, cols: number, masked: Uint8Array | null): number {
  let sum = 0;
  let n = 0;
  for (let r = 1; r < rows; r++) {
    let total = 0;
    for (let c = 0; c < cols; c++) {
      const i = r * cols + c;
      if (!(masked && masked[i])) total += raw[i];
    }
    if (!(total > 0) || (masked && masked[r * cols])) continue;
    sum += raw[r * cols] / total;
    n++;
  }
  return n ? sum / n : 0;
}

/** Whether key 0 is left out of the scale under `choice` for a head whose
 *  key 0 holds `share` of its attention. */
export function excludesSink(choice: SinkChoice, share: number): boolean {
  return choice === "exclude" || (choice === "auto" && share > SINK_SHARE);
}

/** The values of a rows x cols matrix as drawn under `choice`; `masked`
 *  (1 = the model cannot attend there) may be null. `quantity` names the
 *  number ("attention probability"). With `excludeFirstKey` the scale's max
 *  (per head or per row) is taken over keys 1.. only, so key 0's larger
 *  cells take the top colour instead of pushing every other cell dark. */
export function displayMatrix(
  raw: Float32Array, rows: number, cols: number, choice: ScaleChoice, masked: Uint8Array | null, quantity: string,
  excludeFirstKey = false,
): DisplayMatrix {
  const values = new Float32Array(rows * cols);
  const first = excludeFirstKey && cols > 1 ? 1 : 0;
  const onScale = (i: number) => !(masked && masked[i]) && i % cols >= first;
  let vmax = 0;
  for (let i = 0; i < raw.length; i++) if (onScale(i) && raw[i] > vmax) vmax = raw[i];
  const sink = first ? `key 0 (the sink) left out of the scale: its cells above the max take the top colour \u00b7 ` : "";
  if (choice === "row") {
    for (let r = 0; r < rows; r++) {
      let rowMax = 0;
      for (let c = first; c < cols; c++) {
        const i = r * cols + c;
        if (onScale(i) && raw[i] > rowMax) rowMax = raw[i];
      }
      for (let c = 0; c < cols; c++) {
        const i = r * cols + c;
        values[i] = masked && masked[i] ? -Infinity : rowMax > 0 ? raw[i] / rowMax : 0;
      }
    }
    return {
      values, scale: sequentialScale(0, 1),
      description: `per-row scale: each query row \u00f7 its own max${first ? " over keys 1.." : ""} (0 .. 1 = that row's max); colours do not compare across rows \u00b7 ${sink}${quantity}`,
    };
  }
  for (let i = 0; i < raw.length; i++) values[i] = masked && masked[i] ? -Infinity : raw[i];
  const headMax = first ? "the head's max over keys 1.." : "the head's max";
  if (choice === "log") {
    const scale = logScale(logFloor(vmax, cols), vmax);
    return {
      values, scale,
      description: `log scale from max/(10 \u00d7 ${cols} keys) = ${formatValue(scale.vmin)} to ${headMax} ${formatValue(scale.vmax)}; smaller values (and 0) get the first colour \u00b7 ${sink}${quantity}`,
    };
  }
  return { values, scale: sequentialScale(0, vmax), description: `linear scale, 0 .. ${headMax} ${formatValue(vmax)} \u00b7 ${sink}${quantity}` };
}
