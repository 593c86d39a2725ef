"""AttentionView end to end in real JupyterLab and Notebook 7: the cell runs,
the heatmap is drawn, clicks reach Python, hover values equal the engine's,
untrusted tokens stay text, and bad messages give a visible error while the
kernel keeps working."""

from __future__ import annotations

import re
from typing import Any, Iterator

import pytest

from conftest import NotebookPage, open_notebook
from harness import wait_until

XSS = "<img src=x onerror=alert(1)>"
SETUP_CELL = f'''
import torch, transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
import nbinterp as ni
from nbinterp.widgets import attention

# One token per "|"-separated piece, so a whole HTML tag is a single token.
XSS = {XSS!r}
words = ["When", " Mary", " and", " John", " went", " to", " the", " store", ",", " gave", " a", " drink", XSS]
vocab = {{w: i for i, w in enumerate(["<unk>"] + words)}}
backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
backend.pre_tokenizer = pre_tokenizers.Split("|", behavior="removed")
tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
torch.manual_seed(0)
hf = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=len(vocab))).eval()
model = ni.load(hf, tokenizer=tokenizer)
prompt = "|".join(["When", " Mary", " and", " John", " went", " to", " the", " store", ",", " John", " gave", XSS, " a", " drink", " to"])
view = attention(model, prompt, layer=1, head=0)
view
'''
N_TOKENS = 15
VIEW = ".nbi-attention"


@pytest.fixture(scope="module", params=["lab", "notebook"])
def notebook(request: Any, browser: Any, jupyter_factory: Any) -> Iterator[NotebookPage]:
    yield from open_notebook(browser, jupyter_factory, request.param, "attention.ipynb", SETUP_CELL, f"{VIEW}[data-drawn]")


def canvas_geometry(page: Any, selector: str) -> dict[str, float]:
    page.locator(selector).scroll_into_view_if_needed()
    return page.evaluate("""(sel) => {
      const c = document.querySelector(sel);
      const r = c.getBoundingClientRect();
      const d = Object.fromEntries(Object.entries(c.dataset).map(([k, v]) => [k, Number(v)]));
      return { x: r.left, y: r.top, ...d };
    }""", selector)


def test_heatmap_and_thumbnails_are_drawn(notebook: NotebookPage) -> None:
    stats = notebook.page.evaluate("""(sel) => {
      const count = (canvas) => {
        const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
        const colours = new Set(); let painted = 0;
        for (let i = 0; i < data.length; i += 4) {
          if (data[i + 3] > 0) { painted++; colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]); }
        }
        return { painted, colours: colours.size, total: data.length / 4 };
      };
      const root = document.querySelector(sel);
      return { heatmap: count(root.querySelector('canvas.nbi-heatmap')), grid: count(root.querySelector('canvas.nbi-head-grid')) };
    }""", VIEW)
    assert stats["heatmap"]["painted"] > 0.4 * stats["heatmap"]["total"] and stats["heatmap"]["colours"] > 10
    assert stats["grid"]["colours"] > 10
    assert notebook.page.locator(f"{VIEW} .nbi-token").count() == N_TOKENS


def test_clicking_a_thumbnail_selects_that_head_in_python(notebook: NotebookPage) -> None:
    g = canvas_geometry(notebook.page, f"{VIEW} canvas.nbi-head-grid")
    layer, head = 0, 3
    step = g["thumbPx"] + g["gap"]
    notebook.page.mouse.click(g["x"] + g["marginLeft"] + head * step + g["thumbPx"] / 2, g["y"] + g["marginTop"] + layer * step + g["thumbPx"] / 2)
    notebook.page.wait_for_selector(f'{VIEW}[data-pattern="{layer}:{head}:probabilities"]', timeout=10_000)
    assert notebook.execute("print(view.layer, view.head)").split() == [str(layer), str(head)]


