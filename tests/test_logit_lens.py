"""Logit lens against the model's own output (last row) and against the
plain HF final norm + unembedding applied to the engine's residual stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nbinterp as ni
from conftest import PROMPT
from nbinterp.analysis.logit_lens import compute_logit_lens
from nbinterp.widgets._buffers import decode


def test_rows_read_the_residual_stream_through_the_final_norm_and_unembedding(arch_model):
    _, hf, model = arch_model
    lens = compute_logit_lens(model, PROMPT, target="w5")
    run = model.run(PROMPT)
    assert lens.shape == (model.n_layers + 1, len(run)) and lens.row_labels == ["embed", "L0", "L1"]
    final_norm, unembed = hf.get_submodule(model.arch.final_norm), hf.get_submodule(model.arch.unembed)
    cap = getattr(hf.config, "final_logit_softcapping", None)  # Gemma2 squashes logits as HF's forward does
    for layer in range(model.n_layers):
        with torch.no_grad():
            logits = unembed(final_norm(run.residual(layer))).float()
            logits = logits if cap is None else torch.tanh(logits / cap) * cap
            probabilities = torch.softmax(logits, dim=-1)
        torch.testing.assert_close(lens.top_probabilities[layer], probabilities.max(-1).values, atol=1e-5, rtol=0)
        torch.testing.assert_close(lens.target_probabilities[layer], probabilities[:, 5], atol=1e-5, rtol=0)
    # the last row is the model's own prediction
    final = torch.softmax(run.logits, dim=-1)
    torch.testing.assert_close(lens.top_probabilities[-1], final.max(-1).values, atol=1e-6, rtol=0)
    assert torch.equal(lens.top_token_ids[-1], final.argmax(-1))
    assert lens.top_tokens[-1] == [model.tokenizer.decode([i]) for i in final.argmax(-1).tolist()]


def test_view_sends_the_lens_and_draws_a_figure(arch_model):
    _, hf, model = arch_model
    view = ni.logit_lens(model, PROMPT, target="w5")
    lens = view.lens
    np.testing.assert_array_equal(decode(view._lens["target_probabilities"]), lens.target_probabilities.numpy())
    np.testing.assert_array_equal(decode(view._lens["top_probabilities"]), lens.top_probabilities.numpy())
    assert view.top_tokens == lens.top_tokens and view.tokens == PROMPT.split() and view.target == "w5"
    ax = view.to_figure().axes[0]
    image = np.asarray(ax.images[0].get_array())
    # the figure's last row and texts against the model's own output (not the lens it was drawn
    # from): p(w5) and the top token at every position, from plain HF logits
    with torch.no_grad():
        final = torch.softmax(hf(model.tokenize(PROMPT)).logits[0].float(), dim=-1)
    assert image.shape == (model.n_layers + 1, len(PROMPT.split()))
    np.testing.assert_allclose(image[-1], final[:, 5].numpy(), atol=64 * np.finfo(np.float32).eps, rtol=0)  # p <= 1: float32 ulps
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert len(texts) == image.size
    assert [texts[model.n_layers, c] for c in range(image.shape[1])] == [f"w{i}" for i in final.argmax(-1).tolist()]
    untargeted = ni.logit_lens(model, PROMPT)
    assert untargeted.wait() and untargeted.progress["state"] == "done"
    assert untargeted._lens.keys() == {"top_probabilities"}  # no target, no target tensor; complete: no mask


def test_view_paints_first_then_streams_the_other_rows(arch_model, monkeypatch):
    """The first publish is the first paint (the mask says which cells are
    computed, the label says what is pending); the streamed rows replace it."""
    import importlib

    view_module = importlib.import_module("nbinterp.widgets.logit_lens")

    _, _, model = arch_model
    started = []
    monkeypatch.setattr(view_module.BackgroundJob, "start", lambda self, *args, **kwargs: started.append(args))
    view = ni.logit_lens(model, PROMPT, target="w5")
    assert len(started) == 1 and view.progress["state"] == "running"
    computed = decode(view._lens["computed"]).astype(bool)
    assert computed[-1].all() and computed[:, -1].all() and not computed[:-1, :-1].any()
    assert "streaming in" in view.progress["label"] and view.progress["done"] == 1
    first = view.first_paint
    np.testing.assert_array_equal(decode(view._lens["target_probabilities"])[computed],
                                  first.target_probabilities.numpy()[computed])
    assert all(view.top_tokens[r][c] == "" for r, c in zip(*np.nonzero(~computed)))
    monkeypatch.undo()
    view.resume(background=False)
    assert view.progress["state"] == "done" and "computed" not in view._lens
    full = compute_logit_lens(model, PROMPT, target="w5")
    np.testing.assert_allclose(decode(view._lens["target_probabilities"]), full.target_probabilities.numpy(),
                               atol=16 * np.finfo(np.float32).eps, rtol=0)  # chunked sums: float32 ulps of p <= 1
    assert view.top_tokens == full.top_tokens and view.progress["label"].startswith("every row")


def test_bad_target_is_a_clear_error(arch_model):
    _, _, model = arch_model
    with pytest.raises(ni.NbinterpError, match="not one"):
        ni.logit_lens(model, PROMPT, target="w5 w6")


def test_first_paint_is_the_output_row_and_the_last_position_then_the_rest_streams(arch_model):
    """The first paint holds the model's output row at every position and every
    row at the last position, with the numbers of the plain norm + unembedding;
    the remainder fills the other cells chunk by chunk with the same numbers,
    a cancel stops it with `computed` true only where numbers are."""
    from nbinterp.analysis import logit_lens as lens_module

    _, hf, model = arch_model
    lens, rest = lens_module.first_paint(model, PROMPT, target="w5")
    n, n_tokens = model.n_layers, len(PROMPT.split())
    expected = torch.zeros(n + 1, n_tokens, dtype=torch.bool)
    expected[n] = True
    expected[:, -1] = True
    assert torch.equal(lens.computed, expected) and not lens.complete
    assert lens.top_probabilities[~expected].isnan().all() and (lens.top_token_ids[~expected] == -1).all()
    run = model.run(PROMPT)
    final_norm, unembed = hf.get_submodule(model.arch.final_norm), hf.get_submodule(model.arch.unembed)
    cap = getattr(hf.config, "final_logit_softcapping", None)

    def reference(row):
        with torch.no_grad():
            stream = run.residual(row) if row < n else run.residual(n - 1)
            logits = unembed(final_norm(stream)).float() if row < n else run.logits.float()
            if row < n and cap is not None:
                logits = torch.tanh(logits / cap) * cap
            return torch.softmax(logits, dim=-1)

    for row in range(n + 1):
        probabilities = reference(row)
        cells = lens.computed[row]
        torch.testing.assert_close(lens.target_probabilities[row][cells], probabilities[cells][:, 5], atol=1e-5, rtol=0)
        torch.testing.assert_close(lens.top_probabilities[row][cells], probabilities[cells].max(-1).values,
                                   atol=1e-5, rtol=0)
    rest.rows_per_chunk = 1
    for rows in rest:
        assert lens.computed[rows].all()
        rest.cancel()
    assert rest.cancelled and rest.done == 1 and not lens.complete
    assert lens.top_probabilities[~lens.computed].isnan().all()
    rest.run()  # resumes
    assert lens.complete and rest.finished
    full = compute_logit_lens(model, PROMPT, target="w5")
    # other chunkings sum the unembedding in another order: float32 ulps of a probability <= 1
    ulps = 16 * torch.finfo(torch.float32).eps
    torch.testing.assert_close(lens.target_probabilities, full.target_probabilities, atol=ulps, rtol=0)
    assert torch.equal(lens.top_token_ids, full.top_token_ids) and lens.top_tokens == full.top_tokens
    for row in range(n):
        probabilities = reference(row)
        torch.testing.assert_close(lens.target_probabilities[row], probabilities[:, 5], atol=1e-5, rtol=0)


def test_a_lens_of_chosen_positions_equals_those_rows_of_the_full_lens(arch_model):
    """`lens_positions` (why_not's trajectory reads one position) returns the full lens's
    rows at those positions, in the order asked."""
    from nbinterp.engine.plan import Plan

    _, _, model = arch_model
    ids = model.tokenize(PROMPT)
    layers = {"lens": set(range(model.n_layers + 1))}
    full = model.execute(ids, Plan(), layers, logits="none", lens_tokens=(5,))["lens"]
    some = model.execute(ids, Plan(), layers, logits="none", lens_tokens=(5,), lens_positions=(7, 2))["lens"]
    for layer in full:
        for name in ("top_probability", "token_probabilities"):
            torch.testing.assert_close(getattr(some[layer], name), getattr(full[layer], name)[[7, 2]])
        assert torch.equal(some[layer].top_token, full[layer].top_token[[7, 2]])
