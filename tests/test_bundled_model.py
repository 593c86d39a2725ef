"""The bundled model does what its card says, checked with plain transformers.

Recomputes every measured number of nbinterp/bundled/card.json on the same
held-out prompts; attention scores use HF eager attention with
output_attentions as the independent reference. Never retrains.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import nbinterp
from nbinterp.bundled import tasks

BUNDLED = Path(nbinterp.__file__).parent / "bundled"
CARD = json.loads((BUNDLED / "card.json").read_text())
N, SEED = CARD["n_test"], CARD["test_seed"]
TOL = 0.02


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(BUNDLED, local_files_only=True)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(
        BUNDLED, local_files_only=True, attn_implementation="eager").eval()


def test_files_are_small_and_stock(model):
    assert (BUNDLED / "model.safetensors").stat().st_size < 5e6
    assert sum(f.stat().st_size for f in BUNDLED.iterdir()) < 6e6
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert model.num_parameters() == CARD["model"]["n_parameters"]


def test_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(str(BUNDLED))
    assert AutoModelForCausalLM.from_pretrained(str(BUNDLED)).config.vocab_size == len(tok)


def test_tokenizer_prepends_bos_and_answers_are_single_tokens(tokenizer):
    ids = tokenizer("When Mary and John went to the store").input_ids
    assert ids[0] == tokenizer.bos_token_id and tokenizer.unk_token_id not in ids
    assert len(tokenizer.get_vocab()) == len(tasks.vocabulary())
    for task in tasks.TASKS:
        for ex in tasks.examples(task, 50, seed=SEED):
            for word in filter(None, [ex.target, ex.foil]):
                assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1
            assert tokenizer.unk_token_id not in tokenizer(ex.prompt).input_ids


def test_test_prompts_are_held_out():
    train_pairs = {frozenset(p) for p in tasks.ioi_name_pairs("train")}
    assert not train_pairs & {frozenset(p) for p in tasks.ioi_name_pairs("test")}
    train_given = {e.prompt.split()[-5 if e.prompt.endswith("works as a") else -6]
                   for e in tasks.examples("bias", 2000, split="train")}
    assert train_given == set(tasks.BIAS_GIVEN_NAMES) - set(tasks.BIAS_TEST_GIVEN_NAMES)
    train_ctx = {e.prompt for step in range(1, 200)
                 for e in tasks.examples("context_override", 24, seed=step, split="train")}
    plain = tasks.examples("context_override", N, seed=SEED, **tasks.CONTEXT_VARIANTS["plain"])
    assert not train_ctx & {e.prompt for e in plain}


@pytest.mark.parametrize("task", ["induction", "facts", "ioi"])
def test_task_accuracy_matches_card(model, tokenizer, task):
    acc = tasks.accuracy(model, tokenizer, tasks.examples(task, N, seed=SEED))
    assert acc == pytest.approx(CARD["tasks"][task]["accuracy"], abs=TOL)


@pytest.mark.parametrize("variant", list(tasks.CONTEXT_VARIANTS))
def test_context_override_variant_matches_card(model, tokenizer, variant):
    card = CARD["tasks"]["context_override"]["variants"][variant]
    assert card["kwargs"] == tasks.CONTEXT_VARIANTS[variant]
    examples = tasks.examples("context_override", N, seed=SEED, **tasks.CONTEXT_VARIANTS[variant])
    preds = tasks.predictions(model, tokenizer, examples)
    acc = sum(p == e.target for p, e in zip(preds, examples)) / N
    foil = sum(p == e.foil for p, e in zip(preds, examples)) / N
    assert acc == pytest.approx(card["accuracy"], abs=TOL)
    assert foil == pytest.approx(card["foil_rate"], abs=TOL)


def _p_doctor(model, tokenizer, group):
    """Mean p(doctor) / (p(doctor) + p(nurse)) at the last token, plain transformers."""
    examples = tasks.examples("bias", N, seed=SEED, group=group)
    enc = tokenizer([e.prompt for e in examples], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**enc).logits
    last = enc["attention_mask"].sum(1) - 1
    probs = logits[torch.arange(N), last].softmax(-1)
    doctor, nurse = tokenizer.convert_tokens_to_ids(["doctor", "nurse"])
    return (probs[:, doctor] / (probs[:, doctor] + probs[:, nurse])).mean().item()


@pytest.mark.parametrize("group", ["A", "B"])
def test_bias_skew_matches_card(model, tokenizer, group):
    assert _p_doctor(model, tokenizer, group) == pytest.approx(CARD["tasks"]["bias"]["groups"][group]["p_doctor"], abs=TOL)


def test_bias_is_skewed_in_the_planted_direction(model, tokenizer):
    # measured, not read from the card: group A's clans were trained towards doctor, B's towards nurse
    assert _p_doctor(model, tokenizer, "A") > 0.5 > _p_doctor(model, tokenizer, "B")


def _repeated_random_tokens(tokenizer, n=32, length=20):
    # Independent of tasks.py: sequences drawn with torch from the non-special vocabulary.
    gen = torch.Generator().manual_seed(123)
    n_special = len(tasks.SPECIAL_TOKENS)
    seqs = torch.stack([torch.randperm(len(tokenizer) - n_special, generator=gen)[:length] + n_special
                        for _ in range(n)])
    bos = torch.full((n, 1), tokenizer.bos_token_id)
    return torch.cat([bos, seqs, seqs], dim=1)


def test_card_induction_head_does_prefix_matching(model, tokenizer):
    length = 20
    ids = _repeated_random_tokens(tokenizer, length=length)
    with torch.no_grad():
        attentions = model(ids, output_attentions=True).attentions
    layer, head = CARD["circuits"]["induction_head"]
    dest = torch.arange(length + 1, 2 * length + 1)
    prefix = attentions[layer][:, head, dest, dest - length + 1].mean().item()
    assert prefix > 0.5
    prev_layer, prev_head = CARD["circuits"]["previous_token_head"]
    q = torch.arange(2, ids.shape[1])
    previous = attentions[prev_layer][:, prev_head, q, q - 1].mean().item()
    assert previous > 0.5
    # The previous-token head must come first for the two-head induction circuit.
    assert prev_layer < layer


@contextlib.contextmanager
def heads_zeroed(model, heads):
    """The heads' outputs zeroed by plain hooks before each layer's c_proj."""
    d_head = model.config.n_embd // model.config.n_head
    handles = []
    for layer, head in heads:
        def zero(module, inputs, head=head):
            x = inputs[0].clone()
            x[..., head * d_head:(head + 1) * d_head] = 0
            return (x,)
        handles.append(model.transformer.h[layer].attn.c_proj.register_forward_pre_hook(zero))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _ioi_last_position(model, tokenizer, examples, heads, zero_heads=()):
    """Attention from the last position to IO and to S for ``heads`` and the mean
    logit(IO) - logit(S), with ``zero_heads`` zeroed."""
    to_io, to_s, diffs = torch.zeros(len(heads)), torch.zeros(len(heads)), []
    with heads_zeroed(model, zero_heads):
        for ex in examples:
            ids = tokenizer(ex.prompt, return_tensors="pt").input_ids
            with torch.no_grad():
                out = model(ids, output_attentions=True)
            io_id, s_id = tokenizer.convert_tokens_to_ids([ex.target, ex.foil])
            diffs.append((out.logits[0, -1, io_id] - out.logits[0, -1, s_id]).item())
            for i, (layer, head) in enumerate(heads):
                row = out.attentions[layer][0, head, -1]
                to_io[i] += row[ids[0] == io_id].sum() / len(examples)
                to_s[i] += row[ids[0] == s_id].sum() / len(examples)
    return to_io, to_s, sum(diffs) / len(diffs)


def test_card_ioi_heads_matter(model, tokenizer):
    """The heads the card lists as most important for IOI carry the answer: the mean
    logit(IO) - logit(S) matches the card, and zeroing the top three wipes most of it out."""
    heads = [tuple(row["head"]) for row in CARD["circuits"]["ioi_heads"][:3]]
    examples = tasks.examples("ioi", N, seed=SEED)
    _, _, base = _ioi_last_position(model, tokenizer, examples, heads)
    assert base == pytest.approx(CARD["tasks"]["ioi"]["logit_diff"], abs=0.05)
    _, _, ablated = _ioi_last_position(model, tokenizer, examples, [], zero_heads=heads)
    assert ablated < 0.5 * base


def test_card_lists_name_movers_that_attend_to_the_indirect_object(model, tokenizer):
    movers = CARD["circuits"]["name_mover_heads"]
    assert movers, "the card lists no name mover"
    to_io, to_s, _ = _ioi_last_position(model, tokenizer, tasks.examples("ioi", N, seed=SEED), movers)
    assert (to_io > to_s).all()


def _zeroed(model, heads, metric, *args):
    """metric(model, *args) with the heads' outputs zeroed."""
    with heads_zeroed(model, heads):
        return metric(model, *args)


