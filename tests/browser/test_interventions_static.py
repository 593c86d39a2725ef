"""PatchingView and LogitLensView front ends on the static harness (real
Chromium, real Python widget, no Jupyter): the patching heatmaps fill in
while the sweep streams (grey cells give way to colour, progress counts up)
and cancel stops it; the logit lens paints its cells, labels them with the
top token and its tooltip shows the engine's numbers."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

import nbinterp as ni
import nbinterp.analysis.patching_sweep as patching_sweep
from conftest import PROMPT, random_model, word_tokenizer
from harness import open_view, push_state, wait_until

CORRUPTED = "w5 w17 w3 w42 w9 w5 w17 w4 w28 w11"
GREY = """(sel) => {
  const canvas = document.querySelector(sel);
  const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
  let grey = 0, coloured = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i] === 230 && data[i + 1] === 230 && data[i + 2] === 230) grey++;
    else if (data[i + 3] > 0 && !(data[i] === data[i + 1] && data[i + 1] === data[i + 2])) coloured++;
  }
  return { grey, coloured };
}"""


@pytest.fixture(scope="module")
def model() -> Any:
    return ni.load(random_model("gpt2"), tokenizer=word_tokenizer())




def slow_batches(monkeypatch: Any, seconds: float) -> None:
    effects_of = patching_sweep.effects_of

    def slowed(*args: Any, **kwargs: Any) -> Any:
        time.sleep(seconds)
        return effects_of(*args, **kwargs)

    monkeypatch.setattr(patching_sweep, "effects_of", slowed)


# One snapshot in one JS task: the pixels of every map and the legend drawn
# with them (a toggle's reply can bring newer cells at any later moment).
SNAPSHOT = f"""(sels) => {{
  const count = {GREY};
  const root = document.querySelector('.nbi-patching');
  let grey = 0, coloured = 0;
  for (const sel of sels) {{ const c = count(sel); grey += c.grey; coloured += c.coloured; }}
  return {{ show: root.dataset.show, legend: root.querySelector('.nbi-legend').textContent, grey, coloured }};
}}"""


def measured_in_legend(legend: str, cells: int) -> int:
    """The legend's count of measured cells (0: the estimate alone)."""
    if "estimated (attribution patching)" in legend:
        return 0
    found = re.search(rf"(\d+) of {cells} cells measured, the rest estimated", legend)
    assert found, legend
    return int(found.group(1))


def test_patching_heatmaps_fill_in_as_the_sweep_streams(page: Any, model: Any, monkeypatch: Any) -> None:
    """The first paint is the estimate of every cell ("best" mode has no grey cell
    in any frame); "measured only" fills in as the sweep streams; the legend
    counts the measured cells as Python publishes them."""
    slow_batches(monkeypatch, 0.04)
    grid = ni.patch(model, clean=PROMPT, corrupted=CORRUPTED, target="w5", foil="w9", batch_size=4)
    comm = open_view(page, grid, bundle="patching.js")
    root = page.locator(".nbi-patching")
    canvases = [f".nbi-patching canvas[data-kind='{kind}']" for kind in grid.kinds]
    cells = sum(values.numel() for values in grid.estimates.values())
    seen: dict[str, list[tuple[int, dict[str, Any]]]] = {"best": [], "measured": []}
    while True:
        push_state(page, comm)
        state = root.get_attribute("data-state")
        for mode in ("measured", "best"):
            page.locator(f".nbi-patching .nbi-show button[data-value='{mode}']").click()
            shot = page.evaluate(SNAPSHOT, canvases)
            assert shot["show"] == mode
            seen[mode].append((measured_in_legend(shot["legend"], cells), shot))
        if state == "done":
            break
        # the next frame: wait for the sweep (a Python thread) to publish more cells or finish
        done = grid.progress["done"]
        wait_until(page, lambda: grid.progress["done"] != done or grid.progress["state"] != "running",
                   f"the sweep to move on from {done} cells", timeout_s=30)
    push_state(page, comm)
    total = grid.progress["total"]
    assert total == cells and grid.show == "best"  # the toggle reached Python
    assert root.get_attribute("data-done") == str(total)
    assert all(shot["grey"] == 0 and shot["coloured"] > 0 for _, shot in seen["best"]), "an estimate is drawn for every cell"
    middle = [(n, shot) for n, shot in seen["measured"] if 0 < n < total]
    assert middle, f"no intermediate frame: {[n for n, _ in seen['measured']]}"
    assert all(shot["grey"] > 0 and shot["coloured"] > 0 for _, shot in middle), middle
    assert seen["measured"][-1][0] == total and seen["measured"][-1][1]["grey"] == 0 and seen["measured"][-1][1]["coloured"] > 0
    assert page.locator(".nbi-patching progress").evaluate("(p) => [p.value, p.max]") == [total, total]


