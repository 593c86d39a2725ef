"""DatasetView front end on the static harness (real Chromium, real Python
widget, no Jupyter): the grid of means, a cell's tooltip (mean, 95% interval,
sign agreement, spread) equal to Python's statistics, a click listing the
cell's rows by value, a row click opening the single-prompt view in Python,
and resume after a cancel filling the grid."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import nbinterp as ni
from harness import open_view, push_state, wait_until
from nbinterp.analysis.datasets import PromptSet
from nbinterp.bundled import tasks

ROOT = ".nbi-dataset"


def bias_set(n_given: int) -> PromptSet:
    return PromptSet.from_templates(tasks.BIAS_TEMPLATES, attribute="clan", groups=tasks.GROUP_CLANS,
                                    fillers={"given": tasks.BIAS_TEST_GIVEN_NAMES[:n_given]}, target="doctor", foil="nurse")


@pytest.fixture(scope="module")
def model() -> Any:
    torch.set_num_threads(1)
    return ni.load()


def cell_centre(page: Any, panel: int, row: int, col: int, rows: int, cols: int) -> tuple[float, float]:
    canvas = f"{ROOT} canvas[data-panel='{panel}']"
    page.locator(canvas).scroll_into_view_if_needed()
    g = page.evaluate("""(sel) => {
      const c = document.querySelector(sel); const r = c.getBoundingClientRect();
      return { x: r.left, y: r.top, ...Object.fromEntries(Object.entries(c.dataset).map(([k, v]) => [k, Number(v)])) };
    }""", canvas)
    return (g["x"] + g["marginLeft"] + (col + 0.5) * g["plotWidth"] / cols,
            g["y"] + g["marginTop"] + (row + 0.5) * g["plotHeight"] / rows)


def number_after(text: str, word: str) -> float:
    return float(text.split(word, 1)[1].split()[0].strip("[],"))


def test_hover_shows_python_statistics_and_a_click_lists_and_opens_rows(page: Any, model: Any) -> None:
    view = ni.attribute(model, bias_set(2), background=False)
    result = view.result
    open_view(page, view, bundle="dataset.js")
    root = page.locator(ROOT)
    assert root.get_attribute("data-state") == "done" and root.get_attribute("data-done") == str(len(result.texts))
    assert "mean over 24 rows" in root.locator(".nbi-legend").inner_text()
    assert "when the head is zero-ablated (exact)" in root.locator(".nbi-summary").inner_text()

    grid = result.grid()
    layer, head = divmod(int(grid.abs().argmax()), grid.shape[1])
    cell = result.panels[0].cell(layer, head)
    s = result.stats
    x, y = cell_centre(page, 0, layer, head, *grid.shape)
    page.mouse.move(x, y)
    tip = page.locator(f"{ROOT} .nbi-tooltip")
    tip.wait_for(state="visible")
    text = tip.inner_text()
    # float32 on the wire, 4 significant digits on screen
    assert number_after(text, "mean ") == pytest.approx(float(s.mean[cell]), rel=1e-3)
    assert f"over {int(s.n[cell])} rows" in text
    assert number_after(text, "95% CI [") == pytest.approx(float(s.low[cell]), rel=1e-3)
    assert number_after(text.split("95% CI [")[1], ", ") == pytest.approx(float(s.high[cell]), rel=1e-3)
    assert f"sign agreement: {round(100 * float(s.agree[cell]))}% of rows" in text
    assert number_after(text, "median ") == pytest.approx(float(s.median[cell]), rel=1e-3)
    assert number_after(text, "max ") == pytest.approx(float(s.maximum[cell]), rel=1e-3)

    page.mouse.click(x, y)
    rows = page.locator(f"{ROOT} .nbi-rows tr.nbi-row")
    wait_until(page, lambda: rows.count() == int(s.n[cell]), "the cell's rows listed")
    expected = view.cell_rows(cell)
    assert [int(u) for u in rows.evaluate_all("rs => rs.map(r => r.dataset.unit)")] == [u for u, _, _ in expected]
    assert rows.first.locator("td").nth(2).inner_text() == expected[0][1]
    assert f"layer {layer}" in page.locator(f"{ROOT} .nbi-rows-caption").inner_text()
    rows.nth(2).click()
    wait_until(page, lambda: view.opened is not None, "the single-prompt view opened in Python")
    assert type(view.opened).__name__ == "AttributionView"
    assert (view.opened.layer, view.opened.head) == (layer, head)
    assert view.selected == {"cell": cell, "unit": expected[2][0]}


def test_resume_after_a_cancel_fills_the_grid(page: Any, model: Any) -> None:
    view = ni.attribute(model, bias_set(4))
    view.cancel()
    view.wait()
    done = view.effects.done
    comm = open_view(page, view, bundle="dataset.js")
    root = page.locator(ROOT)
    if done < view.effects.total:  # the usual case: stopped after the first chunk
        assert root.get_attribute("data-state") == "cancelled"
        assert f"cancelled: {done} rows kept" in root.locator(".nbi-progress").inner_text()
        assert root.locator(".nbi-resume").is_visible() and not root.locator(".nbi-cancel").is_visible()
        root.locator(".nbi-resume").click()
    wait_until(page, lambda: view.wait(timeout=0.05) and not view.running, "every row computed and published", timeout_s=60)
    push_state(page, comm)
    wait_until(page, lambda: root.get_attribute("data-state") == "done", "the done state drawn")
    total = view.effects.total
    assert root.get_attribute("data-done") == str(total)
    assert root.locator("progress").evaluate("p => [p.value, p.max]") == [total, total]
    assert f"mean over {total} rows" in root.locator(".nbi-legend").inner_text()
