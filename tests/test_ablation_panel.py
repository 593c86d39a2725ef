"""AblationPanel without a browser: results against plain torch hooks,
the two-way `ablations` trait, coalescing-friendly requests, validation of
what the browser sends, "copy as code", static output."""

from __future__ import annotations

import pytest
import torch

import nbinterp as ni
from conftest import PROMPT, random_model
from nbinterp.interventions.ablation import canonical_ablations
from reference_hooks import blocks, hooks, scale_head_input

TARGET, FOIL = "w5", "w9"


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request, tokenizer):
    return ni.load(random_model(request.param), tokenizer=tokenizer)


@pytest.fixture
def panel(model):
    p = ni.ablate(model, PROMPT, target=TARGET, foil=FOIL, k=5)
    p.sent = []
    p.send = lambda content, buffers=None: p.sent.append(content)
    return p


def request(panel, params, request_id="r1"):
    panel._on_frontend_msg(panel, {"kind": "request", "id": request_id, "method": "run", "params": params}, [])
    return panel.sent[-1]


def reference_logits(model, ablations):
    """The same ablation as plain hooks on the HF model: no nbinterp code."""
    hf = model.hf
    handles = []
    for key, scale in ablations.items():
        layer, _, part = key[1:].partition(".")
        if part == "mlp":
            handles.append(blocks(hf)[int(layer)].mlp.register_forward_hook(lambda m, a, out, s=scale: out * s))
        else:
            handles.append(scale_head_input(hf, int(layer), int(part[1:]), scale))
    with hooks(*handles), torch.no_grad():
        return hf(model.tokenize(PROMPT)).logits[0, -1]


def check_result_against_hooks(panel, model, ablations):
    logits = reference_logits(model, ablations)
    probabilities = torch.softmax(logits.float(), -1)
    result = panel.result
    assert result.logit_diff == pytest.approx((logits[model.token_id(TARGET)] - logits[model.token_id(FOIL)]).item(), abs=1e-4)
    top = probabilities.topk(5)
    assert [e.id for e in result.top_k] == top.indices.tolist()
    assert [e.probability for e in result.top_k] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert result.target_probability == pytest.approx(probabilities[model.token_id(TARGET)].item(), abs=1e-5)


def test_every_change_reruns_and_equals_a_plain_hook(panel, model):
    check_result_against_hooks(panel, model, {})
    assert panel.result.logit_diff == panel.baseline.logit_diff
    panel.ablations = {"L1.H2": 0.0, (0, "mlp"): 0.5, "l0.h1": 1.5}
    assert panel.ablations == {"L0.H1": 1.5, "L0.mlp": 0.5, "L1.H2": 0.0}
    check_result_against_hooks(panel, model, panel.ablations)
    baseline = torch.softmax(reference_logits(model, {}).float(), -1)
    assert [e.before for e in panel.result.top_k] == pytest.approx([baseline[e.id].item() for e in panel.result.top_k], abs=1e-5)
    assert panel.result.logit_diff != pytest.approx(panel.baseline.logit_diff, abs=1e-4)
    panel.reset()
    assert panel.ablations == {} and panel.result.logit_diff == panel.baseline.logit_diff


def test_a_browser_run_request_sets_the_traits_and_replies_when_done(panel, model):
    seq = panel.result.seq
    reply = request(panel, {"ablations": {"L1.H0": 0.25, "L1.mlp": 1.0}, "ablation": "zero"})
    assert reply["ok"] is True and reply["result"] == {"seq": seq + 1} == {"seq": panel.result.seq}
    assert panel.ablations == {"L1.H0": 0.25}  # 1.0 changes nothing and is dropped
    check_result_against_hooks(panel, model, {"L1.H0": 0.25})
    # the browser's trait path re-runs too
    panel.set_state({"ablations": {"L0.H3": 0.0}})
    assert panel.result.seq == seq + 2 and panel.result.ablations == {"L0.H3": 0.0}


def test_mean_ablation_and_copy_as_code_reproduce_the_result(panel, model):
    request(panel, {"ablations": {"L0.H1": 0.0, "L1.mlp": 0.5}, "ablation": "mean"})
    code = panel.result.code
    assert code == panel.code and "ablation='mean'" in code and "reference=" in code
    rerun = eval(code, {"model": model})  # noqa: S307 - our own generated code
    assert rerun.logit_diff(TARGET, FOIL) == pytest.approx(panel.result.logit_diff, abs=1e-6)
    expected = model.run(PROMPT, ablate={(0, 1): 0.0, "L1.mlp": 0.5}, ablation="mean", reference=[PROMPT])
    assert panel.result.logit_diff == pytest.approx(expected.logit_diff(TARGET, FOIL), abs=1e-6)
    assert panel.result.logit_diff != pytest.approx(
        model.run(PROMPT, ablate={(0, 1): 0.0, "L1.mlp": 0.5}).logit_diff(TARGET, FOIL), abs=1e-6)


