"""Is every view interactive on the real model? SmolLM2-135M-Instruct
(`ni.load("smollm2")`, float32, this machine's CPU), at T=64 and T=256 tokens:
each view's first answer and whole call against a plain HF forward and a plain
HF forward + backward of the same prompt, measured in the same run (ratios are
what to compare across machines; these ones are shared and noisy).

    python benchmarks/bench_real_model.py [--lengths 64 256] [--views patch attribute why_not logit_lens]

Each view has one function `bench_<view>(model, prompts, base)` below that
prints its own rows; `base` holds the plain timings of the same prompt.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

import nbinterp as ni

FACT = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is"


@dataclass
class Baseline:
    """Plain HF timings of one prompt (medians), the denominators of every ratio."""

    n_tokens: int
    forward_s: float
    forward_backward_s: float


@dataclass
class Prompts:
    """A clean prompt of T tokens, a corrupted one of the same length (its last
    subject swapped), and the answers: what the views are run on."""

    clean: list[int]
    corrupted: list[int]
    target: int
    foil: int


def timed(function: Callable[[], object], repeats: int = 1) -> tuple[float, object]:
    """Median wall time of `function` over `repeats` calls, and its last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def make_prompts(model: ni.Model, n_tokens: int) -> Prompts:
    """Filler text, then a factual question at the end: T tokens exactly."""
    tokenizer = model.tokenizer
    question = tokenizer(FACT, add_special_tokens=False).input_ids
    filler = tokenizer(" The weather was mild and the market was busy that day.", add_special_tokens=False).input_ids
    head = (filler * (n_tokens // len(filler) + 1))[: n_tokens - len(question)]
    clean = head + question
    swapped = tokenizer(FACT.replace("Italy", "Spain"), add_special_tokens=False).input_ids
    if len(swapped) != len(question):
        raise RuntimeError("the corrupted question tokenizes to another length")
    corrupted = head + swapped
    target = int(model.run(clean).logits_at(-1).argmax())
    foil = int(model.run(corrupted).logits_at(-1).argmax())
    return Prompts(clean, corrupted, target, foil)


def baseline(model: ni.Model, prompts: Prompts, repeats: int) -> Baseline:
    """A plain HF forward, and a forward + backward of logit(target) - logit(foil), of the clean prompt."""
    hf = model.hf
    ids = torch.tensor([prompts.clean])

    def forward() -> None:
        with torch.no_grad():
            hf(ids)

    def forward_backward() -> None:
        logits = hf(ids).logits[0, -1]
        (logits[prompts.target] - logits[prompts.foil]).backward()
        hf.zero_grad(set_to_none=True)

    forward()
    return Baseline(len(prompts.clean), timed(forward, repeats)[0], timed(forward_backward, repeats)[0])


# view name -> its benchmark; each helper section below registers one
BENCHES: dict[str, Callable[[ni.Model, Prompts, Baseline], None]] = {}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--views", nargs="+", default=None, help=f"some of {sorted(BENCHES)}")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = ni.load("smollm2")
    print(f"{model}; torch threads {torch.get_num_threads()}")
    for n_tokens in args.lengths:
        prompts = make_prompts(model, n_tokens)
        base = baseline(model, prompts, args.repeats)
        print(f"\n## T={n_tokens}: plain HF forward {base.forward_s:.3f} s, forward+backward {base.forward_backward_s:.3f} s")
        for name in args.views or sorted(BENCHES):
            BENCHES[name](model, prompts, base)


if __name__ == "__main__":
    main()
