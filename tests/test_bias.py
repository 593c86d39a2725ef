"""ni.bias over data sets: the gap and every component's share against plain HF
forwards with hooks (right-padded batches with an attention mask, read at each
row's last real token: independent of the engine's grouping by length), the
intervals against a plain bootstrap, coverage of 0 without a planted
difference, and reduce() on the bundled model's planted bias."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest
import torch

import nbinterp as ni
from nbinterp.analysis.bias import measure_bias
from nbinterp.analysis.datasets import PromptRow, PromptSet
from nbinterp.bundled import tasks
from nbinterp.engine.plan import component_key as component_name
from nbinterp.errors import NbinterpError

from conftest import random_model, word_tokenizer
from reference_hooks import head_slice, hooks, mlp, out_proj, scale_head_input

# float32 logits of magnitude <= ~30, summed in a different order in a padded
# batch: metrics agree to ~1e-5; 1e-4 leaves room for BLAS blocking.
METRIC_ATOL = 1e-4


@pytest.fixture(scope="module")
def bundled():
    torch.set_num_threads(1)
    return ni.load()


def small_bias_set(n_given: int = 4) -> PromptSet:
    return PromptSet.from_templates(tasks.BIAS_TEMPLATES, attribute="clan", groups=tasks.GROUP_CLANS,
                                    fillers={"given": tasks.BIAS_TEST_GIVEN_NAMES[:n_given]},
                                    target="doctor", foil="nurse")


def reference_metrics(hf, input_ids, target, foil, handles=()):
    """logit[target] - logit[foil] at each row's last real token, plain HF, padded batch."""
    length = max(len(ids) for ids in input_ids)
    batch = torch.zeros(len(input_ids), length, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, ids in enumerate(input_ids):
        batch[row, : len(ids)], mask[row, : len(ids)] = ids, 1
    with torch.no_grad(), hooks(*handles):
        logits = hf(input_ids=batch, attention_mask=mask).logits.double()
    last = mask.sum(1) - 1
    rows = torch.arange(len(input_ids))
    return logits[rows, last, target] - logits[rows, last, foil]


def zero_mlp(hf, layer):
    return mlp(hf, layer).register_forward_hook(lambda module, args, output: torch.zeros_like(output))


def reference_gap(values, a_rows, b_rows):
    return float(values[a_rows].mean() - values[b_rows].mean())


def word_set(n_per_group=6):
    """Random-init models: group A prompts end in w5, group B in w7 (same lengths)."""
    rng = random.Random(3)
    rows = []
    for i in range(n_per_group):
        body = " ".join(f"w{rng.randint(10, 60)}" for _ in range(rng.randint(3, 6)))
        rows += [PromptRow(f"{body} w5", "w3", "w9", "A", len(rows) + 1), PromptRow(f"{body} w7", "w3", "w9", "B", len(rows))]
    return PromptSet(rows)


@pytest.mark.parametrize("which", ["bundled", "llama", "gpt_neox"])
def test_gap_and_every_share_match_plain_hooks(which, bundled):
    if which == "bundled":
        model, data = bundled, small_bias_set()
    else:
        model, data = ni.load(random_model(which), tokenizer=word_tokenizer()), word_set()
    b = measure_bias(model, data, n_resamples=200)
    hf = model.hf
    checked = b.data
    target, foil = checked.targets[0], checked.foils[0]
    clean = reference_metrics(hf, checked.input_ids, target, foil)
    a_rows, b_rows = b.layout.a_rows, b.layout.b_rows
    torch.testing.assert_close(b.metrics, clean, atol=METRIC_ATOL, rtol=0)
    assert b.gap == pytest.approx(reference_gap(clean, a_rows, b_rows), abs=METRIC_ATOL)
    reference_gap_value = reference_gap(clean, a_rows, b_rows)
    measured = {c.name: c for c in b.components}
    assert len(measured) == model.n_layers * (model.n_heads + 1)
    for layer in range(model.n_layers):
        for head in [*range(model.n_heads), "mlp"]:
            handle = zero_mlp(hf, layer) if head == "mlp" else scale_head_input(hf, layer, head, 0.0)
            ablated = reference_metrics(hf, checked.input_ids, target, foil, [handle])
            ablated_gap = reference_gap(ablated, a_rows, b_rows)
            name = f"L{layer}.mlp" if head == "mlp" else f"L{layer}.H{head}"
            assert measured[name].gap_ablated == pytest.approx(ablated_gap, abs=METRIC_ATOL), name
            share = (reference_gap_value - ablated_gap) / reference_gap_value
            assert measured[name].share == pytest.approx(share, abs=2 * METRIC_ATOL / abs(reference_gap_value)), name
    shares = [c.share for c in b.components]
    assert shares == sorted(shares, reverse=True)


def plain_bootstrap(values, a_rows, b_rows, n, seed, pairs=None):
    rng = np.random.default_rng(seed)
    values = np.asarray(values, dtype=np.float64)
    gaps = []
    for _ in range(n):
        if pairs is not None:
            d = values[pairs[:, 0]] - values[pairs[:, 1]]
            gaps.append(d[rng.integers(0, len(d), len(d))].mean())
        else:
            a, b = values[a_rows], values[b_rows]
            gaps.append(a[rng.integers(0, len(a), len(a))].mean() - b[rng.integers(0, len(b), len(b))].mean())
    gaps = np.array(gaps)
    return np.quantile(gaps, [0.025, 0.975]), gaps.std()


@pytest.mark.parametrize("paired", [True, False])
def test_interval_and_p_value_match_a_plain_bootstrap(bundled, paired):
    data = small_bias_set(6)
    if not paired:  # the same rows without their pairing: rows resampled within each group
        data = PromptSet([PromptRow(r.prompt, r.target, r.foil, r.group) for r in data])
    b = measure_bias(bundled, data, n_resamples=4000, seed=1)
    pairs = None if b.layout.pairs is None else b.layout.pairs.numpy()
    (low, high), spread = plain_bootstrap(b.metrics.numpy(), b.layout.a_rows.numpy(), b.layout.b_rows.numpy(),
                                          4000, seed=11, pairs=pairs)
    # two independent Monte Carlo runs of 4,000: quantile endpoints differ by ~0.05 sd
    assert b.ci[0] == pytest.approx(low, abs=0.2 * spread)
    assert b.ci[1] == pytest.approx(high, abs=0.2 * spread)
    assert b.ci[0] < b.gap < b.ci[1]
    assert b.p_value == pytest.approx(1 / 4001)  # the planted gap: no relabelling reaches it


def test_permutation_p_value_matches_a_plain_loop():
    from nbinterp.analysis.group_stats import GroupLayout, permutation_p_value

    rng = np.random.default_rng(0)
    values = torch.tensor(np.concatenate([rng.normal(0.4, 1, 15), rng.normal(0, 1, 15)]))
    layout = GroupLayout(torch.arange(15), torch.arange(15, 30))
    observed = abs(float(values[:15].mean() - values[15:].mean()))
    count = 0
    for _ in range(4000):
        order = rng.permutation(30)
        count += abs(float(values[order[:15]].mean() - values[order[15:]].mean())) >= observed
    plain = (count + 1) / 4001
    p = permutation_p_value(values, layout, n_permutations=4000, seed=2)
    assert p == pytest.approx(plain, abs=4 * np.sqrt(plain * (1 - plain) / 4000))


def test_no_planted_difference_covers_zero(bundled):
    pool = [e.prompt for e in tasks.examples("bias", 60, seed=3, group="A")]
    covered = 0
    seeds = range(30)
    for seed in seeds:
        rng = random.Random(seed)
        shuffled = rng.sample(pool, len(pool))
        b = measure_bias(bundled, prompts={"X": shuffled[:30], "Y": shuffled[30:]}, target="doctor", foil="nurse",
                         seed=seed, n_resamples=1000)
        covered += b.ci[0] <= 0 <= b.ci[1]
    assert covered >= 0.9 * len(seeds)


def test_reduce_halves_the_held_out_gap_choosing_on_fit_rows_only(bundled):
    data = small_bias_set(10)
    b = measure_bias(bundled, data, n_resamples=500)
    r = b.reduce(k=3, seed=4)
    assert set(r.fit_rows).isdisjoint(r.held_out_rows)
    assert sorted(r.fit_rows + r.held_out_rows) == list(range(len(data)))
    assert all(data[i].partner in r.held_out_rows for i in r.held_out_rows)  # pairs stay together
    assert abs(r.gap_after) <= 0.5 * abs(r.gap_before)
    assert r.ci_after[0] <= r.gap_after <= r.ci_after[1]
    # chosen on the fit rows alone: the same top 3 as a fresh analysis of just those rows
    fit_only = measure_bias(bundled, data.subset(r.fit_rows), n_resamples=200)
    assert r.removed == [c.name for c in fit_only.components[:3]]
    # the held-out gap after is model.run's with the same ablations, row by row
    held = r.held_out_rows
    ablated = [bundled.run(data[i].prompt, ablate={n: 0.0 for n in r.removed}).logit_diff("doctor", "nurse") for i in held]
    a = [v for v, i in zip(ablated, held) if data[i].group == "A"]
    z = [v for v, i in zip(ablated, held) if data[i].group == "B"]
    assert r.gap_after == pytest.approx(np.mean(a) - np.mean(z), abs=METRIC_ATOL)
    tasks_seen = {s.task for s in r.side_effects}
    assert tasks_seen == {"induction", "facts", "ioi"}
    assert all(0 <= s.accuracy_after <= 1 for s in r.side_effects)


def test_reduce_by_projection_matches_model_run(bundled):
    data = small_bias_set(4)
    b = measure_bias(bundled, data, n_resamples=200)
    direction = torch.randn(bundled.d_model, generator=torch.Generator().manual_seed(0))
    r = b.reduce(method="project", direction=direction, site=("resid_pre", 2), capability=None)
    held = r.held_out_rows
    after = [bundled.run(data[i].prompt, project_out={("resid_pre", 2): direction}).logit_diff("doctor", "nurse")
             for i in held]
    a = [v for v, i in zip(after, held) if data[i].group == "A"]
    z = [v for v, i in zip(after, held) if data[i].group == "B"]
    assert r.gap_after == pytest.approx(np.mean(a) - np.mean(z), abs=METRIC_ATOL)
    assert r.side_effects == []


def test_user_capability_prompts(bundled):
    b = measure_bias(bundled, small_bias_set(4), n_resamples=200)
    ioi = tasks.examples("ioi", 3, seed=1)
    r = b.reduce(k=1, capability={"my ioi": [(e.prompt, e.target, e.foil) for e in ioi]})
    (effect,) = r.side_effects
    assert effect.task == "my ioi" and effect.n == 3
    before = np.mean([bundled.run(e.prompt).logit_diff(e.target, e.foil) for e in ioi])
    assert effect.logit_diff_before == pytest.approx(before, abs=METRIC_ATOL)


# ------------------------------------------------------------------ data sets
def test_templates_make_counterfactual_pairs():
    data = small_bias_set(2)
    assert len(data) == 2 * 2 * 3 * 2 and data.paired
    for i, row in enumerate(data):
        partner = data[row.partner]
        assert partner.partner == i and partner.group != row.group
        assert row.prompt.split()[0] == partner.prompt.split()[0]


def test_bad_rows_are_named(bundled):
    with pytest.raises(NbinterpError, match=r"row 1 \(group 'B', 'Anwen Zzyx works as a'\).*'Zzyx'"):
        PromptSet.from_lists({"A": ["Anwen Varn works as a"], "B": ["Anwen Zzyx works as a"]},
                             target="doctor", foil="nurse").check(bundled)
    with pytest.raises(NbinterpError, match="row 0.*'nurse doctor' is 2 tokens"):
        PromptSet.from_lists({"A": ["Anwen Varn works as a"]}, target="nurse doctor").check(bundled)
    with pytest.raises(NbinterpError, match="group 'B' is empty"):
        PromptSet.from_lists({"A": ["Anwen Varn works as a"], "B": []}, target="doctor")
    uneven = PromptSet.from_templates(["{given} {clan} works as a"], attribute="clan",
                                      groups={"A": ["Varn"], "B": ["Quel Tesk"]}, fillers={"given": ["Anwen"]},
                                      target="doctor")
    with pytest.raises(NbinterpError, match="rows 0 and 1 are counterfactual partners but have 6 and 7 tokens"):
        uneven.check(bundled)
    with pytest.raises(NbinterpError, match="both lists need one length"):
        PromptSet.from_templates(["{c} works as a"], attribute="c", groups={"A": ["Varn"], "B": ["Quel", "Tesk"]},
                                 target="doctor")
    with pytest.raises(NbinterpError, match="fields \\['given'\\]"):
        PromptSet.from_templates(["{given} {c} works as a"], attribute="c", groups={"A": ["Varn"], "B": ["Quel"]},
                                 target="doctor")


def test_bias_needs_two_groups_with_rows(bundled):
    with pytest.raises(NbinterpError, match="compares two groups"):
        measure_bias(bundled, prompts={"A": ["Anwen Varn works as a"] * 3}, target="doctor", foil="nurse")
    with pytest.raises(NbinterpError, match="group 'B' of the data set has 1 row"):
        measure_bias(bundled, prompts={"A": ["Anwen Varn works as a"] * 3, "B": ["Anwen Quel works as a"]},
                     target="doctor", foil="nurse")


def test_dataframe_rows_and_missing_pandas(bundled, monkeypatch):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"prompt": ["Anwen Varn works as a", "Anwen Quel works as a", "Dace Varn works as a",
                                     "Dace Quel works as a"],
                          "group": ["A", "B", "A", "B"], "target": "doctor", "foil": "nurse", "pair": [1, 0, 3, 2]})
    data = PromptSet.from_dataframe(frame, partner="pair")
    assert data.paired and data[1].group == "B" and data[2].foil == "nurse"
    b = measure_bias(bundled, frame, n_resamples=200)  # a DataFrame straight into the call (no pairing column)
    assert b.gap > 0
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(NbinterpError, match="needs pandas: pip install pandas"):
        PromptSet.from_dataframe(frame)


