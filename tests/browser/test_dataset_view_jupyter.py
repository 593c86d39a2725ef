"""DatasetView end to end in real JupyterLab: the patching grid over
counterfactual pairs streams to done, a cell click lists its pairs from the
kernel, and a pair click renders the single-prompt patching view of that pair
inside the grid's output (through the host's widget manager, which the static
harness does not have)."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from conftest import NotebookPage, open_notebook

SETUP_CELL = '''
import nbinterp as ni
from nbinterp.analysis.datasets import PromptSet
from nbinterp.bundled import tasks
model = ni.load()
data = PromptSet.from_templates(tasks.BIAS_TEMPLATES, attribute="clan", groups=tasks.GROUP_CLANS,
                                fillers={"given": tasks.BIAS_TEST_GIVEN_NAMES[:2]}, target="doctor", foil="nurse")
view = ni.patch(model, data, kinds=["resid_pre", "head"])
view
'''
VIEW = ".nbi-dataset"


@pytest.fixture(scope="module")
def notebook(browser: Any, jupyter_factory: Any) -> Iterator[NotebookPage]:
    yield from open_notebook(browser, jupyter_factory, "lab", "dataset.ipynb", SETUP_CELL, f"{VIEW}[data-state='done']")


def test_a_pair_opens_the_single_prompt_patching_view_below(notebook: NotebookPage) -> None:
    page = notebook.page
    pairs = int(notebook.execute("print(view.progress['total'])"))
    assert page.locator(VIEW).get_attribute("data-done") == str(pairs) == "12"
    # the resid_pre cell with the largest mean: layer 0 at the clan token
    row, col, rows, cols = (int(v) for v in notebook.execute(
        "g = view.result.grid(0); i = int(g.nan_to_num(0).abs().argmax()); print(i // g.shape[1], i % g.shape[1], *g.shape)").split())
    canvas = f"{VIEW} canvas[data-panel='0']"
    page.locator(canvas).scroll_into_view_if_needed()
    g = page.evaluate("""(sel) => {
      const c = document.querySelector(sel); const r = c.getBoundingClientRect();
      return { x: r.left, y: r.top, ...Object.fromEntries(Object.entries(c.dataset).map(([k, v]) => [k, Number(v)])) };
    }""", canvas)
    page.mouse.click(g["x"] + g["marginLeft"] + (col + 0.5) * g["plotWidth"] / cols,
                     g["y"] + g["marginTop"] + (row + 0.5) * g["plotHeight"] / rows)
    listed = page.locator(f"{VIEW} .nbi-rows tr.nbi-row")
    listed.first.wait_for(timeout=20_000)
    expected = notebook.execute(f"print(view.cell_rows({row * cols + col})[0][1])").strip()
    assert listed.first.locator("td").nth(2).inner_text() == expected
    assert listed.first.locator("td").nth(1).inner_text() == "A \u2192 B"
    listed.first.click()
    opened = page.locator(f"{VIEW} .nbi-opened .nbi-patching[data-drawn]")
    opened.wait_for(timeout=60_000)
    clean, corrupted = expected.split(" \u2192 ")
    assert notebook.execute("print(type(view.opened).__name__)").strip() == "PatchingView"
    assert notebook.execute("print(view.opened._clean_prompt)").strip() == clean
    assert "opened pair" in page.locator(f"{VIEW} .nbi-opened-caption").inner_text()
    assert notebook.unexpected_page_errors() == []
