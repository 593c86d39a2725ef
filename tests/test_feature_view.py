"""FeatureView without a browser: its traits against FeatureActivations and
plain hooks, the requests the front end sends (steer, cancel / resume the
corpus pass), refusals shown in the widget, and the bytes it sends: only
the top features per token, never the dense [T, n_features] matrix."""

from __future__ import annotations

import pytest
import torch
from ipywidgets.widgets.widget import _remove_buffers

import nbinterp as ni
from conftest import PROMPT, random_model
from nbinterp.widgets._buffers import decode
from nbinterp.widgets.features import K_SHOWN, FeatureView
from test_features import TinySAE, block, corpus_docs, hooked

TARGET, FOIL = "w5", "w9"


@pytest.fixture(scope="module")
def model(tokenizer):
    return ni.load(random_model("gpt2"), tokenizer=tokenizer)


@pytest.fixture(scope="module")
def sae(model):
    return TinySAE(model.d_model, 4096, seed=1)


def view(model, sae=None, **kwargs):
    options = dict(target=TARGET, foil=FOIL, corpus=corpus_docs(), background=False)
    options.update(kwargs)
    fv = ni.features(model, PROMPT, sae=sae, site=None if sae is None else ("resid_pre", 1),
                     layer=None if sae is not None else 1, **options)
    fv.sent = []
    fv.send = lambda content, buffers=None: fv.sent.append(content)
    return fv


def request(fv, method, params, request_id="r1"):
    fv._on_frontend_msg(fv, {"kind": "request", "id": request_id, "method": method, "params": params}, [])
    return fv.sent[-1]


def test_traits_show_the_top_features_and_the_selected_feature(model, sae):
    fv = view(model, sae)
    assert isinstance(fv, FeatureView) and fv.kind == "sae" and fv.n_features == 4096
    assert fv.tokens == PROMPT.split()
    values, indices = decode(fv._top["values"]), decode(fv._top["indices"])
    assert values.shape == indices.shape == (len(fv.tokens), K_SHOWN)
    _, x = hooked(model, block(model, 1))
    with torch.no_grad():
        reference = sae.encode(x)
    top = reference.topk(K_SHOWN, dim=-1)
    assert indices.astype(int).tolist() == top.indices.tolist()
    torch.testing.assert_close(torch.from_numpy(values), top.values, rtol=1e-5, atol=1e-6)
    # the last token and its strongest feature are selected; the strip's colours are that feature
    assert fv.selected_token == len(fv.tokens) - 1 and fv.selected_feature == int(top.indices[-1, 0])
    torch.testing.assert_close(torch.from_numpy(decode(fv.feature_info["activation"])), reference[:, fv.selected_feature], rtol=1e-5, atol=1e-6)
    # the view answers like FeatureActivations
    assert fv.top(2, 3) == fv.features.top(2, 3)
    assert fv.activations.shape == (len(fv.tokens), 4096)


def test_only_the_top_k_per_token_crosses_to_the_browser(model, sae):
    fv = view(model, sae)
    state, _, buffers = _remove_buffers(fv.get_state())
    sent = sum(len(bytes(b)) for b in buffers)
    n = len(fv.tokens)
    # top-k values + indices (float32), the selected feature's row, FVU and per-token metric change
    assert sent == n * K_SHOWN * 4 * 2 + n * 4 * 3
    assert sent < n * fv.n_features * 4 / 50  # the dense matrix would be 50x more


def test_selecting_a_feature_from_the_browser_fills_its_panel(model, sae):
    fv = view(model, sae)
    feature = int(decode(fv._top["indices"])[3, 1])
    fv.set_state({"selected_token": 3, "selected_feature": feature})
    assert fv.error == ""
    info = fv.feature_info
    assert info["feature"] == feature
    torch.testing.assert_close(torch.from_numpy(decode(info["activation"])), fv.features.feature(feature), rtol=0, atol=0)
    assert {"positive", "negative"} == set(info["direct"]) and "linearised" in info["direct_label"]
    assert fv.contexts["state"] == "done" and fv.contexts["feature"] == feature
    assert [c["doc"] for c in fv.contexts["items"]] == [c.doc for c in fv.features.top_contexts(feature, corpus_docs(), 10)]
    assert fv.contexts["density"] == pytest.approx(fv.features.density(feature, corpus_docs()))
    # out of range: refused with a message in the widget, nothing changes
    fv.set_state({"selected_feature": 4096})
    assert "feature 4096 is out of range 0..4095" in fv.error and fv.selected_feature == feature