def test_hover_shows_the_engine_value_and_both_tokens(notebook: NotebookPage) -> None:
    layer, head = (int(v) for v in notebook.execute("print(view.layer, view.head)").split())
    h = canvas_geometry(notebook.page, f"{VIEW} canvas.nbi-heatmap")
    cell = h["plotWidth"] / N_TOKENS
    for query, key in [(N_TOKENS - 1, 3), (11, 11), (5, 0)]:
        notebook.page.mouse.move(h["x"] + h["marginLeft"] + (key + 0.5) * cell, h["y"] + h["marginTop"] + (query + 0.5) * cell)
        tip = notebook.page.locator(f"{VIEW} .nbi-tooltip")
        tip.wait_for(state="visible")
        shown = float(tip.locator(".nbi-tip-value").text_content())
        truth = float(notebook.execute(f"print(repr(float(view.run.attention({layer})[{head}, {query}, {key}])))"))
        # float16 on the wire (rel. 2^-11) then four significant digits.
        assert shown == pytest.approx(truth, rel=1.1e-3, abs=1e-7), (query, key)
        tokens = notebook.execute(f"print(repr(view.tokens[{query}]), repr(view.tokens[{key}]))")
        assert tip.locator(".nbi-tip-query").text_content().startswith(f"{query} ")
        assert tip.locator(".nbi-tip-key").text_content().startswith(f"{key} ")
        assert tokens.split("' '")[0].strip("'") in tip.locator(".nbi-tip-query").text_content()
    notebook.page.mouse.click(h["x"] + h["marginLeft"] + 3.5 * cell, h["y"] + h["marginTop"] + 9.5 * cell)
    wait_until(notebook.page, lambda: notebook.execute("print(view.selected)").strip() == "{'query': 9, 'key': 3}",
               "the clicked cell to reach the kernel as view.selected", timeout_s=30)


def test_an_html_token_renders_as_text(notebook: NotebookPage) -> None:
    root = notebook.page.locator(VIEW)
    assert root.locator("img").count() == 0
    strip_text = root.locator(".nbi-strip").text_content()
    assert XSS in strip_text
    xss_index = 11
    assert root.locator(".nbi-token").nth(xss_index).text_content() == XSS
    root.locator(".nbi-token").nth(xss_index).hover()
    assert XSS in root.locator(".nbi-strip-caption").text_content()
    assert notebook.dialogs == []


def test_token_strip_layer_sum_is_fetched_from_python(notebook: NotebookPage) -> None:
    root = notebook.page.locator(VIEW)
    root.locator('button[data-value="layer"]').click()
    root.locator(".nbi-token").nth(6).hover()
    notebook.page.wait_for_function(
        "(sel) => /max [0-9.]+$/.test(document.querySelector(sel + ' .nbi-strip-caption').textContent)", arg=VIEW, timeout=10_000)
    caption = root.locator(".nbi-strip-caption").text_content()
    layer = int(notebook.execute("print(view.layer)"))
    expected = float(notebook.execute(f"print(repr(float(view.run.attention({layer})[:, 6, :].sum(0).max())))"))
    assert float(re.search(r"max ([0-9.]+)$", caption).group(1)) == pytest.approx(expected, rel=1e-3)
    root.locator('button[data-value="head"]').click()
    assert notebook.execute("print(view.strip_scope)").strip() == "head"


def test_a_bad_message_shows_an_error_and_the_kernel_lives(notebook: NotebookPage) -> None:
    comm_id = notebook.execute("print(view.model_id)").strip()
    before = notebook.execute("print(view.layer, view.head)").split()
    notebook.send_comm(comm_id, {"method": "update", "state": {"layer": 99}, "buffer_paths": []})
    error = notebook.page.locator(f"{VIEW} .nbi-error")
    error.wait_for(state="visible", timeout=10_000)
    assert "layer 99 is out of range" in error.text_content()
    error.locator("button").click()
    notebook.page.wait_for_function("(sel) => document.querySelector(sel + ' .nbi-error').hidden", arg=VIEW)
    notebook.send_comm(comm_id, {"method": "custom", "content": {"kind": "launch", "payload": [1, 2]}})
    error.wait_for(state="visible", timeout=10_000)
    assert "unknown message kind 'launch'" in error.text_content()
    assert notebook.execute("print(view.layer, view.head, 6 * 7)").split() == before + ["42"]
    assert notebook.page.locator(f"{VIEW}[data-pattern^='{before[0]}:{before[1]}:']").count() == 1
