"""Linear probes and their usage test on the bundled model, against
independent references: activations from a plain HF forward
(output_hidden_states, a hook on the final norm), the same objective solved
by Newton's method, a closed-form least-squares classifier, and the
projection done by a plain torch pre-hook."""

from __future__ import annotations

import pytest
import torch

import nbinterp as ni
from nbinterp.bundled import tasks
from nbinterp.errors import NbinterpError
from nbinterp.representations.probe_usage import (
    matched_directions, random_directions, rms_projection, sink_positions, usage_test,
)
from nbinterp.representations.probes import probe_layers
from reference_hooks import blocks

METRIC = ("doctor", "nurse")


@pytest.fixture(scope="module")
def model():
    return ni.load()


@pytest.fixture(scope="module")
def bias_examples():
    """Every distinct bias prompt of both groups (test and train given names)."""
    drawn = tasks.examples("bias", 300, split="test", seed=1) + tasks.examples("bias", 300, split="train", seed=1)
    unique: dict[str, tasks.TaskExample] = {}
    for example in drawn:
        unique.setdefault(example.prompt, example)
    return list(unique.values())


@pytest.fixture(scope="module")
def group_probe(model, bias_examples):
    return probe_layers(model, [e.prompt for e in bias_examples], [e.meta["group"] for e in bias_examples])


@pytest.fixture(scope="module")
def name_probe(model, bias_examples):
    """A control attribute: is the given name from the first or second half of BIAS_GIVEN_NAMES?"""
    labels = ["first half" if tasks.BIAS_GIVEN_NAMES.index(e.meta["given"]) < 15 else "second half" for e in bias_examples]
    return probe_layers(model, [e.prompt for e in bias_examples], labels)


def test_the_group_is_decodable_and_removing_its_direction_shrinks_the_skew(model, group_probe):
    assert group_probe.classes == ["A", "B"]
    assert float(group_probe.test_accuracy.max()) >= 0.95  # measured 1.00 at L3 and final
    assert float(group_probe.test_accuracy[0]) < 0.7  # L0 at the last token holds only "a" and its position
    layer = group_probe.best_layer
    usage = usage_test(model, group_probe, layer, METRIC, n_controls=3)
    p_before, p_after = usage.probability_before, usage.probability_after
    print(f"\ngroup probe at {usage.stream}: held-out {usage.test_accuracy:.3f}; {usage.explanation}")
    print(f"P(doctor) A {p_before[0]:.3f} -> {p_after[0]:.3f}, B {p_before[1]:.3f} -> {p_after[1]:.3f}; "
          f"logit-diff gap B-A {usage.gap_before:.3f} -> {usage.gap_after:.3f}, random {usage.control_gap_after.tolist()}")
    assert usage.verdict == "present and used"
    assert p_before[0] - p_before[1] > 0.4  # the planted skew (measured 0.75 vs 0.16)
    # removing the direction shrinks the skew: the groups' P(doctor) move towards each other
    assert p_after[0] < p_before[0] and p_after[1] > p_before[1]
    assert p_after[0] - p_after[1] < 0.85 * (p_before[0] - p_before[1])
    assert abs(usage.gap_after) < 0.8 * abs(usage.gap_before)
    # random directions leave the gap where it was
    assert (usage.control_gap_after - usage.gap_before).abs().max() < 0.2
    assert usage.mean_abs_change > 3 * float(usage.control_mean_abs_change.max())


def test_a_decodable_attribute_the_output_ignores_is_present_not_used(model, name_probe):
    layer = 3
    assert float(name_probe.test_accuracy[layer]) >= 0.8  # measured 0.87
    usage = usage_test(model, name_probe, layer, METRIC, n_controls=3, probabilities=False)
    print(f"\nname-half probe at {usage.stream}: {usage.explanation}; gap {usage.gap_before:.3f} -> {usage.gap_after:.3f}")
    assert usage.verdict == "present, not used"
    assert usage.mean_abs_change < 0.05  # measured 0.009 (random directions ~0.05)
    assert abs(usage.gap_after - usage.gap_before) < 0.05
    best = usage_test(model, name_probe, None, METRIC, n_controls=3, probabilities=False)
    assert best.layer == name_probe.best_layer and best.verdict == "present, not used"


