"""FeatureActivations against independent references: plain torch hooks on
the HF model (the MLP down projection's input, a block's input), an SAE's
own encode on the hooked activation, finite differences through the final
norm and the unembedding, and a brute-force loop over a corpus."""

from __future__ import annotations

import math

import pytest
import torch

import nbinterp as ni
from conftest import PROMPT, random_model
from nbinterp.representations.activations import FeatureActivations
from reference_hooks import blocks, hooks, mlp_down

TARGET, FOIL = "w5", "w9"


class TinySAE(torch.nn.Module):
    """A plain ReLU SAE (what users bring): encode / decode, W_dec [d_sae, d_in]."""

    def __init__(self, d_in: int, d_sae: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W_enc = torch.nn.Parameter(torch.randn(d_in, d_sae, generator=g) / math.sqrt(d_in))
        self.b_enc = torch.nn.Parameter(torch.randn(d_sae, generator=g) * 0.1)
        self.W_dec = torch.nn.Parameter(torch.randn(d_sae, d_in, generator=g) / math.sqrt(d_sae))
        self.b_dec = torch.nn.Parameter(torch.randn(d_in, generator=g) * 0.1)

    def encode(self, x):
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, f):
        return f @ self.W_dec + self.b_dec


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request, tokenizer):
    return ni.load(random_model(request.param), tokenizer=tokenizer)


@pytest.fixture(scope="module")
def sae(model):
    return TinySAE(model.d_model, 96)


def hooked(model, module, *, pre=True, edit=None):
    """Logits of the prompt [T, V] with `edit(x) -> x'` on `module`'s input
    (pre) or output, and the activation seen there: plain hooks, no nbinterp."""
    seen = {}

    def pre_hook(mod, args):
        seen["x"] = args[0][0].detach().clone()
        if edit is not None:
            return (edit(args[0]),) + args[1:]

    handle = module.register_forward_pre_hook(pre_hook)
    with hooks(handle), torch.no_grad():
        logits = model.hf(model.tokenize(PROMPT)).logits[0]
    return logits, seen["x"]


def block(model, layer):
    return blocks(model.hf)[layer]


def test_neuron_activations_equal_a_hook_on_the_down_projection_input(model):
    acts = FeatureActivations(model, PROMPT, layer=1, k=8)
    _, neurons = hooked(model, mlp_down(model.hf, 1))
    assert acts.n_features == model.d_mlp == neurons.shape[-1]
    torch.testing.assert_close(acts.dense(), neurons.float(), rtol=1e-5, atol=1e-6)
    values, indices = neurons.topk(8, dim=-1)
    top = acts.top(3, 8)
    assert [i for i, _ in top] == indices[3].tolist()
    assert [v for _, v in top] == pytest.approx(values[3].tolist(), abs=1e-5)
    torch.testing.assert_close(acts.feature(int(indices[3, 0])), neurons[:, indices[3, 0]].float(), rtol=1e-5, atol=1e-6)
    sparse = acts.activations.to_dense()
    assert sparse.shape == neurons.shape
    torch.testing.assert_close(sparse.gather(1, indices), values, rtol=1e-5, atol=1e-6)
    assert int((sparse != 0).sum()) <= 8 * len(acts)


def test_sae_activations_are_encode_of_the_hooked_activation(model, sae):
    acts = FeatureActivations(model, PROMPT, sae=sae, site=("resid_pre", 1))
    _, x = hooked(model, block(model, 1))
    with torch.no_grad():
        expected = sae.encode(x.float())
    assert acts.n_features == 96 and acts.source.site == "resid_pre"
    torch.testing.assert_close(acts.dense(), expected, rtol=1e-5, atol=1e-5)
    assert "SAE features (96) at resid_pre of layer 1" == acts.source.label


