"""WhyNotView and ContextUseView: the traits carry the analysis' numbers, the
requests (restore, open, select a head) work and bad ones come back as errors
in the widget, and the lazily declared ni.why_not / ni.context_use build them."""

from __future__ import annotations

import numpy as np
import pytest

import nbinterp as ni
from nbinterp.analysis.why_not import contrast, first_answer, compute_why_not
from nbinterp.errors import NbinterpError
from nbinterp.widgets._buffers import decode

PROMPT = ("Context : the capital of Tarvos is Fallow . the capital of Tarvos is Yarrow . "
          "Question : the capital of Tarvos is")
REFERENCE = contrast(PROMPT, "the capital of Tarvos is Fallow .", "the old tree near the road .")
CONTEXT = "the capital of Tarvos is Fallow . the capital of Tarvos is Yarrow ."


@pytest.fixture(scope="module")
def model():
    return ni.load()


@pytest.fixture(scope="module")
def view(model):
    return ni.why_not(model, PROMPT, target="Yarrow", references=[REFERENCE]).wait()


def test_the_first_answer_comes_at_once_and_the_exact_numbers_stream_in(model):
    """The first answer is estimates (labelled so); the streamed numbers equal measuring
    everything at once (the analysis' why_not) and plain patching; cancel stops, resume ends."""
    exact = compute_why_not(model, PROMPT, "Yarrow", references=[REFERENCE])
    wn = ni.why_not(model, PROMPT, target="Yarrow", references=[REFERENCE], background=False)
    assert wn.progress["state"] == "done" and wn.progress["done"] == wn.progress["total"] == 2 * model.n_layers * (model.n_heads + 1)
    streamed = {m.component.name: m.restore_share for m in wn.result.missing}
    for m in exact.missing:
        assert streamed[m.component.name] == pytest.approx(m.restore_share, abs=1e-3), m.component.name
    assert [i.component.name for i in wn.inhibitors][:5] == [i.component.name for i in exact.inhibitors][:5]
    assert wn.restored["together_share"] == pytest.approx(exact.restore(5).together_share, abs=1e-3)

    estimated = first_answer(model, PROMPT, "Yarrow", references=[REFERENCE])
    assert not any(m.measured for m in estimated.missing) and {m.label for m in estimated.missing} == {"estimate"}
    assert all(m.restore_share == m.estimate for m in estimated.missing if m.component.kind == "head")
    with pytest.raises(NbinterpError, match="still being measured"):
        estimated.restore(5)

    first = ni.why_not(model, PROMPT, target="Yarrow", references=[REFERENCE], background=True)
    first.cancel()
    first.wait()
    assert first.progress["state"] in ("cancelled", "done")
    if first.progress["state"] == "cancelled":
        # the missing components go first (one batch here), the inhibitors still hold estimates
        assert all(r["measured"] for r in first.missing_list)
        unmeasured = [r for r in first.inhibitor_list if not r["measured"]]
        assert unmeasured and first.progress["done"] < first.progress["total"]
        assert all(r["effect"] == r["estimate"] for r in unmeasured if r["head"] is not None)
        first.resume(background=False)
    assert first.finished and first.progress["state"] == "done"
    assert {m.component.name: m.restore_share for m in first.result.missing} == pytest.approx(streamed, abs=1e-3)


def sent(widget):
    widget.sent = []
    widget.send = lambda content, buffers=None: widget.sent.append(content)
    return widget


def test_why_not_traits_carry_the_analysis(view):
    result = view.result
    assert view.actual == "Fallow" == view.actual_token and view.expected == "Yarrow"
    assert view.metric == result.metric < 0
    t = result.trajectory
    np.testing.assert_array_equal(decode(view._trajectory["expected_rank"]), t.expected_rank.numpy().astype(np.float32))
    np.testing.assert_array_equal(decode(view._trajectory["actual_probability"]), t.actual_probability.numpy())
    assert view.critical_layer == t.critical_layer and view.row_labels == t.row_labels
    assert [r["name"] for r in view.inhibitor_list] == [i.component.name for i in view.inhibitors]
    assert [r["effect"] for r in view.inhibitor_list] == [i.effect for i in view.inhibitors]
    assert [r["restore_share"] for r in view.missing_list] == [m.restore_share for m in view.missing]
    restore = result.restore(5)
    assert view.restored["components"] == [c.name for c in restore.components]
    assert view.restored["together_share"] == pytest.approx(restore.together_share, abs=1e-9)
    assert view.to_figure() is not None and "Fallow" in repr(view)


def test_why_not_requests(view):
    sent(view)
    view._on_frontend_msg(view, {"kind": "request", "id": "r1", "method": "restore", "params": {"k": 2}}, [])
    assert view.sent[-1]["ok"] is True and view.restored["k"] == 2
    assert view.sent[-1]["result"]["together_share"] == pytest.approx(view.restored["together_share"])
    view._on_frontend_msg(view, {"kind": "request", "id": "o1", "method": "open",
                                 "params": {"layer": 1, "head": 1, "open_in": "attention"}}, [])
    assert view.sent[-1]["ok"] is True and type(view.opened).__name__ == "AttentionView"
    assert view.opened.layer == 1 and view.opened.head == 1
    view._on_frontend_msg(view, {"kind": "request", "id": "o2", "method": "open",
                                 "params": {"layer": 2, "head": None, "open_in": "ablation"}}, [])
    assert view.sent[-1]["ok"] is True and type(view.opened).__name__ == "AblationPanel"
    for params, message in [({"layer": 9, "head": 0, "open_in": "attention"}, "out of range"),
                            ({"layer": 0, "head": 0, "open_in": "nowhere"}, "nowhere")]:
        view._on_frontend_msg(view, {"kind": "request", "id": "bad", "method": "open", "params": params}, [])
        assert view.sent[-1]["ok"] is False and message in view.sent[-1]["error"]
    view._on_frontend_msg(view, {"kind": "request", "id": "bad", "method": "restore", "params": {"k": 0}}, [])
    assert view.sent[-1]["ok"] is False


def test_context_use_view(model):
    cu = ni.context_use(model, PROMPT, context=CONTEXT)
    result = cu.result
    assert cu.verdict == result.verdict == cu.verdict_text
    np.testing.assert_array_equal(decode(cu._ratio), result.ratio.numpy())
    np.testing.assert_array_equal(decode(cu._attention), result.attention.numpy())
    assert (cu.context_start, cu.context_end) == result.context
    assert cu.knockout_result["answer_after"] == result.knockout.answer_after
    assert cu.knockout_result["n_edges"] == result.knockout.n_edges
    cu.set_state({"selected": "L1.H3"})
    assert cu.selected == "L1.H3" and not cu.error
    cu.set_state({"selected": "L9.H0"})
    assert cu.selected == "L1.H3" and "selected" in cu.error
    assert cu.to_figure() is not None and "context" in repr(cu)
