"""ProbeView end to end in real JupyterLab and Notebook 7: the accuracies
and usage numbers on screen equal the kernel's, clicking a layer runs its
usage test, and bad input shows an error in the view with the kernel alive."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest

from conftest import NotebookPage, open_notebook

SETUP_CELL = '''
import nbinterp as ni
from nbinterp.bundled import tasks
model = ni.load()
drawn = tasks.examples("bias", 120, split="test", seed=3)
examples = list({e.prompt: e for e in drawn}.values())[:60]
pr = ni.probe(model, [e.prompt for e in examples], labels=[e.meta["group"] for e in examples],
              target="doctor", foil="nurse", n_controls=2)
pr
'''
VIEW = ".nbi-probe"
SHOWN = """(sel) => {
  const root = document.querySelector(sel);
  const rows = [...root.querySelectorAll('tr.nbi-layer')];
  return {
    selected: root.dataset.selected, busy: root.dataset.busy,
    train: rows.map((r) => r.querySelector('.nbi-train-acc .nbi-value').textContent),
    test: rows.map((r) => r.querySelector('.nbi-test-acc .nbi-value').textContent),
    usage: rows.map((r) => r.querySelector('.nbi-usage-probe').textContent),
    verdict: rows.map((r) => r.querySelector('.nbi-verdict').textContent),
    probability: rows.map((r) => r.querySelector('.nbi-probability').textContent),
  };
}"""
TRUTH = '''
import json
print(json.dumps({
  "train": [f"{a:.3f}" for a in pr.result.train_accuracy.tolist()],
  "test": [f"{a:.3f}" for a in pr.result.test_accuracy.tolist()],
  "usage": {k: f"{v['mean_abs_change']:.3f}" for k, v in pr.usage_results.items()},
  "verdict": {k: v["verdict"] for k, v in pr.usage_results.items()},
  "probability": {k: "P(doctor) " + "; ".join(f"{c}: {b:.3f} \\u2192 {a:.3f}" for c, b, a in zip(pr.classes, v["probability_before"], v["probability_after"]))
                  for k, v in pr.usage_results.items()},
  "best": pr.best_layer,
}))
'''


@pytest.fixture(scope="module", params=["lab", "notebook"])
def notebook(request: Any, browser: Any, jupyter_factory: Any) -> Iterator[NotebookPage]:
    yield from open_notebook(browser, jupyter_factory, request.param, "probe.ipynb", SETUP_CELL, f"{VIEW}[data-drawn]")


def truth(notebook: NotebookPage) -> dict[str, Any]:
    return json.loads(notebook.execute(TRUTH))


def test_numbers_shown_equal_the_kernels(notebook: NotebookPage) -> None:
    shown = notebook.page.evaluate(SHOWN, VIEW)
    expected = truth(notebook)
    assert shown["train"] == expected["train"] and shown["test"] == expected["test"]
    best = expected["best"]
    assert shown["selected"] == str(best)
    assert shown["usage"][best] == expected["usage"][str(best)]
    assert shown["verdict"][best] == expected["verdict"][str(best)] == "present and used"
    assert shown["probability"][best] == expected["probability"][str(best)]
    assert "logit(doctor) - logit(nurse)" in notebook.page.locator(f"{VIEW} .nbi-explanation").text_content()


def test_clicking_a_layer_runs_its_usage_test(notebook: NotebookPage) -> None:
    page = notebook.page
    page.locator(f"{VIEW} tr.nbi-layer[data-layer='0']").click()
    page.wait_for_function("(sel) => { const r = document.querySelector(sel); return r.dataset.selected === '0' && r.dataset.busy === 'false'; }",
                           arg=VIEW, timeout=60_000, polling=100)
    shown = page.evaluate(SHOWN, VIEW)
    expected = truth(notebook)
    assert "0" in expected["usage"]
    assert shown["usage"][0] == expected["usage"]["0"] and shown["verdict"][0] == expected["verdict"]["0"] == "not present"
    assert notebook.execute("print(pr.selected_layer, pr.progress['state'])").split() == ["0", "done"]


def test_bad_input_shows_an_error_and_the_kernel_keeps_working(notebook: NotebookPage) -> None:
    error = notebook.page.locator(f"{VIEW} .nbi-error")
    out = notebook.execute("try:\n    pr.usage(9)\nexcept ni.NbinterpError as exc:\n    print('raised:', exc)")
    assert out.startswith("raised: layer 9 is out of range")
    error.wait_for(state="visible", timeout=10_000)
    assert "layer 9 is out of range: the probes sit on streams 0..4" in error.text_content()
    error.locator("button").click()
    # a state change the browser may not make
    comm_id = notebook.execute("print(pr.model_id)").strip()
    notebook.send_comm(comm_id, {"method": "update", "state": {"selected_layer": 3}, "buffer_paths": []})
    error.wait_for(state="visible", timeout=10_000)
    assert "selected_layer cannot be set from the browser" in error.text_content()
    assert notebook.execute("print(6 * 7)").strip() == "42"
    # and the view still works
    notebook.page.locator(f"{VIEW} tr.nbi-layer[data-layer='3']").click()
    notebook.page.wait_for_function("(sel) => { const r = document.querySelector(sel); return r.dataset.selected === '3' && r.dataset.busy === 'false'; }",
                                    arg=VIEW, timeout=60_000, polling=100)
    assert notebook.page.evaluate(SHOWN, VIEW)["usage"][3] == truth(notebook)["usage"]["3"]