def test_steer_request_reruns_and_equals_the_engine(model, sae):
    fv = view(model, sae)
    feature = fv.selected_feature
    reply = request(fv, "steer", {"steering": {str(feature): 3.0}, "mode": "clamp"})
    assert reply["ok"] is True and reply["result"] == {"seq": fv.result.seq}
    assert fv.steering == {str(feature): 3.0} and fv.steer_mode == "clamp"
    run = fv.features.steer({feature: 3.0}, mode="clamp")
    assert fv.result.logit_diff == pytest.approx(run.logit_diff(TARGET, FOIL), abs=1e-5)
    assert [e.id for e in fv.result.top_k] == run.probabilities().topk(10).indices.tolist()
    assert fv.result.logit_diff != pytest.approx(fv.baseline.logit_diff, abs=1e-4)
    # Python-side trait change re-runs too; .steer returns a Run without moving the sliders
    fv.steering = {}
    assert fv.result.logit_diff == pytest.approx(fv.baseline.logit_diff, abs=1e-5)
    assert fv.steer({feature: 0.0}).logit_diff(TARGET, FOIL) == pytest.approx(
        fv.features.steer({feature: 0.0}).logit_diff(TARGET, FOIL)) and fv.steering == {}


@pytest.mark.parametrize("params, message", [
    ({"steering": {"4096": 1.0}}, "feature 4096 is out of range"),
    ({"steering": {"3": "abc"}}, "the steering value of feature '3' must be a number"),
    ({"steering": {"3": 1.0}, "mode": "double"}, "mode must be"),
    ({"steering": {"x": 1.0}}, "feature 'x' is out of range"),
])
def test_bad_steering_requests_are_refused_with_a_message(model, sae, params, message):
    fv = view(model, sae)
    seq = fv.result.seq
    reply = request(fv, "steer", params)
    assert reply["ok"] is False and message in reply["error"]
    assert fv.result.seq == seq and fv.steering == {}


def test_a_non_finite_value_from_python_is_an_error(model, sae):
    fv = view(model, sae)
    with pytest.raises(ni.NbinterpError, match="finite number"):
        fv.steering = {"3": float("inf")}
    with pytest.raises(ni.NbinterpError, match="out of range"):
        fv.steer({5000: 1.0})


def test_the_corpus_pass_streams_and_cancel_resume_from_the_browser(model):
    docs = corpus_docs() * 6 + ["w1 w2 w3"]
    fv = view(model, corpus=docs, context_batch_size=24, background=True)
    reply = request(fv, "cancel_contexts", {})
    assert reply["ok"] is True
    fv.wait(60)
    assert fv.contexts["state"] in ("cancelled", "done")
    if fv.contexts["state"] == "cancelled":
        assert fv.contexts["done_docs"] < fv.contexts["total_docs"]
        assert request(fv, "resume_contexts", {})["ok"] is True
        fv.wait(120)
    assert fv.contexts["state"] == "done" and fv.contexts["done_docs"] == len(docs)
    assert fv.contexts["feature"] == fv.selected_feature


def test_neurons_have_no_reconstruction_error_and_a_picture(model):
    fv = view(model)
    assert fv.kind == "neurons" and fv.reconstruction["exact"] is True and fv.reconstruction["fvu_total"] == 0
    assert fv.static_png()[:4] == b"\x89PNG"


def test_sae_reconstruction_in_the_view_equals_the_analysis(model, sae):
    fv = view(model, sae)
    error = fv.features.reconstruction_error()
    torch.testing.assert_close(torch.from_numpy(decode(fv.reconstruction["fvu"])), error.fvu, rtol=0, atol=0)
    assert fv.reconstruction["metric_change"] == pytest.approx(error.metric_change)
