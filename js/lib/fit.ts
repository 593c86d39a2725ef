// Fitting a wide map (one column per token) into the width a notebook's
// output area gives it: the whole prompt visible at once, labels every k-th
// column (the heatmap's axis ticks), every token whole on hover, wheel to
// zoom in; only past a least readable column width does the map scroll
// sideways instead, inside its own box, never spilling out of the output.

/** Column width (CSS px) of a map of `cols` columns: `preferred` when that fits
 *  in `availablePx` beside a `marginPx` label margin, else the widest that
 *  fits, but never under `minPx` (the map then scrolls in its box). */
export function fittedColumnWidth(cols: number, preferred: number, availablePx: number, marginPx: number, minPx = 1): number {
  if (cols <= 0) return preferred;
  const room = Math.floor((availablePx - marginPx) / cols);
  return room >= preferred ? preferred : Math.max(minPx, room);
}

/** Calls `onWidth(px)` with `el`'s content width now (when laid out) and whenever
 *  it changes (a resized browser, a collapsed sidebar); returns the cleanup. */
export function watchWidth(el: HTMLElement, onWidth: (px: number) => void): () => void {
  let last = -1;
  const report = () => {
    const px = el.clientWidth;
    if (px > 0 && px !== last) {
      last = px;
      onWidth(px);
    }
  };
  const view = el.ownerDocument.defaultView;
  if (!view || typeof view.ResizeObserver !== "function") {
    report();
    return () => {};
  }
  const observer = new view.ResizeObserver(report);
  observer.observe(el);
  report();
  return () => observer.disconnect();
}
