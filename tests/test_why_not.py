"""why_not on the bundled model's planted failures, every number checked against
plain interventions (`model.run(ablate=...)`, `model.run(patch_from=..., patch=...)`,
the in-trace logit lens), and the planted claim: on context-override failures the
heads that carry the context answer are missing, and restoring 5 recovers the gap."""

from __future__ import annotations

import statistics

import pytest
import torch

import nbinterp as ni
from nbinterp.analysis.logit_lens import compute_logit_lens
from nbinterp.analysis.why_not import contrast, critical_layer, compute_why_not
from nbinterp.bundled import tasks
from nbinterp.errors import NbinterpError

FILLER = "the old tree near the road ."  # 7 tokens, as long as "the capital of X is Y ."
# float32 logits of the bundled model are O(10): interventions through two code paths
# (a batched plan vs one model.run) agree to float32 rounding of that scale.
ATOL = 2e-4 * 16


@pytest.fixture(scope="module")
def model():
    return ni.load()


def without_distractors(model, example) -> str:
    """The prompt with every context sentence except the key one replaced by filler of equal length."""
    key = f"the capital of {example.meta['country']} is {example.target} ."
    words = example.prompt.split()
    body = " ".join(words[2 : words.index("Question")])
    prompt = example.prompt
    for sentence in [s.strip() + " ." for s in body.split(" .") if s.strip()]:
        if sentence != key and sentence.startswith("the capital of"):
            prompt = contrast(prompt, sentence, FILLER, model=model)
    return prompt


def failures(model, variant: str, n: int, pool: int = 30):
    out = []
    for example in tasks.examples("context_override", pool, **tasks.CONTEXT_VARIANTS[variant]):
        if model.run(example.prompt).top_tokens(1)[0][0] != example.target:
            out.append(example)
        if len(out) == n:
            break
    return out


@pytest.fixture(scope="module")
def case(model):
    example = failures(model, "distractors_2", 1)[0]
    reference = without_distractors(model, example)
    return example, reference, compute_why_not(model, example.prompt, example.target, references=[reference])


def test_numbers_equal_plain_interventions(model, case):
    example, reference, wn = case
    clean = model.run(example.prompt)
    assert wn.actual == clean.top_tokens(1)[0][0] != example.target
    assert wn.metric == pytest.approx(clean.logit_diff(example.target, wn.actual), abs=ATOL)
    assert wn.metric < 0

    # inhibitors: every head's and MLP's exact zero-ablation effect
    assert len(wn.inhibitors) == model.n_layers * (model.n_heads + 1)
    effects = [i.effect for i in wn.inhibitors]
    assert effects == sorted(effects, reverse=True)
    checked = wn.inhibitors[:2] + [i for i in wn.inhibitors if i.component.kind == "mlp"][:2] + wn.inhibitors[-1:]
    for inhibitor in checked:
        ablated = model.run(example.prompt, ablate={inhibitor.component.name: 0.0})
        by_hand = ablated.logit_diff(example.target, wn.actual) - clean.logit_diff(example.target, wn.actual)
        assert inhibitor.effect == pytest.approx(by_hand, abs=ATOL), inhibitor.component.name
        assert (inhibitor.estimate is None) == (inhibitor.component.kind == "mlp")

    # missing: one-at-a-time restore shares against patching by hand
    ref_metric = model.run(reference).logit_diff(example.target, wn.actual)
    assert wn.reference_metrics[0] == pytest.approx(ref_metric, abs=ATOL)
    gap = ref_metric - wn.metric
    for missing in wn.missing[:3] + wn.missing[-1:]:
        patched = model.run(example.prompt, patch_from=reference, patch=[missing.component.patch_site(wn.position)])
        share = (patched.logit_diff(example.target, wn.actual) - wn.metric) / gap
        assert missing.restore_share == pytest.approx(share, abs=1e-3), missing.component.name
    # attention to the relevant span (the expected token's positions) by hand
    run, ref_run = model.run(example.prompt, capture=["qkv"]), model.run(reference, capture=["qkv"])
    ids = run.token_ids
    assert wn.span == [i for i, t in enumerate(ids[:-1]) if t == model.token_id(example.target)] and wn.span
    head = next(m for m in wn.missing if m.component.kind == "head")
    l, h = head.component.layer, head.component.head
    assert head.attention_here == pytest.approx(float(run.attention(l)[h, -1, wn.span].sum()), abs=1e-5)
    assert head.attention_reference == pytest.approx(float(ref_run.attention(l)[h, -1, wn.span].sum()), abs=1e-5)

    # restore(k): singles and together against patching by hand
    restore = wn.restore(k=5)
    assert [c.name for c in restore.components] == [m.component.name for m in wn.missing[:5]]
    sites = [c.patch_site(wn.position) for c in restore.components]
    together = model.run(example.prompt, patch_from=reference, patch=sites).logit_diff(example.target, wn.actual)
    assert restore.together_metrics[0] == pytest.approx(together, abs=ATOL)
    assert restore.together_share == pytest.approx((together - wn.metric) / gap, abs=1e-3)
    for site, share in zip(sites[:2], restore.single_shares[:2]):
        one = model.run(example.prompt, patch_from=reference, patch=[site]).logit_diff(example.target, wn.actual)
        assert share == pytest.approx((one - wn.metric) / gap, abs=1e-3)
    assert restore.labels == ["restores nothing" if abs(s) < 0.05 else "restores" for s in restore.single_shares]


