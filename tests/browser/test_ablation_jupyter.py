"""AblationPanel end to end in real JupyterLab and Notebook 7: a dragged slider re-runs the
model and the numbers on screen equal `model.run(prompt, ablate=...)` in the
kernel; 50 rapid slider events end on the final value's result after a few
runs (not 50); bad values from the browser show an error in the widget and
the kernel keeps working. PatchingView in the same notebook: heatmaps fill
in from the background sweep, and a click opens that head's attention view
below them."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest

from conftest import NotebookPage, open_notebook

SETUP_CELL = '''
import torch, transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
import nbinterp as ni

words = "When Mary and John went to the store , gave a drink".split()
vocab = {w: i for i, w in enumerate(["<unk>"] + words)}
backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
torch.manual_seed(0)
hf = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=len(vocab))).eval()
with torch.no_grad():  # sharper attention, so every head matters
    for block in hf.transformer.h:
        block.attn.c_attn.weight.mul_(8)
model = ni.load(hf, tokenizer=tokenizer)
prompt = "When Mary and John went to the store , John gave a drink to"
panel = ni.ablate(model, prompt, target="Mary", foil="John", k=5)
display(panel)
# on this random model the IO/S swap barely moves the metric (refused as a near tie): corrupt the first name
grid = ni.patch(model, clean=prompt, corrupted=prompt.replace("When Mary", "When John"), target="Mary", foil="John", batch_size=4)
grid
'''
VIEW = ".nbi-ablation"
SHOWN = """(sel) => {
  const root = document.querySelector(sel);
  return {
    ablations: JSON.parse(root.dataset.ablations), busy: root.dataset.busy, seq: Number(root.dataset.seq),
    logit_diff: root.querySelector('.nbi-ld-after').textContent,
    tokens: [...root.querySelectorAll('.nbi-topk-after .nbi-tok')].map((e) => e.textContent),
    probabilities: [...root.querySelectorAll('.nbi-topk-after .nbi-prob')].map((e) => e.textContent),
  };
}"""
SETTLED = """([sel, expected]) => {
  const root = document.querySelector(sel);
  return root.dataset.busy === 'false' && root.dataset.ablations === expected;
}"""


@pytest.fixture(scope="module", params=["lab", "notebook"])
def notebook(request: Any, browser: Any, jupyter_factory: Any) -> Iterator[NotebookPage]:
    yield from open_notebook(browser, jupyter_factory, request.param, "ablation.ipynb", SETUP_CELL, f"{VIEW}[data-drawn]")


def python_truth(notebook: NotebookPage, ablations: dict[str, float]) -> dict[str, Any]:
    """The same ablation computed in the kernel with the engine, formatted as the view does."""
    out = notebook.execute(f'''
import json
run = model.run(prompt, ablate={ablations!r})
top = run.top_tokens(5)
print(json.dumps({{"logit_diff": f"{{run.logit_diff('Mary', 'John'):.4f}}",
                   "tokens": [t for t, _ in top], "probabilities": [f"{{p:.4f}}" for _, p in top]}}))
''')
    return json.loads(out)


def wait_settled(notebook: NotebookPage, ablations: dict[str, float]) -> dict[str, Any]:
    expected = json.dumps(ablations, separators=(",", ":"))
    notebook.page.wait_for_function(SETTLED, arg=[VIEW, expected], timeout=20_000, polling=50)
    return notebook.page.evaluate(SHOWN, VIEW)


def test_dragging_a_slider_shows_what_model_run_computes(notebook: NotebookPage) -> None:
    before = notebook.page.evaluate(SHOWN, VIEW)
    assert before["ablations"] == {} and before == {**before, **python_truth(notebook, {})}
    slider = notebook.page.locator(f'{VIEW} input[data-component="L1.H2"]')
    slider.scroll_into_view_if_needed()
    box = slider.bounding_box()
    y = box["y"] + box["height"] / 2
    notebook.page.mouse.move(box["x"] + box["width"] * 2 / 3, y)  # the thumb sits at 1.0 of 1.5
    notebook.page.mouse.down()
    notebook.page.mouse.move(box["x"] + box["width"] / 3, y, steps=4)
    notebook.page.mouse.move(box["x"] - 10, y, steps=4)  # past the left end: 0
    notebook.page.mouse.up()
    shown = wait_settled(notebook, {"L1.H2": 0})
    truth = python_truth(notebook, {"L1.H2": 0.0})
    assert {k: shown[k] for k in truth} == truth
    assert shown["logit_diff"] != before["logit_diff"]
    assert notebook.execute("print(panel.ablations)").strip() == "{'L1.H2': 0.0}"


def test_fifty_rapid_slider_events_end_on_the_final_value(notebook: NotebookPage) -> None:
    seq_before = notebook.page.evaluate(SHOWN, VIEW)["seq"]
    values = [round(0.03 * (i % 50), 2) for i in range(1, 51)]
    values[-1] = 0.35
    notebook.page.evaluate("""([sel, values]) => {
      const input = document.querySelector(sel + ' input[data-component="L0.H1"]');
      for (const v of values) {
        input.value = String(v);
        input.dispatchEvent(new Event('input', { bubbles: true }));
      }
      input.dispatchEvent(new Event('change', { bubbles: true }));
    }""", [VIEW, values])
    expected = {"L0.H1": 0.35, "L1.H2": 0}
    shown = wait_settled(notebook, expected)
    truth = python_truth(notebook, {"L0.H1": 0.35, "L1.H2": 0.0})
    assert {k: shown[k] for k in truth} == truth
    runs = shown["seq"] - seq_before
    assert 1 <= runs <= 5, f"{runs} runs for 50 slider events: moves did not coalesce"
    assert notebook.execute("print(panel.result.seq, panel.ablations)").strip().split(maxsplit=1) == [
        str(shown["seq"]), "{'L0.H1': 0.35, 'L1.H2': 0.0}"]


def test_bad_values_show_an_error_and_the_kernel_keeps_working(notebook: NotebookPage) -> None:
    root = notebook.page.locator(VIEW)
    error = root.locator(".nbi-error")
    before = notebook.page.evaluate(SHOWN, VIEW)
    ablations_before = notebook.execute("print(panel.ablations)").strip()
    # A scale that is not a number, through the trait the sliders sync.
    comm_id = notebook.execute("print(panel.model_id)").strip()
    notebook.send_comm(comm_id, {"method": "update", "state": {"ablations": {"L0.H0": "abc"}}, "buffer_paths": []})
    error.wait_for(state="visible", timeout=10_000)
    assert "the scale of 'L0.H0' must be a number from 0 to 1.5, got 'abc'" in error.text_content()
    error.locator("button").click()
    # Head 99, through the view's own "run" request: a slider pointed at a head that does not exist.
    notebook.page.evaluate("""(sel) => {
      const input = document.querySelector(sel + ' input[data-component="L0.H3"]');
      input.dataset.component = 'L0.H99';
      input.value = '0.5';
      input.dispatchEvent(new Event('input', { bubbles: true }));
      input.dataset.component = 'L0.H3';
    }""", VIEW)
    error.wait_for(state="visible", timeout=10_000)
    assert "head 99 is out of range" in error.text_content()
    notebook.page.wait_for_function("(sel) => document.querySelector(sel).dataset.busy === 'false'", arg=VIEW)
    assert notebook.execute("print(6 * 7, panel.ablations)").strip().split(maxsplit=1) == ["42", ablations_before]
    assert notebook.page.evaluate(SHOWN, VIEW)["seq"] == before["seq"]  # nothing ran
    # and the panel still works: reset runs and the error clears on the next good run
    root.locator("button.nbi-reset").click()
    shown = wait_settled(notebook, {})
    assert error.is_hidden()
    assert {k: shown[k] for k in ("logit_diff", "probabilities")} == {k: python_truth(notebook, {})[k] for k in ("logit_diff", "probabilities")}
    assert notebook.execute("print(panel.error == '', panel.ablations)").strip().split(maxsplit=1) == ["True", "{}"]


def test_copy_as_code_shows_the_call_that_reproduces_it(notebook: NotebookPage) -> None:
    notebook.execute("panel.ablations = {'L1.mlp': 0.5, 'L0.H2': 0.0}")
    wait_settled(notebook, {"L0.H2": 0, "L1.mlp": 0.5})
    root = notebook.page.locator(VIEW)
    assert root.locator('input[data-component="L1.mlp"]').input_value() == "0.5"  # Python -> sliders
    root.locator("button.nbi-copy").click()
    code = root.locator(".nbi-code").text_content()
    assert code == "model.run('When Mary and John went to the store , John gave a drink to', ablate={'L0.H2': 0.0, 'L1.mlp': 0.5})"
    assert notebook.execute(f"print(f\"{{({code}).logit_diff('Mary', 'John'):.4f}}\")").strip() == root.locator(".nbi-ld-after").text_content()


PATCHING = ".nbi-patching"


def test_patching_heatmaps_fill_in_and_a_click_opens_the_head(notebook: NotebookPage) -> None:
    page = notebook.page
    page.wait_for_selector(f"{PATCHING}[data-state='done']", timeout=60_000)
    total = int(notebook.execute("print(grid.progress['total'])"))
    assert page.locator(PATCHING).get_attribute("data-done") == str(total)
    layer, head, _ = (float(v) for v in notebook.execute("print(*grid.top_cells('head', 1)[0])").split())
    layer, head = int(layer), int(head)
    canvas = f"{PATCHING} canvas[data-kind='head']"
    page.locator(canvas).scroll_into_view_if_needed()
    g = page.evaluate("""(sel) => {
      const c = document.querySelector(sel); const r = c.getBoundingClientRect();
      return { x: r.left, y: r.top, ...Object.fromEntries(Object.entries(c.dataset).map(([k, v]) => [k, Number(v)])) };
    }""", canvas)
    n_layers, n_heads = 2, 4
    x = g["x"] + g["marginLeft"] + (head + 0.5) * g["plotWidth"] / n_heads
    y = g["y"] + g["marginTop"] + (layer + 0.5) * g["plotHeight"] / n_layers
    page.mouse.move(x, y)
    tip = page.locator(f"{PATCHING} .nbi-tooltip")
    tip.wait_for(state="visible")
    # "measured 1.234", "estimate 0.987 (attribution patching)", "measured - estimate ...", "drawn: 1.234"
    lines = tip.locator(".nbi-tip-value").all_text_contents()
    shown = float(lines[0].split("measured ")[1].split()[0])
    estimate = float(lines[1].split("estimate ")[1].split()[0])
    drawn = float(tip.locator(".nbi-status").text_content().split("drawn: ")[1].split()[0])
    truth, truth_estimate = (float(v) for v in notebook.execute(
        f"print(repr(grid.effects['head'][{layer}, {head}].item()), repr(grid.estimates['head'][{layer}, {head}].item()))").split())
    assert shown == pytest.approx(truth, rel=1e-3, abs=1e-6) and drawn == pytest.approx(truth, rel=1e-3, abs=1e-6)
    assert estimate == pytest.approx(truth_estimate, rel=1e-3, abs=1e-6)
    cells = int(notebook.execute("print(sum(v.numel() for v in grid.estimates.values()))"))
    assert f"{total} of {cells} cells measured" in page.locator(f"{PATCHING} .nbi-legend").text_content()
    page.mouse.click(x, y)
    opened = page.locator(f"{PATCHING} .nbi-opened .nbi-attention[data-drawn]")
    opened.wait_for(timeout=20_000)
    assert opened.get_attribute("data-pattern") == f"{layer}:{head}:probabilities"
    assert notebook.execute("print(type(grid.opened).__name__, grid.opened.layer, grid.opened.head)").split() == [
        "AttentionView", str(layer), str(head)]