# ----------------------------------------------------------------------- view
def test_view_shows_the_analysis_and_its_reduction(bundled):
    from nbinterp.widgets import _contract as contract
    from nbinterp.widgets.bias import SHOWN_COMPONENTS

    view = ni.bias(bundled, small_bias_set(4), components=False, n_resamples=500)
    assert view.n_components == 0 and view.components_shown == []
    assert (view.gap, tuple(view.ci), view.p_value) == (view.result.gap, view.result.ci, view.result.p_value)
    components = view.components  # measured on first use, and then shown
    assert view.n_components == len(components) == bundled.n_layers * (bundled.n_heads + 1)
    shown = view.components_shown
    assert len(shown) == min(SHOWN_COMPONENTS, len(components))
    assert [c["share"] for c in shown] == sorted((c["share"] for c in shown), reverse=True)
    assert shown[0]["name"] == components[0].name
    r = view.reduce(k=2, capability={"ioi": [(e.prompt, e.target, e.foil) for e in tasks.examples("ioi", 2)]})
    assert view.reduction["gap_after"] == r.gap_after and view.reduction["removed"] == r.removed
    assert view.reduction["side_effects"][0]["task"] == "ioi"
    schemas = contract.synced_traits(type(view))
    state = view.get_state()
    for name, schema in schemas.items():
        schema.check(state[name], name)
    figure = view.to_figure()
    assert len(figure.axes) == 3
    assert view.static_png()[:4] == b"\x89PNG"