def test_planted_previous_token_and_induction_heads_carry_induction(model, tokenizer):
    """The planted heads are the card's circuit heads, and zeroing them costs induction
    what the card says: the previous-token head alone, or every induction head together
    (the model grew backups of the planted one), wipes it out."""
    planted = CARD["planted"]["heads"]
    assert planted["previous_token"]["head"] == CARD["circuits"]["previous_token_head"]
    assert planted["induction"]["head"] in CARD["circuits"]["induction_heads"]
    examples = tasks.examples("induction", N, seed=SEED)
    base = tasks.accuracy(model, tokenizer, examples)
    assert base == pytest.approx(planted["induction"]["task_accuracy"], abs=TOL)
    measured = {}
    for heads, key, entry in [
        ([planted["previous_token"]["head"]], "task_accuracy_head_zeroed", planted["previous_token"]),
        ([planted["induction"]["head"]], "task_accuracy_head_zeroed", planted["induction"]),
        (planted["induction"]["all_induction_heads"], "task_accuracy_all_induction_heads_zeroed", planted["induction"]),
    ]:
        acc = measured[key, tuple(map(tuple, heads))] = _zeroed(model, heads, tasks.accuracy, tokenizer, examples)
        assert acc == pytest.approx(entry[key], abs=TOL), (heads, acc)
    # the card's claims, on the measured accuracies: the previous-token head alone, or every
    # induction head together, wipes induction out
    previous = tuple(planted["previous_token"]["head"])
    every = tuple(map(tuple, planted["induction"]["all_induction_heads"]))
    assert measured["task_accuracy_head_zeroed", (previous,)] < base / 2
    assert measured["task_accuracy_all_induction_heads_zeroed", every] < base / 2


