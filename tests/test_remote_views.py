"""Every view and analysis as a remote user runs it: the bundled model loaded
with remote="local" (requests serialised through nnsight's remote path,
nothing captured unless asked) gives the same numbers as the local model, in
a bounded number of forwards."""

from __future__ import annotations

import pytest
import torch

import nbinterp as ni
from nbinterp.widgets.attention import layer_values

IOI = "When Mary and John went to the store , John gave a drink to"
CORRUPTED = "When Mary and John went to the store , Mary gave a drink to"


@pytest.fixture(scope="module")
def models():
    return ni.load(), ni.load(remote="local")


def test_attention_view(models):
    local, remote = models
    before = remote.forwards
    view = ni.attention(remote, IOI, layer=1, head=1)
    for layer in range(remote.n_layers):
        for mode in ("probabilities", "value_weighted"):
            torch.testing.assert_close(layer_values(view.run, layer, mode),
                                       layer_values(local.run(IOI), layer, mode), atol=1e-5, rtol=1e-5)
    assert remote.forwards - before <= 2  # q/k/v up front, W_O for the value-weighted mode


def test_ablation_panel(models):
    local, remote = models
    panel = ni.ablate(remote, IOI, target="Mary", foil="John")
    before = remote.forwards
    panel.ablations = {"L3.H0": 0.0, "L2.mlp": 0.5}
    assert remote.forwards - before == 1  # one forward per slider move
    expected = local.run(IOI, ablate={"L3.H0": 0.0, "L2.mlp": 0.5})
    assert panel.result.logit_diff == pytest.approx(expected.logit_diff("Mary", "John"), abs=1e-4)


def test_patching_view(models):
    local, remote = models
    grid = ni.patch(remote, clean=IOI, corrupted=CORRUPTED, target="Mary", foil="John", kinds=["head"],
                    background=False)
    expected = ni.patch(local, clean=IOI, corrupted=CORRUPTED, target="Mary", foil="John", kinds=["head"],
                        background=False)
    # effects are divided by the clean-corrupted gap (~41 logits here): float32 rounding of the logits
    torch.testing.assert_close(grid.effects["head"], expected.effects["head"], atol=1e-4, rtol=0)


def test_logit_lens_view(models):
    local, remote = models
    lens = ni.logit_lens(remote, IOI, target="Mary")
    # .lens waits for the streamed rows: one forward of the prompt, then one-token traces
    # over its captured streams (counted exactly in test_forward_counts); nothing runs after
    full = lens.lens
    after = remote.forwards
    assert lens.lens is full and remote.forwards == after
    expected = ni.logit_lens(local, IOI, target="Mary")
    torch.testing.assert_close(lens.lens.target_probabilities, expected.lens.target_probabilities, atol=1e-5, rtol=0)
    assert lens.lens.top_tokens == expected.lens.top_tokens


def test_attribution(models):
    local, remote = models
    before = remote.forwards
    att = ni.attribute(remote, IOI, target="Mary", foil="John", exact_budget=0)
    assert remote.forwards - before == 1  # one forward + backward for every estimate
    expected = ni.attribute(local, IOI, target="Mary", foil="John", exact_budget=0)
    torch.testing.assert_close(att.heads, expected.heads, atol=1e-4, rtol=1e-4)
    assert [e[:4] for e in att.edges[:10]] == [e[:4] for e in expected.edges[:10]]
