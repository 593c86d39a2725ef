"""Patching sweeps against the engine's one-run-at-a-time patching, the
normalisation's end points, streaming and cancel, and refused pairs.

Rows of one float32 batch doing the same work may differ by an ulp of the
logits, and the effects divide that by the clean - corrupted gap, so effects
are compared within `rounding(setup)`, never with ==."""

from __future__ import annotations

import math
import re

import pytest
import torch

import nbinterp as ni
from conftest import PROMPT
from nbinterp.analysis.patching_sweep import PatchingSweep, effects_of, patching_effect, prepare, sweep

# One token changed (w3 -> w4 at position 7), within Mistral's and Gemma2's sliding window of the last token.
CORRUPTED = "w5 w17 w3 w42 w9 w5 w17 w4 w28 w11"
CHANGED = 7
TARGET, FOIL = "w5", "w9"
EPS = torch.finfo(torch.float32).eps
# Worst measured here: 5 x EPS x max|logit| / gap (Gemma2, batched vs one-row engine
# runs); 64 leaves room for other CPU kernels, and is still ~1e-4 on these models
# while a wrong patch site moves an effect by 1e-2 or more.
ROUNDING_ULPS = 64


def rounding(model, setup):
    """Float32 rounding of an effect: an ulp-scale error in a logit at the metric's
    position (EPS x the largest |logit| there, clean or corrupted), divided by the gap."""
    position = setup.metric.position
    logit_scale = max(float(model.run(PROMPT).logits[position].abs().max()),
                      float(model.run(CORRUPTED).logits[position].abs().max()))
    return ROUNDING_ULPS * EPS * logit_scale / abs(setup.clean_logit_diff - setup.corrupted_logit_diff)


def engine_effect(model, setup, site):
    """The same cell through model.run(patch_from=...), normalised by plain runs."""
    run = model.run(CORRUPTED, patch_from=setup.clean, patch=[site], capture=())
    return (run.logit_diff(TARGET, FOIL) - setup.corrupted_logit_diff) / (setup.clean_logit_diff - setup.corrupted_logit_diff)


def test_patching_all_of_layer_0_is_1_and_nothing_is_0(arch_model):
    _, _, model = arch_model
    setup = prepare(model, PROMPT, CORRUPTED, TARGET, FOIL)
    tol = rounding(model, setup)
    # patching a site that differs (the changed token's stream at layer 0) sits between
    # the end points, so a row patched at the wrong place cannot pass for either of them
    effects = effects_of(setup, [[("resid_pre", 0, None, None)], [], [("resid_pre", 0, None, None)],
                                 [("resid_pre", 0, None, CHANGED)]])
    torch.testing.assert_close(effects, torch.tensor([1.0, 0.0, 1.0, 1.0]), atol=tol, rtol=0)
    assert patching_effect(model, PROMPT, CORRUPTED, [("resid_pre", 0, None)], TARGET, FOIL) == pytest.approx(1.0, abs=tol)
    assert patching_effect(model, PROMPT, CORRUPTED, [], TARGET, FOIL) == pytest.approx(0.0, abs=tol)
    assert abs(patching_effect(model, PROMPT, CORRUPTED, [("resid_pre", 1, None)], TARGET, FOIL) - 1.0) <= tol
    # the references are the plain runs (the metric's own float32 rounding)
    clean_scale = float(model.run(PROMPT).logits[-1].abs().max())
    assert setup.clean_logit_diff == pytest.approx(model.run(PROMPT).logit_diff(TARGET, FOIL), abs=ROUNDING_ULPS * EPS * clean_scale)
    assert setup.corrupted_logit_diff == pytest.approx(model.run(CORRUPTED).logit_diff(TARGET, FOIL), abs=ROUNDING_ULPS * EPS * clean_scale)


def test_every_sweep_cell_equals_patching_one_site_with_the_engine(arch_model):
    _, _, model = arch_model
    result = sweep(model, PROMPT, CORRUPTED, TARGET, FOIL, batch_size=7)  # batches cut across kinds
    effects = result.run()
    n_tokens = len(PROMPT.split())
    assert {k: tuple(v.shape) for k, v in effects.items()} == {
        "resid_pre": (model.n_layers, n_tokens), "attn_out": (model.n_layers, n_tokens),
        "mlp_out": (model.n_layers, n_tokens), "head": (model.n_layers, model.n_heads),
    }
    assert result.finished and not any(v.isnan().any() for v in effects.values())
    setup = result.setup
    tol = rounding(model, setup)
    for layer in range(model.n_layers):
        for position in (0, 4, CHANGED, n_tokens - 1):
            for kind in ("resid_pre", "attn_out", "mlp_out"):
                expected = engine_effect(model, setup, (kind, layer, position))
                assert effects[kind][layer, position].item() == pytest.approx(expected, abs=tol), (kind, layer, position)
        for head in range(model.n_heads):
            expected = engine_effect(model, setup, ("head", layer, head, None))
            assert effects["head"][layer, head].item() == pytest.approx(expected, abs=tol), (layer, head)
    # Only one position differs, so at layer 0 the others carry nothing yet and it carries everything.
    others = [p for p in range(n_tokens) if p != CHANGED]
    assert effects["resid_pre"][0, others].abs().max().item() <= tol
    assert effects["resid_pre"][0, CHANGED].item() == pytest.approx(1.0, abs=tol)


