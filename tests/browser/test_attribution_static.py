"""AttributionView front end on the static harness (real Chromium, real
Python widget, no Jupyter): it paints the signed head grid and the edge
matrix, a click in the ranked list moves Python's selection, "verify top k"
runs the exact knockouts and shows the summary Python computed, the exact
measurements stream in (each number marked measured or estimated), the
labels name the method on screen, and the panels sit side by side at the
widths a notebook gives."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

import nbinterp as ni
from conftest import PROMPT, random_model, word_tokenizer
from harness import open_view, push_state


@pytest.fixture(scope="module")
def model() -> Any:
    return ni.load(random_model("gpt2"), tokenizer=word_tokenizer())




COLOURED = """(sel) => {
  const canvas = document.querySelector(sel);
  const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
  let red = 0, blue = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i] > data[i + 2] + 40) red++;
    if (data[i + 2] > data[i] + 40) blue++;
  }
  return { red, blue };
}"""


def test_paints_selects_and_verifies(page: Any, model: Any) -> None:
    view = ni.attribute(model, PROMPT, target="w5", foil="w9")
    assert view.wait(timeout=120)
    comm = open_view(page, view, bundle="attribution.js")
    root = page.locator(".nbi-attribution")
    assert root.get_attribute("data-matrix") == f"{view.layer}:{view.head}:hybrid"
    heads = view.heads
    grid = page.evaluate(COLOURED, ".nbi-head-grid")
    assert (grid["red"] > 0) == bool((heads > 0).any()) and (grid["blue"] > 0) == bool((heads < 0).any())
    matrix = page.evaluate(COLOURED, ".nbi-heatmap")
    assert matrix["red"] + matrix["blue"] > 0

    # the third ranked edge: a click selects its head and cell in Python
    third = view.edges[2]
    page.locator(".nbi-list tbody tr").nth(2).click()
    assert (view.layer, view.head) == (third.layer, third.head)
    assert view.selected == {"query": third.query, "key": third.key}
    push_state(page, comm)
    page.wait_for_function(f"document.querySelector('.nbi-attribution').dataset.matrix === '{third.layer}:{third.head}:hybrid'")

    page.fill(".nbi-k", "3")
    page.get_by_role("button", name="verify top k").click()
    assert view._verification is not None and view._verification["summary"]["n"] == 12
    push_state(page, comm)
    summary = page.locator(".nbi-summary")
    summary.wait_for()
    spearman = view._verification["summary"]["spearman"]
    assert f"Spearman {spearman:.3f}" in summary.inner_text()
    assert page.locator(".nbi-attribution table").nth(1).locator("tbody tr").count() == 12

    # the hybrid's check is of its estimated entries, and says so
    assert "the hybrid's QK-fix estimates vs measured knockout" in summary.inner_text()
    assert "measured edges left out" in summary.inner_text()

    # the list says which effects are measured knockouts and which are estimates
    n_rows = page.locator(".nbi-list tbody tr").count()
    edges = view.top_edges(n_rows)
    cells = [page.locator(".nbi-list tbody tr").nth(i).locator("td").nth(4).inner_text() for i in range(n_rows)]
    assert cells == [view.result.edge_status(*e[:4]) for e in edges] and "measured" in cells
    assert all((cell == "measured") == e.measured for cell, e in zip(cells, edges))

    page.get_by_role("button", name="linear").click()
    assert view.method == "linear"
    push_state(page, comm)
    page.wait_for_function("document.querySelector('.nbi-attribution').dataset.matrix.endsWith(':linear')")
    # every label now names the linear method; the old check says it was of the hybrid's numbers
    assert "estimated (gradient x activation)" in page.locator(".nbi-grid-box .nbi-legend").inner_text()
    assert "linear" in page.locator(".nbi-list-box .nbi-strip-caption").inner_text()
    assert "linear estimate" in page.locator(".nbi-map-box .nbi-legend").inner_text()
    assert "this check was of the hybrid" in summary.inner_text() and "now shows linear" in summary.inner_text()
    page.evaluate("window.nbiCleanup()")
    assert page.locator(".nbi-attribution").count() == 0


def test_measurements_stream_in_with_progress_and_cancel(page: Any, model: Any, monkeypatch: Any) -> None:
    """The estimates are drawn before anything is measured; the heads and edges
    turn "measured" as the batches arrive; cancel and resume go to Python."""
    from nbinterp.analysis import exact_measurement

    gate = threading.Semaphore(0)
    original = exact_measurement.batch.measure

    def gated(*args: Any, **kwargs: Any) -> Any:
        gate.acquire()
        return original(*args, **kwargs)

    monkeypatch.setattr(exact_measurement.batch, "measure", gated)
    monkeypatch.setattr(exact_measurement.batch, "batch_rows", lambda model, n_tokens: 3)  # 2 heads a forward
    view = ni.attribute(model, PROMPT, target="w5", foil="w9")
    comm = open_view(page, view, bundle="attribution.js")
    root = page.locator(".nbi-attribution")
    total = view.progress["total"]
    assert root.get_attribute("data-progress") == f"0/{total}:running"
    assert "0 / " in page.locator(".nbi-progress").inner_text() and "measuring" in page.locator(".nbi-progress").inner_text()
    assert "0 of 8 heads measured" in page.locator(".nbi-grid-box .nbi-legend").inner_text()
    # nothing measured yet: every entry says it is an estimate, and why
    assert all(t.startswith("estimate (") for t in page.locator(".nbi-list tbody tr td:nth-child(5)").all_inner_texts())

    gate.release()
    while view.attribution.measurement.done < 2:
        threading.Event().wait(0.01)
    page.get_by_role("button", name="cancel").click()
    gate.release()  # the batch that may have started before the cancel
    assert view.wait(timeout=60) is False
    push_state(page, comm)
    page.wait_for_function("document.querySelector('.nbi-attribution').dataset.progress.endsWith(':cancelled')")
    done = view.progress["done"]
    assert f"{done} of 8 heads measured" in page.locator(".nbi-grid-box .nbi-legend").inner_text()
    assert page.get_by_role("button", name="resume").is_visible()

    gate.release(1000)
    page.get_by_role("button", name="resume").click()
    assert view.wait(timeout=120) is True
    push_state(page, comm)
    page.wait_for_function(f"document.querySelector('.nbi-attribution').dataset.progress === '{total}/{total}:done'")
    assert "8 of 8 heads measured" in page.locator(".nbi-grid-box .nbi-legend").inner_text()
    assert "measured" in page.locator(".nbi-list tbody tr td:nth-child(5)").all_inner_texts()
    assert page.locator(".nbi-progress").inner_text().startswith("exact measurements (8 head ablations")
    page.evaluate("window.nbiCleanup()")


@pytest.mark.parametrize("width", [1150, 1500])
def test_head_grid_and_ranked_list_side_by_side_at_notebook_widths(browser: Any, model: Any, width: int) -> None:
    """At 1,100+ px of output the head grid and the ranked list share a row and
    the list starts above the fold; at 1,500 px all three panels do. A
    screenshot is written where NBI_SCREENSHOTS points, to look at."""
    gpt2_sized = ni.attribute(model, PROMPT, target="w5", foil="w9", background=False)
    context = browser.new_context(viewport={"width": width + 16, "height": 800})
    page = context.new_page()
    open_view(page, gpt2_sized, bundle="attribution.js")
    box = {name: page.locator(f".nbi-{name}-box").bounding_box() for name in ("grid", "map", "list")}
    assert abs(box["grid"]["y"] - box["list"]["y"]) < 2, box
    assert box["list"]["x"] > box["grid"]["x"] + box["grid"]["width"]
    assert box["list"]["y"] < 400 and box["list"]["x"] + box["list"]["width"] <= width + 8
    if width >= 1500:
        assert abs(box["map"]["y"] - box["grid"]["y"]) < 2 and box["grid"]["x"] < box["map"]["x"] < box["list"]["x"], box
    else:
        assert box["map"]["y"] > box["grid"]["y"] + 100, box
    where = os.environ.get("NBI_SCREENSHOTS")
    if where:
        page.screenshot(path=str(Path(where) / f"attribution_{width}.png"), full_page=True)
    context.close()


def test_a_long_prompt_shows_the_queries_with_the_largest_effects_and_every_query_on_request(page: Any,
                                                                                             model: Any) -> None:
    from nbinterp.widgets.attribution import edge_matrix

    words = (PROMPT.split() * 5)[:48]  # the model's whole context: rows of the full matrix ~8 px, nearly all pale
    prompt = " ".join(words)
    view = ni.attribute(model, prompt, target="w5", foil="w9", exact_budget=0)
    assert view.wait(timeout=120)
    open_view(page, view, bundle="attribution.js")
    root = page.locator(".nbi-attribution")
    effect = edge_matrix(view.result, view.layer, view.head, view.method)
    n = effect.shape[0]
    peak = effect.abs().amax(dim=1).tolist()
    expected = sorted(sorted(range(n), key=lambda q: (-peak[q], q))[:12])
    key_peak = effect[expected].abs().amax(dim=0).tolist()
    expected_keys = sorted(sorted(range(n), key=lambda k: (-key_peak[k], k))[:32])
    shown = [int(q) for q in root.get_attribute("data-query-rows").split(",")]
    keys = [int(k) for k in root.get_attribute("data-key-columns").split(",")]
    assert shown == expected and keys == expected_keys and n >= 48
    legend = page.locator(".nbi-map-box .nbi-legend").inner_text()
    assert f"shown: the 12 of {n} queries and 32 of {n} keys with the largest |effect|" in legend

    # a drawn cell names its own query and key on hover, and a click selects them in Python
    canvas = page.locator(".nbi-map-box canvas.nbi-heatmap")
    box = canvas.bounding_box()
    d = {k: float(canvas.get_attribute(f"data-{k}")) for k in ("margin-left", "margin-top", "plot-width", "plot-height")}
    row, query = 5, shown[5]
    col = max(c for c, k in enumerate(keys) if k <= query)
    x = box["x"] + d["margin-left"] + (col + 0.5) * d["plot-width"] / len(keys)
    y = box["y"] + d["margin-top"] + (row + 0.5) * d["plot-height"] / len(shown)
    page.mouse.move(x, y)
    tip = page.locator(".nbi-tooltip")
    tip.wait_for(state="visible")
    assert f"query {query} " in tip.inner_text() and f"key {keys[col]} " in tip.inner_text()
    assert "knockout effect" in tip.inner_text()
    page.mouse.click(x, y)
    assert view.selected == {"query": query, "key": keys[col]}

    # every query and key on request: the whole matrix, the legend says nothing of a selection
    page.get_by_role("button", name="every query and key").click()
    page.wait_for_function(f"document.querySelector('.nbi-attribution').dataset.queryRows.split(',').length === {n}")
    assert len(root.get_attribute("data-key-columns").split(",")) == n
    assert "shown: the" not in page.locator(".nbi-map-box .nbi-legend").inner_text()
