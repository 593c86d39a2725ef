"""ProbeView: the numbers it syncs equal the probe computation's, a
"usage" request runs the usage test (what a click sends), bad input is a
clear NbinterpError or an error shown in the view, never a dead kernel."""

from __future__ import annotations

import pytest
import torch

import nbinterp as ni
from nbinterp.bundled import tasks
from nbinterp.errors import NbinterpError
from nbinterp.representations.probe_usage import usage_test
from nbinterp.widgets._buffers import decode


@pytest.fixture(scope="module")
def model():
    return ni.load()


@pytest.fixture(scope="module")
def view(model):
    drawn = tasks.examples("bias", 120, split="test", seed=3)
    unique = list({e.prompt: e for e in drawn}.values())[:60]
    return ni.probe(model, [e.prompt for e in unique], labels=[e.meta["group"] for e in unique], target="doctor", foil="nurse",
                    n_controls=2)


def sent_messages(view, monkeypatch):
    sent = []
    monkeypatch.setattr(view, "send", lambda content, buffers=None: sent.append(content))
    return sent


def test_traits_hold_the_computed_numbers(view, model):
    result = view.result
    assert view.stream_labels == ["L0", "L1", "L2", "L3", "final"] and view.classes == ["A", "B"]
    assert view.n_train + view.n_test == 60
    assert decode(view._accuracy["test"]).tolist() == pytest.approx(result.test_accuracy.tolist(), abs=1e-7)
    assert decode(view._accuracy["train"]).tolist() == pytest.approx(result.train_accuracy.tolist(), abs=1e-7)
    assert view.accuracy["L3"] == {"train": float(result.train_accuracy[3]), "test": float(result.test_accuracy[3])}
    # ni.probe ran the usage test at the best held-out layer right away
    best = result.best_layer
    assert view.selected_layer == best and list(view.usage_results) == [str(best)]
    shown = view.usage_results[str(best)]
    assert shown == view.results[best].summary()
    # and it equals an independent call of the pure function
    again = usage_test(model, result, best, ("doctor", "nurse"), n_controls=2)
    assert shown["mean_abs_change"] == pytest.approx(again.mean_abs_change, abs=1e-9)
    assert shown["probability_before"] == pytest.approx(again.probability_before, abs=1e-9)
    assert shown["verdict"] == again.verdict == "present and used"
    direction = view.direction(best)
    assert abs(float(direction.norm()) - 1) < 1e-5 and torch.equal(direction, result.direction(best))
    assert "logit(doctor) - logit(nurse)" in view.metric_label
    assert view.static_png()[:4] == b"\x89PNG"


def test_a_usage_request_runs_the_test_and_bad_ones_show_errors(view, monkeypatch):
    sent = sent_messages(view, monkeypatch)
    view._on_frontend_msg(view, {"kind": "request", "id": "q1", "method": "usage", "params": {"layer": 0}}, [])
    assert sent[-1]["ok"] is True and sent[-1]["id"] == "q1"
    assert sent[-1]["result"] == view.usage_results["0"] == view.results[0].summary()
    assert view.selected_layer == 0 and view.progress["state"] == "done" and view.progress["layer"] == 0
    assert sent[-1]["result"]["verdict"] == "not present"  # L0 at the last token holds no group
    view._on_frontend_msg(view, {"kind": "request", "id": "q2", "method": "usage", "params": {"layer": 9}}, [])
    assert sent[-1] == {"kind": "response", "id": "q2", "ok": False,
                        "error": "layer 9 is out of range: the probes sit on streams 0..4 (L0, L1, L2, L3, final)"}
    view._on_frontend_msg(view, {"kind": "request", "id": "q3", "method": "usage", "params": {"layer": "L1"}}, [])
    assert sent[-1]["ok"] is False and "layer must be an integer" in sent[-1]["error"]
    with pytest.raises(NbinterpError, match=r"layer 7 is out of range: the probes sit on streams 0..4"):
        view.usage(7)
    assert "layer 7 is out of range" in view.error
    view.usage(1, probabilities=False)  # the view keeps working and the error clears
    assert view.error == "" and view.selected_layer == 1


def test_bad_calls_are_clear_errors(model):
    prompts = ["Tovan Varn works as a", "Ashvi Quel works as a", "Kalo Varn works as a", "Suvi Quel works as a"]
    with pytest.raises(NbinterpError, match="labels has 2 entries but there are 4 prompts"):
        ni.probe(model, prompts, labels=["A", "B"])
    with pytest.raises(NbinterpError, match="a probe needs at least two classes"):
        ni.probe(model, prompts, labels=["B"] * 4)
    with pytest.raises(NbinterpError, match="'Zorblax'"):
        ni.probe(model, prompts[:3] + ["Zorblax Quel works as a"], labels=["A", "B", "A", "B"])
    with pytest.raises(NbinterpError, match="not one|does not know"):
        ni.probe(model, prompts, labels=["A", "B", "A", "B"], target="doctor", foil="surgeon")
    no_metric = ni.probe(model, prompts, labels=["A", "B", "A", "B"], test_fraction=0.5)
    with pytest.raises(NbinterpError, match="this view has no metric"):
        no_metric.usage(1)
