"""Every analysis and view as an NDIF user runs it: the client's `model.hf`
holds META weights (as nnsight's remote wrapper gives it), the requests go
through nnsight's remote="local" serialisation and execute on a real copy of
the bundled model. Any read of a weight outside the engine's trace fails
here ("Cannot copy out of meta tensor"); every number must equal the local
model's.

Tolerances: the bundled model is float32 with logits of O(10) and effects up
to ~50 logits; the remote path runs the same ops on the same weights, so
numbers agree to float32 rounding of that scale (a few 1e-6 relative), and
batch composition (which rows share a forward) can change the CPU kernels'
summation order. ATOL = 2e-4 x 16 logits, the bound test_why_not uses for two
code paths on this model; probabilities and ratios (scale 1) use 1e-5.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import nbinterp as ni
from nbinterp.analysis import patching_sweep
from nbinterp.analysis.attribution import compute_attribution
from nbinterp.analysis.context_use import compute_context_use
from nbinterp.analysis.logit_lens import compute_logit_lens
from nbinterp.analysis.qk import qk
from nbinterp.analysis.why_not import compute_why_not
from nbinterp.bundled import tasks
from nbinterp.interventions.ablation import ablated_run, summarize
from nbinterp.representations.activations import FeatureActivations
from nbinterp.representations.probe_usage import usage_test
from nbinterp.representations.probes import probe_layers
from nbinterp.representations.sae import bundled_sae

IOI = "When Mary and John went to the store , John gave a drink to"
CORRUPTED = "When Mary and John went to the store , Mary gave a drink to"
LOGITS = 2e-4 * 16  # logit-scale numbers (metrics, effects, scores)
UNIT = 1e-5  # probabilities, ratios, shares of a gap
TIMINGS = {"seconds"}  # wall-clock fields differ run to run


def meta_copy(hf_model: torch.nn.Module) -> torch.nn.Module:
    """The same architecture and config with every parameter on the meta device (no values)."""
    with torch.device("meta"):
        meta = type(hf_model)(hf_model.config)
    assert all(p.is_meta for p in meta.parameters())
    return meta


@pytest.fixture(scope="module")
def models():
    local = ni.load()
    remote = ni.load(remote="local")
    remote.hf = meta_copy(remote.hf)  # what the client holds on NDIF; nnsight executes the real one
    return local, remote


def same(got, expected, atol: float, path: str = "result") -> None:
    """Recursively equal: tensors and floats within atol, everything else exactly.
    Private fields (a leading _), timings and model / run handles are skipped."""
    if isinstance(expected, (ni.Model, ni.Run)):
        return
    if dataclasses.is_dataclass(expected) and not isinstance(expected, type):
        for f in dataclasses.fields(expected):
            if not f.name.startswith("_") and f.name not in TIMINGS:
                same(getattr(got, f.name), getattr(expected, f.name), atol, f"{path}.{f.name}")
        return
    if isinstance(expected, dict):
        assert set(got) == set(expected), path
        for key in expected:
            if not (isinstance(key, str) and key.startswith("_")):
                same(got[key], expected[key], atol, f"{path}[{key!r}]")
        return
    if isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), path
        for i, (g, e) in enumerate(zip(got, expected)):
            same(g, e, atol, f"{path}[{i}]")
        return
    if isinstance(expected, np.ndarray):
        got, expected = torch.as_tensor(np.asarray(got)), torch.as_tensor(expected)
    if isinstance(expected, np.generic):
        got, expected = got.item(), expected.item()
    if isinstance(expected, torch.Tensor):
        if expected.is_floating_point():
            torch.testing.assert_close(got.double(), expected.double(), atol=atol, rtol=0, msg=path)
        else:
            assert torch.equal(got, expected), path
        return
    if isinstance(expected, float) and not isinstance(got, str):
        assert math.isclose(got, expected, abs_tol=atol) or (math.isnan(got) and math.isnan(expected)), \
            f"{path}: {got} != {expected}"
        return
    assert got == expected, path


def test_the_client_really_holds_meta_weights(models):
    local, remote = models
    with pytest.raises(NotImplementedError, match="meta"):
        remote.hf.get_output_embeddings().weight.cpu()
    same(remote.run(IOI).logits_at(-1), local.run(IOI).logits_at(-1), LOGITS)


def test_why_not_and_restore(models):
    local, remote = models
    got, expected = (compute_why_not(m, IOI, "John", references=[CORRUPTED]) for m in (remote, local))
    same(got.trajectory, expected.trajectory, UNIT)
    same(got.inhibitors, expected.inhibitors, LOGITS)
    same(got.missing, expected.missing, LOGITS)
    same(got.restore(3), expected.restore(3), LOGITS)


def test_context_use(models):
    local, remote = models
    example = tasks.examples("context_override", 1, **tasks.CONTEXT_VARIANTS["plain"])[0]
    context = example.prompt[example.prompt.index("Context :") + len("Context : ") : example.prompt.index(" Question")]
    same(compute_context_use(remote, example.prompt, context), compute_context_use(local, example.prompt, context), UNIT)


def test_attribute_verify_and_qk(models):
    local, remote = models
    got, expected = (compute_attribution(m, IOI, "Mary", "John") for m in (remote, local))
    same(got.heads, expected.heads, LOGITS)
    same(got.edges, expected.edges, LOGITS)
    same(got.verify(k=5), expected.verify(k=5), LOGITS)
    same(got.verify_heads(k=5), expected.verify_heads(k=5), LOGITS)
    same(got.qk(2, 1, 12, 3), expected.qk(2, 1, 12, 3), LOGITS)
    same(qk(remote, IOI, 3, 0, 13, 1), qk(local, IOI, 3, 0, 13, 1), LOGITS)


def test_patch(models):
    local, remote = models
    got, expected = (patching_sweep.sweep(m, IOI, CORRUPTED, "Mary", "John", kinds=["head", "resid_pre"])
                     for m in (remote, local))
    # effects are divided by the clean-corrupted gap (tens of logits): unit scale
    same(sorted(got, key=lambda c: (c.kind, c.layer, c.index)),
         sorted(expected, key=lambda c: (c.kind, c.layer, c.index)), 1e-4)


def test_logit_lens(models):
    local, remote = models
    same(compute_logit_lens(remote, IOI, target="Mary"), compute_logit_lens(local, IOI, target="Mary"), UNIT)


def test_features_direct_logit_effect_and_contexts(models):
    local, remote = models
    sae = bundled_sae()
    docs = [e.prompt for e in tasks.examples("ioi", 12, seed=3)]
    got, expected = (FeatureActivations(m, IOI, sae=sae, target="Mary", foil="John") for m in (remote, local))
    same(got.top_values, expected.top_values, LOGITS)
    assert torch.equal(got.top_indices, expected.top_indices)
    feature = int(expected.top_indices[-1, 0])
    same(got.direct_logit_effect(feature, k=5), expected.direct_logit_effect(feature, k=5), LOGITS)
    same(got.reconstruction_error(), expected.reconstruction_error(), LOGITS)
    same(got.top_contexts(feature, corpus=docs, k=3), expected.top_contexts(feature, corpus=docs, k=3), LOGITS)
    same(got.steer({feature: 4.0}).logits_at(-1), expected.steer({feature: 4.0}).logits_at(-1), LOGITS)
    # MLP neurons: their directions are the down projection's, read in the trace
    got, expected = (FeatureActivations(m, IOI, layer=1) for m in (remote, local))
    same(got.source.direction(7), expected.source.direction(7), UNIT)
    same(got.direct_logit_effect(7, k=5), expected.direct_logit_effect(7, k=5), LOGITS)


def test_probe_and_usage_test(models):
    local, remote = models
    examples = tasks.examples("bias", 40, split="test", seed=1)
    prompts, labels = [e.prompt for e in examples], [e.meta["group"] for e in examples]
    got, expected = (probe_layers(m, prompts, labels) for m in (remote, local))
    same(got.test_accuracy, expected.test_accuracy, UNIT)
    layer = expected.best_layer
    same(usage_test(remote, got, layer, ("doctor", "nurse"), n_controls=2).summary(),
         usage_test(local, expected, layer, ("doctor", "nurse"), n_controls=2).summary(), LOGITS)


def test_ablate(models):
    local, remote = models
    ablations = {"L3.H0": 0.0, "L2.mlp": 0.5}
    summaries = []
    for m in (remote, local):
        run, baseline = ablated_run(m, IOI, ablations), ablated_run(m, IOI, {})
        summaries.append(summarize(m, run, baseline, target="Mary", foil="John", ablations=ablations))
    same(summaries[0], summaries[1], UNIT)
    mean = [m.run(IOI, ablate={"L1.H1": 0.0}, ablation="mean", reference=[CORRUPTED, "Mary went to the store"])
            for m in (remote, local)]
    same(mean[0].logits_at(-1), mean[1].logits_at(-1), LOGITS)


def test_attention_view_data(models):
    from nbinterp.widgets.attention import layer_values

    local, remote = models
    got, expected = remote.run(IOI, capture=["qkv"]), local.run(IOI, capture=["qkv"])
    for layer in range(local.n_layers):
        for mode in ("probabilities", "value_weighted"):
            same(layer_values(got, layer, mode), layer_values(expected, layer, mode), UNIT)


def test_every_view_builds_on_meta_weights(models):
    """The widget layer on top: each view built from the meta-weight model shows the local numbers."""
    local, remote = models
    view = ni.why_not(remote, IOI, target="John", references=[CORRUPTED])
    same(view.result.trajectory, compute_why_not(local, IOI, "John", references=[CORRUPTED]).trajectory, UNIT)
    ni.attention(remote, IOI, layer=1, head=1)
    panel = ni.ablate(remote, IOI, target="Mary", foil="John")
    panel.ablations = {"L3.H0": 0.0}
    expected = local.run(IOI, ablate={"L3.H0": 0.0}).logit_diff("Mary", "John")
    assert panel.result.logit_diff == pytest.approx(expected, abs=LOGITS)
    lens = ni.logit_lens(remote, IOI, target="Mary")
    same(lens.lens, compute_logit_lens(local, IOI, target="Mary"), UNIT)
    grid = ni.patch(remote, IOI, corrupted=CORRUPTED, target="Mary", foil="John", kinds=["head"], background=False)
    assert grid is not None
    view = ni.attribute(remote, IOI, target="Mary", foil="John", background=False)
    same(view.result.heads, compute_attribution(local, IOI, "Mary", "John").heads, LOGITS)
    fv = ni.features(remote, IOI, sae=bundled_sae(), target="Mary", foil="John", background=False)
    try:
        feature = int(fv.features.top_indices[-1, 0])
        local_acts = FeatureActivations(local, IOI, sae=bundled_sae(), target="Mary", foil="John")
        same(fv.direct_logit_effect(feature, 5), local_acts.direct_logit_effect(feature, 5), LOGITS)
    finally:
        fv.close()
