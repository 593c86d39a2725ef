"""Forward passes per user action, counted on the model itself (a forward
pre-hook on the Hugging Face module), with remote=True semantics: requests go
through nnsight's remote serialisation (remote="local") and nothing is
captured unless asked. Each action must cost a small constant, the same for a
2-layer and a 4-layer model (so an 80-layer model on NDIF costs the same)."""

from __future__ import annotations

import contextlib

import pytest

import nbinterp as ni
from conftest import random_model
from nbinterp.analysis import patching_sweep
from nbinterp.analysis.attribution import compute_attribution
from nbinterp.analysis.logit_lens import compute_logit_lens
from nbinterp.interventions.batch import batch_rows

IOI = "When Mary and John went to the store , John gave a drink to"
IOI_CORRUPTED = "When Mary and John went to the store , Mary gave a drink to"
REFERENCES = ["Mary went to the store", "John gave a drink", "the store", "When John and Mary went"]


@pytest.fixture(scope="module", params=["bundled", "gpt2-2-layers"])
def remote_model(request, tokenizer):
    if request.param == "bundled":
        return ni.load(remote="local"), (IOI, IOI_CORRUPTED, " Mary", " John", REFERENCES)
    prompt = " ".join(f"w{i}" for i in (5, 17, 3, 42, 9, 5, 17, 3, 28, 11))
    corrupted = " ".join(f"w{i}" for i in (6, 17, 3, 42, 9, 5, 17, 3, 28, 11))
    refs = ["w1 w2 w3", "w4 w5 w6 w7", "w8", "w9 w10"]
    return ni.load(random_model("gpt2"), tokenizer=tokenizer, remote="local"), (prompt, corrupted, "w5", "w9", refs)


@contextlib.contextmanager
def count_forwards(model):
    calls = []
    handle = model.hf.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def test_a_run_is_one_forward(remote_model):
    model, (prompt, _, target, foil, _) = remote_model
    with count_forwards(model) as calls:
        run = model.run(prompt)
        run.top_tokens(5), run.logit_diff(target, foil)
    assert len(calls) == 1


def test_interventions_are_one_forward_and_mean_ablation_two(remote_model):
    model, (prompt, corrupted, target, foil, references) = remote_model
    with count_forwards(model) as calls:
        model.run(prompt, ablate={(1, 0): 0.0, "L0.mlp": 0.5}, knockout=[(1, 1, 5, 2)])
    assert len(calls) == 1
    with count_forwards(model) as calls:
        model.run(prompt, ablate={(1, 0): 0.0}, ablation="mean", reference=references)
    assert len(calls) == 2  # every reference prompt in one padded forward, then the run


def test_reading_every_layer_costs_one_more_forward(remote_model):
    """The attention view's data: probabilities and value-weighted norms of every layer."""
    from nbinterp.widgets.attention import layer_values

    model, (prompt, *_) = remote_model
    with count_forwards(model) as calls:
        run = model.run(prompt, capture=["qkv"])  # what ni.attention asks for
        for layer in range(model.n_layers):
            layer_values(run, layer, "probabilities")
    assert len(calls) == 1
    with count_forwards(model) as calls:
        for layer in range(model.n_layers):
            layer_values(run, layer, "value_weighted")
    assert len(calls) == 1  # W_O of every layer
    with count_forwards(model) as calls:
        fresh = model.run(prompt)
        for layer in range(model.n_layers):
            fresh.head_outputs(layer)
    assert len(calls) == 2  # the run, then z and W_O of every layer together


def test_attribution_estimate_is_one_forward_and_backward(remote_model):
    model, (prompt, _, target, foil, _) = remote_model
    with count_forwards(model) as calls:
        att = compute_attribution(model, prompt, target, foil, exact_budget=0)
        att.edges, att.heads
    assert len(calls) == 1


