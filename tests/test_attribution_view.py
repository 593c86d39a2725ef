"""AttributionView without a browser: what it sends against the computation,
the exact measurements streaming in from a background thread (progress,
cancel, resume), verify requests against the exact knockouts, the labels,
validation, static output."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import nbinterp as ni
from conftest import PROMPT, random_model
from nbinterp.analysis.attribution import compute_attribution
from nbinterp.widgets import AttributionView
from nbinterp.widgets._buffers import decode


@pytest.fixture(scope="module")
def model(tokenizer):
    return ni.load(random_model("gpt2"), tokenizer=tokenizer)


@pytest.fixture
def view(model):
    v = ni.attribute(model, PROMPT, target="w5", foil="w9")
    assert v.wait(timeout=120)  # the measurements stream in from a thread
    v.sent = []
    v.send = lambda content, buffers=None: v.sent.append((content, buffers))
    return v


def request(view, params, request_id="r1", method="verify_top_k"):
    view._on_frontend_msg(view, {"kind": "request", "id": request_id, "method": method, "params": params}, [])
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
    assert view.progress["state"] == "done" and view.progress["done"] == view.progress["total"] > 0


def test_sends_the_estimates_it_holds(view):
    np.testing.assert_allclose(decode(view._heads["tensor"]), view.heads.numpy(), rtol=1e-6)
    m = view._edge_matrix
    assert (m["layer"], m["head"]) == view.edges[0][:2] == (view.layer, view.head)
    effect = view.attribution.dense_edge_effects("hybrid")[view.layer, view.head].nan_to_num().numpy()
    np.testing.assert_allclose(decode(m["effect"]), effect, rtol=1e-6, atol=1e-12)
    np.testing.assert_array_equal(decode(m["measured"]), view.attribution.dense_exact()[view.layer, view.head].numpy())
    np.testing.assert_allclose(decode(m["attention"]), view.run.attention(view.layer)[view.head].numpy(), atol=1e-3)
    ranked = view._edges["rows"]
    assert [(r["layer"], r["head"], r["query"], r["key"]) for r in ranked[:5]] == [e[:4] for e in view.edges[:5]]
    assert [r["effect"] for r in ranked[:5]] == [e.estimate for e in view.edges[:5]]
    assert [r["measured"] for r in ranked] == [e.measured for e in view.top_edges(len(ranked))]
    assert decode(view._heads["measured"]).all() and view._heads["method"] == "hybrid"
    assert "measured" in view._heads["label"] and "measured" in view._edges["label"]
    view.method = "linear"
    assert view._edges["method"] == view._edge_matrix["method"] == view._heads["method"] == "linear"
    assert not decode(view._heads["measured"]).any() and not decode(view._edge_matrix["measured"]).any()
    assert view._heads["label"] == "zero-ablation effect, estimated (gradient x activation)"
    assert "linear estimate" in view._edges["label"] and "measured" not in view._edges["label"]
    np.testing.assert_allclose(decode(view._heads["tensor"]), view.attribution.head_estimates.numpy(), rtol=1e-6)
    view.layer, view.head = 1, 3
    assert (view._edge_matrix["layer"], view._edge_matrix["head"]) == (1, 3)


def test_verify_requests_run_exact_interventions(view, model):
    reply = request(view, {"layer": 1, "head": 2, "query": 9, "key": 3}, method="verify_edge")
    assert reply["ok"] and reply["result"]["n"] == 1 and reply["result"]["kind"] == "edge knockout"
    row = view._verification["rows"][0]
    exact = model.run(PROMPT, knockout=[(1, 2, 9, 3)]).logit_diff("w5", "w9") - model.run(PROMPT).logit_diff("w5", "w9")
    assert (row["layer"], row["head"], row["query"], row["key"]) == (1, 2, 9, 3)
    assert row["measured"] == pytest.approx(exact, abs=1e-5)
    reply = request(view, {"layer": 0, "head": 3}, method="verify_head")
    exact = model.run(PROMPT, ablate={(0, 3): 0.0}).logit_diff("w5", "w9") - model.run(PROMPT).logit_diff("w5", "w9")
    row = view._verification["rows"][0]
    assert (row["layer"], row["head"], row["query"], row["key"]) == (0, 3, None, None)
    assert row["measured"] == pytest.approx(exact, abs=1e-5)
    assert request(view, {}, method="verify_heads")["result"]["n"] == 8
    assert view._verification["label"] == "head ablation: gradient x activation estimate vs measured zero ablation"
    assert request(view, {"k": 4})["result"]["n"] == 16
    # hybrid: the estimated edges only, labelled so; its measured edges are not re-measured
    measured = {e[:4] for e in view.attribution.measured_edges()}
    rows = view._verification["rows"]
    assert not measured & {(r["layer"], r["head"], r["query"], r["key"]) for r in rows}
    assert view._verification["label"] == "edge knockout: the hybrid's QK-fix estimates vs measured knockout"
    assert f"its {len(measured)} measured edges left out" in view._verification["summary"]["scope"]
    view.method = "linear"
    request(view, {"k": 2})
    assert view._verification["label"] == "edge knockout: linear estimate vs measured knockout"
    assert view._verification["view_method"] == "linear"


def test_bad_requests_and_values_are_refused_in_the_widget(view):
    assert request(view, {"layer": 1, "head": 2, "query": 3, "key": 9}, method="verify_edge")["ok"] is False  # key after query
    assert "k must be an integer from 1 to 500, got 0" in request(view, {"k": 0})["error"]
    assert "query 12 is out of range 0..9" in request(view, {"layer": 1, "head": 2, "query": 12, "key": 0}, method="verify_edge")["error"]
    assert "layer" in request(view, {"layer": 7, "head": 0}, method="verify_head")["error"]
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


class SlowAblations:
    """Wraps the batch runner so that each measurement batch waits for a go-ahead:
    the test decides when a batch may finish, so nothing depends on timing."""

    def __init__(self, monkeypatch):
        from nbinterp.analysis import exact_measurement

        self.go = threading.Semaphore(0)
        self.batches = 0
        original = exact_measurement.batch.measure

        def measure(*args, **kwargs):
            self.go.acquire()
            self.batches += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(exact_measurement.batch, "measure", measure)
        # three rows a forward (one clean): the 8 heads take four batches
        monkeypatch.setattr(exact_measurement.batch, "batch_rows", lambda model, n_tokens: 3)


def test_estimates_show_at_once_and_measurements_stream_in(model, monkeypatch):
    slow = SlowAblations(monkeypatch)
    view = ni.attribute(model, PROMPT, target="w5", foil="w9")
    view.sent = []
    view.send = lambda content, buffers=None: view.sent.append((content, buffers))
    # shown before anything is measured: the estimates, marked estimated
    assert view.progress["state"] == "running" and view.progress["done"] == 0 and view.progress["total"] > 8
    assert not decode(view._heads["measured"]).any()
    np.testing.assert_allclose(decode(view._heads["tensor"]), view.attribution.head_estimates.numpy(), rtol=1e-6)
    assert not any(row["measured"] for row in view._edges["rows"])
    assert view._heads["pending"] == "estimate (will be measured)"
    assert all(row["status"] != "measured" for row in view._edges["rows"])
    slow.go.release()  # one batch
    while view.attribution.measurement.done < 2:
        threading.Event().wait(0.01)
    view.cancel()
    slow.go.release()  # the batch the thread may have started before the cancel
    assert view.wait(timeout=60) is False
    assert view.progress["state"] == "cancelled" and 2 <= view.progress["done"] < view.progress["total"]
    # after the cancel every label is true: measured entries say so, the others say why not
    assert view._heads["pending"].startswith("estimate (not measured: cancelled")
    for row in view._edges["rows"]:
        assert (row["status"] == "measured") == row["measured"]
    codes = decode(view._edge_matrix["status"]).astype(int)
    labels = view._edge_matrix["status_labels"]
    measured_cells = decode(view._edge_matrix["measured"]).astype(bool)
    assert ((np.array(labels)[codes] == "measured") == measured_cells).all()
    assert "estimate (will be measured)" not in labels
    measured = decode(view._heads["measured"]).astype(bool)
    assert 2 <= measured.sum() < 8
    exact = model.run(PROMPT, ablate={(0, 0): 0.0}).logit_diff("w5", "w9") - model.run(PROMPT).logit_diff("w5", "w9")
    assert decode(view._heads["tensor"])[0, 0] == pytest.approx(exact, abs=1e-5)  # the first batch: heads (0, 0), (0, 1)
    np.testing.assert_allclose(decode(view._heads["tensor"])[~measured], view.attribution.head_estimates.numpy()[~measured],
                               rtol=1e-6)
    slow.go.release(1000)  # every batch from here on, and those of the complete reference below
    assert request(view, {}, method="resume")["ok"]
    assert view.wait(timeout=120) is True and view.progress["state"] == "done"
    assert decode(view._heads["measured"]).all()
    complete = compute_attribution(model, PROMPT, "w5", "w9")
    torch.testing.assert_close(view.attribution.heads, complete.heads, atol=1e-5, rtol=0)
    assert torch.equal(view.attribution.dense_exact(), complete.dense_exact())
    ranked = view._edges["rows"]
    assert [row["measured"] for row in ranked] == [e.measured for e in complete.top_edges(len(ranked))]


def test_cancel_request_and_no_budget(model):
    view = ni.attribute(model, PROMPT, target="w5", foil="w9", exact_budget=0)
    assert view.progress == {**view.progress, "done": 0, "total": 0, "state": "done"}
    assert not decode(view._heads["measured"]).any()
    view.sent = []
    view.send = lambda content, buffers=None: view.sent.append((content, buffers))
    assert request(view, {}, method="cancel")["ok"]
    blocking = ni.attribute(model, PROMPT, target="w5", foil="w9", background=False)
    assert blocking.progress["state"] == "done" and decode(blocking._heads["measured"]).all()
