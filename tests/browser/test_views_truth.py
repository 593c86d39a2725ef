"""What the attention, patching, ablation and logit-lens views show is what
the numbers are (static harness: real Chromium, real Python widget).

Each test pins one thing a user saw go wrong: a long prompt drawn near black,
masked cells looking like zero attention, not-computed cells looking like zero
effect, a colour scale that moved while cells streamed in, a stale caption and
markers, short map strips, target/foil rows missing, tooltips cut off."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
import torch
import transformers as tf

import nbinterp as ni
import nbinterp.analysis.patching_sweep as patching_sweep
from conftest import PROMPT, random_model, word_tokenizer
from harness import open_view, push_state

CORRUPTED = "w5 w17 w3 w42 w9 w5 w17 w4 w28 w11"
N_LONG = 113
VIRIDIS_DARKEST = (68, 1, 84)

PIXEL = """([sel, x, y]) => {
  const c = document.querySelector(sel);
  const dpr = c.width / c.getBoundingClientRect().width;
  return [...c.getContext('2d').getImageData(Math.round(x * dpr), Math.round(y * dpr), 1, 1).data.slice(0, 3)];
}"""
DARK_FRACTION = """(sel) => {
  const c = document.querySelector(sel);
  const { data } = c.getContext('2d').getImageData(0, 0, c.width, c.height);
  let dark = 0, painted = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] === 0 || (data[i] === data[i + 1] && data[i + 1] === data[i + 2])) continue; // background, text, hatching
    painted++;
    if (Math.abs(data[i] - 68) + Math.abs(data[i + 1] - 1) + Math.abs(data[i + 2] - 84) < 40) dark++;
  }
  return dark / Math.max(painted, 1);
}"""
RED_MARKER = """(sel) => {
  const c = document.querySelector(sel);
  const { data } = c.getContext('2d').getImageData(0, 0, c.width, c.height);
  let n = 0;
  for (let i = 0; i < data.length; i += 4) if (data[i] === 224 && data[i + 1] === 17 && data[i + 2] === 95) n++;
  return n;
}"""


def dataset(page: Any, selector: str) -> dict[str, Any]:
    return page.locator(selector).evaluate(
        "(c) => { const r = c.getBoundingClientRect(); return { x: r.left, y: r.top, ...c.dataset }; }")


def cell_centre(g: dict[str, Any], row: int, col: int, rows: int, cols: int) -> tuple[float, float]:
    return (float(g["marginLeft"]) + (col + 0.5) * float(g["plotWidth"]) / cols,
            float(g["marginTop"]) + (row + 0.5) * float(g["plotHeight"]) / rows)


@pytest.fixture(scope="module")
def model() -> Any:
    return ni.load(random_model("gpt2"), tokenizer=word_tokenizer())


@pytest.fixture(scope="module")
def long_view() -> Any:
    # Random init without sharpening: near-uniform attention, ~1/(q+1) per key.
    torch.manual_seed(0)
    config = tf.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=128, vocab_size=64)
    long_model = ni.load(tf.GPT2LMHeadModel(copy.deepcopy(config)).eval(), tokenizer=word_tokenizer())
    return ni.attention(long_model, " ".join(f"w{(i * 7) % 64}" for i in range(N_LONG)), layer=1, head=2)


def test_long_prompt_attention_is_readable_with_a_named_scale_and_masked_cells(page: Any, long_view: Any) -> None:
    open_view(page, long_view)
    root = page.locator(".nbi-attention")
    assert long_view.color_scale == "log" and root.get_attribute("data-scale") == "log"
    legend = page.locator(".nbi-attention .nbi-legend").text_content()
    assert "(log scale)" in legend and "masked (cannot attend)" in legend and "measured" in legend
    assert "each head \u00f7 its own max" in page.locator(".nbi-grid-caption").text_content()
    heatmap = "canvas.nbi-heatmap"
    g = dataset(page, heatmap)
    assert int(g["maskedPixels"]) > 0
    # Row 100 attends ~1/101 to each key: visible on log, near black on linear.
    x, y = cell_centre(g, 100, 5, N_LONG, N_LONG)
    on_log = page.evaluate(PIXEL, [heatmap, x, y])
    dark_log = page.evaluate(DARK_FRACTION, "canvas.nbi-head-grid")
    page.locator(".nbi-attention button[data-value='linear']").click()
    page.wait_for_function("() => document.querySelector('.nbi-attention').dataset.scale === 'linear'")
    assert long_view.color_scale == "linear"
    on_linear = page.evaluate(PIXEL, [heatmap, x, y])
    dark_linear = page.evaluate(DARK_FRACTION, "canvas.nbi-head-grid")
    distance = lambda rgb: sum(abs(a - b) for a, b in zip(rgb, VIRIDIS_DARKEST))  # noqa: E731
    assert distance(on_linear) < 30 < 120 < distance(on_log), (on_linear, on_log)
    assert dark_linear > 0.5 > 0.1 > dark_log, (dark_linear, dark_log)
    assert "(linear scale)" in page.locator(".nbi-attention .nbi-legend").text_content()
    # A masked cell (key after the query) is drawn hatched near-white, not a scale colour.
    mx, my = cell_centre(g, 5, 100, N_LONG, N_LONG)
    masked_rgb = page.evaluate(PIXEL, [heatmap, mx, my])
    assert min(masked_rgb) > 180 and max(masked_rgb) - min(masked_rgb) < 8, masked_rgb
    page.mouse.move(g["x"] + mx, g["y"] + my)
    assert "cannot attend" in page.locator(".nbi-attention .nbi-tooltip").text_content()


def test_axis_labels_are_dense_where_space_allows_and_keep_their_cells_when_zoomed(page: Any, long_view: Any) -> None:
    open_view(page, long_view)
    g = dataset(page, "canvas.nbi-heatmap")
    ticks = [int(t) for t in g["colTicks"].split(",")]
    assert ticks[1] - ticks[0] <= 2, "113 tokens: at least every 2nd index"
    page.mouse.move(g["x"] + float(g["marginLeft"]) + 200, g["y"] + float(g["marginTop"]) + 200)
    for _ in range(4):
        page.mouse.wheel(0, -100)
    page.wait_for_function("() => document.querySelector('canvas.nbi-heatmap').dataset.rowTicks.split(',').length > 0")
    zoomed = dataset(page, "canvas.nbi-heatmap")
    rows = [int(t) for t in zoomed["rowTicks"].split(",")]
    step = rows[1] - rows[0]
    assert step == 1 or all(r % step == 0 for r in rows), rows  # labels on their own multiples
    page.mouse.move(g["x"] + float(g["marginLeft"]) + 200, g["y"] + float(g["marginTop"]) + 200)
    page.mouse.down()
    page.mouse.move(g["x"] + float(g["marginLeft"]) + 150, g["y"] + float(g["marginTop"]) + 140, steps=5)
    page.mouse.up()
    panned = [int(t) for t in dataset(page, "canvas.nbi-heatmap")["rowTicks"].split(",")]
    assert panned != rows and all(r % step == 0 for r in panned)


def slow_batches(monkeypatch: Any, seconds: float) -> None:
    effects_of = patching_sweep.effects_of

    def slowed(*args: Any, **kwargs: Any) -> Any:
        time.sleep(seconds)
        return effects_of(*args, **kwargs)

    monkeypatch.setattr(patching_sweep, "effects_of", slowed)


def test_patching_scale_is_fixed_estimates_fill_every_cell_and_one_marker(page: Any, model: Any, monkeypatch: Any) -> None:
    slow_batches(monkeypatch, 0.04)
    grid = ni.patch(model, clean=PROMPT, corrupted=CORRUPTED, target="w5", foil="w9", batch_size=4)
    comm = open_view(page, grid, bundle="patching.js")
    resid, head = "canvas[data-kind='resid_pre']", "canvas[data-kind='head']"
    ends, missing, frames = set(), [], 0
    while page.locator(".nbi-patching").get_attribute("data-state") != "done":
        push_state(page, comm)
        ends.add((page.locator(".nbi-patching .nbi-legend-min").text_content(), page.locator(".nbi-patching .nbi-legend-max").text_content()))
        # the first paint is the estimate: no cell waits hatched for its measurement
        missing += [int(dataset(page, sel).get("missingPixels", "0")) for sel in (resid, head)]
        frames += 1
        time.sleep(0.05)
    push_state(page, comm)
    assert frames > 1 and ends == {("-1.000", "1.000")} and set(missing) == {0}, (frames, ends, missing)
    legend = page.locator(".nbi-patching .nbi-legend").text_content()
    assert "no number in this mode" in legend and "beyond \u00b11" in legend and "measured" in legend
    # every cell measured now: "measured only" hatches none (mid-sweep it does: test_interventions_static)
    page.locator(".nbi-patching .nbi-show button[data-value='measured']").click()
    assert int(dataset(page, head)["missingPixels"]) == 0 and grid.show == "measured"
    page.locator(".nbi-patching .nbi-show button[data-value='best']").click()
    assert int(dataset(page, head)["missingPixels"]) == 0
    expected_clipped = int((grid.effects["resid_pre"].abs() > 1).sum())
    assert int(dataset(page, resid)["clipped"]) == expected_clipped
    for sel in (resid, head):
        g = dataset(page, sel)
        assert g["rowTicks"] == ",".join(str(l) for l in range(model.n_layers))  # every layer labelled
        assert float(g["plotHeight"]) / model.n_layers >= 16
    # Two clicks in two maps: one marker, and the caption names the last click.
    for sel, (row, col), rows, cols in ((resid, (1, 4), model.n_layers, 10), (head, (0, 3), model.n_layers, model.n_heads)):
        g = dataset(page, sel)
        x, y = cell_centre(g, row, col, rows, cols)
        page.mouse.click(g["x"] + x, g["y"] + y)
        page.wait_for_function("(want) => document.querySelector('.nbi-patching').dataset.selected === want",
                               arg=f"{g['kind']}:{row}:{col}", timeout=20_000)
        push_state(page, comm)
    assert page.evaluate(RED_MARKER, resid) == 0 < page.evaluate(RED_MARKER, head)
    assert page.locator(".nbi-opened-caption").text_content().startswith("opened heads (all positions) \u00b7 layer 0 head 3")


def test_ablation_shows_target_and_foil_rows_ticks_only_when_ablated_and_a_scaled_bar(page: Any, model: Any) -> None:
    panel = ni.ablate(model, PROMPT, target="w5", foil="w9", k=1)
    open_view(page, panel, bundle="ablation.js")
    after = page.locator(".nbi-ablation .nbi-topk-after")
    assert after.locator(".nbi-tick").count() == 0, "nothing ablated: no 'before' ticks"
    axis = page.locator(".nbi-ablation .nbi-ld-axis span").all_text_contents()
    span = float(page.locator(".nbi-ablation .nbi-ld-axis").get_attribute("data-span"))
    assert len(axis) == 5 and float(axis[0]) == -span and float(axis[-1]) == span
    assert span >= abs(panel.baseline.logit_diff)


def test_ablation_rows_after_an_ablation(browser: Any, model: Any) -> None:
    panel = ni.ablate(model, PROMPT, target="w5", foil="w9", k=1, ablate={"L0.H0": 0.0, "L1.H1": 0.0})
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    open_view(page, panel, bundle="ablation.js")
    for column, summary in ((".nbi-topk-before", panel.baseline), (".nbi-topk-after", panel.result)):
        for role in ("target", "foil"):
            row = page.locator(f".nbi-ablation {column} .nbi-row[data-role='{role}']")
            assert row.count() == 1, (column, role)
            shown = row.locator(".nbi-prob, .nbi-tracked-prob").text_content()
            assert float(shown) == pytest.approx(getattr(summary, role).probability, rel=5e-2, abs=5e-5)
    assert page.locator(".nbi-ablation .nbi-topk-after .nbi-tick").count() >= 3  # ablated: before ticks
    context.close()


def test_logit_lens_tooltip_stays_inside_the_visible_area(browser: Any, model: Any) -> None:
    view = ni.logit_lens(model, PROMPT, target="w5")
    context = browser.new_context(viewport={"width": 560, "height": 250})
    page = context.new_page()
    open_view(page, view, bundle="logit_lens.js")
    g = dataset(page, ".nbi-logit-lens canvas.nbi-heatmap")
    canvas = page.locator(".nbi-logit-lens canvas.nbi-heatmap").bounding_box()
    rows, cols = view.lens.shape
    # The lowest row, at the right edge of what is on screen: the last visible column.
    x = min(canvas["x"] + canvas["width"], 560 - 20) - 4
    y = g["y"] + float(g["marginTop"]) + (rows - 0.5) * float(g["plotHeight"]) / rows
    assert y < 250, "the bottom row must be on screen for this check"
    page.mouse.move(x, y)
    tip = page.locator(".nbi-logit-lens .nbi-tooltip")
    tip.wait_for(state="visible")
    r = tip.bounding_box()
    assert r["x"] >= 0 and r["x"] + r["width"] <= 560 and r["y"] >= 0 and r["y"] + r["height"] <= 250, r
    context.close()
