"""why_not + restore(k=5) on a GPT-2-small-sized random-init model (12 layers x
12 heads, d_model 768, vocabulary 50,257): wall time against one plain
forward + backward of the same prompt (the gradient run), and the forwards
the engine counted (`model.forwards`; a batched forward of many intervention
rows counts once).

The reference is the prompt with an 8-token span replaced; `expected` is what
the model says on the reference, so the reference does give it.

    python benchmarks/bench_why_not.py [--lengths 128 512] [--repeats 1]

Measured here (2 shared CPU cores, load average ~10 from other jobs, so
absolute times are inflated): T=128: forward+backward 15.0 s, why_not 254 s,
restore(5) 3.9 s, ratio 17x, 13 forwards counted (the head ablations and the
156 single-component restores run as batched forwards of up to 85 rows),
top-5 restore 0.73 of the gap. T=512 was not run (time).
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import torch

from nbinterp.analysis.why_not import compute_why_not

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_attribution import gpt2_small_random  # noqa: E402


def prompts(model, n_tokens: int, seed: int) -> tuple[list[int], list[int]]:
    """A random prompt and a reference differing in one 8-token span whose answers differ."""
    rng = random.Random(seed)
    for _ in range(50):
        ids = [rng.randrange(1, model.shape.vocab_size) for _ in range(n_tokens)]
        ref = list(ids)
        start = n_tokens // 3
        ref[start : start + 8] = [rng.randrange(1, model.shape.vocab_size) for _ in range(8)]
        if int(model.run(ids).logits_at(-1).argmax()) != int(model.run(ref).logits_at(-1).argmax()):
            return ids, ref
    raise RuntimeError("no prompt pair with different answers")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[128])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    model = gpt2_small_random()
    print(f"{model}; torch threads {torch.get_num_threads()}")
    print("| T | forward+backward s | why_not s | restore(5) s | ratio (why_not+restore) / (fwd+bwd) | forwards | together share |")
    print("|---|---|---|---|---|---|---|")
    for n_tokens in args.lengths:
        ids, ref = prompts(model, n_tokens, seed=n_tokens)
        expected = int(model.run(ref).logits_at(-1).argmax())
        actual = int(model.run(ids).logits_at(-1).argmax())
        model.run(ids, target=expected, foil=actual, gradients=True)  # warm-up
        start = time.perf_counter()
        for _ in range(args.repeats):
            model.run(ids, target=expected, foil=actual, gradients=True)
        base = (time.perf_counter() - start) / args.repeats
        forwards = model.forwards
        start = time.perf_counter()
        result = compute_why_not(model, ids, expected, references=[ref])
        analysis = time.perf_counter() - start
        start = time.perf_counter()
        restore = result.restore(k=5)
        restoring = time.perf_counter() - start
        counted = model.forwards - forwards
        print(f"| {n_tokens} | {base:.2f} | {analysis:.2f} | {restoring:.2f} | {(analysis + restoring) / base:.1f} | "
              f"{counted} | {restore.together_share:.3f} |", flush=True)


if __name__ == "__main__":
    main()