def test_hybrid_attribution_is_one_forward_plus_its_knockout_batches(remote_model):
    model, (prompt, _, target, foil, _) = remote_model
    n_tokens = len(model.tokenize(prompt)[0])
    with count_forwards(model) as calls:
        att = compute_attribution(model, prompt, target, foil)
    rows = batch_rows(model, n_tokens) - 1  # one row of each batch is the clean reference
    n_heads = model.n_layers * model.n_heads
    # every head, then the edges, packed into the same forwards
    assert att.head_measured.all() and att.measurement.total == n_heads + len(att.measurement.edges)
    assert len(calls) == 1 + -(-att.measurement.total // rows)


def test_logit_lens_is_one_forward_of_the_prompt(remote_model):
    """One forward of the prompt (the first paint; every stream captured), then
    one-token traces that only reach the final norm and unembedding: the last
    position of every row, and the remaining rows chunk by chunk."""
    from nbinterp.analysis import logit_lens as lens_module

    model, (prompt, _, target, _, _) = remote_model
    lengths = []
    handle = model.hf.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append((args[0] if args else kwargs["input_ids"]).shape[-1]), with_kwargs=True)
    try:
        lens, rest = lens_module.first_paint(model, prompt, target=target)
        first = list(lengths)
        rest.rows_per_chunk = 2
        rest.run()
    finally:
        handle.remove()
    n_tokens = len(lens.tokens)
    assert first == [n_tokens, 1]
    assert lengths == [n_tokens, 1] + [1] * -(-model.n_layers // 2)


def test_a_patching_batch_is_one_forward(remote_model):
    model, (prompt, corrupted, target, foil, _) = remote_model
    with count_forwards(model) as calls:
        sweep = patching_sweep.sweep(model, prompt, corrupted, target, foil, batch_size=8)
    assert len(calls) == 2  # the clean run (with what patching reads, every layer) and the corrupted one
    cells = iter(sweep)
    with count_forwards(model) as calls:
        for _ in range(8):
            next(cells)
    assert len(calls) == 1


def test_qk_decomposition_reads_everything_in_one_more_forward(remote_model, tokenizer):
    """The decomposition's inputs (embeddings, norm and projection weights, rotary
    tables, earlier heads and MLPs) are captures of the trace: remote-compatible,
    and the same numbers as a local model's."""
    from nbinterp.analysis.qk import qk

    model, (prompt, *_) = remote_model
    layer = model.n_layers - 1
    with count_forwards(model) as calls:
        remote = qk(model, prompt, layer, 0, 6, 2)
    assert len(calls) == 2  # the run, then everything the decomposition reads
    local = ni.load(model.hf, tokenizer=model.tokenizer)
    expected = qk(local, prompt, layer, 0, 6, 2)
    assert remote.query_labels == expected.query_labels
    scale = float(expected.contributions.abs().max())
    assert (remote.contributions - expected.contributions).abs().max() <= 1e-6 * max(scale, 1.0)


def test_why_not_is_a_constant_plus_its_ablation_batches(remote_model):
    """The run, the head ablations (batched), every MLP ablation (one forward), one
    forward + backward for the estimates and the lens trajectory; with references,
    one run per reference, the restore batches, and one forward per restore(k)."""
    from nbinterp.analysis.why_not import compute_why_not

    model, (prompt, corrupted, target, foil, _) = remote_model
    rows = batch_rows(model, len(model.tokenize(prompt)[0])) - 1
    head_batches = -(-model.n_layers * model.n_heads // rows)
    with count_forwards(model) as calls:
        compute_why_not(model, prompt, foil)
    assert len(calls) == 3 + head_batches
    if model.n_layers != 4:
        return  # references must make the model say the expected token: the bundled model's IOI pair
    with count_forwards(model) as calls:
        result = compute_why_not(model, prompt, foil, references=[corrupted])
    patch_batches = -(-model.n_layers * (model.n_heads + 1) // rows)
    assert len(calls) == 3 + head_batches + 1 + patch_batches
    with count_forwards(model) as calls:
        result.restore(3)
    assert len(calls) == 1


def test_context_use_is_two_forwards(remote_model):
    from nbinterp.analysis.context_use import compute_context_use

    model, (prompt, *_) = remote_model
    words = prompt.split()
    with count_forwards(model) as calls:
        compute_context_use(model, prompt, " ".join(words[1:4]))
    assert len(calls) == 2  # the run with q/k/v, then every edge into the context knocked out


def test_attribution_verify_is_one_batch_and_qk_one_forward(remote_model):
    model, (prompt, _, target, foil, _) = remote_model
    att = compute_attribution(model, prompt, target, foil)
    with count_forwards(model) as calls:
        att.verify(k=20)
    assert len(calls) == 1
    with count_forwards(model) as calls:
        att.verify_heads(k=5)
    assert len(calls) == 0  # the hybrid already measured every head
    with count_forwards(model) as calls:
        att.qk(model.n_layers - 1, 0, 6, 2)
    assert len(calls) == 1  # the gradient run holds the rest; the decomposition's inputs in one more


def test_features_and_their_direct_effects_are_one_forward_each(remote_model):
    from nbinterp.representations.activations import FeatureActivations

    model, (prompt, _, target, foil, references) = remote_model
    with count_forwards(model) as calls:
        acts = FeatureActivations(model, prompt, layer=1, target=target, foil=foil)
    assert len(calls) == 1
    for action in (lambda: acts.direct_logit_effect(7), lambda: acts.source.direction(7), lambda: acts.steer({7: 4.0})):
        with count_forwards(model) as calls:
            action()
        assert len(calls) == 1  # the weights are read in a one-token trace
    with count_forwards(model) as calls:
        contexts = acts.top_contexts(7, corpus=references)
    assert len(calls) == 1 + bool(contexts)  # the small corpus in one batch, the top windows in one
    with count_forwards(model) as calls:
        contexts = acts.top_contexts(8, corpus=references)
    assert len(calls) == bool(contexts)  # the pass is kept: only the windows


def test_sae_features_reconstruction_is_two_forwards(remote_model):
    from nbinterp.representations.activations import FeatureActivations
    from nbinterp.representations.sae import bundled_sae

    model, (prompt, _, target, foil, _) = remote_model
    if model.n_layers != 4:
        pytest.skip("the bundled SAE reads the bundled model")
    acts = FeatureActivations(model, prompt, sae=bundled_sae(), target=target, foil=foil)
    with count_forwards(model) as calls:
        acts.reconstruction_error(per_token=True)
    assert len(calls) == 2  # the reconstruction everywhere, then every token alone in one batch


def test_probe_is_one_forward_and_its_usage_test_one_per_prompt_length(remote_model):
    from nbinterp.bundled import tasks
    from nbinterp.representations.probe_usage import usage_test
    from nbinterp.representations.probes import probe_layers

    model, _ = remote_model
    if model.n_layers != 4:
        pytest.skip("the probe task is the bundled model's planted bias")
    examples = tasks.examples("bias", 40, split="test", seed=1)
    with count_forwards(model) as calls:
        result = probe_layers(model, [e.prompt for e in examples], [e.meta["group"] for e in examples])
    assert len(calls) == 1
    lengths = {len(result.token_ids[int(i)]) for i in result.test_index}
    with count_forwards(model) as calls:
        usage_test(model, result, result.best_layer, ("doctor", "nurse"), n_controls=2, probabilities=False)
    # one capture of the stream (sinks, the controls' matching), then clean, probe direction
    # and controls share each length's forward
    assert len(calls) == 1 + len(lengths)


def test_an_ablation_panel_move_is_one_forward(remote_model):
    from nbinterp.interventions.ablation import ablated_run

    model, (prompt, *_) = remote_model
    with count_forwards(model) as calls:
        ablated_run(model, prompt, {"L1.H0": 0.0, "L0.mlp": 0.5})
    assert len(calls) == 1
