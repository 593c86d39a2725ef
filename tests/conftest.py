"""Shared fixtures: small random-init models of each supported architecture,
built from configs (nothing downloaded), and a word-level tokenizer."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

VOCAB = 64
_COMMON = dict(vocab_size=VOCAB, max_position_embeddings=48)
_LLAMA_LIKE = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)

CONFIGS = {
    "gpt2": lambda: tf.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=48, vocab_size=VOCAB),
    "gpt_neox": lambda: tf.GPTNeoXConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, **_COMMON),
    "llama": lambda: tf.LlamaConfig(**_LLAMA_LIKE, **_COMMON),
    "mistral": lambda: tf.MistralConfig(**_LLAMA_LIKE, sliding_window=5, **_COMMON),
    "qwen2": lambda: tf.Qwen2Config(**_LLAMA_LIKE, **_COMMON),
    # a low final soft-cap so a missing one shows in the logits
    "gemma2": lambda: tf.Gemma2Config(**_LLAMA_LIKE, head_dim=8, sliding_window=5, final_logit_softcapping=2.0, **_COMMON),
    # learned absolute positions; multi-query attention (one key/value head) by default
    "gpt_bigcode": lambda: tf.GPTBigCodeConfig(n_layer=2, n_embd=32, n_head=4, n_positions=48, vocab_size=VOCAB),
    # parallel attention + MLP blocks, partial rotary (half of each head)
    "phi": lambda: tf.PhiConfig(**_LLAMA_LIKE, **_COMMON),
    # parallel blocks, interleaved rotary on the first 4 of 8 dims per head
    "gptj": lambda: tf.GPTJConfig(n_layer=2, n_embd=32, n_head=4, n_positions=48, rotary_dim=4, vocab_size=VOCAB),
    # learned positions offset by 2, query scaled before the attention call, MLP as fc1 / fc2 on the block
    "opt": lambda: tf.OPTConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, ffn_dim=64, **_COMMON),
}
ARCHITECTURES = list(CONFIGS)


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {f"w{i}": i for i in range(VOCAB)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="w0", pad_token="w0")


def random_model(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    model = tf.AutoModelForCausalLM.from_config(copy.deepcopy(config)).eval()
    # Random init leaves attention nearly uniform; sharpen it so knockouts and
    # ablations move the output measurably.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(k in name for k in ("q_proj", "k_proj", "c_attn", "query_key_value")):
                param.mul_(8)
    return model


def eager_copy(hf_model: torch.nn.Module) -> torch.nn.Module:
    reference = copy.deepcopy(hf_model)
    reference.set_attn_implementation("eager")
    return reference


@pytest.fixture(scope="session")
def tokenizer():
    return word_tokenizer()


@pytest.fixture(scope="session", params=ARCHITECTURES)
def arch_model(request, tokenizer):
    """(architecture name, HF model with default attention, nbinterp Model)."""
    import nbinterp as ni

    hf = random_model(request.param)
    return request.param, hf, ni.load(hf, tokenizer=tokenizer)


PROMPT = " ".join(f"w{i}" for i in (5, 17, 3, 42, 9, 5, 17, 3, 28, 11))
