"""BiasView front end on the static harness (real Chromium, real Python
widget, no Jupyter): the gap with its interval, one bar per shown component
labelled with its measured share, and the held-out before/after bars and
side-effect table appearing once `reduce` runs in Python."""

from __future__ import annotations

from typing import Any

import pytest

import nbinterp as ni
from harness import open_view, push_state, wait_until
from nbinterp.analysis.datasets import PromptSet
from nbinterp.bundled import tasks


@pytest.fixture(scope="module")
def view() -> Any:
    data = PromptSet.from_templates(tasks.BIAS_TEMPLATES, attribute="clan", groups=tasks.GROUP_CLANS,
                                    fillers={"given": tasks.BIAS_TEST_GIVEN_NAMES[:3]}, target="doctor", foil="nurse")
    view = ni.bias(ni.load(), data, n_resamples=500)
    assert view.wait(timeout=120)  # the shares are measured in the background
    return view


def test_bias_view_draws_the_gap_shares_and_reduction(page: Any, view: Any) -> None:
    comm = open_view(page, view, bundle="bias.js")
    root = page.locator(".nbi-bias")
    assert float(root.locator("[data-gap]").get_attribute("data-gap")) == pytest.approx(view.gap)
    gap_text = root.get_by_text(f"{view.gap:.3f} [{view.ci[0]:.3f}, {view.ci[1]:.3f}]")
    assert gap_text.count() == 1
    rows = root.locator("[data-component]")
    assert rows.count() == len(view.components_shown)
    first = view.components_shown[0]
    assert rows.first.get_attribute("data-component") == first["name"]
    assert float(rows.first.get_attribute("data-value")) == pytest.approx(first["share"])
    assert f"{100 * first['share']:.1f}%" in rows.first.inner_text()
    assert root.locator("[data-task]").count() == 0

    ioi = tasks.examples("ioi", 2, seed=2)
    r = view.reduce(k=2, capability={"ioi": [(e.prompt, e.target, e.foil) for e in ioi]})
    push_state(page, comm)
    wait_until(page, lambda: root.locator("[data-task='ioi']").count() == 1, "the side-effect row")
    assert root.get_by_text(f"{r.gap_after:.3f} [{r.ci_after[0]:.3f}, {r.ci_after[1]:.3f}]").count() == 1
    assert ", ".join(r.removed) in root.inner_text()


def test_bias_view_streams_components_with_progress_cancel_and_resume(page: Any) -> None:
    """components=False: the progress line says nothing is measured and offers
    resume; clicking it measures in Python's background thread, the bars and
    the count arrive with the pushed state; the final line says done."""
    data = PromptSet.from_templates(tasks.BIAS_TEMPLATES, attribute="clan", groups=tasks.GROUP_CLANS,
                                    fillers={"given": tasks.BIAS_TEST_GIVEN_NAMES[:10]}, target="doctor", foil="nurse")
    view = ni.bias(ni.load(), data, components=False, n_resamples=200)
    total = len(view.result.component_keys)
    comm = open_view(page, view, bundle="bias.js")
    root = page.locator(".nbi-bias")
    assert root.get_attribute("data-state") == "cancelled"
    assert f"0 / {total} components measured" in root.locator(".nbi-progress").inner_text()
    assert root.locator(".nbi-resume").is_visible() and not root.locator(".nbi-cancel").is_visible()
    assert root.locator("[data-component]").count() == 0
    root.locator(".nbi-resume").click()
    wait_until(page, lambda: view.wait(timeout=0.05), "every component measured in the background", timeout_s=120)
    push_state(page, comm)
    wait_until(page, lambda: root.get_attribute("data-state") == "done", "the done state drawn")
    assert root.get_attribute("data-done") == str(total)
    assert root.locator("progress").evaluate("p => [p.value, p.max]") == [total, total]
    assert f"{total} / {total} components measured" in root.locator(".nbi-progress").inner_text()
    rows = root.locator("[data-component]")
    assert rows.count() == len(view.components_shown) == min(24, total)
    assert rows.first.get_attribute("data-component") == view.components[0].name
    assert not root.locator(".nbi-resume").is_visible()