def test_a_component_list_measures_only_those(bundled):
    data = small_bias_set(2)
    full = {c.name: c.share for c in measure_bias(bundled, data, n_resamples=200).components}
    chosen = ni.bias(bundled, data, components=["L0.mlp", (2, 3), "L3.H1"], n_resamples=200)
    assert [c.name for c in chosen.components] == sorted(["L0.mlp", "L2.H3", "L3.H1"], key=lambda n: -full[n])
    for c in chosen.components:
        assert c.share == pytest.approx(full[c.name], abs=2 * METRIC_ATOL / abs(chosen.gap))
    with pytest.raises(NbinterpError, match="cannot read component 'L9.H0'|layer 9 is out of range"):
        ni.bias(bundled, data, components=["L9.H0"])


def test_components_stream_cancel_keeps_them_and_resume_ends_at_the_uninterrupted_numbers(bundled, monkeypatch):
    from nbinterp.analysis import dataset_runs
    from nbinterp.engine.plan import component_key

    data = small_bias_set(10)  # 120 rows: the 20 components take three chunks (one is a single forward)
    uninterrupted = measure_bias(bundled, data, n_resamples=200)
    reference = uninterrupted.ablation_effects().clone()
    assert len(uninterrupted.component_chunks()) >= 2

    measured_keys: list = []
    plain = dataset_runs.component_metrics

    def counting(model, data, components, **kwargs):
        measured_keys.extend(components)
        return plain(model, data, components, **kwargs)

    monkeypatch.setattr(dataset_runs, "component_metrics", counting)
    view = ni.bias(bundled, data, components=False, n_resamples=200)
    assert view.progress == {"done": 0, "total": 20, "state": "cancelled", "elapsed_s": 0.0, "estimated": 0,
                             "estimating": False}

    def cancel_after_the_first_chunk(change):
        if change["new"] > 0:
            view.cancel()

    view.observe(cancel_after_the_first_chunk, "n_components")
    view.resume()  # in the background; the observer runs in its thread after the first chunk lands
    assert not view.wait(timeout=120)
    first = view.result.component_chunks()[0]
    assert view.progress["state"] == "cancelled" and view.progress["done"] == len(first) == view.n_components
    assert view.result.n_measured == len(first)
    # what was measured is kept and shown: exactly the first chunk's components, with their final numbers
    keys = view.result.component_keys
    assert {c["name"] for c in view.components_shown} == {component_key(*keys[i]) for i in first}
    partial = {c.name: c for c in view.result.measured_components()}
    final = {c.name: c for c in uninterrupted.components}
    for name, c in partial.items():
        # the same forwards as the uninterrupted run: equal up to float64 rounding of the share
        assert c.share == pytest.approx(final[name].share, rel=1e-12, abs=1e-12), name

    view.unobserve(cancel_after_the_first_chunk, "n_components")
    view.resume(background=False)
    assert view.progress["state"] == "done" and view.progress["done"] == 20 == view.n_components
    # nothing measured twice, nothing lost: every component exactly once over cancel + resume
    assert sorted(measured_keys, key=str) == sorted(keys, key=str)
    torch.testing.assert_close(view.result.ablation_effects(), reference, rtol=0, atol=1e-12)
    assert [c.name for c in view.components] == [c.name for c in uninterrupted.components]
    shown = [c["name"] for c in view.components_shown]
    assert shown == [c.name for c in sorted(sorted(uninterrupted.components, key=lambda c: -abs(c.share))[:24],
                                            key=lambda c: -c.share)]


