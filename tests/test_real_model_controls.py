"""Honest controls on the real model (SmolLM2-135M-Instruct, which has a
massive activation at position 0: residual norm ~22,000 at L12 against a
median ~140). A planted direction with a known ~2-logit effect, checked by a
plain torch hook, must come out "used"; a direction with ~0 effect must not.
The isotropic every-position control the usage test used to have is
measured too, to show it would have called the 2-logit direction unused."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import nbinterp as ni
from nbinterp.engine.real_models import SMOLLM2
from nbinterp.representations.probe_usage import random_directions, usage_test
from nbinterp.representations.probes import ProbeResult, probe_layers


pytestmark = pytest.mark.skipif(SMOLLM2.missing() is not None, reason=f"the real model is not installed: {SMOLLM2.install_commands()}")

PLACES = ["store", "park", "shop", "market", "beach", "library"]
PROMPTS = [f"When Mary and John went to the {place}, John gave a {thing} to"
           for place, thing in zip(PLACES, ["drink", "book", "gift", "ball", "towel", "pen"])]
LAYER = 12
METRIC = (" Mary", " John")


@dataclasses.dataclass
class Planted(ProbeResult):
    """A probe result whose direction at every layer is the planted one (what the usage test reads)."""

    planted: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(0))

    def direction(self, layer, label=None):
        return self.planted


@pytest.fixture(scope="module")
def model():
    return ni.load("smollm2")


@pytest.fixture(scope="module")
def probe(model):
    return probe_layers(model, PROMPTS, ["A", "B"] * 3, test_fraction=0.5)


def metric_gradient(model) -> torch.Tensor:
    """d metric / d (stream entering block LAYER) at the last token, mean over the prompts (plain HF)."""
    target, foil = (model.token_id(t) for t in METRIC)
    grads = []
    for prompt in PROMPTS:
        saved = {}

        def keep(_module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            x.retain_grad()
            saved["x"] = x

        handle = model.hf.model.layers[LAYER].register_forward_pre_hook(keep, with_kwargs=True)
        try:
            logits = model.hf(model.tokenize(prompt)).logits[0, -1]
            (logits[target] - logits[foil]).backward()
        finally:
            handle.remove()
            model.hf.zero_grad(set_to_none=True)
        grads.append(saved["x"].grad[0, -1].detach())
    return torch.stack(grads).mean(0)


def hooked_metrics(model, direction: torch.Tensor | None, skip_first: bool = False) -> torch.Tensor:
    """The metric per prompt with `direction` projected out of the stream entering
    block LAYER at every position (or every position but 0), by a plain pre-hook
    (None: no hook, the clean metric)."""
    target, foil = (model.token_id(t) for t in METRIC)
    if direction is None:
        with torch.no_grad():
            rows = [model.hf(model.tokenize(p)).logits[0, -1] for p in PROMPTS]
        return torch.tensor([float(r[target] - r[foil]) for r in rows], dtype=torch.float64)
    u = direction / direction.norm()

    def remove(_module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        edited = x - (x @ u)[..., None] * u
        if skip_first:
            edited = torch.cat([x[:, :1], edited[:, 1:]], 1)
        if args:
            return (edited,) + args[1:], kwargs
        return args, {**kwargs, "hidden_states": edited}

    handle = model.hf.model.layers[LAYER].register_forward_pre_hook(remove, with_kwargs=True)
    try:
        with torch.no_grad():
            rows = [model.hf(model.tokenize(p)).logits[0, -1] for p in PROMPTS]
    finally:
        handle.remove()
    return torch.tensor([float(r[target] - r[foil]) for r in rows], dtype=torch.float64)


def planted_usage(model, probe, direction):
    everything = torch.arange(len(PROMPTS))
    accuracy = probe.test_accuracy.clone()
    accuracy[LAYER] = 1.0  # "present" by construction: what is tested here is the usage half
    planted = Planted(**{f.name: getattr(probe, f.name) for f in dataclasses.fields(ProbeResult)},
                      planted=direction.float())
    planted = dataclasses.replace(planted, test_index=everything, test_accuracy=accuracy)
    return usage_test(model, planted, LAYER, METRIC, n_controls=5, probabilities=False)


def test_a_planted_two_logit_direction_is_used_and_a_null_one_is_not(model, probe):
    torch.manual_seed(0)
    gradient = metric_gradient(model)
    g = gradient / gradient.norm()
    r = random_directions(model.d_model, 1, seed=0)[0]
    r = r - (r @ g) * g
    r = r / r.norm()
    two_logit = math.cos(0.5) * g + math.sin(0.5) * r  # measured: ~1.9 logits when projected out
    clean = hooked_metrics(model, None)
    effect = (hooked_metrics(model, two_logit, skip_first=True) - clean).abs().mean()
    assert 1.5 < float(effect) < 2.5, float(effect)

    used = planted_usage(model, probe, two_logit)
    print(f"\nplanted 2-logit direction: {used.explanation}")
    assert used.sink_positions == {14: [0]} and "position 0" in used.explanation
    # the usage test's numbers are the plain hook's (position 0 left unedited)
    torch.testing.assert_close(used.clean, clean, atol=1e-3, rtol=0)
    assert float(used.mean_abs_change) == pytest.approx(float(effect), abs=1e-3)
    # each control removes as much of the stream as the planted direction
    assert used.control_rms == pytest.approx([used.probe_rms] * 5, rel=1e-4)
    assert used.verdict == "present and used"

    # the old control: isotropic directions projected out at every position, position 0 included
    old = torch.stack([(hooked_metrics(model, d, skip_first=False) - clean).abs().mean() for d in random_directions(model.d_model, 5, 0)])
    print(f"old control (isotropic, every position): {[round(float(x), 3) for x in old]}")
    assert float(effect) < used.thresholds.used_factor * float(old.max())  # it would have said "not used"

    # a direction the metric does not depend on to first order: ~0 effect, not used
    null = planted_usage(model, probe, r)
    print(f"null direction: {null.explanation}")
    assert null.mean_abs_change < 0.15
    assert null.verdict == "present, not used"
