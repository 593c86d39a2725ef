"""A resumed forward (`nbinterp.engine.resume`): blocks from layer l, tokens
from position p, the earlier tokens' keys and values from a KV cache of the
unintervened run. It must equal the full forward with the same intervention:
checked against plain HF with a hook, on every family of the architecture
table (learned / offset / rotary positions, sliding windows, grouped-query
and multi-query attention, parallel blocks)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import PROMPT
from nbinterp.engine.batch import RowPlan
from nbinterp.engine.plan import Metric, Plan
from nbinterp.engine.resume import Resume
from reference_hooks import blocks, hooks, mlp

SOURCE = "w9 w3 w17 w5 w42 w11 w28 w9 w3 w5"
EPS = torch.finfo(torch.float32).eps
ULPS = 64  # a batched row vs a one-row forward, and a cached vs a recomputed key: a few ulps per layer


def reads(model, prompt):
    ids = model.tokenize(prompt)
    layers = set(range(model.n_layers))
    return ids, model.execute(ids, Plan(), {"qkv": layers, "resid_pre": layers}, logits="all")


def resume_of(saved, layer, position):
    keys_values = [(saved["qkv"][l].key, saved["qkv"][l].value) for l in sorted(saved["qkv"])]
    return Resume(layer, position, saved["resid_pre"][layer], keys_values)


@pytest.mark.parametrize("layer, position", [(0, 3), (1, 6), (1, 9)])
def test_a_resumed_patch_equals_plain_hf_with_a_hook(arch_model, layer, position):
    """Patch the stream entering `layer` at `position` with the source prompt's: the
    metric of the resumed forward (tokens position.. only) = HF's full forward with a hook."""
    _, hf, model = arch_model
    ids, base = reads(model, PROMPT)
    _, source = reads(model, SOURCE)
    n_tokens = ids.shape[1]
    metric = Metric(model.token_id("w5"), model.token_id("w9"), n_tokens - 1)
    rows = RowPlan(model, 3, n_tokens)
    rows.patch(1, "resid_pre", layer, None, position, source["resid_pre"][layer])
    rows.patch(2, "resid_pre", layer, None, n_tokens - 1, source["resid_pre"][layer])
    seen = []
    with hooks(mlp(hf, model.n_layers - 1).register_forward_pre_hook(lambda m, a: seen.append(a[0].shape))):
        saved = model.execute(ids.repeat(3, 1), rows.plan, {}, metric, gradients=False, logits="none",
                              resume=resume_of(base, layer, position))
    got = saved["metric"].double()
    # only the suffix ran: 3 rows x (T - position) tokens reach the last MLP (OPT flattens them to B*T)
    assert seen and all(math.prod(shape[:-1]) == 3 * (n_tokens - position) for shape in seen)

    def reference(patch_at):
        def pre(module, args, kwargs):
            hidden = args[0].clone()
            hidden[:, patch_at] = source["resid_pre"][layer][patch_at]
            return (hidden, *args[1:]), kwargs

        with torch.no_grad(), hooks(blocks(hf)[layer].register_forward_pre_hook(pre, with_kwargs=True)):
            logits = hf(ids).logits[0, -1].double()
        return logits[metric.target] - logits[metric.foil]

    clean_logits = base["logits"][-1].double()
    scale = float(clean_logits.abs().max())
    tolerance = ULPS * EPS * scale
    assert float(got[0]) == pytest.approx(float(clean_logits[metric.target] - clean_logits[metric.foil]), abs=tolerance)
    assert float(got[1]) == pytest.approx(float(reference(position)), abs=tolerance)
    assert float(got[2]) == pytest.approx(float(reference(n_tokens - 1)), abs=tolerance)
    assert abs(float(got[1] - got[0])) > 100 * tolerance  # the patch moved the metric: the check can fail


def test_a_resumed_knockout_equals_the_full_forward(arch_model):
    """An attention edge removed at query q: tokens before q are untouched, so the
    forward can start at q (the hybrid attribution's edges)."""
    _, _, model = arch_model
    ids, base = reads(model, PROMPT)
    n_tokens = ids.shape[1]
    metric = Metric(model.token_id("w5"), None, n_tokens - 1)
    rows = RowPlan(model, 3, n_tokens)
    for key in range(6):  # most of a row's keys: a change no random init hides
        rows.knock_out(1, 1, 0, n_tokens - 1, key)
        rows.knock_out(2, 1, 1, n_tokens - 3, key)
    full = model.execute(ids.repeat(3, 1), rows.plan, {}, metric, gradients=False, logits="none")["metric"]
    resumed = model.execute(ids.repeat(3, 1), rows.plan, {}, metric, gradients=False, logits="none",
                            resume=resume_of(base, 1, n_tokens - 3))["metric"]
    tolerance = ULPS * EPS * float(base["logits"][-1].abs().max())
    torch.testing.assert_close(resumed.double(), full.double(), atol=tolerance, rtol=0)
    assert abs(float(full[1] - full[0])) > 10 * tolerance


def test_resuming_after_the_metric_position_is_refused(arch_model):
    _, _, model = arch_model
    ids, base = reads(model, PROMPT)
    metric = Metric(model.token_id("w5"), None, 4)
    with pytest.raises(Exception, match="metric is read at token 4"):
        model.execute(ids, Plan(), {}, metric, gradients=False, logits="none", resume=resume_of(base, 0, 6))
    with pytest.raises(Exception, match="reads only a metric"):
        model.execute(ids, Plan(), {"z": {0}}, metric, gradients=False, logits="none", resume=resume_of(base, 0, 2))


def test_several_prompts_skip_the_blocks_below_with_their_own_streams(arch_model):
    """measure(base={layer: [P, T, d]}): head ablations in layer 1 on three prompts
    equal the full forwards, and block 0's MLP never runs."""
    from nbinterp.engine.batch import measure

    _, hf, model = arch_model
    prompts = [PROMPT, SOURCE, " ".join(reversed(PROMPT.split()))]
    ids = torch.cat([model.tokenize(p) for p in prompts])
    layers = set(range(model.n_layers))
    streams = model.execute(ids, Plan(), {"resid_pre": layers}, logits="none", all_rows=True)["resid_pre"]
    metric = Metric(model.token_id("w5"), model.token_id("w9"), ids.shape[1] - 1)
    heads = [(1, h) for h in range(model.n_heads)]
    fill = lambda plan, slot, head: plan.ablate_head(slot, *head)  # noqa: E731
    full = measure(model, ids, heads, fill, metric)
    calls = []
    with hooks(mlp(hf, 0).register_forward_pre_hook(lambda m, a: calls.append(0))):
        skipped = measure(model, ids, heads, fill, metric, base=streams, start=lambda head: (head[0], 0))
    assert not calls
    tolerance = ULPS * EPS * float(full.values.abs().max())
    torch.testing.assert_close(skipped.effects, full.effects, atol=tolerance, rtol=0)
    assert float(full.effects.abs().max()) > 100 * tolerance