@pytest.mark.parametrize("bad, message", [
    ({"L0.H1": "abc"}, "scale of 'L0.H1' must be a number from 0 to 1.5, got 'abc'"),
    ({"L0.H99": 0.0}, "head 99 is out of range"),
    ({"L9.mlp": 0.0}, "layer 9 is out of range"),
    ({"L0.H1": 2.0}, "from 0 to 1.5"),
    ({"L0.H1": float("nan")}, "from 0 to 1.5"),
    ({"attn": 0.0}, "cannot read component 'attn'"),
    ([1, 2], "ablations must be an object"),
])
def test_bad_values_from_the_browser_are_refused_with_a_message(panel, bad, message):
    before = (dict(panel.ablations), panel.result.seq)
    reply = request(panel, {"ablations": bad})
    assert reply["ok"] is False and message in reply["error"]
    panel.set_state({"ablations": bad})
    assert message in panel.error
    assert (panel.ablations, panel.result.seq) == before  # nothing ran
    assert request(panel, {"ablations": {"L0.H0": 0.0}, "ablation": "zero"})["ok"] is True
    assert panel.error == ""  # a good run clears the error


def test_python_side_values_are_checked(panel):
    with pytest.raises(ni.NbinterpError, match="out of range"):
        panel.ablations = {"L0.H7": 0.0}
    with pytest.raises(ni.NbinterpError, match="finite number"):
        panel.ablations = {"L0.H1": float("inf")}
    with pytest.raises(ni.NbinterpError, match="'zero' or 'mean'"):
        panel.ablation = "resample"
    panel.ablations = {"L0.H1": 3.0}  # Python may go beyond the sliders' range
    assert panel.result.ablations == {"L0.H1": 3.0}


def test_canonical_ablations(model):
    assert canonical_ablations(model, {(1, 1): 0, "L0.mlp": 1.0, "L0.H2": 0.5}) == {"L0.H2": 0.5, "L1.H1": 0.0}
    with pytest.raises(ni.NbinterpError, match="dict like"):
        canonical_ablations(model, [("L0.H1", 0.0)])


def test_figure_and_static_png(panel, model):
    panel.ablations = {"L1.H2": 0.0}
    figure = panel.to_figure()
    before_ax, after_ax = figure.axes
    # Each bar against plain hooks on the HF model (not the result the figure was drawn from):
    # the bar's token, read back from its label, has that probability before / after.
    import ast

    for ax, ablations in ((before_ax, {}), (after_ax, {"L1.H2": 0.0})):
        probabilities = torch.softmax(reference_logits(model, ablations).float(), -1)
        ids = [model.token_id(ast.literal_eval(label.get_text())) for label in ax.get_yticklabels()]
        widths = [bar.get_width() for bar in ax.patches]
        assert widths == pytest.approx(probabilities[ids].tolist(), abs=1e-5)
        assert set(probabilities.topk(5).indices.tolist()) <= set(ids)  # the top 5 are all drawn
    assert "L1.H2=0" in figure._suptitle.get_text()
    data, _ = panel._repr_mimebundle_()
    assert data["image/png"].startswith(b"\x89PNG")


def test_target_and_foil_rows_are_always_there_with_before_and_after(model):
    # k=1: at most one of target / foil can be in the top k, so at least one
    # row must come from outside it.
    panel = ni.ablate(model, PROMPT, target=TARGET, foil=FOIL, k=1, ablate={"L0.H0": 0.0, "L1.H2": 0.0})
    after = model.run(PROMPT, ablate={"L0.H0": 0.0, "L1.H2": 0.0}).probabilities(-1)
    before = model.run(PROMPT).probabilities(-1)
    for name, token in (("target", TARGET), ("foil", FOIL)):
        row = getattr(panel.result, name)
        token_id = model.token_id(token)
        assert row.id == token_id and row.token == token
        assert row.probability == pytest.approx(float(after[token_id]), rel=1e-5, abs=1e-9)
        assert row.before == pytest.approx(float(before[token_id]), rel=1e-5, abs=1e-9)
        assert getattr(panel.baseline, name).probability == pytest.approx(float(before[token_id]), rel=1e-5, abs=1e-9)
    assert len(panel.result.top_k) == 1
    assert ni.ablate(model, PROMPT, k=2).result.target is None
