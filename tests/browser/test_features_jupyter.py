"""FeatureView end to end in real JupyterLab and Notebook 7, on the bundled
model: the strip is coloured by the selected feature, clicking a token lists
its features as Python computes them, a steering slider ends on what
`fv.steer` computes in the kernel, and a bad request shows an error in the
widget while the kernel keeps working."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest

from conftest import NotebookPage, open_notebook

SETUP_CELL = '''
import nbinterp as ni
from nbinterp.bundled import tasks
model = ni.load()
corpus = [f"{e.prompt} {e.target}" for e in tasks.examples("bias", 30, split="train")]
fv = ni.features(model, "Tamsin Varn works as a", layer=2, target="doctor", foil="nurse", corpus=corpus)
fv
'''
VIEW = ".nbi-features"


@pytest.fixture(scope="module", params=["lab", "notebook"])
def notebook(request: Any, browser: Any, jupyter_factory: Any) -> Iterator[NotebookPage]:
    yield from open_notebook(browser, jupyter_factory, request.param, "features.ipynb", SETUP_CELL, f"{VIEW}[data-drawn]")


def kernel_json(notebook: NotebookPage, code: str) -> Any:
    return json.loads(notebook.execute(code).strip().splitlines()[-1])


def test_tokens_are_coloured_by_the_selected_feature(notebook: NotebookPage) -> None:
    colours = notebook.page.evaluate(f"""() => [...document.querySelectorAll('{VIEW} > .nbi-strip .nbi-token')].map((e) => e.style.backgroundColor)""")
    assert len(colours) == 6 and all(colours) and len(set(colours)) > 1
    selected = notebook.page.evaluate(f"() => document.querySelector('{VIEW}').dataset.selectedFeature")
    truth = kernel_json(notebook, "import json; print(json.dumps([fv.selected_feature, int(fv.feature(fv.selected_feature).argmax())]))")
    assert int(selected) == truth[0]
    # the strongest token is drawn in the scale's end colour
    top_colour = colours[truth[1]]
    assert top_colour in ("rgb(253, 231, 37)", "rgb(178, 24, 43)")


def test_clicking_a_token_lists_its_features(notebook: NotebookPage) -> None:
    notebook.page.locator(f"{VIEW} > .nbi-strip .nbi-token[data-index='2']").click()
    notebook.page.wait_for_function(f"() => document.querySelector('{VIEW}').dataset.selectedToken === '2'")
    shown = notebook.page.evaluate(f"""() => [...document.querySelectorAll('{VIEW} .nbi-token-features .nbi-feature-row')].map(
        (r) => [Number(r.dataset.feature), r.querySelector('.nbi-feature-value').textContent])""")
    truth = kernel_json(notebook, "import json; print(json.dumps([[i, float(f'{v:.4g}')] for i, v in fv.top(2, 10)]))")
    assert [f for f, _ in shown] == [i for i, _ in truth]
    assert [float(v) for _, v in shown] == pytest.approx([v for _, v in truth], rel=1e-3)
    assert notebook.execute("print(fv.selected_token)").strip() == "2"
    # clicking a feature selects it in Python
    feature = shown[1][0]
    notebook.page.locator(f"{VIEW} .nbi-token-features .nbi-feature-row[data-feature='{feature}']").click()
    notebook.page.wait_for_function(f"() => document.querySelector('{VIEW}').dataset.selectedFeature === '{feature}'", timeout=20_000)
    assert notebook.execute("print(fv.selected_feature)").strip() == str(feature)


def test_a_steering_slider_shows_what_python_computes(notebook: NotebookPage) -> None:
    page = notebook.page
    page.locator(f"{VIEW} button.nbi-add-steer").click()
    feature = page.evaluate(f"() => document.querySelector('{VIEW}').dataset.selectedFeature")
    slider = page.locator(f"{VIEW} .nbi-steering input[data-feature='{feature}']")
    slider.wait_for(timeout=10_000)
    page.evaluate("""(sel) => {
      const input = document.querySelector(sel);
      for (const v of ['2', '1.5', '0.5', '0']) { input.value = v; input.dispatchEvent(new Event('input', { bubbles: true })); }
    }""", f"{VIEW} .nbi-steering input[data-feature='{feature}']")
    expected = json.dumps({feature: 0}, separators=(",", ":"))
    page.wait_for_function(f"""() => {{ const r = document.querySelector('{VIEW}'); return r.dataset.busy === 'false' && r.dataset.steering === '{expected}'; }}""", timeout=30_000)
    shown = page.evaluate(f"""() => ({{ after: document.querySelector('{VIEW} .nbi-metric-after').textContent,
        tokens: [...document.querySelectorAll('{VIEW} .nbi-steer-out .nbi-tok')].map((e) => e.textContent) }})""")
    truth = kernel_json(notebook, f'''import json
run = fv.steer({{{feature}: 0.0}})
print(json.dumps({{"after": f"{{run.logit_diff('doctor', 'nurse'):.4f}}", "tokens": [t for t, _ in run.top_tokens(10)]}}))''')
    assert shown["after"] == truth["after"]
    assert [t.strip() for t in shown["tokens"]] == [t.strip() for t in truth["tokens"]]


def test_bad_input_shows_an_error_and_the_kernel_keeps_working(notebook: NotebookPage) -> None:
    page = notebook.page
    error = page.locator(f"{VIEW} .nbi-error")
    comm_id = notebook.execute("print(fv.model_id)").strip()
    notebook.send_comm(comm_id, {"method": "update", "state": {"selected_feature": 99999}, "buffer_paths": []})
    error.wait_for(state="visible", timeout=10_000)
    assert "feature 99999 is out of range 0..511" in error.text_content()
    error.locator("button").click()
    # a slider pointed at a feature that does not exist, through the view's own "steer" request
    page.evaluate(f"""() => {{
      const input = document.querySelector('{VIEW} .nbi-steering input[data-feature]');
      input.dataset.feature = '9999';
      input.value = '1';
      input.dispatchEvent(new Event('input', {{ bubbles: true }}));
    }}""")
    error.wait_for(state="visible", timeout=10_000)
    assert "9999 is out of range" in error.text_content()
    assert notebook.execute("print(6 * 7)").strip() == "42"