def test_steering_nothing_is_the_plain_run(model, sae):
    plain = model.hf(model.tokenize(PROMPT)).logits[0, -1].detach()
    for acts in (FeatureActivations(model, PROMPT, layer=0), FeatureActivations(model, PROMPT, sae=sae, site=("resid_pre", 1))):
        run = acts.steer({})
        torch.testing.assert_close(run.logits_at(-1), plain, rtol=0, atol=1e-5 * max(1.0, float(plain.abs().max())))
        # a feature scaled by 1 is nothing too, and the SAE's error term stays in
        run = acts.steer({int(acts.top_indices[-1, 0]): 1.0})
        torch.testing.assert_close(run.logits_at(-1), plain, rtol=0, atol=1e-4 * max(1.0, float(plain.abs().max())))


def test_steering_an_sae_feature_adds_its_decoder_row_times_the_change(model, sae):
    acts = FeatureActivations(model, PROMPT, sae=sae, site=("resid_pre", 1), target=TARGET, foil=FOIL)
    feature = int(acts.top_indices[-2, 0])
    f = acts.feature(feature)
    assert f.abs().max() > 0
    for mode, value, change in (("scale", 3.0, 2.0 * f), ("scale", 0.0, -f), ("clamp", 5.0, 5.0 - f)):
        row = sae.W_dec[feature].detach()
        reference, _ = hooked(model, block(model, 1), edit=lambda x: x + change[:, None] * row)
        run = acts.steer({feature: value}, mode=mode)
        scale = max(1.0, float(reference.abs().max()))
        torch.testing.assert_close(run.logits_at(-1), reference[-1], rtol=0, atol=1e-4 * scale)
    assert acts.steer({feature: 5.0}, mode="clamp").logits_at(-1).sub(acts.steer({feature: 5.0}).logits_at(-1)).abs().max() > 1e-3


def test_steering_a_neuron_edits_the_neuron_itself(model):
    acts = FeatureActivations(model, PROMPT, layer=1)
    neuron = int(acts.top_indices[-1, 0])
    f = acts.feature(neuron)

    def edit(change):
        def apply(x):
            x = x.clone()
            x[0, :, neuron] += change.to(x)
            return x
        return apply

    for mode, value, change in (("scale", 0.0, -f), ("clamp", 2.5, 2.5 - f)):
        reference, _ = hooked(model, mlp_down(model.hf, 1), edit=edit(change))
        run = acts.steer({neuron: value}, mode=mode)
        torch.testing.assert_close(run.logits_at(-1), reference[-1], rtol=0, atol=1e-4 * max(1.0, float(reference.abs().max())))
    # steering only some positions: the earlier positions' logits are untouched
    run = acts.steer({neuron: 0.0}, positions=[len(acts) - 1], capture=["logits"])
    plain = model.hf(model.tokenize(PROMPT)).logits[0].detach()
    torch.testing.assert_close(run.logits[:-1], plain[:-1], rtol=0, atol=1e-5 * max(1.0, float(plain.abs().max())))


