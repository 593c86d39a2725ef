"""AttributionView front end on the static harness (real Chromium, real
Python widget, no Jupyter): it paints the signed head grid and the edge
matrix, a click in the ranked list moves Python's selection, and "verify
top k" runs the exact knockouts and shows the summary Python computed."""

from __future__ import annotations

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

    # the list says which effects are exact knockouts and which are estimates
    measured = [bool(view.attribution.exact[e[:4]]) for e in view.edges[:3]]
    cells = [page.locator(".nbi-list tbody tr").nth(i).locator("td").nth(4).inner_text() for i in range(3)]
    assert cells == ["exact" if m else "estimate" for m in measured]

    page.get_by_role("button", name="linear").click()
    assert view.method == "linear"
    page.evaluate("window.nbiCleanup()")
    assert page.locator(".nbi-attribution").count() == 0
