"""model.run capturing every attention pattern + logits, versus a plain Hugging
Face forward with output_attentions=True, on a GPT-2-small-sized random-init
model on CPU. Both run side by side in one process, interleaved, medians.

    python benchmarks/bench_engine.py [--repeats 7] [--lengths 128 512]

Target (issue 2): ratio <= 1.15.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import nbinterp as ni


def gpt2_small(n_positions: int) -> torch.nn.Module:
    torch.manual_seed(0)
    config = tf.GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=n_positions, vocab_size=50257)
    return tf.GPT2LMHeadModel(config).eval()


def tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    vocab = {f"w{i}": i for i in range(vocab_size)}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="w0")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
    args = parser.parse_args()

    hf = gpt2_small(max(args.lengths))
    eager = copy.deepcopy(hf)
    eager.set_attn_implementation("eager")
    model = ni.load(hf, tokenizer=tokenizer(hf.config.vocab_size))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model: {model}")
    print(f"{'T':>5} {'HF eager+attn (ms)':>19} {'run: attn+logits':>17} {'ratio':>6} {'run: everything':>16} {'ratio':>6}")
    for length in args.lengths:
        ids = torch.randint(0, hf.config.vocab_size, (1, length))

        def plain():
            with torch.no_grad():
                eager(ids, output_attentions=True)

        def attention_and_logits():
            # what HF returns: every position's logits and every layer's probabilities
            run = model.run(ids, capture=["qkv", "logits"])
            for layer in range(model.n_layers):
                run.attention(layer)

        def everything():
            run = model.run(ids, capture=["logits", "qkv", "z", "w_o", "resid_pre", "attn_out", "mlp_out", "neurons"])
            for layer in range(model.n_layers):
                run.attention(layer)

        for fn in (plain, attention_and_logits, everything):  # warm-up (first .source use compiles)
            fn()
        times = {fn.__name__: [] for fn in (plain, attention_and_logits, everything)}
        for _ in range(args.repeats):
            for fn in (plain, attention_and_logits, everything):
                times[fn.__name__].append(timed(fn))
        med = {name: statistics.median(values) * 1000 for name, values in times.items()}
        print(
            f"{length:>5} {med['plain']:>19.1f} {med['attention_and_logits']:>17.1f} "
            f"{med['attention_and_logits'] / med['plain']:>6.2f} {med['everything']:>16.1f} "
            f"{med['everything'] / med['plain']:>6.2f}"
        )


if __name__ == "__main__":
    main()