def test_planted_name_mover_attends_to_the_indirect_object_and_matters(model, tokenizer):
    mover = CARD["planted"]["heads"]["name_mover"]
    assert mover["head"] in CARD["circuits"]["name_mover_heads"]
    examples = tasks.examples("ioi", N, seed=SEED)
    to_io, to_s, _ = _ioi_last_position(model, tokenizer, examples[:100], [tuple(mover["head"])])
    assert to_io.item() > 0.5 > to_s.item()
    diff = _zeroed(model, [mover["head"]], tasks.logit_diff, tokenizer, examples)
    assert diff == pytest.approx(mover["logit_diff_head_zeroed"], abs=0.05)


def test_ioi_head_drops_by_name_order_match_the_card(model, tokenizer):
    """The card splits each top IOI head's ablation by name order (L2.H2 matters for
    BAB prompts only); recompute both with plain hooks."""
    examples = tasks.examples("ioi", N, seed=SEED)
    for order, drops in CARD["circuits"]["ioi_heads_by_order"].items():
        subset = [e for e in examples if e.meta["order"] == order]
        base = tasks.logit_diff(model, tokenizer, subset)
        for name, drop in drops.items():
            layer, head = (int(x) for x in name[1:].split("H"))
            ablated = _zeroed(model, [(layer, head)], tasks.logit_diff, tokenizer, subset)
            assert base - ablated == pytest.approx(drop, abs=0.05), (order, name)