def test_components_measured_in_the_background_by_default(bundled):
    view = ni.bias(bundled, small_bias_set(4), n_resamples=200)  # the call returns before the shares land
    assert view.wait(timeout=120)
    assert view.progress["state"] == "done" and view.progress["total"] == view.n_components == 20
    full = measure_bias(bundled, small_bias_set(4), n_resamples=200).components
    assert [c.name for c in view.components] == [c.name for c in full]
    for ours, theirs in zip(view.components, full):
        assert ours.share == pytest.approx(theirs.share, abs=2 * METRIC_ATOL / abs(view.gap))


# ------------------------------------------------------- speed: layer skip and the exact budget
def test_layer_skip_equals_every_block_and_skips_the_blocks_below(bundled):
    """Each forward starts at its components' lowest layer from the rows' streams:
    the same effects as running every block (float32 sums over another batch),
    and block 0 never runs for layer-1 components."""
    from nbinterp.analysis import dataset_runs

    model = ni.load(random_model("gpt2"), tokenizer=word_tokenizer())
    data = word_set(4).check(model)
    clean, streams = dataset_runs.clean_run(model, data)
    assert streams is not None
    torch.testing.assert_close(clean, dataset_runs.clean_metrics(model, data), atol=METRIC_ATOL, rtol=0)
    upper = [(1, head) for head in [*range(model.n_heads), "mlp"]]
    calls = []
    with hooks(mlp(model.hf, 0).register_forward_pre_hook(lambda module, args: calls.append(0))):
        skipped = dataset_runs.component_metrics(model, data, upper, streams=streams)
    assert not calls
    full = dataset_runs.component_metrics(model, data, upper)
    # float32 logits, ~|metric| in size, summed in another batch: ~100 ulps of that scale
    tolerance = 100 * torch.finfo(torch.float32).eps * float(full.values.abs().max())
    torch.testing.assert_close(skipped.effects, full.effects, atol=tolerance, rtol=0)
    assert float(full.effects.abs().max()) > 100 * tolerance
    # and Bias measures through it: the bundled shares equal the every-block path's
    b = measure_bias(bundled, small_bias_set(2), n_resamples=200, exact_budget=None)
    every_block = dataset_runs.component_metrics(bundled, b.data, b.component_keys).effects
    scale = 100 * torch.finfo(torch.float32).eps * float(b.metrics.abs().max())
    torch.testing.assert_close(b.ablation_effects(), every_block, atol=scale, rtol=0)


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_estimates_equal_plain_gradient_times_activation(which):
    """Each component's estimate: -(d metric / d z_head . z_head) and
    -(d metric / d mlp_out . mlp_out), summed over positions, per row, against
    plain autograd through HF with hooks."""
    from nbinterp.analysis import dataset_runs

    model = ni.load(random_model(which), tokenizer=word_tokenizer())
    data = word_set(2).check(model)
    components = dataset_runs.every_component(model)
    rows = [0, 3]
    estimates = dict(dataset_runs.estimated_effects(model, data, components, rows))
    hf = model.hf
    for row in rows:
        kept: dict = {}

        # the tensors the model goes on with (in the graph: gradients of every later path)
        def keep_z(layer):
            return lambda module, args: kept.__setitem__(("z", layer), args[0])

        def keep_mlp(layer):
            return lambda module, args, output: kept.__setitem__(("mlp", layer), output)

        handles = [out_proj(hf, l).register_forward_pre_hook(keep_z(l)) for l in range(model.n_layers)]
        handles += [mlp(hf, l).register_forward_hook(keep_mlp(l)) for l in range(model.n_layers)]
        with hooks(*handles):
            logits = hf(input_ids=data.input_ids[row][None]).logits[0, -1]
        metric = logits[data.targets[row]] - logits[data.foils[row]]
        names = list(kept)
        grads = dict(zip(names, torch.autograd.grad(metric, [kept[n] for n in names])))
        reference = []
        for layer, head in components:
            if head == "mlp":
                value, grad = kept[("mlp", layer)], grads[("mlp", layer)]
            else:
                cols = head_slice(hf, head)
                value, grad = kept[("z", layer)][..., cols], grads[("z", layer)][..., cols]
            reference.append(-float((grad.double() * value.detach().double()).sum()))
        reference = torch.tensor(reference, dtype=torch.float64)
        # float32 activations and gradients, products summed over T x width: ~1e-5 of the largest term
        tolerance = 1e-4 * float(reference.abs().max())
        torch.testing.assert_close(estimates[row], reference, atol=tolerance, rtol=0)
        assert float(reference.abs().max()) > 0