def hf_streams(model, prompts: list[str]) -> torch.Tensor:
    """[streams, prompts, d] at the last token, from a plain HF forward per prompt."""
    hf = model.hf
    final: list[torch.Tensor] = []
    handle = hf.transformer.ln_f.register_forward_pre_hook(lambda module, args: final.append(args[0][0, -1].clone()))
    rows = []
    try:
        with torch.no_grad():
            for prompt in prompts:
                ids = model.tokenizer(prompt, return_tensors="pt").input_ids
                hidden = hf(ids, output_hidden_states=True).hidden_states
                # hidden_states[l] enters block l; GPT-2's last one is after ln_f, so the hook reads the final stream
                rows.append(torch.stack([h[0, -1] for h in hidden[: model.n_layers]] + [final[-1]]))
    finally:
        handle.remove()
    return torch.stack(rows, 1)


def newton_logistic(z: torch.Tensor, y: torch.Tensor, l2: float, steps: int = 30) -> torch.Tensor:
    """argmin mean BCE + l2/2 |w|^2 (bias unpenalised) by Newton's method: [w, b]."""
    n, d = z.shape
    x = torch.cat([z, torch.ones(n, 1, dtype=z.dtype)], 1)
    theta = torch.zeros(d + 1, dtype=z.dtype)
    penalty = torch.full((d + 1,), l2, dtype=z.dtype)
    penalty[-1] = 0
    for _ in range(steps):
        p = torch.sigmoid(x @ theta)
        grad = x.T @ (p - y) / n + penalty * theta
        hessian = (x.T * (p * (1 - p))) @ x / n + torch.diag(penalty)
        theta = theta - torch.linalg.solve(hessian, grad)
    return theta


def test_probe_matches_an_independent_fit_on_plain_hf_activations(model, bias_examples, group_probe):
    prompts = [e.prompt for e in bias_examples]
    reference = hf_streams(model, prompts)
    scale = reference.abs().amax()
    assert torch.allclose(group_probe.streams, reference, atol=1e-5 * float(scale), rtol=0)  # float32 rounding
    y = (group_probe.y == 1).double()
    train, test = group_probe.train_index, group_probe.test_index
    for layer in range(model.n_layers + 1):
        x = reference[layer].double()
        mean, std = x[train].mean(0), x[train].std(0, correction=0)
        std = torch.where(std > 1e-6 * std.max(), std, torch.ones_like(std))
        theta = newton_logistic((x[train] - mean) / std, y[train], group_probe.l2)
        probe = group_probe.probes[layer]
        cosine = torch.nn.functional.cosine_similarity(theta[:-1], probe.weight[0], dim=0)
        assert cosine > 0.999, (layer, float(cosine))
        predicted = ((((x - mean) / std) @ theta[:-1] + theta[-1]) > 0).double()
        assert float((predicted[test] == y[test]).double().mean()) == pytest.approx(float(group_probe.test_accuracy[layer]), abs=1.5 / len(test))
        assert float((predicted[train] == y[train]).double().mean()) == pytest.approx(float(group_probe.train_accuracy[layer]), abs=1.5 / len(train))
    # and a different estimator (least squares on +-1 targets, closed form) finds the group too
    layer = group_probe.best_layer
    x = torch.cat([reference[layer].double(), torch.ones(len(prompts), 1, dtype=torch.float64)], 1)
    target = 2 * y - 1
    w = torch.linalg.solve(x[train].T @ x[train] + 1e-3 * torch.eye(x.shape[1], dtype=torch.float64), x[train].T @ target[train])
    assert float(((x[test] @ w > 0).double() == y[test]).double().mean()) >= 0.9


def test_projecting_out_equals_a_plain_torch_hook(model, group_probe):
    prompts = [group_probe.prompts[int(i)] for i in group_probe.test_index[:6]]
    for layer in (1, model.n_layers):  # a block's input and the final stream
        direction = group_probe.direction(layer)
        u = direction / direction.norm()
        module = model.hf.transformer.ln_f if layer == model.n_layers else blocks(model.hf)[layer]

        def remove(_module, args):
            x = args[0]
            return (x - (x @ u)[..., None] * u,) + args[1:]

        handle = module.register_forward_pre_hook(remove)
        try:
            with torch.no_grad():
                expected = []
                for prompt in prompts:
                    logits = model.hf(model.tokenizer(prompt, return_tensors="pt").input_ids).logits[0, -1]
                    expected.append(float(logits[model.token_id("doctor")] - logits[model.token_id("nurse")]))
        finally:
            handle.remove()
        site = ("resid_final", None) if layer == model.n_layers else ("resid_pre", layer)
        via_run = [model.run(p, project_out={site: direction}).logit_diff(*METRIC) for p in prompts]
        assert via_run == pytest.approx(expected, abs=1e-4)
        sub = probe_subset(group_probe, prompts)
        batched = usage_test(model, sub, layer, METRIC, n_controls=1, probabilities=False)
        assert batched.edited.tolist() == pytest.approx(expected, abs=1e-4)


