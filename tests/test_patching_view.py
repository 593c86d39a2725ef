"""PatchingView without a browser: what it streams equals the sweep, the
background sweep can be cancelled and resumed, clicks open the component,
errors are clear."""

from __future__ import annotations

import numpy as np
import torch
import pytest

import nbinterp as ni
from conftest import PROMPT, random_model
from nbinterp.analysis.patching_sweep import sweep
from nbinterp.widgets import AblationPanel, AttentionView
from nbinterp.widgets._buffers import decode

CORRUPTED = "w5 w17 w3 w42 w9 w5 w17 w4 w28 w11"


@pytest.fixture(scope="module")
def model(tokenizer):
    return ni.load(random_model("gpt2"), tokenizer=tokenizer)


def sent(view):
    view.sent = []
    view.send = lambda content, buffers=None: view.sent.append(content)
    return view


def test_effects_and_streamed_tensors_equal_the_sweep(model):
    grid = ni.patch(model, clean=PROMPT, corrupted=CORRUPTED, target="w5", foil="w9", background=False)
    expected = sweep(model, PROMPT, CORRUPTED, "w5", "w9").run()
    effects = grid.effects
    for kind, values in expected.items():
        np.testing.assert_allclose(effects[kind].numpy(), values.numpy(), atol=1e-5)
        assert grid._effects[kind]["done"] == values.numel()
        np.testing.assert_array_equal(decode(grid._effects[kind]["tensor"]), effects[kind].numpy())
    assert grid.progress["state"] == "done" and grid.progress["done"] == grid.progress["total"] == 3 * 2 * 10 + 2 * 4
    assert grid.clean_tokens == PROMPT.split() and grid.corrupted_tokens == CORRUPTED.split()
    layer, head, value = grid.top_cells("head", 1)[0]
    assert value == effects["head"].max().item() == effects["head"][layer, head].item()


def test_background_sweep_cancels_after_the_batch_and_resumes(model):
    grid = ni.patch(model, clean=PROMPT, corrupted=CORRUPTED, target="w5", foil="w9", batch_size=1)
    grid.cancel()
    assert grid.wait(timeout=30) is False
    assert grid.progress["state"] == "cancelled" and grid.progress["done"] < grid.progress["total"]
    partial = grid.effects
    done = grid.progress["done"]
    assert int(sum((~v.isnan()).sum() for v in partial.values())) == done
    grid.resume()
    assert grid.wait(timeout=60) is True and grid.progress["state"] == "done"
    assert not any(v.isnan().any() for v in grid.effects.values())


def test_the_browser_cancel_request_is_answered(model):
    grid = sent(ni.patch(model, clean=PROMPT, corrupted=CORRUPTED, target="w5", batch_size=1))
    grid._on_frontend_msg(grid, {"kind": "request", "id": "c1", "method": "cancel", "params": {}}, [])
    assert grid.sent[-1] == {"kind": "response", "id": "c1", "ok": True, "result": {"cancelled": True}}
    grid.wait(30)
    assert grid.progress["state"] in ("cancelled", "done")


@pytest.mark.parametrize("kind, index, where, opened", [
    ("head", 2, "attention", AttentionView), ("attn_out", 7, "attention", AttentionView),
    ("head", 2, "ablation", AblationPanel), ("mlp_out", 3, "ablation", AblationPanel),
    ("resid_pre", 3, "ablation", AttentionView),
])
def test_clicking_a_cell_opens_that_component(model, kind, index, where, opened):
    grid = sent(ni.patch(model, clean=PROMPT, corrupted=CORRUPTED, target="w5", foil="w9", background=False))
    grid._on_frontend_msg(grid, {"kind": "request", "id": "o1", "method": "open",
                                 "params": {"kind": kind, "layer": 1, "index": index, "open_in": where}}, [])
    assert grid.sent[-1]["ok"] is True, grid.sent[-1]
    view = grid.opened
    assert isinstance(view, opened) and grid._opened is view
    assert grid.selected == {"kind": kind, "layer": 1, "index": index}
    if isinstance(view, AttentionView):
        assert view.layer == 1 and view.head == (index if kind == "head" else 0)
        assert view.focus_token == (9 if kind == "head" else index)
    else:
        assert view.ablations == ({"L1.H2": 0.0} if kind == "head" else {"L1.mlp": 0.0})
        assert view.result.logit_diff == pytest.approx(
            model.run(PROMPT, ablate=view.ablations).logit_diff("w5", "w9"), abs=1e-6)


