"""PatchingView and LogitLensView front ends on the static harness (real
Chromium, real Python widget, no Jupyter): the patching heatmaps fill in
while the sweep streams (grey cells give way to colour, progress counts up)
and cancel stops it; the logit lens paints its cells, labels them with the
top token and its tooltip shows the engine's numbers."""

from __future__ import annotations

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


def test_patching_heatmaps_fill_in_as_the_sweep_streams(page: Any, model: Any, monkeypatch: Any) -> None:
    slow_batches(monkeypatch, 0.04)
    grid = ni.patch(model, clean=PROMPT, corrupted=CORRUPTED, target="w5", foil="w9", batch_size=4)
    comm = open_view(page, grid, bundle="patching.js")
    resid = ".nbi-patching canvas[data-kind='resid_pre']"
    seen = []
    while True:
        push_state(page, comm)
        done = int(page.locator(".nbi-patching").get_attribute("data-done"))
        seen.append((done, page.evaluate(GREY, resid)))
        if page.locator(".nbi-patching").get_attribute("data-state") == "done":
            break
        # the next frame: wait for the sweep (a Python thread) to publish more cells or finish
        wait_until(page, lambda: grid.progress["done"] != done or grid.progress["state"] != "running",
                   f"the sweep to move on from {done} cells", timeout_s=30)
    total = grid.progress["total"]
    assert seen[-1][0] == total and seen[-1][1]["grey"] == 0 and seen[-1][1]["coloured"] > 0
    middle = [(done, pixels) for done, pixels in seen if 0 < done < 20]  # resid_pre's 20 cells come first
    assert middle, f"no intermediate frame: {[d for d, _ in seen]}"
    assert all(pixels["grey"] > 0 and pixels["coloured"] > 0 for _, pixels in middle)
    assert page.locator(".nbi-patching progress").evaluate("(p) => [p.value, p.max]") == [total, total]


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


def test_logit_lens_cells_tooltips_and_labels(page: Any, model: Any) -> None:
    view = ni.logit_lens(model, PROMPT, target="w5")
    open_view(page, view, bundle="logit_lens.js")
    canvas = page.locator(".nbi-logit-lens canvas.nbi-heatmap")
    g = canvas.evaluate("(c) => { const r = c.getBoundingClientRect(); return { x: r.left, y: r.top, ...Object.fromEntries(Object.entries(c.dataset).map(([k, v]) => [k, Number(v)])) }; }")
    rows, cols = view.lens.shape
    for row, col in [(0, 0), (rows - 1, cols - 1), (1, 4)]:
        page.mouse.move(g["x"] + g["marginLeft"] + (col + 0.5) * g["plotWidth"] / cols, g["y"] + g["marginTop"] + (row + 0.5) * g["plotHeight"] / rows)
        tip = page.locator(".nbi-logit-lens .nbi-tooltip")
        tip.wait_for(state="visible")
        shown = float(tip.locator(".nbi-tip-value").text_content().split()[-1])
        assert shown == pytest.approx(view.lens.target_probabilities[row, col].item(), rel=1e-3, abs=1e-7)
        assert view.lens.top_tokens[row][col] in tip.locator(".nbi-tip-top").text_content()
    page.locator(".nbi-logit-lens button[data-value='top']").click()
    assert page.locator(".nbi-logit-lens").get_attribute("data-colour") == "top"
