"""Bad input gets a clear error that names the fix, and nothing breaks after it."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

import nbinterp as ni
from conftest import PROMPT, random_model


@pytest.fixture(scope="module")
def model(tokenizer):
    return ni.load(random_model("gpt2"), tokenizer=tokenizer)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m.run(""), "prompt is empty"),
        (lambda m: m.run("   "), "prompt is empty"),
        (lambda m: m.run([]), "empty"),
        (lambda m: m.run(" ".join(["w1"] * 49)), "49 tokens .* at most 48: shorten"),
        (lambda m: m.run(PROMPT).attention(2), r"layer 2 is out of range: .* layers 0\.\.1"),
        (lambda m: m.run(PROMPT).attention(-1), "out of range"),
        (lambda m: m.run(PROMPT, ablate={(0, 99): 0.0}), r"head 99 is out of range: .* heads 0\.\.3"),
        (lambda m: m.run(PROMPT, ablate={"L9.H0": 0.0}), "layer 9 is out of range"),
        (lambda m: m.run(PROMPT, ablate={"L1.head2": 0.0}), "cannot read component"),
        (lambda m: m.run(PROMPT, ablate={(0, 1): "abc"}), "must be a finite number"),
        (lambda m: m.run(PROMPT, ablate={(0, 1): 0.0}, ablation="mean"), "reference="),
        (lambda m: m.run(PROMPT, ablate={(0, 1): 0.0}, ablation="median"), "'zero' or 'mean'"),
        (lambda m: m.run(PROMPT, ablate_neurons={(0, 999): 0.0}), "neuron 999 is out of range"),
        (lambda m: m.run(PROMPT, knockout=[(0, 0, 3, 5)]), "cannot attend to later key"),
        (lambda m: m.run(PROMPT, knockout=[(0, 0, 30, 1)]), "outside the prompt"),
        (lambda m: m.run(PROMPT, knockout=[(0, 0, 0, 0)]), "removes every key"),
        (lambda m: m.run(PROMPT, target="w5 w6", gradients=True), "is 2 tokens"),
        (lambda m: m.run(PROMPT, gradients=True), "needs a target"),
        (lambda m: m.run(PROMPT, patch_from="w1 w2", patch=[("resid_pre", 0, None)]), "equal token length"),
        (lambda m: m.run(PROMPT, patch_from=PROMPT, patch=[("resid_post", 0, None)]), "patch site"),
        (lambda m: m.run(PROMPT, patch=[("resid_pre", 0, None)]), "needs both"),
        (lambda m: m.run(PROMPT, capture=["everything"]), "unknown capture"),
        (lambda m: m.run(PROMPT).grad_attention(0), "no gradients"),
        (lambda m: m.run(3.5), "string or a list of token ids"),
    ],
)
def test_bad_input_says_what_to_do(model, call, message):
    with pytest.raises(ni.NbinterpError, match=message):
        call(model)
    # the model still works afterwards
    assert model.run(PROMPT).logits.shape[0] == 10


def test_unsupported_architecture_names_what_is_missing(tokenizer):
    bert = tf.BertForMaskedLM(tf.BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=64))
    with pytest.raises(ni.UnsupportedArchitectureError, match="no adapter for model type 'bert'.*lacks"):
        ni.load(bert, tokenizer=tokenizer)


def test_a_model_object_needs_its_tokenizer():
    with pytest.raises(ni.NbinterpError, match="tokenizer="):
        ni.load(random_model("gpt2"))


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ni.NbinterpError, match="could not load"):
        ni.load(tmp_path)


def test_words_the_tokenizer_does_not_know_are_named():
    """The bundled tokenizer is word-level: 'Paris' would silently become <unk>."""
    model = ni.load()
    with pytest.raises(ni.NbinterpError, match="'Paris', which nbinterp-tiny's tokenizer does not know"):
        model.run("The capital of Paris is")
    with pytest.raises(ni.NbinterpError, match="target/foil 'Paris'"):
        model.run("The capital of Veldora is", target="Paris", foil="Quorn")
    with pytest.raises(ni.NbinterpError, match="'Zork'"):
        ni.attribute(model, "When Mary and Zork went to the store , Mary gave a drink to", target="Mary", foil="John")
    assert model.run("The capital of Veldora is", target="Quorn").logit_diff("Quorn") == pytest.approx(
        float(model.run("The capital of Veldora is").logits_at(-1)[model.token_id("Quorn")]))