def hover_tip(page: Any, kind: str, row: int, col: int, rows: int, cols: int) -> dict[str, str]:
    """Hovers one cell and returns the tooltip's lines by what they say."""
    page.mouse.move(0, 0)
    canvas = page.locator(f".nbi-patching canvas[data-kind='{kind}']")
    canvas.scroll_into_view_if_needed()
    g = canvas.evaluate("(c) => { const r = c.getBoundingClientRect(); return { x: r.left, y: r.top, ...Object.fromEntries(Object.entries(c.dataset).map(([k, v]) => [k, Number(v)])) }; }")
    page.mouse.move(g["x"] + g["marginLeft"] + (col + 0.5) * g["plotWidth"] / cols, g["y"] + g["marginTop"] + (row + 0.5) * g["plotHeight"] / rows)
    tip = page.locator(".nbi-patching .nbi-tooltip")
    tip.wait_for(state="visible")
    lines = tip.locator(".nbi-tip-value").all_text_contents() + tip.locator(".nbi-status").all_text_contents()
    key = lambda line: "difference" if line.startswith("measured \u2212") else line.split()[0].rstrip(":")  # noqa: E731
    return {key(line): line for line in lines}


def number_after(line: str, word: str) -> float:
    return float(line.split(word, 1)[1].split()[0])


def test_patching_shows_pythons_estimate_then_its_measurement(page: Any, model: Any) -> None:
    """exact=False paints the estimates only; after resume the same cell shows
    the measured value. The cell is the one where the two differ most, so a view
    that drew one in place of the other fails."""
    reference = ni.patch(model, clean=PROMPT, corrupted=CORRUPTED, target="w5", foil="w9", background=False)
    gap = (reference.effects["head"] - reference.estimates["head"]).abs()
    row, col = divmod(int(gap.argmax()), gap.shape[1])
    estimate, measured = reference.estimates["head"][row, col].item(), reference.effects["head"][row, col].item()
    assert abs(measured - estimate) > 1e-2 * max(abs(measured), abs(estimate)), "this model's estimate is exact here: pick another cell"
    close = lambda v: pytest.approx(v, rel=1e-3, abs=1e-6)  # noqa: E731 (the view prints 4 significant digits)

    grid = ni.patch(model, clean=PROMPT, corrupted=CORRUPTED, target="w5", foil="w9", exact=False)
    comm = open_view(page, grid, bundle="patching.js")
    root = page.locator(".nbi-patching")
    cells = sum(values.numel() for values in grid.estimates.values())
    assert root.get_attribute("data-state") == "cancelled" and root.get_attribute("data-done") == "0"
    assert "estimated (attribution patching)" in root.locator(".nbi-legend").text_content()
    tip = hover_tip(page, "head", row, col, model.n_layers, model.n_heads)
    assert tip["measured"] == "measured: not yet"
    assert number_after(tip["estimate"], "estimate ") == close(grid.estimates["head"][row, col].item()) == close(estimate)
    assert number_after(tip["drawn"], "drawn: ") == close(estimate)

    page.locator(".nbi-patching button.nbi-resume").click()
    wait_until(page, lambda: grid.progress.get("state") == "done", "the resumed sweep to finish", timeout_s=30)
    push_state(page, comm)
    assert f"{cells} of {cells} cells measured" in root.locator(".nbi-legend").text_content()
    tip = hover_tip(page, "head", row, col, model.n_layers, model.n_heads)
    assert number_after(tip["measured"], "measured ") == close(grid.effects["head"][row, col].item()) == close(measured)
    assert number_after(tip["estimate"], "estimate ") == close(estimate)
    assert number_after(tip["drawn"], "drawn: ") == close(measured)
    assert number_after(tip["difference"], "estimate ") == pytest.approx(measured - estimate, rel=1e-3, abs=1e-5)
    page.locator(".nbi-patching .nbi-show button[data-value='difference']").click()
    tip = hover_tip(page, "head", row, col, model.n_layers, model.n_heads)
    assert number_after(tip["drawn"], "drawn: ") == pytest.approx(measured - estimate, rel=1e-3, abs=1e-5)
    assert "measured \u2212 estimate" in root.locator(".nbi-legend").text_content() and grid.show == "difference"


def test_cancel_stops_the_sweep_and_resume_finishes_it(page: Any, model: Any, monkeypatch: Any) -> None:
    slow_batches(monkeypatch, 0.05)
    grid = ni.patch(model, clean=PROMPT, corrupted=CORRUPTED, target="w5", foil="w9", batch_size=2)
    comm = open_view(page, grid, bundle="patching.js")
    page.locator(".nbi-patching button.nbi-cancel").click()
    assert grid.wait(10) is False
    push_state(page, comm)
    root = page.locator(".nbi-patching")
    assert root.get_attribute("data-state") == "cancelled"
    assert int(root.get_attribute("data-done")) == grid.progress["done"] < grid.progress["total"]
    assert page.locator(".nbi-patching button.nbi-cancel").is_hidden()
    page.locator(".nbi-patching button.nbi-resume").click()
    assert grid.wait(30) is True
    push_state(page, comm)
    assert root.get_attribute("data-state") == "done"