def test_past_the_budget_the_largest_estimates_are_measured_and_the_rest_marked(bundled):
    data = small_bias_set(4)
    full = measure_bias(bundled, data, n_resamples=200, exact_budget=None)
    assert full.estimate_error() is None and all(c.measured and c.estimate is None for c in full.components)
    exact = {c.name: c for c in full.components}
    b = measure_bias(bundled, data, n_resamples=200, exact_budget=3.0)
    assert b.exact_plan is None  # chosen by the estimates, made on first use
    components = b.components
    plan = b.exact_plan
    assert b.exact_cost(plan) <= 3.0 and 0 < len(plan) < len(components)
    measured = {c.name for c in components if c.measured}
    assert measured == {component_name(*b.component_keys[i]) for i in plan} and b.n_measured == len(plan)
    # the measured ones are the largest |estimated share| first, up to the budget
    by_estimate = sorted(components, key=lambda c: -abs(c.estimate))
    assert {c.name for c in by_estimate[: len(plan)]} == measured
    next_one = by_estimate[len(plan)]
    assert b.exact_cost([*plan, b.component_keys.index((next_one.layer, next_one.head))]) > 3.0
    for c in components:
        if c.measured:  # exact: the full sweep's number
            assert c.share == pytest.approx(exact[c.name].share, abs=2 * METRIC_ATOL / abs(b.gap)), c.name
        else:  # an estimate, and said so
            assert c.share == c.estimate
    error = b.estimate_error()
    measured_c = [c for c in components if c.measured]
    assert error.n == len(measured_c)
    assert error.max_abs_error == pytest.approx(max(abs(c.estimate - c.share) for c in measured_c), rel=1e-9)
    assert error.max_abs_error > 0  # a first-order estimate of a zero ablation is not exact
    # reduce chooses among the measured ones only, and refuses more than there are
    r = b.reduce(k=1, capability=None)
    assert r.removed[0] in measured
    with pytest.raises(NbinterpError, match=r"only \d+ of 20 are \(exact_budget=3.0\).*exact_budget=None"):
        b.reduce(k=len(plan) + 1, capability=None)
    with pytest.raises(NbinterpError, match="exact_budget is forwards of the data set"):
        measure_bias(bundled, data, n_resamples=200, exact_budget=-1)