def test_trajectory_equals_the_logit_lens(model, case):
    example, _, wn = case
    expected_lens = compute_logit_lens(model, example.prompt, target=example.target)
    actual_lens = compute_logit_lens(model, example.prompt, target=wn.actual)
    t = wn.trajectory
    assert t.row_labels == expected_lens.row_labels
    torch.testing.assert_close(t.expected_probability, expected_lens.target_probabilities[:, -1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(t.actual_probability, actual_lens.target_probabilities[:, -1], atol=1e-5, rtol=1e-4)
    # rank 0 exactly where the lens's top token is that token
    top = expected_lens.top_token_ids[:, -1]
    assert ((t.actual_rank == 0) == (top == model.token_id(wn.actual))).all()
    assert ((t.expected_rank == 0) == (top == model.token_id(example.target))).all()
    assert t.actual_rank[-1] == 0 and t.expected_rank[-1] > 0
    ahead = (t.actual_rank < t.expected_rank).tolist()
    assert all(ahead[t.critical_layer + 1 :]) and (t.critical_layer == -1 or not ahead[t.critical_layer])


def test_critical_layer_reference_cases():
    rank = torch.tensor
    assert critical_layer(rank([5, 5, 0, 3]), rank([0, 1, 1, 0])) == 2  # actual ahead from the stream after L2
    assert critical_layer(rank([5, 5, 5]), rank([0, 0, 0])) == -1  # ahead already in the embeddings
    assert critical_layer(rank([5, 0]), rank([0, 1])) is None  # expected ends on top


def test_context_failures_miss_the_context_movers_and_restore(model):
    """The planted claim, on context-override failures (distractors, conflicts, a long gap)."""
    movers = {f"L{l}.H{h}" for l, h in ni.bundled_card()["circuits"]["context_mover_heads"]}
    cases = failures(model, "distractors_2", 4) + failures(model, "conflict_memory", 4) + failures(model, "long_gap", 4)
    named, shares = 0, []
    for example in cases:
        reference = without_distractors(model, example)
        wn = compute_why_not(model, example.prompt, example.target, references=[reference])
        top5 = [m.component.name for m in wn.missing[:5]]
        named += bool(movers & set(top5))
        shares.append(wn.restore(k=5).together_share)
    shares.sort()
    q = statistics.quantiles(shares, n=4)
    print(f"\nrestore(5) share on {len(shares)} context failures: median {statistics.median(shares):.3f}, "
          f"quartiles {q[0]:.3f} .. {q[2]:.3f}, min {shares[0]:.3f}; context movers in the top 5: {named}/{len(cases)}")
    assert len(cases) == 12
    assert named == len(cases)
    assert sum(s >= 0.5 for s in shares) >= 0.75 * len(shares)
    assert statistics.median(shares) >= 0.5


def test_bias_names_the_components_that_read_the_group(model):
    example = tasks.examples("bias", 1, group="B")[0]
    reference = contrast(example.prompt, example.meta["clan"], tasks.GROUP_CLANS["A"][0], model=model)
    wn = compute_why_not(model, example.prompt, "doctor", references=[reference])
    clan_position = model.tokenize(example.prompt)[0].tolist().index(model.token_id(example.meta["clan"]))
    assert wn.actual == "nurse" and wn.span == [clan_position]
    top = wn.missing[:3]
    # a head among the top 3 attends from the answer to the clan (the group marker)
    assert any(m.attention_reference is not None and max(m.attention_reference, m.attention_here) > 0.5 for m in top)
    assert wn.restore(k=5).together_share >= 0.5


def test_clear_errors(model, case):
    example, reference, wn = case
    with pytest.raises(NbinterpError, match="tokens"):
        compute_why_not(model, example.prompt, example.target, references=["the capital of Veldora is"])
    with pytest.raises(NbinterpError, match="reference 0 answers"):
        compute_why_not(model, example.prompt, example.target, references=[example.prompt])
    with pytest.raises(NbinterpError, match="token length"):
        contrast(example.prompt, "Question :", "Question", model=model)
    with pytest.raises(NbinterpError, match="does not occur"):
        contrast(example.prompt, "no such words", "x")
    with pytest.raises(NbinterpError, match="restore needs references"):
        compute_why_not(model, example.prompt, example.target).restore()
    with pytest.raises(NbinterpError, match="positive integer"):
        wn.restore(k=0)
