"""Long prompts in a narrow output area (static harness, real Chromium, the
bundled model at its full 128-token context): the patching maps and the logit
lens fit the whole prompt in the width they are given (no column narrower than
the least readable width, labels every k-th position up to the last, the last
position reachable and named on hover); where even that width does not fit,
the map scrolls inside its own box and the page itself never scrolls sideways."""

from __future__ import annotations

from typing import Any

import pytest

import nbinterp as ni
from harness import open_view, wait_until
from nbinterp.bundled import tasks

MIN_FIT_COL_PX = 3  # js/patching.ts and js/logit_lens.ts: the least column width before a map scrolls
CONTEXT = 128


@pytest.fixture(scope="module")
def model() -> Any:
    return ni.load()


@pytest.fixture(scope="module")
def prompts(model: Any) -> tuple[str, str]:
    """An IOI prompt after other IOI stories, as many as fit the context; the
    corrupted prompt ends in "gave" instead of "to" (past its ~96 trained
    positions the model's answer hardly depends on the last story's names, but
    the last token moves the metric by ~8: this test is about the layout)."""
    examples = tasks.examples("ioi", 40, seed=1)
    last = examples[0]
    story = ""
    for e in examples[1:]:
        longer = f"{story} {e.prompt} {e.target} ."
        if len(model.tokenizer(f"{longer} {last.prompt}")["input_ids"]) > CONTEXT:
            break
        story = longer
    clean = f"{story} {last.prompt}".strip()
    corrupted = clean.rsplit(" ", 1)[0] + " gave"
    n = len(model.tokenizer(clean)["input_ids"])
    assert CONTEXT - 20 <= n <= CONTEXT and n == len(model.tokenizer(corrupted)["input_ids"])
    return clean, corrupted


def map_geometry(page: Any, selector: str) -> list[dict[str, float]]:
    """Per heatmap canvas: its plot (from the heatmap's own data- attributes),
    where its last column is on screen, and the box it scrolls in."""
    return page.evaluate("""(selector) => [...document.querySelectorAll(selector)].map((c) => {
        const r = c.getBoundingClientRect(), box = c.closest('.nbi-scroll-x').getBoundingClientRect();
        const root = c.closest('.nbi-root').getBoundingClientRect();
        const cols = Number(c.dataset.cols);
        const plotWidth = Number(c.dataset.plotWidth), marginLeft = Number(c.dataset.marginLeft);
        return {kind: c.dataset.kind || '', cols, plotWidth, marginLeft, colPx: plotWidth / cols,
                lastColumnX: r.left + marginLeft + plotWidth - plotWidth / cols / 2, right: r.right,
                boxLeft: box.left, boxRight: box.right, rootRight: root.right,
                ticks: c.dataset.colTicks.split(',').map(Number),
                scrollWidth: c.closest('.nbi-scroll-x').scrollWidth, clientWidth: c.closest('.nbi-scroll-x').clientWidth};
    })""", selector)


def page_scrolls_sideways(page: Any) -> bool:
    return page.evaluate("() => document.scrollingElement.scrollWidth > window.innerWidth + 1")


def test_patching_maps_fit_a_long_prompt_and_scroll_only_past_the_least_width(page: Any, model: Any,
                                                                             prompts: tuple[str, str]) -> None:
    clean, corrupted = prompts
    n_tokens = len(model.tokenizer(clean)["input_ids"])
    page.set_viewport_size({"width": 700, "height": 900})
    last = tasks.examples("ioi", 40, seed=1)[0]
    grid = ni.patch(model, clean=clean, corrupted=corrupted, target=last.target, foil=last.foil, exact=False)
    open_view(page, grid, bundle="patching.js")
    wait_until(page, lambda: page.locator(".nbi-patching[data-fitted-to]").count() == 1, "the maps fitted to the width")
    maps = [m for m in map_geometry(page, "canvas.nbi-heatmap") if m["kind"] != "head"]
    assert len(maps) == 3
    for m in maps:
        assert m["cols"] == n_tokens and m["colPx"] >= MIN_FIT_COL_PX, m
        assert m["colPx"] < 8  # narrowed from the short-prompt width to fit
        assert m["right"] <= m["boxRight"] + 0.5 and m["right"] <= m["rootRight"] + 0.5, m  # nothing cut off
        assert m["boxLeft"] <= m["lastColumnX"] <= m["boxRight"], m  # the last position is on screen
        assert m["scrollWidth"] <= m["clientWidth"], m
        assert m["ticks"][-1] >= n_tokens - 1 - (m["ticks"][1] - m["ticks"][0]), m  # labels run to the end
    assert not page_scrolls_sideways(page)

    # hovering the last position names its token, in full
    canvas = page.locator("canvas.nbi-heatmap[data-kind='resid_pre']")
    m = maps[0]
    box = canvas.bounding_box()
    page.mouse.move(m["lastColumnX"], box["y"] + float(canvas.get_attribute("data-margin-top")) + 4)
    tip = page.locator(".nbi-tooltip")
    wait_until(page, lambda: tip.is_visible(), "the tooltip of the last position")
    assert f"position {n_tokens - 1} {grid.clean_tokens[-1]!r}".replace("'", '"') in tip.inner_text()

    # too narrow for even the least width: each map scrolls in its own box, the page does not
    fitted_before = page.locator(".nbi-patching").get_attribute("data-fitted-to")
    page.set_viewport_size({"width": 360, "height": 900})
    wait_until(page, lambda: page.locator(".nbi-patching").get_attribute("data-fitted-to") != fitted_before,
               "the maps refitted to the narrower width")
    # the width may settle in more than one step (a scroll bar comes and goes): wait for the last fit
    wait_until(page, lambda: int(page.locator(".nbi-patching").get_attribute("data-fitted-to")) < 360,
               "the maps fitted to a width inside the narrower window")
    maps = [m for m in map_geometry(page, "canvas.nbi-heatmap") if m["kind"] != "head"]
    for m in maps:
        assert m["colPx"] == pytest.approx(MIN_FIT_COL_PX), m
        assert m["scrollWidth"] > m["clientWidth"], m
    assert not page_scrolls_sideways(page)
    scroller = page.locator(".nbi-map-resid_pre .nbi-scroll-x")
    scroller.evaluate("(s) => { s.scrollLeft = s.scrollWidth; }")
    m = map_geometry(page, "canvas.nbi-heatmap[data-kind='resid_pre']")[0]
    assert m["boxLeft"] <= m["lastColumnX"] <= m["boxRight"], m  # reachable by scrolling its box


def test_logit_lens_fits_a_long_prompt(page: Any, model: Any, prompts: tuple[str, str]) -> None:
    clean, _ = prompts
    n_tokens = len(model.tokenizer(clean)["input_ids"])
    page.set_viewport_size({"width": 700, "height": 900})
    view = ni.logit_lens(model, clean)
    view.wait()
    open_view(page, view, bundle="logit_lens.js")
    wait_until(page, lambda: page.locator(".nbi-logit-lens[data-fitted-to]").count() == 1, "the lens fitted to the width")
    (m,) = map_geometry(page, "canvas.nbi-heatmap")
    assert m["cols"] == n_tokens and MIN_FIT_COL_PX <= m["colPx"] < 12, m
    assert m["right"] <= m["boxRight"] + 0.5 and m["boxLeft"] <= m["lastColumnX"] <= m["boxRight"], m
    assert m["scrollWidth"] <= m["clientWidth"], m
    assert not page_scrolls_sideways(page)