CANVAS_GEOMETRY = "(c) => { const r = c.getBoundingClientRect(); return { x: r.left, y: r.top, ...Object.fromEntries(Object.entries(c.dataset).map(([k, v]) => [k, Number(v)])) }; }"


def hover_lens_cell(page: Any, row: int, col: int, rows: int, cols: int) -> Any:
    """Moves the mouse over one cell of the lens heatmap; returns the tooltip."""
    g = page.locator(".nbi-logit-lens canvas.nbi-heatmap").evaluate(CANVAS_GEOMETRY)
    page.mouse.move(g["x"] + g["marginLeft"] + (col + 0.5) * g["plotWidth"] / cols, g["y"] + g["marginTop"] + (row + 0.5) * g["plotHeight"] / rows)
    tip = page.locator(".nbi-logit-lens .nbi-tooltip")
    tip.wait_for(state="visible")
    return tip


def test_logit_lens_cells_tooltips_and_labels(page: Any, model: Any) -> None:
    view = ni.logit_lens(model, PROMPT, target="w5")
    # The harness renders one snapshot of the state: wait for the streamed rows so every cell has its numbers
    # (the pending cells' own tooltip is the next test's).
    assert view.wait(30) is True
    open_view(page, view, bundle="logit_lens.js")
    assert page.locator(".nbi-logit-lens").get_attribute("data-progress") == f"{view.progress['total']}/{view.progress['total']}:done"
    rows, cols = view.lens.shape
    for row, col in [(0, 0), (rows - 1, cols - 1), (1, 4)]:
        tip = hover_lens_cell(page, row, col, rows, cols)
        shown = float(tip.locator(".nbi-tip-value").text_content().split()[-1])
        assert shown == pytest.approx(view.lens.target_probabilities[row, col].item(), rel=1e-3, abs=1e-7)
        assert view.lens.top_tokens[row][col] in tip.locator(".nbi-tip-top").text_content()
    page.locator(".nbi-logit-lens button[data-value='top']").click()
    assert page.locator(".nbi-logit-lens").get_attribute("data-colour") == "top"


def test_logit_lens_pending_cells_say_not_computed_then_fill_in(page: Any, model: Any) -> None:
    """Opened while rows are still pending, a pending cell's tooltip says so (no number), the progress line says
    what is pending; once the rows land and reach the page the same cell shows the engine's numbers."""
    with model.lock:  # the streaming thread takes this lock per chunk: holding it keeps the rows pending
        view = ni.logit_lens(model, PROMPT, target="w5")
        comm = open_view(page, view, bundle="logit_lens.js")
        first = view.first_paint
        rows, cols = first.shape
        pending = [(r, c) for r in range(rows) for c in range(cols) if not bool(first.computed[r, c])]
        assert (0, 0) in pending and bool(first.computed[:, -1].all()) and bool(first.computed[-1].all())
        root = page.locator(".nbi-logit-lens")
        assert root.get_attribute("data-progress").endswith(":running")
        assert "streaming in" in root.locator(".nbi-strip-caption").text_content()
        tip = hover_lens_cell(page, 0, 0, rows, cols)
        assert "not computed yet" in tip.locator(".nbi-tip-where").text_content()
        assert tip.locator(".nbi-tip-value").count() == 0 and tip.locator(".nbi-tip-top").count() == 0
        tip = hover_lens_cell(page, 0, cols - 1, rows, cols)  # the first paint's last position has numbers
        assert float(tip.locator(".nbi-tip-value").text_content().split()[-1]) == pytest.approx(
            first.target_probabilities[0, cols - 1].item(), rel=1e-3, abs=1e-7)
    assert view.wait(30) is True
    push_state(page, comm)
    assert root.get_attribute("data-progress") == f"{rows}/{rows}:done"
    assert root.locator(".nbi-strip-caption").text_content() == ""
    page.mouse.move(0, 0)
    tip = hover_lens_cell(page, 0, 0, rows, cols)
    assert "not computed" not in tip.locator(".nbi-tip-where").text_content()
    assert float(tip.locator(".nbi-tip-value").text_content().split()[-1]) == pytest.approx(
        view.lens.target_probabilities[0, 0].item(), rel=1e-3, abs=1e-7)
    assert view.lens.top_tokens[0][0] in tip.locator(".nbi-tip-top").text_content()
