"""AttentionView without a browser: the data it sends against the engine,
validation of everything the browser may send, requests, static output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nbinterp as ni
from conftest import PROMPT, eager_copy, random_model
from nbinterp.widgets import AttentionView, attention
from nbinterp.widgets._buffers import decode
from nbinterp.widgets.attention import head_thumbnails, token_weights


@pytest.fixture(scope="module")
def model(tokenizer):
    return ni.load(random_model("gpt2"), tokenizer=tokenizer)


@pytest.fixture
def view(model):
    v = attention(model, PROMPT, layer=1, head=2)
    v.sent = []
    v.send = lambda content, buffers=None: v.sent.append((content, buffers))
    return v


def request(view, method, params, request_id="r1"):
    view._handle_custom_msg({"kind": "request", "id": request_id, "method": method, "params": params}, [])
    return view.sent[-1]


def test_sends_the_on_screen_head_as_float16_of_the_engine_values(view):
    expected = view.run.attention(1)[2].numpy()
    pattern = view._pattern
    assert (pattern["layer"], pattern["head"], pattern["mode"]) == (1, 2, "probabilities")
    assert pattern["tensor"]["dtype"] == "float16"
    np.testing.assert_array_equal(decode(pattern["tensor"]), expected.astype(np.float16).astype(np.float32))
    assert view.tokens == [view.run.model.tokenizer.decode([i]) for i in view.run.token_ids]


def test_thumbnails_are_block_max_normalised_per_head():
    values = torch.zeros(2, 100, 100)
    values[0, 70, 3] = 0.5  # one sharp edge: a mean pool would wash it out
    values[1] = 0.01
    tiles, head_max = head_thumbnails(values, side=10)
    assert tiles.shape == (2, 10, 10)
    torch.testing.assert_close(head_max, torch.tensor([0.5, 0.01]))
    assert tiles[0, 7, 0] == 1 and tiles[0].sum() == 1
    torch.testing.assert_close(tiles[1], torch.ones(10, 10))


def test_thumbnail_trait_matches_the_engine(view, model):
    thumbs = view._thumbnails
    side = thumbs["side"]
    # float16, so a log scale can show 1/512 of a head's max (half a uint8 step)
    assert thumbs["tensor"]["dtype"] == "float16" and thumbs["tensor"]["shape"] == [model.n_layers, model.n_heads, side, side]
    back = decode(thumbs["tensor"])
    for layer in range(model.n_layers):
        expected, maxima = head_thumbnails(view.run.attention(layer))
        np.testing.assert_allclose(back[layer], expected.numpy(), rtol=2**-11, atol=2**-24)
        np.testing.assert_allclose(thumbs["head_max"][layer * model.n_heads : (layer + 1) * model.n_heads], maxima.numpy(), rtol=1e-6)


def test_changing_head_and_mode_resends_what_is_on_screen(view):
    view.head = 3
    np.testing.assert_allclose(decode(view._pattern["tensor"]), view.run.attention(1)[3].numpy(), atol=1e-3)
    view.mode = "value_weighted"
    assert view._thumbnails["mode"] == "value_weighted"
    expected = view.run.value_weighted(1)[3].numpy()
    np.testing.assert_allclose(decode(view._pattern["tensor"]), expected, rtol=1e-3, atol=1e-6)


def test_value_weighted_norms_match_a_direct_computation(view, model):
    # ||a_ij v_j W_O^h|| from the attention and the head outputs' own pieces.
    run = view.run
    attn = run.attention(0)
    value_weighted = run.value_weighted(0)
    z_norm = value_weighted / attn.clamp_min(1e-30)
    # Per head, ||v_j W_O^h|| does not depend on the query: every row agrees.
    lower = torch.tril(torch.ones_like(attn[0], dtype=torch.bool))
    for h in range(model.n_heads):
        last_row = z_norm[h][-1]  # sees every key
        torch.testing.assert_close(z_norm[h][lower], last_row.expand_as(z_norm[h])[lower], rtol=1e-4, atol=1e-5)
        assert (last_row > 0).all()


def test_frontend_values_are_validated_and_reported_in_the_widget(view):
    view.set_state({"layer": 99, "head": 1})
    assert view.layer == 1 and view.head == 1
    assert "layer 99 is out of range 0..1" in view.error
    view.error = ""
    for bad in ({"mode": "softmax"}, {"selected": {"query": "3", "key": 1}}, {"selected": {"query": 1}},
                {"zoom": {"query_start": 5, "query_stop": 5, "key_start": 0, "key_stop": 3}},
                {"tokens": ["evil"]}, {"focus_token": True}, {"head": 1.5}):
        view.set_state(bad)
        assert view.error.startswith("The view sent a value that was refused"), bad
        view.error = ""
    assert view.mode == "probabilities" and view.selected == {} and view.tokens[0] != "evil"
    view.set_state({"selected": {"query": 4, "key": 2}, "zoom": {"query_start": 1, "query_stop": 5, "key_start": 0, "key_stop": 4}})
    assert view.selected == {"query": 4, "key": 2} and view.error == ""


def test_python_side_values_are_checked_too(view):
    with pytest.raises(ni.NbinterpError, match="out of range"):
        view.layer = 7
    with pytest.raises(ni.NbinterpError, match="mode must be one of"):
        view.mode = "softmax"


@pytest.mark.parametrize("direction", ["attends_to", "attended_by"])
def test_token_weights_request_sums_the_layer(view, direction):
    content, buffers = request(view, "token_weights", {"layer": 0, "token": 4, "mode": "probabilities", "direction": direction})
    assert content["kind"] == "response" and content["id"] == "r1" and content["ok"] is True
    meta = content["result"]["weights"]
    got = decode(meta, buffers[meta["buffer"]])
    attn = view.run.attention(0)
    expected = attn[:, 4, :].sum(0) if direction == "attends_to" else attn[:, :, 4].sum(0)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6)
    if direction == "attends_to":
        assert got.sum() == pytest.approx(view.n_heads, rel=1e-5)


def test_bad_requests_get_error_responses_not_tracebacks(view):
    assert request(view, "token_weights", {"layer": 0, "token": 999, "mode": "probabilities", "direction": "attends_to"})[0]["error"] == "token 999 is out of range 0..9"
    assert "unknown request 'rm -rf'" in request(view, "rm -rf", {})[0]["error"]
    assert request(view, "token_weights", [1, 2])[0]["ok"] is False
    n_replies = len(view.sent)
    view._handle_custom_msg("garbage", [])
    view._handle_custom_msg({"kind": "request", "id": 7, "method": "token_weights"}, [])
    assert len(view.sent) == n_replies and "string id" in view.error


def test_a_cancelled_request_is_not_answered(view):
    view._handle_custom_msg({"kind": "cancel", "id": "gone"}, [])
    n = len(view.sent)
    message = {"kind": "request", "id": "gone", "method": "token_weights",
               "params": {"layer": 0, "token": 1, "mode": "probabilities", "direction": "attends_to"}}
    view._handle_custom_msg(message, [])
    assert len(view.sent) == n
    view._handle_custom_msg(dict(message, id="kept"), [])
    assert view.sent[-1][0]["id"] == "kept"


def test_static_png_fallback_and_figure_of_what_is_on_screen(view, model):
    data, _metadata = view._repr_mimebundle_()
    assert data["image/png"].startswith(b"\x89PNG") and "application/vnd.jupyter.widget-view+json" in data
    view.zoom = {"query_start": 2, "query_stop": 6, "key_start": 1, "key_stop": 4}
    view.selected = {"query": 3, "key": 2}
    figure = view.to_figure()
    ax = figure.axes[0]
    image = np.asarray(ax.images[0].get_array())
    # the zoom window of layer 1 head 2 against HF's own eager attention probabilities
    with torch.no_grad():
        reference = eager_copy(model.hf)(model.tokenize(PROMPT), output_attentions=True).attentions[1][0, 2]
    np.testing.assert_allclose(image, reference[2:6, 1:4].numpy(), atol=64 * np.finfo(np.float32).eps, rtol=0)  # p <= 1: float32 ulps
    assert ax.get_title().endswith("layer 1 head 2")
    assert [t.get_text() for t in ax.get_yticklabels()] == view.tokens[2:6]
    assert len(ax.patches) == 1
    assert figure._repr_png_().startswith(b"\x89PNG")


def test_bad_constructor_arguments_say_what_to_do(model):
    with pytest.raises(ni.NbinterpError, match="out of range"):
        attention(model, PROMPT, layer=5)
    with pytest.raises(ni.NbinterpError, match="mode must be one of"):
        AttentionView(model.run(PROMPT), mode="raw")


def test_nbconvert_html_without_widget_state_shows_the_picture(view):
    import base64

    from nbconvert import HTMLExporter
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    data, metadata = view._repr_mimebundle_()
    data = dict(data, **{"image/png": base64.b64encode(data["image/png"]).decode()})
    notebook = new_notebook(cells=[new_code_cell("view", outputs=[new_output("display_data", data=data, metadata=metadata)])])
    html, _ = HTMLExporter().from_notebook_node(notebook)
    assert html.count(f'src="data:image/png;base64,{data["image/png"][:40]}') == 1


def test_a_head_picked_in_the_browser_is_pulled_not_pushed(view):
    before = view._pattern
    view.set_state({"layer": 0, "head": 3})
    assert (view.layer, view.head) == (0, 3) and view._pattern is before  # nothing pushed twice
    content, buffers = request(view, "head_pattern", {"layer": 0, "head": 3, "mode": "probabilities"})
    meta = content["result"]["pattern"]
    assert meta["dtype"] == "float16" and meta["shape"] == [len(view.tokens)] * 2
    expected = view.run.attention(0)[3].numpy()
    np.testing.assert_array_equal(decode(meta, buffers[meta["buffer"]]), expected.astype(np.float16).astype(np.float32))
    assert request(view, "head_pattern", {"layer": 0, "head": 4, "mode": "probabilities"})[0]["error"] == "head 4 is out of range 0..3"
    view.head = 1  # a change made in Python is pushed with its data
    assert (view._pattern["layer"], view._pattern["head"]) == (0, 1)


def test_masked_cells_are_the_models_own_mask_not_zero_attention(view, model):
    # Independent reference: a causal LM masks exactly the keys after the query.
    n = len(view.tokens)
    causal = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    masked = decode(view._pattern["masked"]).astype(bool)
    np.testing.assert_array_equal(masked, causal.numpy())
    content, buffers = request(view, "head_pattern", {"layer": 0, "head": 1, "mode": "probabilities", "with_mask": True})
    meta = content["result"]["masked"]
    np.testing.assert_array_equal(decode(meta, buffers[meta["buffer"]]).astype(bool), causal.numpy())
    assert "masked" not in request(view, "head_pattern", {"layer": 0, "head": 1, "mode": "probabilities"})[0]["result"]
    # thumbnails: a pixel is masked only when its whole block is
    tiles = decode(view._thumbnails["masked"]).astype(bool)
    assert tiles.shape == (model.n_layers, n, n)  # 10 tokens < 32: one cell per pixel
    np.testing.assert_array_equal(tiles[1], causal.numpy())


def test_thumbnail_mask_blocks_match_a_direct_block_check():
    from nbinterp.widgets.attention import thumbnail_mask

    n, side = 100, 8
    masked = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    got = thumbnail_mask(masked, side)
    for i in range(side):
        for j in range(side):
            # adaptive pooling's blocks: [floor(i n / s), ceil((i + 1) n / s))
            r0, r1 = (i * n) // side, -(-((i + 1) * n) // side)
            c0, c1 = (j * n) // side, -(-((j + 1) * n) // side)
            assert bool(got[i, j]) == bool(masked[r0:r1, c0:c1].all()), (i, j)


def test_colour_scale_defaults_to_log_beyond_32_tokens_and_is_validated(model, view):
    assert view.color_scale == "linear"  # 10 tokens
    long_prompt = " ".join(f"w{i % 60}" for i in range(40))
    assert attention(model, long_prompt).color_scale == "log"
    assert attention(model, long_prompt, color_scale="row").color_scale == "row"
    with pytest.raises(ni.NbinterpError, match="color_scale must be one of"):
        attention(model, PROMPT, color_scale="viridis")
    view.set_state({"color_scale": "quantile"})
    assert view.color_scale == "linear" and view.error.startswith("The view sent a value that was refused")
    view.error = ""
    view.set_state({"color_scale": "row"})
    assert view.color_scale == "row" and view.error == ""
    figure = view.to_figure()
    assert "per-row scale" in figure.axes[1].get_ylabel()


def test_sink_scale_is_validated_and_the_figure_follows_it(view):
    """Key 0 off the colour scale ("exclude", or "auto" on a sink head): the
    figure's scale tops out at the max over keys 1.., as the view's legend does."""
    values = view.run.attention(view.layer)[view.head].float().numpy()
    view.color_scale = "linear"
    with pytest.raises(ni.NbinterpError, match="sink_scale must be one of"):
        view.sink_scale = "drop"
    view.set_state({"sink_scale": "off"})
    assert view.sink_scale == "auto" and view.error.startswith("The view sent a value that was refused")
    view.error = ""
    tops = {}
    for choice in ("include", "exclude"):
        view.set_state({"sink_scale": choice})
        assert view.sink_scale == choice and view.error == ""
        figure = view.to_figure()
        tops[choice] = figure.axes[0].images[0].norm.vmax
        assert ("key 0 left out of the scale" in figure.axes[1].get_ylabel()) == (choice == "exclude")
    assert tops["include"] == pytest.approx(float(values.max()), rel=1e-6)
    assert tops["exclude"] == pytest.approx(float(values[:, 1:].max()), rel=1e-6)
    assert tops["exclude"] < tops["include"]  # row 0 holds probability 1 on key 0