def test_view_labels_estimated_shares(bundled):
    from nbinterp.widgets import _contract as contract

    view = ni.bias(bundled, small_bias_set(4), n_resamples=200, exact_budget=3.0, background=False)
    assert view.finished and view.progress["state"] == "done"
    n_measured = view.result.n_measured
    assert view.progress["done"] == view.progress["total"] == n_measured == view.n_components
    assert view.progress["estimated"] == 20 - n_measured and view.progress["estimating"] is False
    flags = {c.name: c.measured for c in view.components}
    assert all(c["measured"] == flags[c["name"]] for c in view.components_shown)
    assert any(not c["measured"] for c in view.components_shown)
    error = view.estimate_error()
    assert view.estimates_vs_measured == {"n": error.n, "max_abs_error": error.max_abs_error,
                                          "correlation": error.correlation}
    state = view.get_state()
    for name, schema in contract.synced_traits(type(view)).items():
        schema.check(state[name], name)
    # every share measured (the default on the bundled model): no estimates shown
    plain = ni.bias(bundled, small_bias_set(2), n_resamples=200, background=False)
    assert plain.estimates_vs_measured is None and all(c["measured"] for c in plain.components_shown)
    assert plain.progress["estimated"] == 0


def test_a_cancel_while_estimating_keeps_the_estimates_and_resumes_to_the_same_numbers(bundled, monkeypatch):
    from nbinterp.analysis import dataset_runs

    data = small_bias_set(4)
    uninterrupted = measure_bias(bundled, data, n_resamples=200, exact_budget=3.0).components
    estimated_rows: list = []
    plain = dataset_runs.estimated_effects

    def counting(model, data, components, rows):
        estimated_rows.extend(rows)
        return plain(model, data, components, rows)

    monkeypatch.setattr(dataset_runs, "estimated_effects", counting)
    b = measure_bias(bundled, data, n_resamples=200, exact_budget=3.0)
    steps = b.measure_components()
    assert next(steps) == []  # the first rows' estimates, before any component is measured
    steps.close()  # cancelled here
    assert b.exact_plan is None and b.n_measured == 0 and not b.estimated
    assert 0 < len(estimated_rows) < len(b.data)
    resumed = b.components
    assert sorted(estimated_rows) == list(range(len(b.data)))  # every row estimated once over cancel + resume
    assert [(c.name, c.measured) for c in resumed] == [(c.name, c.measured) for c in uninterrupted]
    for ours, theirs in zip(resumed, uninterrupted):
        assert ours.share == pytest.approx(theirs.share, rel=1e-12, abs=1e-12)
        assert ours.estimate == pytest.approx(theirs.estimate, rel=1e-12, abs=1e-12)
