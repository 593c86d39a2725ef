// Round numbers for axes drawn in the DOM (bars with a scale under them).

/** The smallest of 1, 2, 2.5, 5 x 10^k that is >= x (x > 0); 1 for x <= 0. */
export function niceCeil(x: number): number {
  if (!(x > 0) || !Number.isFinite(x)) return 1;
  const mag = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * mag >= x * (1 - 1e-12)) return m * mag;
  return 10 * mag;
}

/** Ticks of a symmetric axis -span .. span: five evenly spaced values. */
export function symmetricTicks(span: number): number[] {
  return [-span, -span / 2, 0, span / 2, span];
}

/** A tick label without float noise (2.5, not 2.5000000000000004). */
export function tickLabel(value: number): string {
  if (value === 0) return "0";
  return String(Number(value.toPrecision(3)));
}