@pytest.mark.parametrize("params, message", [
    ({"kind": "head", "layer": 1, "index": 99}, "index 99 is out of range 0..3"),
    ({"kind": "neuron", "layer": 0, "index": 0}, "kind must be one of"),
    ({"kind": "head", "layer": "1", "index": 0}, "layer must be an integer"),
    ({"kind": "head", "layer": 1, "index": 0, "open_in": "tab"}, "open_in must be one of"),
])
def test_bad_open_requests_get_error_responses(model, params, message):
    grid = sent(ni.patch(model, clean=PROMPT, corrupted=CORRUPTED, target="w5", background=False))
    grid._on_frontend_msg(grid, {"kind": "request", "id": "o1", "method": "open", "params": params}, [])
    assert grid.sent[-1]["ok"] is False and message in grid.sent[-1]["error"]
    assert grid.opened is None


def test_unequal_lengths_and_figure(model):
    with pytest.raises(ni.NbinterpError, match="same number of tokens"):
        ni.patch(model, clean=PROMPT, corrupted="w1 w2", target="w5")
    grid = ni.patch(model, clean=PROMPT, corrupted=CORRUPTED, target="w5", foil="w9", kinds=["resid_pre", "head"], background=False)
    figure = grid.to_figure()
    images = [np.asarray(ax.images[0].get_array()) for ax in figure.axes if ax.images]
    # Against references the figure code never saw: only token 7 differs, so at layer 0 the
    # residual stream there restores everything and elsewhere nothing; each head's cell is
    # the plain one-site patched run, normalised by the plain runs.
    setup = grid.setup
    gap = setup.clean_logit_diff - setup.corrupted_logit_diff
    logit_scale = max(float(model.run(PROMPT).logits[-1].abs().max()), float(model.run(CORRUPTED).logits[-1].abs().max()))
    tol = 64 * np.finfo(np.float32).eps * logit_scale / abs(gap)  # float32 rounding of an effect (test_patching_sweep)
    assert images[0].shape == (model.n_layers, len(PROMPT.split())) and images[1].shape == (model.n_layers, model.n_heads)
    np.testing.assert_allclose(images[0][0], np.eye(10)[7], atol=tol, rtol=0)
    heads = np.array([[(model.run(CORRUPTED, patch_from=PROMPT, patch=[("head", layer, head, None)]).logit_diff("w5", "w9")
                        - setup.corrupted_logit_diff) / gap for head in range(model.n_heads)] for layer in range(model.n_layers)])
    assert np.abs(heads).max() > 100 * tol  # the heads' cells are not all ~0: a swapped panel would show
    np.testing.assert_allclose(images[1], heads, atol=tol, rtol=0)
    data, _ = grid._repr_mimebundle_()
    assert data["image/png"].startswith(b"\x89PNG")


def test_a_corruption_that_does_not_change_the_answer_is_refused_before_any_view(model):
    """prepare's refusal reaches the cell as a clear error; the model keeps working."""
    bundled = ni.load()
    clean = "When Mary and John went to the store , John gave a drink to"
    corrupted = clean.replace("store", "house")  # logit(Mary): 24.2917 -> 24.2918
    with pytest.raises(ni.NbinterpError, match="almost the same logit .*Pick a corrupted prompt that changes the answer"):
        ni.patch(bundled, clean=clean, corrupted=corrupted, target="Mary")
    grid = ni.patch(bundled, clean=clean, corrupted=clean.replace("John gave", "Mary gave"), target="Mary", foil="John",
                    kinds=["head"], background=False)
    assert grid.progress["state"] == "done" and grid.error == ""


