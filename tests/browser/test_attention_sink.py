"""The attention view's sink-aware colour scale on the static harness: a GPT-2
whose layer 0 is built to put most of every query on key 0 (an attention
sink, as in SmolLM2 where key 0 holds ~99% of many heads). 'auto' leaves key
0 out of the scale there and says so; the scale's max the view shows is
Python's max over keys 1.. (exclude) or over every key (include)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import transformers as tf

import nbinterp as ni
from conftest import word_tokenizer
from harness import open_view

N_TOKENS = 24
SINK_DIM = 3  # the residual dimension that marks position 0


@pytest.fixture(scope="module")
def sink_view() -> Any:
    torch.manual_seed(0)
    config = tf.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=64)
    hf = tf.GPT2LMHeadModel(copy.deepcopy(config)).eval()
    d, hd = config.n_embd, config.n_embd // config.n_head
    with torch.no_grad():
        hf.transformer.wpe.weight[0, SINK_DIM] = 40.0  # after ln_1, position 0 stands out on SINK_DIM
        attn = hf.transformer.h[0].attn.c_attn  # Conv1D: x @ weight, weight [d, 3d] = q | k | v
        attn.weight[:, : 2 * d] = 0.0
        attn.bias[: 2 * d] = 0.0
        for h in range(config.n_head):
            attn.bias[h * hd] = 0.5  # q: a constant query on each head's first dimension (key 0 gets ~0.8)
            attn.weight[SINK_DIM, d + h * hd] = 4.0  # k: that dimension reads SINK_DIM
    model = ni.load(hf, tokenizer=word_tokenizer())
    prompt = " ".join(f"w{(i * 5) % 64}" for i in range(N_TOKENS))
    return ni.attention(model, prompt, layer=0, head=1, color_scale="linear")


def python_share(view: Any) -> float:
    """Key 0's share of each query row 1.. (probabilities sum to 1), averaged."""
    return float(view.run.attention(view.layer)[view.head, 1:, 0].float().mean())


def legend(page: Any) -> dict[str, str]:
    return page.locator(".nbi-attention .nbi-legend").evaluate("(e) => ({ text: e.textContent, ...e.dataset })")


def test_auto_leaves_a_sink_out_of_the_scale_and_the_numbers_are_pythons(page: Any, sink_view: Any) -> None:
    share = python_share(sink_view)
    assert share > 0.7, f"the built sink holds {share:.3f} of layer 0 head 1"
    pattern = sink_view.run.attention(0)[1].float()
    open_view(page, sink_view)
    shown = legend(page)
    assert sink_view.sink_scale == "auto" and shown["sinkExcluded"] == "true"
    assert float(shown["sinkShare"]) == pytest.approx(share, abs=2e-3)  # float16 on the wire: 1e-3 relative per cell
    # The colour scale's top is the max over keys 1.. (float16 on the wire), not key 0's ~1.
    assert float(shown["vmax"]) == pytest.approx(float(pattern[:, 1:].max()), rel=2e-3)
    assert float(shown["vmax"]) < 0.5
    assert "key 0 (the sink) left out of the scale" in shown["text"]
    assert f"key 0 holds {100 * share:.1f}%" in shown["text"] or f"key 0 holds {100 * share - 0.1:.1f}%" in shown["text"]
    caption = page.locator(".nbi-grid-caption")
    n_heads = sink_view.n_layers * sink_view.n_heads
    assert int(caption.get_attribute("data-sink-excluded")) >= 4  # every head of layer 0 is built as a sink
    assert f"left out of the scale in {caption.get_attribute('data-sink-excluded')} of {n_heads} heads" in caption.text_content()


def test_include_puts_key_0_back_and_the_toggle_reaches_python(page: Any, sink_view: Any) -> None:
    pattern = sink_view.run.attention(0)[1].float()
    open_view(page, sink_view)
    page.locator(".nbi-attention .nbi-sink-toggle button[data-value='include']").click()
    page.wait_for_function("() => document.querySelector('.nbi-attention .nbi-legend').dataset.sinkExcluded === 'false'")
    assert sink_view.sink_scale == "include"
    shown = legend(page)
    assert float(shown["vmax"]) == pytest.approx(float(pattern.max()), rel=2e-3)
    assert "left out of the scale" not in shown["text"] and "sink setting: include" in shown["text"]
    assert page.locator(".nbi-grid-caption").get_attribute("data-sink-excluded") == "0"
    page.locator(".nbi-attention .nbi-sink-toggle button[data-value='auto']").click()
    page.wait_for_function("() => document.querySelector('.nbi-attention .nbi-legend').dataset.sinkExcluded === 'true'")
    assert sink_view.sink_scale == "auto"


def test_a_head_without_a_sink_stays_on_the_full_scale_under_auto(page: Any, sink_view: Any) -> None:
    view = ni.attention(sink_view.run.model, sink_view.run, layer=1, head=0, color_scale="linear")
    share = python_share(view)
    open_view(page, view)
    shown = legend(page)
    assert float(shown["sinkShare"]) == pytest.approx(share, abs=2e-3)
    assert shown["sinkExcluded"] == ("true" if share > 0.5 else "false")


def test_hovering_a_key_label_shows_the_whole_token(page: Any, sink_view: Any) -> None:
    open_view(page, sink_view)
    g = page.locator("canvas.nbi-heatmap").evaluate("(c) => { const r = c.getBoundingClientRect(); return { x: r.left, y: r.top, ...c.dataset }; }")
    key = 7
    x = g["x"] + float(g["marginLeft"]) + (key + 0.5) * float(g["plotWidth"]) / N_TOKENS
    page.mouse.move(x, g["y"] + float(g["marginTop"]) - 20)
    tip = page.locator(".nbi-tooltip .nbi-tip-key")
    tip.wait_for(state="visible")
    assert tip.text_content() == f'{key} "{sink_view.tokens[key]}"'  # the label "key " is its own node
