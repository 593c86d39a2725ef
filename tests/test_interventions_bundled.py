"""On the bundled model's planted IOI circuit: activation patching finds the
name-moving heads its card documents among its top cells, ablating them
hurts the task, and the logit lens ends on the answer."""

from __future__ import annotations

import pytest

import nbinterp as ni
from nbinterp.bundled import tasks
from nbinterp.engine.loading import BUNDLED_DIR
from nbinterp.analysis.patching_sweep import sweep

pytestmark = pytest.mark.skipif(
    not (BUNDLED_DIR / "card.json").is_file() or not (BUNDLED_DIR / "model.safetensors").is_file(),
    reason="the bundled model has not been built yet (scripts/build_bundled_model.py)",
)


@pytest.fixture(scope="module")
def model():
    return ni.load()


@pytest.fixture(scope="module")
def name_movers():
    """The card's name-mover heads (tests/test_bundled_model.py checks them
    against the model with plain hooks)."""
    movers = [tuple(head) for head in ni.bundled_card()["circuits"]["name_mover_heads"]]
    assert movers, "the card documents no name mover"
    return movers


def ioi_pairs(n):
    """Clean IOI prompts and their corruption: the second mention is the other
    name, so the answer flips (same tokens, same length)."""
    card = ni.bundled_card()
    pairs = []
    for example in tasks.examples("ioi", n, seed=card["test_seed"]):
        io, s = example.target, example.foil
        head, _, tail = example.prompt.rpartition(f" {s} ")
        corrupted = f"{head} {io} {tail}"
        pairs.append((example.prompt, corrupted, io, s))
    return pairs


def test_patching_finds_the_name_mover_heads(model, name_movers):
    for clean, corrupted, io, s in ioi_pairs(3):
        result = sweep(model, clean, corrupted, io, s, kinds=["head"])
        effects = result.run()["head"]
        top = effects.flatten().argsort(descending=True)[: len(name_movers) + 2].tolist()
        top_heads = [divmod(i, model.n_heads) for i in top]
        assert set(name_movers) <= set(top_heads), (clean, top_heads, name_movers, effects)
        assert result.setup.clean_logit_diff > 0 > result.setup.corrupted_logit_diff


def test_ablating_the_name_movers_lowers_the_logit_diff(model, name_movers):
    clean, _, io, s = ioi_pairs(1)[0]
    panel = ni.ablate(model, clean, target=io, foil=s)
    before = panel.result.logit_diff
    panel.ablations = {f"L{l}.H{h}": 0.0 for l, h in name_movers}
    assert panel.result.logit_diff < before - 0.5
    assert panel.result.logit_diff == pytest.approx(
        model.run(clean, ablate={(l, h): 0.0 for l, h in name_movers}).logit_diff(io, s), abs=1e-5)


def test_logit_lens_ends_on_the_answer(model):
    clean, _, io, _ = ioi_pairs(1)[0]
    lens = ni.logit_lens(model, clean, target=io).lens
    assert lens.top_tokens[-1][-1].strip() == io.strip()
    assert lens.target_probabilities[-1, -1] > lens.target_probabilities[0, -1]