def probe_subset(result, prompts):
    """The same probes with only `prompts` held out (a cheap usage test)."""
    import dataclasses

    keep = torch.tensor([result.prompts.index(p) for p in prompts])
    return dataclasses.replace(result, test_index=keep)


def test_random_control_directions_are_unit_seeded_and_differ():
    a, b = random_directions(16, 3, seed=0), random_directions(16, 3, seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(abs(float(x.norm()) - 1) < 1e-6 for x in a)
    assert abs(float(a[0] @ a[1])) < 0.9 and not torch.equal(random_directions(16, 1, seed=1)[0], a[0])


def test_controls_match_the_probe_direction_and_skip_massive_activations():
    """Controls remove as much of the stream as the probe direction (rms projection over
    the edited positions), orthogonal to it; a position ~160x the median norm is a sink."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(300, 32, generator=generator, dtype=torch.float64) * torch.linspace(0.05, 4, 32, dtype=torch.float64)
    rows[:, 5] += 30  # a large mean along one dimension, as real streams have
    for direction in (torch.randn(32, generator=generator), torch.eye(32)[2], torch.eye(32)[30]):
        u = direction.double() / direction.double().norm()
        target = float((rows @ u).pow(2).mean().sqrt())
        controls = matched_directions(rows, direction, 4, seed=1)
        assert all(abs(float(c.norm()) - 1) < 1e-5 for c in controls)
        assert [rms_projection(rows, c) for c in controls] == pytest.approx([target] * 4, rel=1e-5)
        assert max(abs(float(c.double() @ u)) for c in controls) < 1e-5
        assert all(torch.equal(a, b) for a, b in zip(controls, matched_directions(rows, direction, 4, seed=1)))
    stream = torch.randn(20, 32, generator=generator)
    stream[0, 7] = 3000.0
    assert sink_positions(stream) == [0]
    assert sink_positions(torch.randn(20, 32, generator=generator)) == []


def test_per_position_accuracy_and_multiclass(model, bias_examples):
    sample = bias_examples[:90]
    clans = [e.meta["clan"] for e in sample]
    result = probe_layers(model, [e.prompt for e in sample], [e.meta["group"] for e in sample], all_positions=True)
    shortest = min(len(model.tokenize(e.prompt)[0]) for e in sample)
    assert result.position_accuracy.shape == (model.n_layers + 1, shortest)
    assert result.position_offsets == list(range(-shortest, 0))
    assert result.position_tokens[-1] == "a"  # every bias prompt ends in "a"
    # the last column is the main probe (same data, same split, same objective)
    assert torch.allclose(result.position_accuracy[:, -1], result.test_accuracy)
    multi = probe_layers(model, [e.prompt for e in sample], clans)
    assert len(multi.classes) == 6 and multi.probes[0].weight.shape[0] == 6
    assert float(multi.test_accuracy.max()) > 2 / 6  # chance is about 1/6
    with pytest.raises(NbinterpError, match="pass label= one of"):
        multi.direction(3)
    assert abs(float(multi.direction(3, "Varn").norm()) - 1) < 1e-5


def test_bad_input_says_what_to_do(model):
    prompts = ["Tovan Varn works as a", "Ashvi Quel works as a", "Kalo Varn works as a", "Suvi Quel works as a"]
    with pytest.raises(NbinterpError, match="labels has 3 entries but there are 4 prompts"):
        probe_layers(model, prompts, ["A", "B", "A"])
    with pytest.raises(NbinterpError, match="every label is 'A': a probe needs at least two classes"):
        probe_layers(model, prompts, ["A"] * 4)
    with pytest.raises(NbinterpError, match="prompt 1 'Ashvi Zorblax works as a' can't be probed: .*'Zorblax'"):
        probe_layers(model, [prompts[0], "Ashvi Zorblax works as a", *prompts[2:]], ["A", "B", "A", "B"])
    with pytest.raises(NbinterpError, match="class 'C' has one prompt"):
        probe_layers(model, [*prompts, "Imra Dolm works as a"], ["A", "B", "A", "B", "C"])
    with pytest.raises(NbinterpError, match="position 9 is not in every prompt"):
        probe_layers(model, prompts, ["A", "B", "A", "B"], position=9)
    result = probe_layers(model, prompts, ["A", "B", "A", "B"], test_fraction=0.5)
    with pytest.raises(NbinterpError, match=r"probe layer 7 is out of range: probes sit on streams 0..4"):
        usage_test(model, result, 7, METRIC)
    with pytest.raises(NbinterpError, match="metric must be"):
        usage_test(model, result, 1, ["doctor"])
