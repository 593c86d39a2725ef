"""dtype and device: every attention recompute runs in float32 whatever the
model's dtype, and each batched intervention is compared with a clean row that
went through the same path, so effects on a bfloat16 copy of a model match the
float32 model's within bfloat16 noise; loading says what dtype it chose."""

from __future__ import annotations

import warnings

import pytest
import torch

import nbinterp as ni
from nbinterp.engine.plan import Metric
from nbinterp.interventions import batch

IOI = "When Mary and John went to the store , John gave a drink to"
BF16_EPS = torch.finfo(torch.bfloat16).eps  # 2**-7: one bf16 rounding of a value of size 1


@pytest.fixture(scope="module")
def models():
    return ni.load(), ni.load(dtype=torch.bfloat16)


def test_bfloat16_loads_when_asked_and_says_so(models):
    float_model, bf16_model = models
    assert next(bf16_model.hf.parameters()).dtype == torch.bfloat16
    assert "bfloat16 on cpu" in repr(bf16_model) and "float32 on cpu" in repr(float_model)


def test_effects_on_a_bfloat16_copy_match_float32_within_bfloat16_noise(models):
    float_model, bf16_model = models
    ids = float_model.tokenize(IOI)
    metric = Metric.of(float_model, "Mary", "John", -1, ids.shape[1])
    card = ni.bundled_card()
    mover = tuple(card["circuits"]["name_mover_heads"][0])
    # the name mover's edges to the indirect object and the subject, and a previous-token edge
    edges = [(*mover, ids.shape[1] - 1, 2), (*mover, ids.shape[1] - 1, 4), (0, 2, 5, 4)]
    heads = [(l, h) for l in range(float_model.n_layers) for h in range(float_model.n_heads)]
    clean = abs(batch.clean_metric(float_model, ids, metric))
    for measure, items in ((batch.knockout_effects, edges), (batch.ablation_effects, heads)):
        exact = measure(float_model, ids, items, metric)
        approx = measure(bf16_model, ids, items, metric)
        # a bf16 forward perturbs every activation by ~eps relatively: a metric of
        # size ~scale moves by a few eps x scale (measured: 0.41 on head effects up
        # to 18, i.e. ~3 eps x the largest logit difference, 32.8)
        scale = max(clean, float(exact.abs().max()), 1.0)
        tolerance = 4 * BF16_EPS * scale
        assert (approx - exact).abs().max() <= tolerance, (measure.__name__, approx, exact, tolerance)
        # the effects are not all tiny: the comparison could fail
        assert float(exact.abs().max()) > 10 * tolerance


def test_a_knockout_row_without_edges_equals_its_clean_row_in_bfloat16(models):
    """The clean reference of a batch goes through the same float32 recompute as
    the knocked-out rows: removing an edge that holds no attention (a future key
    is masked anyway, so use a real edge of ~zero probability) changes nothing."""
    _, bf16_model = models
    ids = bf16_model.tokenize(IOI)
    metric = Metric.of(bf16_model, "Mary", "John", -1, ids.shape[1])
    run = bf16_model.run(IOI, capture=["qkv"])
    probabilities = run.attention(1)
    head, query = 0, ids.shape[1] - 1
    key = int(probabilities[head, query, :query].argmin())  # the least attended key of the last query
    assert float(probabilities[head, query, key]) < 1e-6
    effect = batch.knockout_effects(bf16_model, ids, [(1, head, query, key)], metric)
    assert abs(float(effect[0])) <= 4 * BF16_EPS * float(probabilities[head, query, key]) * 100 + 1e-6


def test_cpu_loads_float32_and_warns_when_the_checkpoint_is_not(tmp_path):
    import shutil
    import json

    from nbinterp.engine.loading import BUNDLED_DIR

    copy = tmp_path / "bf16-checkpoint"
    shutil.copytree(BUNDLED_DIR, copy, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    config = json.loads((copy / "config.json").read_text())
    config["dtype"] = "bfloat16"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="stored in bfloat16; loading it in float32"):
        model = ni.load(str(copy), device="cpu")
    assert next(model.hf.parameters()).dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = ni.load(str(copy), dtype="bfloat16")
    assert next(kept.hf.parameters()).dtype == torch.bfloat16
    with pytest.raises(ni.NbinterpError, match="not a torch dtype"):
        ni.load(dtype="float33")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_runs_match_the_cpu():
    cpu = ni.load()
    gpu = ni.load(device="cuda")
    ids = cpu.tokenize(IOI)
    metric = Metric.of(cpu, "Mary", "John", -1, ids.shape[1])
    heads = [(l, h) for l in range(cpu.n_layers) for h in range(cpu.n_heads)]
    torch.testing.assert_close(batch.ablation_effects(gpu, ids, heads, metric),
                               batch.ablation_effects(cpu, ids, heads, metric), atol=1e-3, rtol=1e-3)
    att = ni.attribute(gpu, IOI, target="Mary", foil="John", exact_budget=0)
    expected = ni.attribute(cpu, IOI, target="Mary", foil="John", exact_budget=0)
    torch.testing.assert_close(att.heads.cpu(), expected.heads, atol=1e-3, rtol=1e-3)
