"""WhyNotView and ContextUseView end to end in real JupyterLab and Notebook 7: the
numbers on screen equal Python's (the analysis in the kernel, formatted as the
view formats them), a "restore top k" click recomputes in the kernel and the
screen shows the new share, and clicking a head in the ratio grid recolours
the tokens with that head's attention."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest

from conftest import NotebookPage, open_notebook

SETUP_CELL = '''
import nbinterp as ni
from nbinterp.analysis.why_not import contrast
model = ni.load()
prompt = ("Context : the capital of Tarvos is Fallow . the capital of Tarvos is Yarrow . "
          "Question : the capital of Tarvos is")
reference = contrast(prompt, "the capital of Tarvos is Fallow .", "the old tree near the road .")
wn = ni.why_not(model, prompt, target="Yarrow", references=[reference])
cu = ni.context_use(model, prompt, context="the capital of Tarvos is Fallow . the capital of Tarvos is Yarrow .")
display(wn)
cu
'''
WHY_NOT, CONTEXT = ".nbi-why-not", ".nbi-context-use"
SHOWN = """() => {
  const w = document.querySelector('.nbi-why-not');
  const c = document.querySelector('.nbi-context-use');
  const col = (sel, i) => [...w.querySelectorAll(sel + ' tbody tr')].map((r) => r.cells[i].textContent);
  return {
    missing_names: col('.nbi-missing', 0), missing_shares: col('.nbi-missing', 1),
    inhibitor_names: col('.nbi-inhibitors', 0), inhibitor_effects: col('.nbi-inhibitors', 1),
    together: w.querySelector('.nbi-together').textContent,
    verdict: c.querySelector('.nbi-verdict').dataset.verdict,
    ratios: [...c.querySelectorAll('.nbi-ratios td')].map((td) => td.textContent),
    weights: [...c.querySelectorAll('.nbi-strip .nbi-token')].map((s) => s.dataset.weight),
  };
}"""


@pytest.fixture(scope="module", params=["lab", "notebook"])
def notebook(request: Any, browser: Any, jupyter_factory: Any) -> Iterator[NotebookPage]:
    yield from open_notebook(browser, jupyter_factory, request.param, "why_not.ipynb", SETUP_CELL,
                             f"{CONTEXT}[data-drawn]")


def python_truth(notebook: NotebookPage, head: str = "mean") -> dict[str, Any]:
    out = notebook.execute(f'''
import json
r = wn.result
restored = wn.restored
attention = cu.result.attention
if {head!r} == "mean":
    row = attention.mean(dim=(0, 1))
else:
    l, h = (int(x) for x in {head!r}[1:].split(".H"))
    row = attention[l, h]
print(json.dumps({{
    "missing_names": [m.component.name for m in r.missing[:12]],
    "missing_shares": [f"{{m.restore_share:.3f}}" for m in r.missing[:12]],
    "inhibitor_names": [i.component.name for i in r.inhibitors[:12]],
    "inhibitor_effects": [f"{{i.effect:.3f}}" for i in r.inhibitors[:12]],
    "together": f"{{restored['together_share']:.3f}}", "k": restored["k"],
    "verdict": cu.verdict,
    "ratios": [f"{{v:.3f}}" for v in cu.ratio.flatten().tolist()],
    "weights": [f"{{v:.4f}}" for v in row.tolist()],
}}))
''')
    return json.loads(out)


def test_numbers_on_screen_equal_python(notebook: NotebookPage) -> None:
    shown = notebook.page.evaluate(SHOWN)
    truth = python_truth(notebook)
    for key in ("missing_names", "missing_shares", "inhibitor_names", "inhibitor_effects", "verdict", "ratios"):
        assert shown[key] == truth[key], key
    assert f"top {truth['k']} together: {truth['together']} of the gap" in shown["together"]
    assert [float(w) for w in shown["weights"]] == pytest.approx([float(w) for w in truth["weights"]], abs=1e-4)


def test_restore_click_and_head_selection(notebook: NotebookPage) -> None:
    page = notebook.page
    view = page.locator(WHY_NOT)
    view.locator("input[type=number]").fill("2")
    view.get_by_role("button", name="restore top k").click()
    page.wait_for_function("() => document.querySelector('.nbi-why-not .nbi-together').textContent.includes('top 2 ')",
                           timeout=30_000)
    truth = python_truth(notebook)
    assert truth["k"] == 2 and f"{truth['together']} of the gap" in page.evaluate(SHOWN)["together"]
    page.locator(f"{CONTEXT} td[data-head='L1.H1']").click()
    page.wait_for_function("() => document.querySelector('.nbi-context-use td.nbi-selected')?.dataset.head === 'L1.H1'",
                           timeout=10_000)
    assert notebook.execute("print(cu.selected)").strip() == "L1.H1"
    shown, truth = page.evaluate(SHOWN), python_truth(notebook, "L1.H1")
    assert [float(w) for w in shown["weights"]] == pytest.approx([float(w) for w in truth["weights"]], abs=1e-4)
