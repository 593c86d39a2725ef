"""Attribution-patching estimates against a plain-torch reference (forward
hooks + autograd on the HF model, no nbinterp code), their cost (the clean
forward and one corrupted forward + backward), the exact cells' order
(largest |estimate| first), layers= / positions= selection, and cancel /
resume keeping the cells done."""

from __future__ import annotations

import math

import pytest
import torch

import nbinterp as ni
from conftest import PROMPT, random_model
from reference_hooks import blocks, hooks, mlp, out_proj
from test_forward_counts import count_forwards
from test_patching_sweep import CORRUPTED, FOIL, TARGET, engine_effect, rounding
from nbinterp.analysis.patching_sweep import WINDOW, PatchingSweep, prepare, sweep

EPS = torch.finfo(torch.float32).eps
ATTENTION = {"gpt2": "attn"}  # the attention module's path on a block (default: self_attn)


def _first(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def plain_activations(hf, ids, grads: bool):
    """resid_pre / attn_out / mlp_out / z of every layer, by hooks; with grads, the
    tensors are kept in the graph (retain_grad) so a backward fills their .grad."""
    acts: dict[str, list] = {k: [None] * len(blocks(hf)) for k in ("resid_pre", "attn_out", "mlp_out", "z")}

    def keep(kind, layer, tensor):
        if grads:
            tensor.retain_grad()
        acts[kind][layer] = tensor

    handles = []
    for l, block in enumerate(blocks(hf)):
        attention = block.get_submodule(ATTENTION.get(hf.config.model_type, "self_attn"))
        handles += [
            block.register_forward_pre_hook(lambda m, a, k, l=l: keep("resid_pre", l, _first(a, k)), with_kwargs=True),
            attention.register_forward_hook(lambda m, a, out, l=l: keep("attn_out", l, out[0])),
            mlp(hf, l).register_forward_hook(lambda m, a, out, l=l: keep("mlp_out", l, out)),
            out_proj(hf, l).register_forward_pre_hook(lambda m, a, l=l: keep("z", l, a[0])),
        ]
    with hooks(*handles), torch.set_grad_enabled(grads):
        logits = hf(ids).logits[0, -1]
    return acts, logits


def plain_attribution_patching(hf, tokenizer, clean, corrupted, target, foil):
    """{kind: [layers, cols]} estimates: (clean - corrupted) . d metric / d corrupted activation."""
    tok = lambda text: tokenizer(text, return_tensors="pt").input_ids  # noqa: E731
    clean_acts, clean_logits = plain_activations(hf, tok(clean), grads=False)
    acts, logits = plain_activations(hf, tok(corrupted), grads=True)
    t, f = tokenizer.convert_tokens_to_ids([target, foil])
    (logits[t] - logits[f]).backward()
    gap = float(clean_logits[t] - clean_logits[f]) - float((logits[t] - logits[f]).detach())
    n_heads = hf.config.num_attention_heads
    out, bound = {}, {}
    for kind in acts:
        rows, sizes = [], []
        for l in range(len(acts[kind])):
            product = (clean_acts[kind][l][0] - acts[kind][l][0]).detach() * acts[kind][l].grad[0]
            if kind == "z":
                product = product.reshape(product.shape[0], n_heads, -1).sum(dim=(0, 2)), product.reshape(
                    product.shape[0], n_heads, -1).abs().sum(dim=(0, 2))
            else:
                product = product.sum(-1), product.abs().sum(-1)
            rows.append(product[0])
            sizes.append(product[1])
        name = "head" if kind == "z" else kind
        out[name], bound[name] = torch.stack(rows) / gap, torch.stack(sizes) / abs(gap)
    return out, bound


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_estimates_equal_plain_torch_attribution_patching(arch, tokenizer):
    hf = random_model(arch)
    model = ni.load(hf, tokenizer=tokenizer)
    result = sweep(model, PROMPT, CORRUPTED, TARGET, FOIL)
    expected, bound = plain_attribution_patching(hf, tokenizer, PROMPT, CORRUPTED, TARGET, FOIL)
    for kind in result.kinds:
        # float32 sums of products: rounding ~ EPS x (sum of |terms|) per cell; 64 ulps of it
        tol = 64 * EPS * float(bound[kind].max())
        torch.testing.assert_close(result.estimates[kind], expected[kind].float(), atol=tol, rtol=0)
        assert expected[kind].abs().max() > 100 * tol  # the comparison is not between two zeros


def test_the_estimate_costs_the_clean_forward_and_one_corrupted_forward_and_backward(tokenizer):
    model = ni.load(random_model("gpt2"), tokenizer=tokenizer)
    with count_forwards(model) as calls:
        result = sweep(model, PROMPT, CORRUPTED, TARGET, FOIL)
        estimates = {kind: result.estimates[kind] for kind in result.kinds}
    assert len(calls) == 2 and result.done == 0
    assert all(not v.isnan().any() for v in estimates.values())
    assert all(v.isnan().all() for v in result.effects.values())  # nothing exact yet


def test_exact_cells_come_largest_estimate_first_and_equal_the_engine(arch_model):
    _, _, model = arch_model
    result = sweep(model, PROMPT, CORRUPTED, TARGET, FOIL, batch_size=5)
    batches, next_batch = [], result._next_batch
    result._next_batch = lambda: batches.append(next_batch()) or batches[-1]  # type: ignore[method-assign]
    seen = list(result)
    size = lambda c: abs(float(result.estimates[c[0]][c[1], c[2]]))  # noqa: E731
    cells = [(c.kind, c.layer, c.index) for c in seen]
    assert sorted(cells) == sorted(result.order) and len(cells) == result.total == len(set(cells))
    assert [c for batch in batches for c in batch] == cells and max(map(len, batches)) <= 5
    # each batch opens with the largest pending estimate, and draws the rest from the next WINDOW batches
    start = 0
    for batch in batches:
        pending = sorted(cells[start:], key=size, reverse=True)
        assert size(batch[0]) == size(pending[0])
        assert all(size(c) >= size(pending[min(len(pending) - 1, WINDOW * 5)]) for c in batch)
        start += len(batch)
    tol = rounding(model, result.setup)
    for cell in seen[:6] + seen[-3:]:
        site = ("head", cell.layer, cell.index, None) if cell.kind == "head" else (cell.kind, cell.layer, cell.index)
        assert cell.effect == pytest.approx(engine_effect(model, result.setup, site), abs=tol), cell


def test_layers_and_positions_select_the_exact_cells(tokenizer):
    model = ni.load(random_model("gpt2"), tokenizer=tokenizer)
    full = sweep(model, PROMPT, CORRUPTED, TARGET, FOIL).run()
    result = sweep(model, PROMPT, CORRUPTED, TARGET, FOIL, kinds=["resid_pre", "head"], layers=[-1], positions=[0, 7])
    effects = result.run()
    last = model.n_layers - 1
    assert result.total == 2 + model.n_heads and result.finished
    assert sorted((c[0], c[1], c[2]) for c in result.order) == sorted(
        [("resid_pre", last, 0), ("resid_pre", last, 7)] + [("head", last, h) for h in range(model.n_heads)])
    measured = result.measured("resid_pre")
    assert measured.sum() == 2 and measured[last, 0] and measured[last, 7]
    tol = rounding(model, result.setup)
    torch.testing.assert_close(effects["resid_pre"][last, [0, 7]], full["resid_pre"][last, [0, 7]], atol=tol, rtol=0)
    torch.testing.assert_close(effects["head"][last], full["head"][last], atol=tol, rtol=0)
    assert not result.estimates["resid_pre"].isnan().any()  # the estimate covers the whole grid
    for bad, match in [({"layers": [model.n_layers]}, "layers=.*pick layers in 0..1"),
                       ({"positions": 3}, "positions is a list"), ({"positions": []}, "at least one")]:
        with pytest.raises(ni.NbinterpError, match=match):
            sweep(model, PROMPT, CORRUPTED, TARGET, FOIL, **bad)


def test_cancel_keeps_the_cells_done_and_resume_finishes_the_rest(tokenizer):
    model = ni.load(random_model("gpt2"), tokenizer=tokenizer)
    result = PatchingSweep(prepare(model, PROMPT, CORRUPTED, TARGET, FOIL), ("resid_pre", "head"), batch_size=3)
    seen = []
    for cell in result:
        seen.append(cell)
        if len(seen) == 2:
            result.cancel()
    assert len(seen) == 3 and result.done == 3 and result.cancelled and not result.finished
    assert [(c.kind, c.layer, c.index) for c in seen] == result.order[:3]
    kept = {(c.kind, c.layer, c.index): c.effect for c in seen}
    result.resume()
    rest = list(result)
    assert len(rest) == result.total - 3 and result.finished
    assert (rest[0].kind, rest[0].layer, rest[0].index) == result.order[3]
    assert all(result.effects[k][l, i].item() == e for (k, l, i), e in kept.items())
    assert not any(math.isnan(v) for t in result.effects.values() for v in t.flatten().tolist())


def test_a_batch_of_high_layer_cells_does_not_run_the_blocks_below(tokenizer):
    """The forward starts at the lowest patched layer from the corrupted stream:
    block 0 never runs for layer-1 cells, and the cells equal the full sweep's."""
    model = ni.load(random_model("llama"), tokenizer=tokenizer)
    full = sweep(model, PROMPT, CORRUPTED, TARGET, FOIL, kinds=["attn_out", "head"]).run()
    result = sweep(model, PROMPT, CORRUPTED, TARGET, FOIL, kinds=["attn_out", "head"], layers=[1])
    calls = []
    # (a skipped block's own pre-hooks still fire; what is inside it does not run)
    with hooks(mlp(model.hf, 0).register_forward_pre_hook(lambda m, a: calls.append(0)),
               mlp(model.hf, 1).register_forward_pre_hook(lambda m, a: calls.append(1))):
        effects = result.run()
    assert calls and set(calls) == {1}
    tol = rounding(model, result.setup)
    for kind in ("attn_out", "head"):
        torch.testing.assert_close(effects[kind][1], full[kind][1], atol=tol, rtol=0)


def test_tokens_the_prompts_share_are_exactly_0_and_no_forward_runs_them(arch_model):
    """CORRUPTED differs from PROMPT from token 7 on: every activation before it is
    the same in both runs, so those cells copy a value onto itself (0, as the engine
    measures it, with no forward), and every forward, heads included, runs only
    tokens 7.. (the KV cache holds the rest)."""
    name, hf, model = arch_model
    setup = prepare(model, PROMPT, CORRUPTED, TARGET, FOIL)
    assert setup.prefix == 7, name
    result = PatchingSweep(setup, ("resid_pre", "mlp_out", "head"))
    seen = []
    with hooks(mlp(hf, model.n_layers - 1).register_forward_pre_hook(lambda m, a: seen.append(a[0].shape))):
        effects = result.run()
    n_tokens = setup.n_tokens
    # [rows, tokens, d] (OPT flattens its MLP's tokens: test_resume.py counts those)
    assert seen and all(len(shape) == 2 or shape[1] <= n_tokens - 7 for shape in seen)
    tol = rounding(model, setup)
    for kind in ("resid_pre", "mlp_out"):
        assert (effects[kind][:, :7] == 0).all()
        for layer, position in [(0, 0), (model.n_layers - 1, 6)]:
            assert engine_effect(model, setup, (kind, layer, position)) == pytest.approx(0.0, abs=tol)
    for head in range(model.n_heads):
        assert float(effects["head"][0, head]) == pytest.approx(
            engine_effect(model, setup, ("head", 0, head, None)), abs=tol)
