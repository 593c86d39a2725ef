"""Attribution and the QK decomposition on the bundled model's planted tasks,
against exhaustive exact knockout of every edge (the reference).

Targets from issue 5: recall@10 >= 0.9 on induction, IOI (name mover) and
context-override prompts (met by the default "hybrid"; the QK-fix estimate
alone is tracked as a strict xfail); the fix measurably better than the linear
estimate on saturated attention; the induction head's top edge explained by
the previous-token head on the key side."""

from __future__ import annotations

import pytest
import torch

import nbinterp as ni
from nbinterp.bundled import tasks
from nbinterp.analysis.attribution import compute_attribution
from nbinterp.engine.loading import BUNDLED_DIR

pytestmark = pytest.mark.skipif(
    not (BUNDLED_DIR / "card.json").is_file(), reason="the bundled model is not built yet (scripts/build_bundled_model.py)"
)

N_PROMPTS = 2
MAX_TOKENS = 20  # exhaustive knockout costs ~L*H*T^2/2 knockouts: keep prompts short
SATURATED = 0.9


def short_examples(task: str, **variant) -> list[tasks.TaskExample]:
    return tasks.short_examples(task, N_PROMPTS, MAX_TOKENS, **variant)


@pytest.fixture(scope="module")
def model():
    return ni.load()


@pytest.fixture(scope="module")
def card():
    return ni.bundled_card()


@pytest.fixture(scope="module")
def compared(model):
    """task -> [(attribution, exact), ...] on short held-out prompts."""
    out = {}
    for task, variant in (("induction", {}), ("ioi", {}), ("context_override", tasks.CONTEXT_VARIANTS["plain"])):
        rows = []
        for example in short_examples(task, **variant):
            att = compute_attribution(model, example.prompt, example.target, example.foil)
            rows.append((att, att.exhaustive_edges()))
        out[task] = rows
    return out


def test_recall_at_10_of_the_default_hybrid_against_every_edge(compared):
    """Issue 5's target, recall@10 >= 0.9 against exhaustive knockout, for what
    `ni.attribute` shows by default: QK-fix estimates, each row's dominant edges
    measured exactly."""
    for task, rows in compared.items():
        recalls = [att.compare(exact, k=10).recall_at_k for att, exact in rows]
        assert min(recalls) >= 0.9, f"{task}: recall@10 per prompt {recalls}"


# The QK-fix estimate alone misses the target on this model: its previous-token
# head's dominant edges act through saturated induction heads downstream (estimate
# -0.01, exact -24 on one edge), which no single-softmax correction sees. Strict
# xfail keeps the shortfall visible and fails the day it is met.
_MISSED = "QK-fix estimate alone: recall@10 per prompt {} (target 0.9); the default hybrid meets it"


@pytest.mark.parametrize("task", [
    pytest.param("induction", marks=pytest.mark.xfail(strict=True, reason=_MISSED.format("0.5, 0.8"))),
    pytest.param("ioi", marks=pytest.mark.xfail(strict=True, reason=_MISSED.format("0.7, 0.7"))),
    pytest.param("context_override", marks=pytest.mark.xfail(strict=True, reason=_MISSED.format("0.8, 0.8"))),
])
def test_recall_at_10_of_the_qk_fix_estimate_alone(compared, task):
    recalls = [att.compare(exact, k=10, method="qk_fix").recall_at_k for att, exact in compared[task]]
    assert min(recalls) >= 0.9, f"recall@10 per prompt {recalls}"


def test_the_fix_beats_linear_where_attention_saturates(compared):
    """On edges holding > 0.9 of their row, the QK fix's error is smaller than the
    linear estimate's, by more than twice the standard error of the paired difference."""
    errors = {"linear": [], "qk_fix": []}
    for rows in compared.values():
        for att, exact in rows:
            probs = torch.stack([att.run.attention(l) for l in range(att.model.n_layers)]).double()
            saturated = ~exact.effects.isnan() & (probs > SATURATED) & (exact.effects != 0)
            for method in errors:
                errors[method].append((att.dense_edge_effects(method) - exact.effects)[saturated].abs())
    linear, fixed = torch.cat(errors["linear"]), torch.cat(errors["qk_fix"])
    assert linear.numel() >= 20, "too few saturated edges to compare"
    gain = linear - fixed
    stderr = gain.std() / gain.numel() ** 0.5
    assert gain.mean() > 2 * stderr, (
        f"MAE on {linear.numel()} saturated edges: linear {linear.mean():.4f}, qk_fix {fixed.mean():.4f}, "
        f"paired gain {gain.mean():.4f} +- {stderr:.4f}")


def test_the_induction_heads_top_edge_reads_the_previous_token_head(model, card):
    layer, head = card["circuits"]["induction_head"]
    previous = tuple(card["circuits"]["previous_token_head"])
    assert previous[0] < layer
    for example in short_examples("induction"):
        att = compute_attribution(model, example.prompt, example.target)
        edge = att.top_edges(1, layer=layer, head=head)[0]
        cell = att.qk(layer, head, edge.query, edge.key)
        assert abs(cell.remainder) < 1e-4 * max(1.0, abs(cell.score))
        head_parts = {k: v for k, v in cell.by_key_component().items() if ".H" in k}
        strongest = max(head_parts, key=lambda k: abs(head_parts[k]))
        assert strongest == f"L{previous[0]}.H{previous[1]}", sorted(head_parts.items(), key=lambda kv: -abs(kv[1]))[:3]
        # the induction head attends to the token after the earlier copy of the current token
        tokens = att.run.tokens
        assert tokens[edge.key - 1] == tokens[edge.query], (edge, tokens)
