"""Views over a data set (ni.attribute / ni.ablate / ni.patch / ni.logit_lens
given a PromptSet): every per-row value against plain HF forwards with torch
hooks on the bundled model (GPT-2 layout), the per-cell statistics against a
plain numpy bootstrap and counts by hand, cancel keeping the rows computed,
and clear errors for sets a view cannot use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nbinterp as ni
from nbinterp.analysis import dataset_effects as de
from nbinterp.analysis.datasets import PromptRow, PromptSet
from nbinterp.bundled import tasks
from nbinterp.errors import NbinterpError

from reference_hooks import blocks, hooks, mlp, out_proj, scale_head_input

# float32 logits of magnitude <= ~30 from two different forwards (batched rows
# vs one HF row): metrics agree to ~1e-5; 1e-4 leaves room for BLAS blocking.
METRIC_ATOL = 1e-4
PROBABILITY_ATOL = 1e-5  # softmax outputs in [0, 1] from float32 logits


@pytest.fixture(scope="module")
def bundled():
    torch.set_num_threads(1)
    return ni.load()


def bias_set(n_given: int = 1) -> PromptSet:
    """Counterfactual pairs of the planted bias, two templates (6 and 10 tokens)."""
    return PromptSet.from_templates(tasks.BIAS_TEMPLATES, attribute="clan", groups=tasks.GROUP_CLANS,
                                    fillers={"given": tasks.BIAS_TEST_GIVEN_NAMES[:n_given]},
                                    target="doctor", foil="nurse")


def hf_metric(hf, ids, target, foil, handles=()):
    with torch.no_grad(), hooks(*handles):
        logits = hf(input_ids=ids[None]).logits[0, -1].double()
    return float(logits[target] - logits[foil])


def capture_output(module, store):
    def hook(_module, _args, output):
        store.append((output[0] if isinstance(output, tuple) else output).detach().clone())
    return module.register_forward_hook(hook)


def replace_output(module, value, position):
    """Forward hook: the module's output at `position` (None: all) <- value's."""
    def hook(_module, _args, output):
        first = output[0] if isinstance(output, tuple) else output
        first = first.clone()
        where = slice(None) if position is None else slice(position, position + 1)
        first[:, where] = value[:, where]
        return (first, *output[1:]) if isinstance(output, tuple) else first
    return module.register_forward_hook(hook)


def replace_block_input(block, value, position):
    def hook(_module, args, kwargs):
        if args:
            hidden = args[0].clone()
            hidden[:, position] = value[:, position]
            return (hidden, *args[1:]), kwargs
        hidden = kwargs["hidden_states"].clone()
        hidden[:, position] = value[:, position]
        return args, {**kwargs, "hidden_states": hidden}
    return block.register_forward_pre_hook(hook, with_kwargs=True)


def capture_block_input(block, store):
    def hook(_module, args, kwargs):
        store.append((args[0] if args else kwargs["hidden_states"]).detach().clone())
    return block.register_forward_pre_hook(hook, with_kwargs=True)


# ------------------------------------------------------------- per-row values
def test_head_effects_match_plain_hooks(bundled):
    data = bias_set().check(bundled)
    effects = de.head_effects(bundled, data).run()
    hf = bundled.hf
    for row in (0, 1, len(data) - 1):  # both token lengths
        ids, target, foil = data.input_ids[row], data.targets[row], data.foils[row]
        clean = hf_metric(hf, ids, target, foil)
        for layer in range(bundled.n_layers):
            for head in range(bundled.n_heads):
                ablated = hf_metric(hf, ids, target, foil, [scale_head_input(hf, layer, head, 0.0)])
                cell = effects.panels[0].cell(layer, head)
                assert effects.values[row, cell] == pytest.approx(ablated - clean, abs=METRIC_ATOL), (row, layer, head)


def test_chosen_ablations_alone_and_together_match_plain_hooks(bundled):
    data = bias_set().check(bundled)
    effects = de.ablation_effects(bundled, data, {"L1.H2": 0.0, "L2.mlp": 0.5}).run()
    assert effects.panels[0].row_labels == ["L1.H2 \u00d7 0", "L2.mlp \u00d7 0.5", "all together"]
    hf = bundled.hf
    half_mlp = lambda: mlp(hf, 2).register_forward_hook(lambda m, a, out: out * 0.5)  # noqa: E731
    for row in (0, 7):
        ids, target, foil = data.input_ids[row], data.targets[row], data.foils[row]
        clean = hf_metric(hf, ids, target, foil)
        expected = [hf_metric(hf, ids, target, foil, [scale_head_input(hf, 1, 2, 0.0)]),
                    hf_metric(hf, ids, target, foil, [half_mlp()]),
                    hf_metric(hf, ids, target, foil, [scale_head_input(hf, 1, 2, 0.0), half_mlp()])]
        np.testing.assert_allclose(effects.values[row].numpy(), np.array(expected) - clean, atol=METRIC_ATOL)


def test_patch_effects_match_plain_hooks(bundled):
    data = bias_set().check(bundled)
    effects = de.patch_effects(bundled, data).run()
    pairs = de.counterfactual_pairs(data)
    assert all(data.prompts[c].group == "A" and data.prompts[k].group == "B" for c, k in pairs)
    width = len(effects.panels[0].col_labels)
    hf = bundled.hf
    panels = {p.title: p for p in effects.panels}
    for unit in (0, len(pairs) - 1):  # a short and a long pair: positions line up from the end
        clean_row, corrupted_row = pairs[unit]
        clean_ids, ids = data.input_ids[clean_row], data.input_ids[corrupted_row]
        target, foil, n = data.targets[corrupted_row], data.foils[corrupted_row], len(ids)
        base = hf_metric(hf, ids, target, foil)
        for layer in (0, 3):
            for position in (0, n - 3, n - 1):
                col = width - n + position
                store = []
                with torch.no_grad(), hooks(capture_block_input(blocks(hf)[layer], store)):
                    hf(input_ids=clean_ids[None])
                patched = hf_metric(hf, ids, target, foil, [replace_block_input(blocks(hf)[layer], store[0], position)])
                cell = panels[de.PATCH_LABELS["resid_pre"]].cell(layer, col)
                assert effects.values[unit, cell] == pytest.approx(patched - base, abs=METRIC_ATOL)
                for kind, module in (("attn_out", blocks(hf)[layer].attn), ("mlp_out", mlp(hf, layer))):
                    store = []
                    with torch.no_grad(), hooks(capture_output(module, store)):
                        hf(input_ids=clean_ids[None])
                    patched = hf_metric(hf, ids, target, foil, [replace_output(module, store[0], position)])
                    cell = panels[de.PATCH_LABELS[kind]].cell(layer, col)
                    assert effects.values[unit, cell] == pytest.approx(patched - base, abs=METRIC_ATOL), kind
            if n < width:  # positions before a short pair's first token have no value
                assert effects.values[unit, panels[de.PATCH_LABELS["resid_pre"]].cell(layer, 0)].isnan()
            head = 1
            store = []
            grab = out_proj(hf, layer).register_forward_pre_hook(lambda m, a: store.append(a[0].detach().clone()))
            with torch.no_grad(), hooks(grab):
                hf(input_ids=clean_ids[None])
            cols = slice(head * bundled.head_dim, (head + 1) * bundled.head_dim)

            def put(m, a, z=store[0]):
                x = a[0].clone()
                x[..., cols] = z[..., cols]
                return (x, *a[1:])
            patched = hf_metric(hf, ids, target, foil, [out_proj(hf, layer).register_forward_pre_hook(put)])
            cell = panels[de.PATCH_LABELS["head"]].cell(layer, head)
            assert effects.values[unit, cell] == pytest.approx(patched - base, abs=METRIC_ATOL)


def test_lens_probabilities_match_plain_hf(bundled):
    data = bias_set().check(bundled)
    effects = de.lens_probabilities(bundled, data).run()
    hf = bundled.hf
    width = len(effects.panels[0].col_labels)
    for row in (0, len(data) - 1):
        ids, target = data.input_ids[row], data.targets[row]
        store = []
        with torch.no_grad(), hooks(capture_block_input(hf.transformer.ln_f, store)):
            out = hf(input_ids=ids[None], output_hidden_states=True)
        # hidden_states[l] enters block l; HF's last entry is after the final norm, so the
        # final stream is read at the norm's input instead
        streams = [*out.hidden_states[: bundled.n_layers], store[0]]
        for s, resid in enumerate(streams):
            with torch.no_grad():
                p = torch.softmax(hf.lm_head(hf.transformer.ln_f(resid))[0].double(), -1)[:, target]
            got = effects.values[row].reshape(bundled.n_layers + 1, width)[s, width - len(ids):]
            np.testing.assert_allclose(got.numpy(), p.numpy(), atol=PROBABILITY_ATOL)


# ----------------------------------------------------------------- statistics
def test_cell_stats_match_a_plain_bootstrap_and_counts_by_hand():
    rng = np.random.default_rng(0)
    values = rng.normal(0.3, 1.0, size=(40, 3))
    values[:10, 2] = np.nan  # ten rows without cell 2 (a shorter prompt)
    stats = de.cell_stats(torch.tensor(values), n_resamples=4000, seed=3)
    for cell in range(3):
        column = values[:, cell][~np.isnan(values[:, cell])]
        assert stats.n[cell] == len(column)
        assert stats.mean[cell] == pytest.approx(column.mean(), abs=1e-12)
        sign = np.sign(column.mean())
        assert stats.agree[cell] == pytest.approx(np.mean(np.sign(column) == sign), abs=1e-12)
        q = np.quantile(column, [0, 0.25, 0.5, 0.75, 1])
        got = [stats.minimum[cell], stats.q1[cell], stats.median[cell], stats.q3[cell], stats.maximum[cell]]
        np.testing.assert_allclose(got, q, atol=1e-12)
    # cells 0 and 1: every row present, a plain resample of rows
    for cell in (0, 1):
        column = values[:, cell]
        means = np.array([column[rng.integers(0, 40, 40)].mean() for _ in range(4000)])
        low, high = np.quantile(means, [0.025, 0.975])
        spread = means.std()
        # two independent Monte Carlo runs of 4,000: quantile endpoints differ by ~0.05 sd
        assert stats.low[cell] == pytest.approx(low, abs=0.2 * spread)
        assert stats.high[cell] == pytest.approx(high, abs=0.2 * spread)
    # the same seed gives the same interval
    again = de.cell_stats(torch.tensor(values), n_resamples=4000, seed=3)
    assert torch.equal(again.low, stats.low) and torch.equal(again.high, stats.high)


def test_one_row_has_no_interval():
    stats = de.cell_stats(torch.tensor([[1.0, -2.0]]))
    # a mean of one row is that row (float64 rounding at most); one row agrees with itself
    tolerance = 4 * torch.finfo(torch.float64).eps * 2.0
    torch.testing.assert_close(stats.mean.double(), torch.tensor([1.0, -2.0], dtype=torch.float64), atol=tolerance, rtol=0)
    torch.testing.assert_close(stats.agree.double(), torch.tensor([1.0, 1.0], dtype=torch.float64), atol=tolerance, rtol=0)
    assert stats.low.isnan().all()


# ---------------------------------------------------------- cancel and errors
def test_cancel_keeps_the_rows_computed_and_resume_finishes(bundled):
    data = bias_set(2).check(bundled)
    full = de.head_effects(bundled, data).run()
    effects = de.head_effects(bundled, data)
    assert len(effects.pending) > 1
    for units in effects:
        effects.cancel()
    assert effects.cancelled and 0 < effects.done < effects.total
    done = effects.computed
    torch.testing.assert_close(effects.values[done], full.values[done], atol=METRIC_ATOL, rtol=0)
    assert effects.values[~done].isnan().all()
    stats = effects.stats(n_resamples=200)
    assert int(stats.n[0]) == effects.done
    effects.run()
    assert effects.finished and effects.done == effects.total
    torch.testing.assert_close(effects.values, full.values, atol=METRIC_ATOL, rtol=0)


def test_patch_needs_pairs_and_a_set_needs_rows(bundled):
    unpaired = PromptSet([PromptRow(r.prompt, r.target, r.foil, r.group) for r in bias_set()])
    with pytest.raises(NbinterpError, match="needs counterfactual pairs, and row 0 .* has no partner"):
        de.patch_effects(bundled, unpaired.check(bundled))
    with pytest.raises(NbinterpError, match="kinds is a list"):
        de.patch_effects(bundled, bias_set().check(bundled), kinds=["resid"])
    with pytest.raises(NbinterpError, match="at least one row"):
        PromptSet([])


# --------------------------------------------------------- the public calls
def test_the_four_calls_take_a_data_set(bundled):
    from nbinterp.widgets.dataset_view import DatasetView

    data = bias_set()
    views = {
        "attribute": ni.attribute(bundled, data, background=False),
        "ablate": ni.ablate(bundled, data, ablate={"L1.H2": 0.0}),
        "patch": ni.patch(bundled, data, background=False),
        "logit_lens": ni.logit_lens(bundled, data, background=False),
    }
    checked = data.check(bundled)
    reference = {"attribute": de.head_effects(bundled, checked), "ablate": de.ablation_effects(bundled, checked, {"L1.H2": 0.0}),
                 "patch": de.patch_effects(bundled, checked), "logit_lens": de.lens_probabilities(bundled, checked)}
    for kind, view in views.items():
        assert isinstance(view, DatasetView) and view.kind == kind
        result = view.result
        assert result.computed.all() and view.progress["state"] == "done"
        expected = reference[kind].run().values
        torch.testing.assert_close(result.values, expected, atol=METRIC_ATOL, rtol=0, equal_nan=True)
        means = torch.nanmean(expected, 0)
        torch.testing.assert_close(result.stats.mean, means, atol=METRIC_ATOL, rtol=0, equal_nan=True)
        # a cell's rows, largest first, and the single-prompt view of one of them
        cell = int(torch.nan_to_num(result.stats.mean.abs(), nan=-1).argmax())
        rows = view.cell_rows(cell)
        assert [v for _, _, v in rows] == sorted((v for _, _, v in rows), reverse=True)
        opened = view.open_row(rows[0][0], cell)
        assert type(opened).__name__ == {"attribute": "AttributionView", "ablate": "AblationPanel",
                                         "patch": "PatchingView", "logit_lens": "LogitLensView"}[kind]
        assert view.selected == {"cell": cell, "unit": rows[0][0]}
    # the attribution view opens at the cell's head
    att = views["attribute"]
    assert (att.opened.layer, att.opened.head) == att.effects.cell_keys[att.selected["cell"]]
    assert views["ablate"].opened.ablations == {"L1.H2": 0.0}


def test_patch_takes_two_lists_of_prompts(bundled):
    rows = [(r.prompt, data_row.prompt) for r, data_row in zip(bias_set().rows[0::2], bias_set().rows[1::2])]
    view = ni.patch(bundled, [a for a, _ in rows], corrupted=[b for _, b in rows], target="doctor", foil="nurse",
                    background=False)
    torch.testing.assert_close(view.result.values, de.patch_effects(bundled, bias_set().check(bundled)).run().values,
                               atol=METRIC_ATOL, rtol=0, equal_nan=True)


def test_the_view_cancels_and_keeps_rows(bundled):
    view = ni.attribute(bundled, bias_set(3))
    view.cancel()
    view.wait()
    state = view.progress["state"]
    effects = view.effects
    assert state in ("cancelled", "done") and view.progress["done"] == effects.done
    computed = effects.computed.clone()
    kept = effects.values[computed].clone()
    assert effects.values[~computed].isnan().all()
    view.resume(background=False)
    assert view.progress["state"] == "done" and effects.finished
    full = de.head_effects(bundled, bias_set(3).check(bundled)).run()
    torch.testing.assert_close(kept, full.values[computed], atol=METRIC_ATOL, rtol=0)  # nothing lost, nothing redone
    torch.testing.assert_close(effects.values, full.values, atol=METRIC_ATOL, rtol=0)


def test_clear_errors_over_a_data_set(bundled):
    unpaired = PromptSet([PromptRow(r.prompt, r.target, r.foil, r.group) for r in bias_set()])
    with pytest.raises(NbinterpError, match="needs counterfactual pairs"):
        ni.patch(bundled, unpaired)
    with pytest.raises(NbinterpError, match="leave corrupted= out"):
        ni.patch(bundled, bias_set(), corrupted="Anwen Quel works as a")
    with pytest.raises(NbinterpError, match="corrupted= is a list of as many"):
        ni.patch(bundled, ["Anwen Varn works as a"], corrupted=[], target="doctor")
    with pytest.raises(NbinterpError, match="clean= is empty"):
        ni.patch(bundled, [], corrupted=[], target="doctor")
    with pytest.raises(NbinterpError, match="group 'B' is empty"):
        ni.attribute(bundled, {"A": ["Anwen Varn works as a"], "B": []}, target="doctor")
    with pytest.raises(NbinterpError, match=r"does not take ablation=, k="):
        ni.ablate(bundled, bias_set(), ablation="mean", k=3)
    with pytest.raises(NbinterpError, match="ni.attribute needs target="):
        ni.attribute(bundled, "Anwen Varn works as a")
    with pytest.raises(NbinterpError, match="ni.patch needs corrupted= and target="):
        ni.patch(bundled, "Anwen Varn works as a", target="doctor")


def test_a_dataframe_is_a_data_set(bundled):
    pd = pytest.importorskip("pandas")
    data = bias_set()
    frame = pd.DataFrame({"prompt": [r.prompt for r in data], "target": "doctor", "foil": "nurse",
                          "group": [r.group for r in data], "pair": [r.partner for r in data]})
    lens = ni.logit_lens(bundled, frame, background=False)
    torch.testing.assert_close(lens.result.values, de.lens_probabilities(bundled, data.check(bundled)).run().values,
                               atol=PROBABILITY_ATOL, rtol=0, equal_nan=True)
    with pytest.raises(NbinterpError, match="give a partner column to PromptSet.from_dataframe"):
        ni.patch(bundled, frame)
    paired = ni.patch(bundled, PromptSet.from_dataframe(frame, partner="pair"), background=False)
    assert paired.result.values.shape[0] == len(data) // 2