def test_the_kernel_can_run_the_model_while_the_sweep_computes(model):
    """nnsight can't trace one model from two threads at once: the sweep and
    model.run in the kernel take turns, and both get the right numbers."""
    expected = ni.patch(model, clean=PROMPT, corrupted=CORRUPTED, target="w5", foil="w9", background=False).effects
    ablated = model.run(PROMPT, ablate={"L0.H1": 0.0}).logits
    grid = ni.patch(model, clean=PROMPT, corrupted=CORRUPTED, target="w5", foil="w9", batch_size=2)
    runs = 0
    # the same one-row forward each time; the other thread's plan leaking in would move logits by
    # far more than float32 rounding (64 eps x the largest logit)
    tol = 64 * torch.finfo(torch.float32).eps * float(ablated.abs().max())
    while grid.running or runs == 0:
        torch.testing.assert_close(model.run(PROMPT, ablate={"L0.H1": 0.0}).logits, ablated, atol=tol, rtol=0)
        runs += 1
    assert grid.wait(30) and grid.error == ""
    for kind, values in expected.items():
        torch.testing.assert_close(grid.effects[kind], values, atol=1e-5, rtol=0)


def test_an_opened_cell_reaches_the_view_in_one_message_with_its_selection(model):
    """The caption names `selected`: it must arrive with `_opened`, not after it
    (it showed the previous click)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "browser"))
    from harness import RecordingComm

    grid = ni.patch(model, clean=PROMPT, corrupted=CORRUPTED, target="w5", foil="w9", kinds=["head"], background=False)
    grid.comm = comm = RecordingComm()
    grid.open_cell("head", 1, 2)
    updates = [m["data"]["state"] for m in comm.drain() if m["data"].get("method") == "update"]
    carrying = [u for u in updates if "_opened" in u]
    assert len(carrying) == 1 and carrying[0]["selected"] == {"kind": "head", "layer": 1, "index": 2}


def test_the_first_paint_is_the_estimate_and_measured_cells_are_marked(model):
    """exact=False: the estimate grid alone (labelled per cell as not measured); then a
    selection is measured on resume, and the streamed mask says which cells are exact."""
    grid = ni.patch(model, clean=PROMPT, corrupted=CORRUPTED, target="w5", foil="w9", kinds=["mlp_out", "head"],
                    layers=[1], positions=[7, -1], exact=False)
    reference = sweep(model, PROMPT, CORRUPTED, "w5", "w9", kinds=["mlp_out", "head"])
    assert grid.progress["state"] == "cancelled" and grid.progress["done"] == 0 and grid.progress["total"] == 2 + 4
    for kind in ("mlp_out", "head"):
        np.testing.assert_array_equal(decode(grid._effects[kind]["estimate"]), reference.estimates[kind].numpy())
        assert not decode(grid._effects[kind]["measured"]).any()  # a bool mask: nothing measured yet
    grid.resume(background=False)
    assert grid.progress["state"] == "done"
    measured = decode(grid._effects["mlp_out"]["measured"])
    assert measured.sum() == 2 and measured[1, 7] == 1 and measured[1, 9] == 1
    assert decode(grid._effects["head"]["measured"])[1].sum() == 4 and grid._effects["head"]["done"] == 4
    full = reference.run()
    np.testing.assert_allclose(grid.effects["mlp_out"][1, [7, 9]].numpy(), full["mlp_out"][1, [7, 9]].numpy(), atol=1e-5)
    assert grid.effects["mlp_out"][0].isnan().all()  # outside the selection: never measured
    assert grid.show == "best" and "show" in grid._frontend_fields()
