"""AttentionView's front end at 1,024 tokens on the static harness (no
Jupyter): first paint, hover values, zoom and mode reaching Python, and
redraw cost. Python and validation are real; only the kernel is replaced."""

from __future__ import annotations

import copy
from typing import Any, Iterator

import pytest
import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import nbinterp as ni
from harness import open_view, push_state, wait_until
from nbinterp.widgets import attention

N_TOKENS = 1024


@pytest.fixture(scope="module")
def long_view() -> Any:
    vocab = {f"t{i}": i for i in range(N_TOKENS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="t0")
    torch.manual_seed(0)
    config = tf.GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=N_TOKENS, vocab_size=N_TOKENS)
    hf = tf.GPT2LMHeadModel(copy.deepcopy(config)).eval()
    model = ni.load(hf, tokenizer=tokenizer)
    prompt = " ".join(f"t{(i * 7919) % N_TOKENS}" for i in range(N_TOKENS))
    return attention(model, prompt, layer=1, head=2)


@pytest.fixture
def page(browser: Any, long_view: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.comm = open_view(page, long_view)
    yield page
    assert errors == []
    context.close()


def geometry(page: Any) -> dict[str, float]:
    return page.evaluate("""() => {
      const c = document.querySelector('canvas.nbi-heatmap'); const r = c.getBoundingClientRect();
      return { x: r.left, y: r.top, ...Object.fromEntries(Object.entries(c.dataset).map(([k, v]) => [k, Number(v)])) };
    }""")


def test_first_paint_at_1024_tokens(page: Any, long_view: Any) -> None:
    assert len(long_view.tokens) == N_TOKENS
    painted = page.evaluate("""() => {
      const c = document.querySelector('canvas.nbi-heatmap');
      const { data } = c.getContext('2d').getImageData(0, 0, c.width, c.height);
      let n = 0; for (let i = 3; i < data.length; i += 4) n += data[i] > 0; return n / (data.length / 4);
    }""")
    assert painted > 0.5


def test_hover_at_1024_tokens_reads_the_exact_cell(page: Any, long_view: Any) -> None:
    g = geometry(page)
    px = g["plotWidth"] / N_TOKENS
    query, key = 1000, 17
    page.mouse.move(g["x"] + g["marginLeft"] + (key + 0.5) * px, g["y"] + g["marginTop"] + (query + 0.5) * px)
    tip = page.locator(".nbi-tooltip")
    tip.wait_for(state="visible")
    assert tip.locator(".nbi-tip-query").text_content().startswith(f"{query} ")
    assert tip.locator(".nbi-tip-key").text_content().startswith(f"{key} ")
    truth = float(long_view.run.attention(1)[2, query, key])
    assert float(tip.locator(".nbi-tip-value").text_content()) == pytest.approx(truth, rel=1.1e-3, abs=1e-7)


def test_wheel_zoom_redraws_and_reaches_python(page: Any, long_view: Any) -> None:
    g = geometry(page)
    centre = (g["x"] + g["marginLeft"] + g["plotWidth"] / 2, g["y"] + g["marginTop"] + g["plotHeight"] / 2)
    page.mouse.move(*centre)
    # speed is measured by benchmarks/bench_attention_view.py, not asserted here (shared machines)
    page.evaluate("""() => {
      const c = document.querySelector('canvas.nbi-heatmap'); const r = c.getBoundingClientRect();
      const at = { clientX: r.left + Number(c.dataset.marginLeft) + 200, clientY: r.top + Number(c.dataset.marginTop) + 200 };
      for (let i = 0; i < 10; i++) c.dispatchEvent(new WheelEvent('wheel', { deltaY: -100, bubbles: true, cancelable: true, ...at }));
    }""")
    # zoom is saved debounced: wait for it to reach Python, then for the last wheel step's window
    wait_until(page, lambda: long_view.zoom, "the zoom to reach Python")
    wait_until(page, lambda: long_view.zoom["query_stop"] - long_view.zoom["query_start"] < 200,
               f"the zoom window to narrow below 200 tokens (last seen {long_view.zoom})")
    zoom = long_view.zoom
    under_cursor = 200 / g["plotHeight"] * N_TOKENS  # the wheel events' row (the plot grows with the prompt)
    assert zoom["query_start"] <= under_cursor < zoom["query_stop"]
    page.mouse.dblclick(*centre)
    wait_until(page, lambda: long_view.zoom == {}, "a double click to reset the zoom in Python")


def test_mode_toggle_fetches_value_weighted_norms(page: Any, long_view: Any) -> None:
    page.locator('button[data-value="value_weighted"]').click()
    page.wait_for_selector('[data-pattern="1:2:value_weighted"]')
    assert long_view.mode == "value_weighted"
    assert long_view._pattern["mode"] == "probabilities"  # pulled by the view, not pushed again
    assert "value-weighted" in page.locator(".nbi-legend").text_content()
    g = geometry(page)
    px = g["plotWidth"] / N_TOKENS
    query, key = 700, 650
    page.mouse.move(g["x"] + g["marginLeft"] + (key + 0.5) * px, g["y"] + g["marginTop"] + (query + 0.5) * px)
    truth = float(long_view.run.value_weighted(1)[2, query, key])
    shown = float(page.locator(".nbi-tip-value").text_content())
    assert shown == pytest.approx(truth, rel=1.1e-3, abs=1e-7)
    long_view.mode = "probabilities"
    long_view.head = 0
    push_state(page, page.comm)
    page.wait_for_selector('[data-pattern="1:0:probabilities"]')
    assert page.locator(".nbi-status").text_content().startswith("layer 1 \u00b7 head 0")


def test_render_returns_a_cleanup_that_removes_the_view(page: Any) -> None:
    left = page.evaluate("""async () => { await window.nbiCleanup(); return document.querySelectorAll('#host *').length; }""")
    assert left == 0


def test_resting_on_a_thumbnail_prefetches_that_head_once(page: Any, long_view: Any) -> None:
    g = page.evaluate("""() => {
      const c = document.querySelector('canvas.nbi-head-grid'); const r = c.getBoundingClientRect();
      return { x: r.left, y: r.top, ...Object.fromEntries(Object.entries(c.dataset).map(([k, v]) => [k, Number(v)])) };
    }""")
    step = g["thumbPx"] + g["gap"]
    at = (g["x"] + g["marginLeft"] + 3 * step + g["thumbPx"] / 2, g["y"] + g["marginTop"] + 0 * step + g["thumbPx"] / 2)
    page.mouse.move(*at)
    page.wait_for_function("() => window.nbiSent.some((m) => m.method === 'head_pattern')", timeout=10_000)
    # with_mask: the view asks for a layer's mask once; not part of which head was fetched
    requests = lambda: page.evaluate("() => window.nbiSent.filter((m) => m.method === 'head_pattern').map(({ params: { with_mask, ...p } }) => p)")  # noqa: E731
    assert requests() == [{"layer": 0, "head": 3, "mode": "probabilities"}]
    page.mouse.click(*at)
    page.wait_for_selector('[data-pattern="0:3:probabilities"]')
    assert (long_view.layer, long_view.head) == (0, 3)
    assert len(requests()) == 1  # the click used the prefetched head
