"""context_use on the bundled model: Lookback ratios and the knockout against plain
runs, the verdict against planted ground truth (context followed or not), and the
detector's held-out AUROC with a bootstrap interval."""

from __future__ import annotations

import pytest
import torch

import nbinterp as ni
from nbinterp.analysis.context_use import (
    PARTLY_RATIO, ContextDetector, auroc, bootstrap_auroc, compute_context_use, lookback_ratios,
)
from nbinterp.analysis.why_not import contrast
from nbinterp.bundled import tasks
from nbinterp.errors import NbinterpError

FILLER = "the old tree near the road ."


@pytest.fixture(scope="module")
def model():
    return ni.load()


def context_of(prompt: str) -> str:
    return prompt[prompt.index("Context :") + len("Context : ") : prompt.index(" Question")]


def test_ratio_and_knockout_equal_plain_runs(model):
    example = tasks.examples("context_override", 1, **tasks.CONTEXT_VARIANTS["plain"])[0]
    cu = compute_context_use(model, example.prompt, context_of(example.prompt))
    ids = model.tokenize(example.prompt)[0].tolist()
    start, end = cu.context
    assert ids[start:end] == model.tokenizer(context_of(example.prompt), add_special_tokens=False).input_ids
    run = model.run(example.prompt, capture=["qkv"])
    T = len(run)
    for layer in range(model.n_layers):
        a = run.attention(layer)[:, -1, :]
        inside = a[:, start:end].sum(-1) / (end - start)
        rest = (1 - a[:, start:end].sum(-1)) / (T - (end - start))
        torch.testing.assert_close(cu.ratio[layer], inside / (inside + rest), atol=1e-5, rtol=0)
        torch.testing.assert_close(cu.attention[layer], a, atol=1e-6, rtol=0)
    torch.testing.assert_close(lookback_ratios(model, example.prompt, (start, end)), cu.ratio)
    edges = [(l, h, q, k) for l in range(model.n_layers) for h in range(model.n_heads)
             for q in range(end, T) for k in range(start, end)]
    knocked = model.run(example.prompt, knockout=edges)
    k = cu.knockout
    assert k.n_edges == len(edges)
    assert k.answer_before == run.top_tokens(1)[0][0] == example.target
    assert k.answer_after == knocked.top_tokens(1)[0][0]
    assert k.probability_after == pytest.approx(float(knocked.probabilities()[model.token_id(example.target)]), abs=1e-5)
    assert k.metric_after == pytest.approx(knocked.logit_diff(k.answer_before, k.rival), abs=1e-3)
    # the planted context answer came through the context: without it, it is gone
    assert cu.verdict == "used" and k.answer_after != example.target
    assert "changes" in cu.reason and f"{k.probability_before:.3f}" in cu.reason


def test_verdict_agrees_with_planted_ground_truth(model):
    """Followed: plain prompts answered from the context. Not followed: the same prompts
    with the key sentence swapped for filler (answered from memory)."""
    agree = total = 0
    for example in tasks.examples("context_override", 14, seed=3, **tasks.CONTEXT_VARIANTS["plain"]):
        key = f"the capital of {example.meta['country']} is {example.target} ."
        no_key = contrast(example.prompt, key, FILLER, model=model)
        for prompt, followed in ((example.prompt, True), (no_key, False)):
            cu = compute_context_use(model, prompt, context_of(prompt))
            truth = cu.knockout.answer_before == example.target if followed else \
                cu.knockout.answer_before == example.meta["memory_answer"]
            if not truth:
                continue  # the model did not behave as planted on this prompt
            total += 1
            agree += (cu.verdict == "used") == followed
    print(f"\nknockout verdict agrees with the planted ground truth on {agree}/{total} (of 28 prompts)")
    assert total >= 12 and agree / total >= 0.8  # measured 14/16


def test_detector_auroc_on_held_out_prompts(model):
    variants = ["plain", "distractors_2", "long_gap", "conflict_memory"]

    def dataset(seed: int):
        ratios, labels = [], []
        for variant in variants:
            for example in tasks.examples("context_override", 8, seed=seed, **tasks.CONTEXT_VARIANTS[variant]):
                ratios.append(lookback_ratios(model, example.prompt, context_of(example.prompt)))
                labels.append(int(model.run(example.prompt).top_tokens(1)[0][0] == example.target))
        return torch.stack(ratios), labels

    train_x, train_y = dataset(seed=11)
    test_x, test_y = dataset(seed=12)
    detector = ContextDetector.fit(train_x, train_y)
    scores = detector.score(test_x).tolist()
    value, low, high = bootstrap_auroc(scores, test_y, n=500)
    print(f"\ncontext detector: held-out AUROC {value:.3f} (95% bootstrap {low:.3f} .. {high:.3f}), "
          f"n={len(test_y)} ({sum(test_y)} followed), trained on {len(train_y)}")
    assert low > 0.5
    # reusable through context_use
    example = tasks.examples("context_override", 1, seed=12, **tasks.CONTEXT_VARIANTS["plain"])[0]
    cu = compute_context_use(model, example.prompt, context_of(example.prompt), detector=detector)
    assert cu.score == pytest.approx(float(detector.score(cu.ratio[None])[0]))


def test_auroc_reference_values():
    # shares of correctly ordered pairs (counts over counts), with a float tolerance all the same
    assert auroc([0.9, 0.8, 0.1], [1, 1, 0]) == pytest.approx(1.0, abs=1e-12)
    assert auroc([0.1, 0.2, 0.9], [1, 1, 0]) == pytest.approx(0.0, abs=1e-12)
    assert auroc([0.5, 0.5], [1, 0]) == pytest.approx(0.5, abs=1e-12)
    assert auroc([0.3, 0.6, 0.4, 0.7], [0, 1, 1, 0]) == pytest.approx(0.5)
    value, low, high = bootstrap_auroc([0.9, 0.8, 0.7, 0.2, 0.1, 0.3], [1, 1, 1, 0, 0, 0], n=200)
    assert (value, low, high) == pytest.approx((1.0, 1.0, 1.0), abs=1e-12)


def test_clear_errors(model):
    prompt = "Context : the capital of Veldora is Brinn . Question : the capital of Veldora is"
    with pytest.raises(NbinterpError, match="does not occur"):
        compute_context_use(model, prompt, "the capital of Galdor is Brinn")
    with pytest.raises(NbinterpError, match="start < end"):
        compute_context_use(model, prompt, (5, 3))
    with pytest.raises(NbinterpError, match="before the answer"):
        compute_context_use(model, prompt, (3, len(prompt.split()) + 1))
    with pytest.raises(NbinterpError, match="both labels"):
        ContextDetector.fit(torch.rand(3, 4, 4), [1, 1, 1])
    assert 0 < PARTLY_RATIO < 1
