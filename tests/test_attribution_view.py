"""AttributionView without a browser: what it sends against the computation,
verify requests against the exact knockouts, validation, static output."""

from __future__ import annotations

import numpy as np
import pytest

import nbinterp as ni
from conftest import PROMPT, random_model
from nbinterp.widgets import AttributionView
from nbinterp.widgets._buffers import decode


@pytest.fixture(scope="module")
def model(tokenizer):
    return ni.load(random_model("gpt2"), tokenizer=tokenizer)


@pytest.fixture
def view(model):
    v = ni.attribute(model, PROMPT, target="w5", foil="w9")
    v.sent = []
    v.send = lambda content, buffers=None: v.sent.append((content, buffers))
    return v


def request(view, params, request_id="r1"):
    view._on_frontend_msg(view, {"kind": "request", "id": request_id, "method": "verify", "params": params}, [])
    return view.sent[-1][0]


def test_the_issue_api_works_on_the_view(view):
    assert isinstance(view, AttributionView)
    assert view.heads.shape == (2, 4)
    top = view.edges[0]
    assert abs(top.estimate) == max(abs(e.estimate) for e in view.edges)
    d = view.qk(1, 2, 9, 3)
    assert abs(d.remainder) < 1e-5
    result = view.verify(k=3)
    assert len(result.keys) == 12 and view._verification["summary"]["n"] == 12


def test_sends_the_estimates_it_holds(view):
    np.testing.assert_allclose(decode(view._heads["tensor"]), view.heads.numpy(), rtol=1e-6)
    m = view._edge_matrix
    assert (m["layer"], m["head"]) == view.edges[0][:2] == (view.layer, view.head)
    effect = view.edge_effects["hybrid"][view.layer, view.head].nan_to_num().numpy()
    np.testing.assert_allclose(decode(m["effect"]), effect, rtol=1e-6, atol=1e-12)
    np.testing.assert_array_equal(decode(m["measured"]), view.attribution.exact[view.layer, view.head].numpy())
    np.testing.assert_allclose(decode(m["attention"]), view.run.attention(view.layer)[view.head].numpy(), atol=1e-3)
    ranked = decode(view._edges["tensor"])
    assert [tuple(int(x) for x in row[:4]) for row in ranked[:5]] == [e[:4] for e in view.edges[:5]]
    assert view._heads["measured"] is True and view._heads["method"] == "hybrid"
    view.method = "linear"
    assert view._edges["method"] == view._edge_matrix["method"] == view._heads["method"] == "linear"
    assert view._heads["measured"] is False
    np.testing.assert_allclose(decode(view._heads["tensor"]), view.attribution.head_estimates.numpy(), rtol=1e-6)
    view.layer, view.head = 1, 3
    assert (view._edge_matrix["layer"], view._edge_matrix["head"]) == (1, 3)


def test_verify_requests_run_exact_interventions(view, model):
    reply = request(view, {"what": "edge", "edge": [1, 2, 9, 3]})
    assert reply["ok"] and reply["result"]["n"] == 1
    rows = decode(view._verification["rows"])
    exact = model.run(PROMPT, knockout=[(1, 2, 9, 3)]).logit_diff("w5", "w9") - model.run(PROMPT).logit_diff("w5", "w9")
    assert rows[0, :4].tolist() == [1, 2, 9, 3] and rows[0, 5] == pytest.approx(exact, abs=1e-5)
    reply = request(view, {"what": "head", "layer": 0, "head": 3})
    exact = model.run(PROMPT, ablate={(0, 3): 0.0}).logit_diff("w5", "w9") - model.run(PROMPT).logit_diff("w5", "w9")
    assert decode(view._verification["rows"])[0, 3] == pytest.approx(exact, abs=1e-5)
    assert request(view, {"what": "heads"})["result"]["n"] == 8
    assert request(view, {"what": "top_k", "k": 4})["result"]["n"] == 16


def test_bad_requests_and_values_are_refused_in_the_widget(view):
    assert request(view, {"what": "edge", "edge": [1, 2, 3, 9]})["ok"] is False  # key after query
    assert "out of range" in request(view, {"what": "top_k", "k": 0})["error"]
    assert request(view, {"what": "everything"})["ok"] is False
    view.set_state({"method": "exact"})
    assert view.method == "hybrid" and view.error.startswith("The view sent a value that was refused")
    with pytest.raises(ni.NbinterpError):
        view.head = 9


def test_static_png_fallback(view):
    data, _ = view._repr_mimebundle_()
    assert data["image/png"].startswith(b"\x89PNG")
    figure = view.to_figure()
    np.testing.assert_array_equal(figure.axes[0].images[0].get_array(), view.heads.float().numpy())
