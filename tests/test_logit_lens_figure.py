"""The logit lens's static picture (`to_figure`, the PNG a saved notebook
keeps) never passes a half-computed lens off as whole: it waits for the
streamed rows, and a lens left incomplete draws its missing cells grey and
says in the title what is not computed."""

from __future__ import annotations

import importlib

import matplotlib.colors
import numpy as np

import nbinterp as ni
from conftest import PROMPT

view_module = importlib.import_module("nbinterp.widgets.logit_lens")


def test_the_picture_waits_for_the_streamed_rows(arch_model):
    _, _, model = arch_model
    view = ni.logit_lens(model, PROMPT, target="w5")  # rows streaming in a thread
    ax = view.to_figure().axes[0]
    assert view.progress["state"] == "done" and view.first_paint.complete
    image = np.ma.getdata(ax.images[0].get_array())
    np.testing.assert_array_equal(image, view.lens.target_probabilities.numpy())
    assert "\n" not in ax.get_title() and not np.isnan(image).any()


def test_an_incomplete_lens_draws_grey_and_says_what_is_missing(arch_model, monkeypatch):
    _, _, model = arch_model
    # the rows never start streaming: the lens stays at its first paint (as after a cancel or an error)
    monkeypatch.setattr(view_module.BackgroundJob, "start", lambda self, *args, **kwargs: None)
    view = ni.logit_lens(model, PROMPT, target="w5")
    first = view.first_paint
    assert not first.complete
    ax = view.to_figure().axes[0]
    image = ax.images[0]
    values = np.ma.getdata(image.get_array())
    missing = ~first.computed.numpy()
    assert np.isnan(values[missing]).all() and not np.isnan(values[~missing]).any()
    assert matplotlib.colors.to_hex(image.get_cmap().get_bad()) == "#e6e6e6"  # the view's "not computed" grey
    rows = len(first.row_labels)
    full = int(first.computed.all(1).sum())
    assert f"computed: {full} of {rows} rows at every position" in ax.get_title()
    assert "(grey) not computed" in ax.get_title() and "streaming" not in ax.get_title()
    # no top token is written into a missing cell
    written = {(round(t.get_position()[1]), round(t.get_position()[0])) for t in ax.texts if t.get_text()}
    assert not any(missing[r, c] for r, c in written)
