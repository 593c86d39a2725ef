"""Attribution against exact interventions (the engine's own knockouts and
ablations, one forward each), the closed-form QK fix against the knocked-out
attention row, batched knockouts against `model.run`, the per-head top lists
against a dense sort, and the streamed measurements against a complete run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nbinterp as ni
from conftest import PROMPT, random_model
from nbinterp.engine.plan import Metric
from nbinterp.interventions import batch
from nbinterp.analysis import attribution as attribution_module
from nbinterp.analysis import edge_estimates as edge_estimates_module
from nbinterp.analysis.attribution import compute_attribution, causally_zero, edge_estimates
from nbinterp.analysis.estimate_stats import rank_average, recall_at_k, spearman

TARGET, FOIL = "w5", "w9"


@pytest.fixture(scope="module", params=["gpt2", "llama", "gemma2"])
def attribution(request, tokenizer):
    model = ni.load(random_model(request.param), tokenizer=tokenizer)
    return compute_attribution(model, PROMPT, target=TARGET, foil=FOIL)


def test_batched_knockouts_and_ablations_equal_one_run_each(attribution):
    model, ids = attribution.model, attribution.run.input_ids
    metric = Metric.of(model, TARGET, FOIL, -1, ids.shape[1])
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
        got = float(attribution.edge_map(layer, head, "qk_fix")[query, key])
        assert got == pytest.approx(expected, abs=1e-6, rel=1e-4)
        linear = -run.grad_attention(layer)[head, query, key] * run.attention(layer)[head, query, key]
        assert float(attribution.edge_map(layer, head, "linear")[query, key]) == pytest.approx(float(linear), rel=1e-4, abs=1e-7)


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
    assert attribution.head_measured.all() and torch.equal(attribution.heads, attribution.head_exact)
    verified = attribution.verify_heads()  # always the gradient estimate against the exact ablation
    assert verified.method == "gradient x activation"
    np.testing.assert_allclose(verified.measured, attribution.head_exact.flatten().numpy(), atol=1e-5)
    np.testing.assert_allclose(verified.estimate, attribution.head_estimates.flatten().numpy())
    # a small edge budget still measures every head (first), then that many edges
    small = compute_attribution(model, attribution.run, TARGET, FOIL, exact_budget=5)
    assert small.head_measured.all() and torch.equal(small.heads, small.head_exact)
    assert small.measurement.total == model.n_layers * model.n_heads + 5
    # exact_budget=0: estimates only, and every head says so
    none = compute_attribution(model, attribution.run, TARGET, FOIL, exact_budget=0)
    assert not none.head_measured.any() and torch.equal(none.heads, none.head_estimates)
    assert none.head_status(0, 0) == attribution_module.OUT_OF_BUDGET
    fresh = none.verify_heads(heads=[(0, 0), (1, 3)])  # not measured by the hybrid: ablated now
    np.testing.assert_allclose(fresh.measured, [float(attribution.head_exact[0, 0]), float(attribution.head_exact[1, 3])],
                               atol=1e-5)


def test_hybrid_measures_each_rows_dominant_edges_exactly(attribution):
    """"hybrid": the exact knockout wherever an edge holds >= 0.3 of its row (and can
    reach the metric), the QK-fix estimate everywhere else."""
    exact = attribution.exhaustive_edges()
    model, n = attribution.model, len(attribution.run)
    probs = torch.stack([attribution.run.attention(l) for l in range(model.n_layers)])
    reachable = ~exact.effects.isnan() & ~causally_zero(model.n_layers, n, n - 1).expand_as(exact.effects)
    measured = attribution.dense_exact()
    expected = reachable & (probs >= 0.3)
    # the threshold is applied to float64 probabilities: float32 ones may differ right at it
    disagree = measured != expected
    assert not disagree.any() or (probs[disagree] - 0.3).abs().max() < 1e-6
    assert 0 < int(measured.sum()) <= 3 * model.n_layers * model.n_heads * n  # linear in T
    hybrid, fixed = attribution.dense_edge_effects("hybrid"), attribution.dense_edge_effects("qk_fix")
    torch.testing.assert_close(hybrid[measured], exact.effects[measured], atol=1e-5, rtol=0)
    torch.testing.assert_close(hybrid[~measured], fixed[~measured], equal_nan=True)
    assert {e[:4] for e in attribution.measured_edges()} == {tuple(x) for x in measured.nonzero().tolist()}
    assert attribution.compare(exact, k=10).mae < attribution.compare(exact, k=10, method="qk_fix").mae
    capped = compute_attribution(model, attribution.run, TARGET, FOIL, exact_budget=5)
    capped_measured = capped.dense_exact()
    assert int(capped_measured.sum()) == 5
    chosen = fixed[capped_measured].abs()
    assert chosen.min() >= fixed[measured & ~capped_measured].abs().max() - 1e-9  # the largest |estimate| first
    # measured in that order: the first edges of the plan have the largest |estimate|
    planned = fixed[tuple(capped.measurement.edges.T)].abs()
    assert torch.equal(planned, planned.sort(descending=True).values)
    none = compute_attribution(model, attribution.run, TARGET, FOIL, exact_budget=0)
    assert not none.dense_exact().any() and none.measurement.total == 0


def test_verify_top_k_measures_the_estimated_top_edges(attribution):
    exact = attribution.exhaustive_edges()
    # linear: the top 4k edges by |linear estimate|, measured
    verified = attribution.verify(k=5, method="linear")
    assert verified.keys == [e[:4] for e in attribution.top_edges(20, "linear")] and verified.method == "linear"
    np.testing.assert_allclose(verified.measured, [float(exact.effects[k]) for k in verified.keys], atol=1e-5)
    assert verified.summary.n == 20 and "top 20" in verified.summary.scope
    # hybrid: only the entries it estimated (QK fix) are checked; its measured edges would compare with themselves
    verified = attribution.verify(k=5)
    measured = {e[:4] for e in attribution.measured_edges()}
    assert measured and not measured & set(verified.keys)
    assert verified.keys == [e[:4] for e in attribution.top_edges(None, "hybrid") if e[:4] not in measured][:20]
    qk_fix = attribution.dense_edge_effects("qk_fix")
    np.testing.assert_allclose(verified.estimate, [float(qk_fix[k]) for k in verified.keys], rtol=1e-12)
    np.testing.assert_allclose(verified.measured, [float(exact.effects[k]) for k in verified.keys], atol=1e-5)
    assert verified.method == "qk_fix" and f"its {len(measured)} measured edges left out" in verified.summary.scope
    chosen = attribution.verify(edges=[(1, 1, 9, 2)])
    assert chosen.keys == [(1, 1, 9, 2)] and len(chosen.measured) == 1
    assert chosen.estimate[0] == pytest.approx(float(qk_fix[1, 1, 9, 2]), rel=1e-12)


def test_summary_statistics():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    np.testing.assert_array_equal(rank_average(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])
    # a share of k (1 of 2): a ratio of counts, compared with a float tolerance all the same
    assert recall_at_k([5, -4, 0.1, 0.2], [-6, 0.3, 3, 0.1], 2) == pytest.approx(0.5, abs=1e-12)


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
        compute_attribution(model, PROMPT, TARGET, FOIL, method="exact")
    with pytest.raises(ni.NbinterpError, match="dominant must be a probability"):
        compute_attribution(model, attribution.run, TARGET, FOIL, dominant=0)
    with pytest.raises(ni.NbinterpError, match="exact_budget must be a non-negative integer"):
        compute_attribution(model, attribution.run, TARGET, FOIL, exact_budget=-1)
    with pytest.raises(ni.NbinterpError, match="query 0 sees only key 0"):
        attribution.verify(edges=[(0, 0, 0, 0)])
    with pytest.raises(ni.NbinterpError, match="other target"):
        compute_attribution(model, attribution.run, target=FOIL, foil=TARGET)


def test_without_a_foil_the_metric_is_the_target_logit(attribution):
    model = attribution.model
    att = compute_attribution(model, PROMPT, target=TARGET)
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
    assert attribution.candidate_recall(exact, k=5, pool=len(attribution.top_edges())) == pytest.approx(1.0, abs=1e-12)


def test_attribution_runs_through_remote_serialisation(tokenizer):
    """Gradients, batched head ablations and edge knockouts all go through nnsight's
    remote="local" path (serialised as NDIF would get them) with the local numbers."""
    hf = random_model("gpt2")
    local = compute_attribution(ni.load(hf, tokenizer=tokenizer), PROMPT, TARGET, FOIL)
    remote = compute_attribution(ni.load(hf, tokenizer=tokenizer, remote="local"), PROMPT, TARGET, FOIL)
    assert torch.equal(remote.dense_exact(), local.dense_exact()) and int(remote.dense_exact().sum()) > 0
    torch.testing.assert_close(remote.heads, local.heads, atol=1e-4, rtol=1e-4)
    for method in ("hybrid", "qk_fix"):
        torch.testing.assert_close(remote.dense_edge_effects(method), local.dense_edge_effects(method), atol=1e-4,
                                   rtol=1e-4, equal_nan=True)


def dense_top(effects: torch.Tensor, k: int | None) -> list[tuple[int, int, int, int, float]]:
    """The reference ranking: a stable sort of the whole dense tensor by |effect|."""
    flat = effects.flatten()
    candidates = (~flat.isnan()).nonzero()[:, 0]
    order = candidates[torch.argsort(flat[candidates].abs(), descending=True, stable=True)][:k]
    return [(*torch.unravel_index(i, effects.shape), float(flat[i])) for i in order]


@pytest.mark.parametrize("method", ["hybrid", "qk_fix", "linear"])
def test_top_edges_from_the_per_head_lists_equal_a_sort_of_every_edge(attribution, monkeypatch, method):
    """Per-head lists of only 3 edges (the dominant ones on top for the hybrid),
    each merged from blocks of 3 query rows, still give the exact global top 3;
    larger k recomputes from the run."""
    monkeypatch.setattr(attribution_module, "TOP_PER_HEAD", 3)
    monkeypatch.setattr(edge_estimates_module, "ROW_BLOCK_ELEMENTS", 3 * len(attribution.run))
    small = compute_attribution(attribution.model, attribution.run, TARGET, FOIL, n_top=3)
    assert small.summary.keep == 3
    dense = small.dense_edge_effects(method)
    for k in (1, 3, 7, None):
        got = [(e.layer, e.head, e.query, e.key, e.estimate) for e in small.top_edges(k, method)]
        expected = [(int(l), int(h), int(q), int(kk), v) for l, h, q, kk, v in dense_top(dense, k)]
        assert [g[:4] for g in got] == [e[:4] for e in expected], (method, k)
        np.testing.assert_allclose([g[4] for g in got], [e[4] for e in expected], rtol=1e-12)
    head = small.top_edges(3, method, layer=1, head=2)
    assert [e[:4] for e in head] == [(1, 2, int(q), int(kk)) for _, _, q, kk, _ in dense_top(dense[1:2, 2:3], 3)]
    if method == "hybrid":
        exact = small.dense_exact()
        assert all(e.measured == bool(exact[e[:4]]) for e in small.top_edges(None))
        estimated = small.top_edges(3, measured=False)
        assert [e[:4] for e in estimated] == [
            (int(l), int(h), int(q), int(kk)) for l, h, q, kk, _ in dense_top(torch.where(exact, float("nan"), dense), 3)]


def test_measurements_stream_in_batches_cancel_and_resume(attribution):
    """measure=False: estimates only, every number marked estimated; iterating
    measures batch by batch; a cancel stops after the batch in flight; the
    resumed measurement ends where the complete one did."""
    model = attribution.model
    att = compute_attribution(model, attribution.run, TARGET, FOIL, measure=False)
    m = att.measurement
    assert m.done == 0 and m.total == attribution.measurement.total > 0
    assert not att.head_measured.any() and not att.dense_exact().any()
    torch.testing.assert_close(att.heads, att.head_estimates)
    m.per_forward = 3  # small batches, so that there is something left to cancel
    seen = []
    for update in att.measure():
        seen.append(update)
        att.cancel()
    assert len(seen) == 1 and m.done == 3 and m.cancelled and not att.finished
    assert seen[0].kind == "head" and int(att.head_measured.sum()) == 3
    for update in att.measure():  # resumes
        seen.append(update)
    assert att.finished and not m.cancelled and [u.done for u in seen] == sorted({u.done for u in seen})
    assert seen[-1].done == m.total and {u.kind for u in seen} <= {"head", "head+edge", "edge"}
    assert [u.kind for u in seen][:2] == ["head", "head"] and seen[-1].kind == "edge"
    torch.testing.assert_close(att.heads, attribution.heads, atol=1e-5, rtol=0)
    torch.testing.assert_close(att.dense_edge_effects(), attribution.dense_edge_effects(), atol=1e-5, rtol=0,
                               equal_nan=True)
    assert torch.equal(att.dense_exact(), attribution.dense_exact())


def test_edge_map_is_one_head_of_the_dense_effects(attribution):
    dense = attribution.dense_edge_effects("hybrid")
    exact = attribution.dense_exact()
    for layer, head in [(0, 1), (1, 3)]:
        torch.testing.assert_close(attribution.edge_map(layer, head), dense[layer, head], equal_nan=True, rtol=0, atol=0)
        assert torch.equal(attribution.exact_map(layer, head), exact[layer, head])
    with pytest.raises(ni.NbinterpError):
        attribution.edge_map(0, 99)


def test_every_head_is_measured_where_the_budget_is_smaller_than_the_heads(attribution, monkeypatch):
    """Three rows a forward (two ablations + the clean row): the old default
    budget (4 forwards = 12 rows) could not hold the heads of a larger model;
    now every head is measured first, then the default edge budget, and no
    label says "measured" about a number outside it."""
    model = attribution.model
    monkeypatch.setattr(attribution_module.batch, "batch_rows", lambda model, n_tokens: 3)
    from nbinterp.analysis import exact_measurement

    monkeypatch.setattr(exact_measurement.batch, "batch_rows", lambda model, n_tokens: 3)
    att = compute_attribution(model, attribution.run, TARGET, FOIL)
    n_heads = model.n_layers * model.n_heads
    budget = attribution_module.default_edge_budget(model, len(att.run))
    assert budget == max(2, 3 * 2 - n_heads)
    assert att.head_measured.all() and att.measurement.total == n_heads + budget
    torch.testing.assert_close(att.heads, attribution.heads, atol=1e-5, rtol=0)
    assert {att.head_status(l, h) for l in range(model.n_layers) for h in range(model.n_heads)} == {"measured"}
    statuses = {}
    for l, h, q, k in att.summary.dominant.tolist():
        statuses[(l, h, q, k)] = att.edge_status(l, h, q, k)
    measured = {e[:4] for e in att.measured_edges()}
    assert len(measured) == budget
    assert {key for key, s in statuses.items() if s == attribution_module.MEASURED} == measured
    assert set(statuses.values()) == {attribution_module.MEASURED, attribution_module.OUT_OF_BUDGET}
    for edge in att.top_edges(None):
        assert edge.measured == (att.edge_status(*edge[:4]) == attribution_module.MEASURED)
    # the measured values are exact knockouts (one engine run each)
    clean = model.run(PROMPT).logit_diff(TARGET, FOIL)
    for e in att.measured_edges():
        knocked = model.run(PROMPT, knockout=[e[:4]]).logit_diff(TARGET, FOIL)
        assert e.estimate == pytest.approx(knocked - clean, abs=1e-5)


def test_after_a_cancel_only_measured_entries_say_measured(attribution):
    model = attribution.model
    att = compute_attribution(model, attribution.run, TARGET, FOIL, measure=False)
    n_heads = model.n_layers * model.n_heads
    assert {att.head_status(0, 0), att.pending_status()} == {attribution_module.QUEUED}
    planned = [tuple(e) for e in att.measurement.edges.tolist()]
    assert planned and att.edge_status(*planned[0]) == attribution_module.QUEUED
    att.measurement.per_forward = n_heads + 1  # the first forward: every head and the first edge
    for update in att.measure():
        assert update.kind == "head+edge"
        att.cancel()
    assert att.measurement.cancelled and att.head_measured.all()
    assert att.edge_status(*planned[0]) == attribution_module.MEASURED
    if len(planned) > 1:
        assert att.edge_status(*planned[1]) == attribution_module.CANCELLED
        assert bool(att.queued_map(*planned[1][:2])[planned[1][2], planned[1][3]])
    for edge in att.top_edges(None):
        assert edge.measured == (att.edge_status(*edge[:4]) == attribution_module.MEASURED)
        assert edge.measured == (edge[:4] == planned[0])
