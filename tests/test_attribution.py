"""Attribution against exact interventions (the engine's own knockouts and
ablations, one forward each), the closed-form QK fix against the knocked-out
attention row, and batched knockouts against `model.run`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nbinterp as ni
from conftest import PROMPT, random_model
from nbinterp.interventions import batch
from nbinterp.analysis.attribution import attribute, causally_zero, edge_estimates
from nbinterp.analysis.estimate_stats import rank_average, recall_at_k, spearman

TARGET, FOIL = "w5", "w9"


@pytest.fixture(scope="module", params=["gpt2", "llama", "gemma2"])
def attribution(request, tokenizer):
    model = ni.load(random_model(request.param), tokenizer=tokenizer)
    return attribute(model, PROMPT, target=TARGET, foil=FOIL)


def test_batched_knockouts_and_ablations_equal_one_run_each(attribution):
    model, ids = attribution.model, attribution.run.input_ids
    metric = batch.metric_of(model, TARGET, FOIL, -1, ids.shape[1])
    edges = [(0, 1, 7, 3), (1, 2, 9, 4), (0, 0, 3, 3), (1, 3, 9, 9), (0, 2, 9, 0)]
    got = batch.knockout_metrics(model, ids, edges, metric, rows=3)  # two forwards, mixed layers
    expected = [model.run(PROMPT, knockout=[e]).logit_diff(TARGET, FOIL) for e in edges]
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5, rtol=0)
    heads = [(0, 1), (1, 3)]
    got = batch.ablation_metrics(model, ids, heads, metric)
    expected = [model.run(PROMPT, ablate={h: 0.0}).logit_diff(TARGET, FOIL) for h in heads]
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5, rtol=0)


def test_qk_fix_is_the_gradient_times_the_exact_change_of_the_row(attribution):
    # sum_j g_j (a'_j - a_j), with a' the row of an actual knocked-out run
    run, model = attribution.run, attribution.model
    for layer, head, query, key in [(0, 1, 7, 3), (1, 2, 9, 9), (1, 0, 9, 0)]:
        knocked = model.run(PROMPT, knockout=[(layer, head, query, key)])
        change = knocked.attention(layer)[head, query] - run.attention(layer)[head, query]
        expected = float((run.grad_attention(layer)[head, query] * change).sum())
        got = float(attribution.edge_effects["qk_fix"][layer, head, query, key])
        assert got == pytest.approx(expected, abs=1e-6, rel=1e-4)
        linear = -run.grad_attention(layer)[head, query, key] * run.attention(layer)[head, query, key]
        assert float(attribution.edge_effects["linear"][layer, head, query, key]) == pytest.approx(float(linear), rel=1e-4, abs=1e-7)


def test_qk_fix_stays_exact_in_a_saturated_row():
    # a_0 = 1 - ~1e-13: float32 probabilities cannot tell 1 - a_0 apart from 0
    scores = torch.tensor([[[30.0, 0.0, -1.0, float("-inf")]]])
    grad = torch.tensor([[[2.0, -1.0, 3.0, 7.0]]])
    est = edge_estimates(scores, grad)
    rest = torch.softmax(torch.tensor([0.0, -1.0], dtype=torch.float64), 0)
    a0 = torch.softmax(scores.double(), -1)[0, 0, 0]
    expected = a0 * ((rest * torch.tensor([-1.0, 3.0], dtype=torch.float64)).sum() - 2.0)
    assert float(est["qk_fix"][0, 0, 0]) == pytest.approx(float(expected), rel=1e-9)
    assert float(est["linear"][0, 0, 0]) == pytest.approx(-2.0 * float(a0), rel=1e-9)
    assert torch.isnan(est["qk_fix"][0, 0, 3]) and torch.isnan(est["linear"][0, 0, 3])  # masked key


def test_head_estimate_is_minus_gradient_times_output(attribution):
    # effect = metric(ablated) - metric(clean) ~ <grad, 0 - head output>
    run = attribution.run
    expected = torch.stack([
        -(run.grad_head_outputs(l) * run.head_outputs(l)).sum(dim=(1, 2)) for l in range(attribution.model.n_layers)
    ]).double()
    torch.testing.assert_close(attribution.head_estimates, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(attribution.head_effects("qk_fix"), expected, atol=1e-5, rtol=1e-4)
    verified = attribution.verify_heads()
    assert verified.summary.spearman > 0.8
    assert np.sign(verified.estimate[np.abs(verified.measured).argmax()]) == np.sign(verified.measured[np.abs(verified.measured).argmax()])


def test_exhaustive_knockout_is_the_reference_and_the_qk_fix_beats_linear(attribution):
    exact = attribution.exhaustive_edges()
    model, n = attribution.model, len(attribution.run)
    # spot-check the batched reference against single engine runs
    for edge in [e[:4] for e in attribution.top_edges(3)]:
        measured = model.run(PROMPT, knockout=[edge]).logit_diff(TARGET, FOIL) - exact.clean_metric
        assert float(exact.effects[edge]) == pytest.approx(measured, abs=1e-5)
    zero = causally_zero(model.n_layers, n, n - 1).expand_as(exact.effects) & ~exact.effects.isnan()
    assert (exact.effects[zero] == 0).all() and exact.n_causally_zero == int(zero.sum())
    fixed, linear = attribution.compare(exact, k=10, method="qk_fix"), attribution.compare(exact, k=10, method="linear")
    assert fixed.spearman > 0.85 and fixed.recall_at_k >= 0.8
    assert fixed.mae < linear.mae and fixed.spearman > linear.spearman


def test_hybrid_measures_every_head_ablation_exactly(attribution):
    model = attribution.model
    clean = model.run(PROMPT).logit_diff(TARGET, FOIL)
    for layer, head in [(0, 0), (1, 3), (model.n_layers - 1, 1)]:
        measured = model.run(PROMPT, ablate={(layer, head): 0.0}).logit_diff(TARGET, FOIL) - clean
        assert float(attribution.heads[layer, head]) == pytest.approx(measured, abs=1e-5)
    assert torch.equal(attribution.heads, attribution.head_exact)
    verified = attribution.verify_heads()  # always the gradient estimate against the exact ablation
    np.testing.assert_allclose(verified.measured, attribution.head_exact.flatten().numpy(), atol=1e-5)
    np.testing.assert_allclose(verified.estimate, attribution.head_estimates.flatten().numpy())
    # a budget too small for every head leaves them estimated and spends it on edges
    small = attribute(model, attribution.run, TARGET, FOIL, exact_budget=5)
    assert small.head_exact is None and torch.equal(small.heads, small.head_estimates)


def test_hybrid_measures_each_rows_dominant_edges_exactly(attribution):
    """"hybrid": the exact knockout wherever an edge holds >= 0.3 of its row (and can
    reach the metric), the QK-fix estimate everywhere else."""
    exact = attribution.exhaustive_edges()
    model, n = attribution.model, len(attribution.run)
    probs = torch.stack([attribution.run.attention(l) for l in range(model.n_layers)])
    reachable = ~exact.effects.isnan() & ~causally_zero(model.n_layers, n, n - 1).expand_as(exact.effects)
    assert torch.equal(attribution.exact, reachable & (probs >= 0.3))
    assert 0 < int(attribution.exact.sum()) <= 3 * model.n_layers * model.n_heads * n  # linear in T
    hybrid, fixed = attribution.edge_effects["hybrid"], attribution.edge_effects["qk_fix"]
    torch.testing.assert_close(hybrid[attribution.exact], exact.effects[attribution.exact].float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(hybrid[~attribution.exact], fixed[~attribution.exact], equal_nan=True)
    assert attribution.compare(exact, k=10).mae < attribution.compare(exact, k=10, method="qk_fix").mae
    capped = attribute(model, attribution.run, TARGET, FOIL, exact_budget=5)  # fewer than the heads: edges only
    assert int(capped.exact.sum()) == 5
    chosen = probs[capped.exact]
    assert chosen.min() >= probs[attribution.exact & ~capped.exact].max()  # the highest probabilities first
    assert not attribute(model, attribution.run, TARGET, FOIL, exact_budget=0).exact.any()


def test_verify_top_k_measures_the_estimated_top_edges(attribution):
    verified = attribution.verify(k=5)
    assert verified.keys == [e[:4] for e in attribution.top_edges(20)]
    exact = attribution.exhaustive_edges()
    np.testing.assert_allclose(verified.measured, [float(exact.effects[k]) for k in verified.keys], atol=1e-5)
    assert verified.summary.n == 20 and "top 20" in verified.summary.scope
    chosen = attribution.verify(edges=[(1, 1, 9, 2)])
    assert chosen.keys == [(1, 1, 9, 2)] and len(chosen.measured) == 1


def test_summary_statistics():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    np.testing.assert_array_equal(rank_average(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])
    assert recall_at_k([5, -4, 0.1, 0.2], [-6, 0.3, 3, 0.1], 2) == 0.5


def test_top_edges_are_sorted_by_magnitude_and_well_formed(attribution):
    edges = attribution.edges
    magnitudes = [abs(e.estimate) for e in edges]
    assert magnitudes == sorted(magnitudes, reverse=True)
    assert all(0 <= e.key <= e.query < len(attribution.run) and e.query > 0 for e in edges)
    one_head = attribution.top_edges(5, layer=1, head=2)
    assert all((e.layer, e.head) == (1, 2) for e in one_head)


def test_clear_errors(attribution):
    model = attribution.model
    with pytest.raises(ni.NbinterpError, match="method must be one of"):
        attribute(model, PROMPT, TARGET, FOIL, method="exact")
    with pytest.raises(ni.NbinterpError, match="dominant must be a probability"):
        attribute(model, attribution.run, TARGET, FOIL, dominant=0)
    with pytest.raises(ni.NbinterpError, match="exact_budget must be a non-negative integer"):
        attribute(model, attribution.run, TARGET, FOIL, exact_budget=-1)
    with pytest.raises(ni.NbinterpError, match="query 0 sees only key 0"):
        attribution.verify(edges=[(0, 0, 0, 0)])
    with pytest.raises(ni.NbinterpError, match="other target"):
        attribute(model, attribution.run, target=FOIL, foil=TARGET)


def test_without_a_foil_the_metric_is_the_target_logit(attribution):
    model = attribution.model
    att = attribute(model, PROMPT, target=TARGET)
    assert att.metric == pytest.approx(model.run(PROMPT).logits[-1, model.token_id(TARGET)].item(), abs=1e-5)
    edge = att.top_edges(1)[0]
    measured = model.run(PROMPT, knockout=[edge[:4]]).logits[-1, model.token_id(TARGET)].item() - att.metric
    assert att.verify(edges=[edge[:4]]).measured[0] == pytest.approx(measured, abs=1e-5)


def test_candidate_recall_counts_the_true_top_k_in_the_estimated_pool(attribution):
    exact = attribution.exhaustive_edges()
    flat = exact.effects.nan_to_num().flatten().abs()
    true_top = flat.argsort(descending=True)[:5]
    pool = {e[:4] for e in attribution.top_edges(20)}
    shape = exact.effects.shape
    expected = sum(tuple(torch.tensor(list(torch.unravel_index(i, shape))).tolist()) in pool for i in true_top) / 5
    assert attribution.candidate_recall(exact, k=5) == expected
    assert attribution.candidate_recall(exact, k=5, pool=len(attribution.top_edges())) == 1.0


def test_attribution_runs_through_remote_serialisation(tokenizer):
    """Gradients, batched head ablations and edge knockouts all go through nnsight's
    remote="local" path (serialised as NDIF would get them) with the local numbers."""
    hf = random_model("gpt2")
    local = attribute(ni.load(hf, tokenizer=tokenizer), PROMPT, TARGET, FOIL)
    remote = attribute(ni.load(hf, tokenizer=tokenizer, remote="local"), PROMPT, TARGET, FOIL)
    assert torch.equal(remote.exact, local.exact) and int(remote.exact.sum()) > 0
    torch.testing.assert_close(remote.heads, local.heads, atol=1e-4, rtol=1e-4)
    for method in ("hybrid", "qk_fix"):
        torch.testing.assert_close(remote.edge_effects[method], local.edge_effects[method], atol=1e-4, rtol=1e-4,
                                   equal_nan=True)