def test_bad_pairs_say_what_to_do(arch_model):
    _, _, model = arch_model
    with pytest.raises(ni.NbinterpError, match="same number of tokens.*clean has 10.*corrupted has 3"):
        prepare(model, PROMPT, "w1 w2 w3", TARGET, FOIL)
    with pytest.raises(ni.NbinterpError, match="nothing to recover"):
        prepare(model, PROMPT, PROMPT, TARGET, FOIL)
    with pytest.raises(ni.NbinterpError, match="kinds must be"):
        sweep(model, PROMPT, CORRUPTED, TARGET, FOIL, kinds=["resid_post"])
    with pytest.raises(ni.NbinterpError, match="position 10 is outside"):
        prepare(model, PROMPT, CORRUPTED, TARGET, FOIL, position=10)


# On the bundled model, swapping the place leaves the IOI answer alone: "house" moves logit(Mary)
# from 24.2917 to 24.2918 (a user's 23.163 vs 23.161 blew effects up to +-27.5), "gift" and
# "school" move logit(Mary) - logit(John) by 0.03 and 0.04 out of 19.9. Swapping the second
# name flips it (+19.9 -> -21.5).
IOI = "When Mary and John went to the store , John gave a drink to"


@pytest.fixture(scope="module")
def bundled():
    return ni.load()


@pytest.mark.parametrize("corrupted, foil", [
    (IOI.replace("store", "house"), None), (IOI.replace("store", "gift"), "John"),
    (IOI.replace("store", "school"), "John"),
])
def test_a_corruption_that_barely_moves_the_metric_is_refused(bundled, corrupted, foil):
    clean_run, corrupted_run = bundled.run(IOI), bundled.run(corrupted)
    metric = (lambda run: run.logits[-1, bundled.token_id("Mary")].item()) if foil is None else (
        lambda run: run.logit_diff("Mary", foil))
    clean, bad = metric(clean_run), metric(corrupted_run)
    assert 0 < abs(clean - bad) < 0.005 * abs(clean)  # the premise, measured with plain runs
    with pytest.raises(ni.NbinterpError, match="almost the same .*nothing to recover.*"
                       "Pick a corrupted prompt that changes the answer") as refused:
        prepare(bundled, IOI, corrupted, "Mary", foil)
    said = re.search(r"clean (\S+), corrupted (\S+), gap", str(refused.value))
    assert [float(said[1]), float(said[2])] == pytest.approx([clean, bad], rel=1e-5)  # the numbers it saw
    assert ("give a foil" in str(refused.value)) == (foil is None)
    # the pair that changes the answer is accepted, with the plain runs' numbers
    swapped = IOI.replace("John gave", "Mary gave")
    setup = prepare(bundled, IOI, swapped, "Mary", foil or "John")
    assert setup.clean_logit_diff > 0 > setup.corrupted_logit_diff
    assert setup.corrupted_logit_diff == pytest.approx(bundled.run(swapped).logit_diff("Mary", "John"), rel=1e-5)


def test_logit_of_target_alone_without_a_foil(arch_model):
    _, _, model = arch_model
    setup = prepare(model, PROMPT, CORRUPTED, TARGET)
    tol = rounding(model, setup)
    clean_logits = model.run(PROMPT).logits[-1]
    assert setup.clean_logit_diff == pytest.approx(clean_logits[model.token_id(TARGET)].item(),
                                                   abs=ROUNDING_ULPS * EPS * float(clean_logits.abs().max()))
    assert effects_of(setup, [[("resid_pre", 0, None, None)]]).item() == pytest.approx(1.0, abs=tol)
    expected = ((model.run(CORRUPTED, patch_from=PROMPT, patch=[("head", 1, 2, None)]).logit_diff(TARGET)
                 - setup.corrupted_logit_diff) / (setup.clean_logit_diff - setup.corrupted_logit_diff))
    assert effects_of(setup, [[("head", 1, 2, None)]]).item() == pytest.approx(expected, abs=tol)


def test_sweep_and_logit_lens_run_through_nnsight_remote_serialisation(tokenizer):
    """remote="local" serialises each request as NDIF would and runs it here."""
    from conftest import random_model
    from nbinterp.analysis.logit_lens import compute_logit_lens

    hf = random_model("llama")
    local, remote = ni.load(hf, tokenizer=tokenizer), ni.load(hf, tokenizer=tokenizer, remote="local")
    local_sweep = sweep(local, PROMPT, CORRUPTED, TARGET, FOIL, kinds=["head", "mlp_out"])
    expected = local_sweep.run()
    got = sweep(remote, PROMPT, CORRUPTED, TARGET, FOIL, kinds=["head", "mlp_out"]).run()
    for kind in expected:
        torch.testing.assert_close(got[kind], expected[kind], atol=rounding(local, local_sweep.setup), rtol=0)
    torch.testing.assert_close(compute_logit_lens(remote, PROMPT, TARGET).target_probabilities,
                               compute_logit_lens(local, PROMPT, TARGET).target_probabilities, atol=1e-6, rtol=0)


def test_one_patch_set_is_one_row_without_gradients(arch_model):
    """patched_metrics with a single row (no batch to share) equals model.run(patch_from=...)."""
    from nbinterp.engine.plan import parse_site
    from nbinterp.interventions.batch import patched_metrics

    _, _, model = arch_model
    setup = prepare(model, PROMPT, CORRUPTED, TARGET, FOIL)
    site = ("head", 1, 2, CHANGED)
    got = patched_metrics(model, setup.corrupted_ids, setup.clean,
                          [[parse_site(model.shape, site, setup.corrupted_ids.shape[1])]], setup.metric)
    expected = model.run(CORRUPTED, patch_from=setup.clean, patch=[site]).logit_diff(TARGET, FOIL)
    logit_scale = float(model.run(CORRUPTED).logits[-1].abs().max())
    assert got.shape == (1,) and float(got[0]) == pytest.approx(expected, abs=ROUNDING_ULPS * EPS * logit_scale)
