"""Patching sweeps against the engine's one-run-at-a-time patching, the
normalisation's exact end points, streaming and cancel."""

from __future__ import annotations

import math

import pytest
import torch

import nbinterp as ni
from conftest import PROMPT
from nbinterp.analysis.patching_sweep import PatchingSweep, effects_of, patching_effect, prepare, sweep

# One token changed (w3 -> w4 at position 7), within Mistral's and Gemma2's sliding window of the last token.
CORRUPTED = "w5 w17 w3 w42 w9 w5 w17 w4 w28 w11"
CHANGED = 7
TARGET, FOIL = "w5", "w9"


def engine_effect(model, setup, site):
    """The same cell through model.run(patch_from=...), normalised by plain runs."""
    run = model.run(CORRUPTED, patch_from=setup.clean, patch=[site], capture=())
    return (run.logit_diff(TARGET, FOIL) - setup.corrupted_logit_diff) / (setup.clean_logit_diff - setup.corrupted_logit_diff)


def test_patching_all_of_layer_0_is_exactly_1_and_nothing_exactly_0(arch_model):
    _, _, model = arch_model
    setup = prepare(model, PROMPT, CORRUPTED, TARGET, FOIL)
    effects = effects_of(setup, [[("resid_pre", 0, None, None)], [], [("resid_pre", 0, None, None)]])
    assert effects.tolist() == [1.0, 0.0, 1.0]
    assert patching_effect(model, PROMPT, CORRUPTED, [("resid_pre", 0, None)], TARGET, FOIL) == 1.0
    assert patching_effect(model, PROMPT, CORRUPTED, [], TARGET, FOIL) == 0.0
    # the reference rows are the plain runs, batched
    assert setup.clean_logit_diff == pytest.approx(model.run(PROMPT).logit_diff(TARGET, FOIL), abs=1e-6)


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
    scale = max(1.0, max(v.abs().max().item() for v in effects.values()))
    for layer in range(model.n_layers):
        for position in (0, 4, n_tokens - 1):
            for kind in ("resid_pre", "attn_out", "mlp_out"):
                expected = engine_effect(model, setup, (kind, layer, position))
                assert effects[kind][layer, position].item() == pytest.approx(expected, abs=2e-4 * scale), (kind, layer, position)
        for head in range(model.n_heads):
            expected = engine_effect(model, setup, ("head", layer, head, None))
            assert effects["head"][layer, head].item() == pytest.approx(expected, abs=2e-4 * scale), (layer, head)
    # Only one position differs, so at layer 0 the others carry nothing yet and it carries everything.
    others = [p for p in range(n_tokens) if p != CHANGED]
    assert effects["resid_pre"][0, others].abs().max() == 0
    assert effects["resid_pre"][0, CHANGED].item() == pytest.approx(1.0, abs=1e-6)


def test_cells_stream_in_order_and_cancel_stops_after_the_batch(tokenizer):
    from conftest import random_model

    model = ni.load(random_model("gpt2"), tokenizer=tokenizer)
    result = PatchingSweep(prepare(model, PROMPT, CORRUPTED, TARGET, FOIL), ("resid_pre", "head"), batch_size=3)
    seen = []
    for cell in result:
        seen.append(cell)
        if len(seen) == 2:
            result.cancel()
    assert len(seen) == 3 and result.done == 3 and result.cancelled and not result.finished
    assert [(c.kind, c.layer, c.index) for c in seen] == [("resid_pre", 0, 0), ("resid_pre", 0, 1), ("resid_pre", 0, 2)]
    assert all(result.effects["resid_pre"][0, c.index].item() == c.effect for c in seen)
    assert math.isnan(result.effects["resid_pre"][0, 3].item())
    result._stop.clear()  # resume: picks up at cell 3
    rest = list(result)
    assert len(rest) == result.total - 3 and result.finished
    assert (rest[0].kind, rest[0].layer, rest[0].index) == ("resid_pre", 0, 3)


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


def test_logit_of_target_alone_without_a_foil(arch_model):
    _, _, model = arch_model
    setup = prepare(model, PROMPT, CORRUPTED, TARGET)
    assert setup.clean_logit_diff == pytest.approx(model.run(PROMPT).logits[-1, model.token_id(TARGET)].item(), abs=1e-5)
    assert effects_of(setup, [[("resid_pre", 0, None, None)]]).tolist() == [1.0]
    torch.testing.assert_close(
        effects_of(setup, [[("head", 1, 2, None)]])[0],
        torch.tensor((model.run(CORRUPTED, patch_from=PROMPT, patch=[("head", 1, 2, None)]).logit_diff(TARGET)
                      - setup.corrupted_logit_diff) / (setup.clean_logit_diff - setup.corrupted_logit_diff)),
        atol=1e-4, rtol=1e-4,
    )


def test_sweep_and_logit_lens_run_through_nnsight_remote_serialisation(tokenizer):
    """remote="local" serialises each request as NDIF would and runs it here."""
    from conftest import random_model
    from nbinterp.analysis.logit_lens import logit_lens

    hf = random_model("llama")
    local, remote = ni.load(hf, tokenizer=tokenizer), ni.load(hf, tokenizer=tokenizer, remote="local")
    expected = sweep(local, PROMPT, CORRUPTED, TARGET, FOIL, kinds=["head", "mlp_out"]).run()
    got = sweep(remote, PROMPT, CORRUPTED, TARGET, FOIL, kinds=["head", "mlp_out"]).run()
    for kind in expected:
        torch.testing.assert_close(got[kind], expected[kind], atol=1e-6, rtol=0)
    torch.testing.assert_close(logit_lens(remote, PROMPT, TARGET).target_probabilities,
                               logit_lens(local, PROMPT, TARGET).target_probabilities, atol=1e-6, rtol=0)


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
    assert got.shape == (1,) and float(got[0]) == pytest.approx(expected, abs=1e-5)