def test_reconstruction_error_and_its_metric_change_against_hooks(model, sae):
    acts = FeatureActivations(model, PROMPT, sae=sae, site=("resid_pre", 1), target=TARGET, foil=FOIL)
    error = acts.reconstruction_error()
    _, x = hooked(model, block(model, 1))
    with torch.no_grad():
        recon = sae.decode(sae.encode(x))
    fvu = (x - recon).pow(2).sum(-1) / (x - x.mean(0)).pow(2).sum(-1)
    torch.testing.assert_close(error.fvu, fvu, rtol=1e-4, atol=1e-6)
    assert error.fvu_total == pytest.approx(float((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()), rel=1e-4)
    t5, t9 = model.token_id(TARGET), model.token_id(FOIL)
    metric = lambda logits: float(logits[-1, t5] - logits[-1, t9])  # noqa: E731
    clean, _ = hooked(model, block(model, 1))
    replaced, _ = hooked(model, block(model, 1), edit=lambda h: recon[None].to(h))
    scale = max(1.0, float(clean.abs().max()))
    assert error.metric_clean == pytest.approx(metric(clean), abs=1e-4 * scale)
    assert error.metric_change == pytest.approx(metric(replaced) - metric(clean), abs=2e-4 * scale)
    for t in (0, 4, len(acts) - 1):
        def one(h, t=t):
            h = h.clone()
            h[0, t] = recon[t]
            return h
        at_t, _ = hooked(model, block(model, 1), edit=one)
        assert float(error.metric_change_per_token[t]) == pytest.approx(metric(at_t) - metric(clean), abs=2e-4 * scale)
    neurons = FeatureActivations(model, PROMPT, layer=0, target=TARGET, foil=FOIL).reconstruction_error()
    assert float(neurons.fvu.abs().max()) == 0 and neurons.metric_change == 0


def test_direct_logit_effect_is_the_derivative_through_the_final_norm(model, sae):
    acts = FeatureActivations(model, PROMPT, layer=1)
    neuron = 7
    effect = acts.direct_logit_effect(neuron, k=5)
    # reference: central difference of the HF final norm + unembedding at the last token's final stream
    hf = model.hf
    final_norm = hf.transformer.ln_f if hasattr(hf, "transformer") else hf.model.norm
    down = mlp_down(hf, 1)
    direction = (down.weight[neuron] if hf.config.model_type == "gpt2" else down.weight[:, neuron]).detach()
    seen = {}
    handle = final_norm.register_forward_pre_hook(lambda m, a: seen.update(x=a[0][0, -1].detach().clone()))
    with hooks(handle), torch.no_grad():
        hf(model.tokenize(PROMPT))
    with torch.no_grad():
        eps = 1e-3
        head = hf.get_output_embeddings()
        ref = (head(final_norm(seen["x"] + eps * direction)) - head(final_norm(seen["x"] - eps * direction))) / (2 * eps)
    top = ref.topk(5)
    assert [v for _, v in effect["positive"]] == pytest.approx(top.values.tolist(), rel=2e-2, abs=1e-4)
    assert [v for _, v in effect["negative"]] == pytest.approx((-ref).topk(5).values.neg().tolist(), rel=2e-2, abs=1e-4)
    assert [t for t, _ in effect["positive"]] == model.tokenizer.convert_ids_to_tokens(top.indices.tolist())
    # an SAE at the residual stream: its decoder row itself
    sae_acts = FeatureActivations(model, PROMPT, sae=sae, site=("resid_pre", 1))
    torch.testing.assert_close(sae_acts.source.direction(3), sae.W_dec[3].detach())


def corpus_docs():
    return [" ".join(f"w{(7 * i + 3 * j) % 60 + 1}" for j in range(3 + (i * 5) % 17)) for i in range(23)]


def brute_force(model, sae, docs):
    """Per document: the feature's max over tokens and where (plain hooks, one doc at a time)."""
    maxima, positions, active, count = [], [], 0, 0
    for text in docs:
        seen = {}
        handle = block(model, 1).register_forward_pre_hook(lambda m, a: seen.update(x=a[0][0].detach().clone()))
        with hooks(handle), torch.no_grad():
            model.hf(model.tokenize(text))
            f = sae.encode(seen["x"])
        best = f.max(0)
        maxima.append(best.values)
        positions.append(best.indices)
        active += (f > 0).sum(0)
        count += f.shape[0]
    return torch.stack(maxima), torch.stack(positions), active / count


def test_top_contexts_and_density_equal_a_brute_force_loop_over_the_corpus(model, sae):
    docs = corpus_docs()
    acts = FeatureActivations(model, PROMPT, sae=sae, site=("resid_pre", 1))
    maxima, positions, density = brute_force(model, sae, docs)
    dead = int(maxima.amax(0).argmin())
    assert float(maxima[:, dead].max()) <= 0 and acts.top_contexts(dead, corpus=docs, batch_size=64) == []
    for feature in maxima.amax(0).topk(3).indices.tolist() + [5]:
        if float(maxima[:, feature].max()) <= 0:
            continue
        contexts = acts.top_contexts(feature, corpus=docs, k=4, batch_size=64)
        order = maxima[:, feature].argsort(descending=True)[:4]
        order = order[maxima[order, feature] > 0]
        assert [c.doc for c in contexts] == order.tolist()
        assert [c.value for c in contexts] == pytest.approx(maxima[order, feature].tolist(), rel=1e-4, abs=1e-5)
        assert [c.position for c in contexts] == positions[order, feature].tolist()
        peak = contexts[0]
        assert peak.activations[peak.position - peak.start] == pytest.approx(peak.value, rel=1e-4, abs=1e-5)
        assert acts.density(feature, corpus=docs) == pytest.approx(float(density[feature]), abs=1e-6)
    # cached per (site, corpus): the second call runs no forward
    before = model.forwards
    acts.density(5, corpus=docs)
    assert model.forwards == before


def test_the_corpus_pass_reports_progress_stops_at_cancel_and_resumes(model, sae):
    docs = corpus_docs()[::-1] + ["w1 w2 w3"]  # a different corpus: a fresh pass
    acts = FeatureActivations(model, PROMPT, sae=sae, site=("resid_pre", 1))
    index = acts.context_index(docs, batch_size=40)
    assert len(index.batches) > 3
    seen = []
    for progress in index:
        seen.append(progress["done_docs"])
        if len(seen) == 2:
            index.cancel()
    assert len(seen) == 2 and not index.finished and 0 < seen[-1] < len(docs)
    partial = index.top(5, 3)
    assert all(doc in sum((index.batches[i] for i in range(2)), []) for doc, _, _ in partial)
    index.run()
    assert index.finished and index.progress["done_docs"] == len(docs) == index.progress["total_docs"]
    maxima, _, _ = brute_force(model, sae, docs)
    live = int(maxima.amax(0).argmax())
    assert [v for _, _, v in index.top(live, 3)] == pytest.approx(maxima[:, live].sort(descending=True).values[:3].tolist(), rel=1e-4)


def test_bundled_model_skips_bos_and_uses_the_task_corpus():
    model = ni.load()
    acts = FeatureActivations(model, "Tamsin Varn works as a", layer=2, target="doctor", foil="nurse")
    index = acts.context_index()
    docs = index.docs
    assert len(docs) == 1000 and all(int(d[0]) == model.tokenizer.bos_token_id for d in docs[:5])
    for _ in zip(range(1), index):
        pass
    assert all(position > 0 for _, position, _ in index.top(int(acts.top_indices[-1, 0]), 10))


def test_clear_errors(model, sae):
    with pytest.raises(ni.NbinterpError, match="pass layer= .* or sae="):
        FeatureActivations(model, PROMPT)
    with pytest.raises(ni.NbinterpError, match="layer 9 is out of range"):
        FeatureActivations(model, PROMPT, layer=9)
    with pytest.raises(ni.NbinterpError, match="reads 32-wide activations but neurons of layer 1 is 64 wide|reads 32-wide"):
        FeatureActivations(model, PROMPT, sae=sae, site=("neurons", 1))
    with pytest.raises(ni.NbinterpError, match="cannot read edit site"):
        FeatureActivations(model, PROMPT, sae=sae, site=("blocks.1.hook_resid_pre", 1))
    with pytest.raises(ni.NbinterpError, match="encode"):
        FeatureActivations(model, PROMPT, sae=object(), site=("resid_pre", 1))
    acts = FeatureActivations(model, PROMPT, sae=sae, site=("resid_pre", 1))
    with pytest.raises(ni.NbinterpError, match="feature 96 is out of range: there are 96"):
        acts.steer({96: 1.0})
    with pytest.raises(ni.NbinterpError, match="feature -1 is out of range"):
        acts.feature(-1)
    with pytest.raises(ni.NbinterpError, match="must be a finite number, got nan"):
        acts.steer({3: float("nan")})
    with pytest.raises(ni.NbinterpError, match="'scale' .* or 'clamp'"):
        acts.steer({3: 1.0}, mode="double")
    with pytest.raises(ni.NbinterpError, match="need corpus="):
        acts.top_contexts(3)
    with pytest.raises(ni.NbinterpError, match="corpus document 1: .*empty"):
        acts.top_contexts(3, corpus=["w1 w2", " "])

