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
LEAD, QUESTION = "Maria lives in Italy.", " Where does Maria live? Maria lives in"


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


def make_prompts(model: ni.Model, n_tokens: int, pair: str = "late") -> Prompts:
    """T tokens exactly. "late": filler, then a factual question at the end; the
    corrupted prompt swaps the country two tokens from the end. "early": a fact
    stated first ("Maria lives in Italy."), filler, then the question; the
    corrupted prompt swaps the country at token 3, so nearly every token
    differs downstream (the worst case for patching, which skips the tokens a
    pair shares)."""
    tokenizer = model.tokenizer
    encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    filler = encode(" The weather was mild and the market was busy that day.")
    if pair == "late":
        lead, swapped_lead, question, swapped = [], [], encode(FACT), encode(FACT.replace("Italy", "Spain"))
    elif pair == "early":
        lead, swapped_lead = encode(LEAD), encode(LEAD.replace("Italy", "Spain"))
        question = swapped = encode(QUESTION)
    else:
        raise ValueError(f"pair is 'late' or 'early', not {pair!r}")
    if len(swapped) != len(question) or len(swapped_lead) != len(lead):
        raise RuntimeError("the corrupted prompt tokenizes to another length")
    head = (filler * (n_tokens // len(filler) + 1))[: n_tokens - len(question) - len(lead)]
    clean, corrupted = lead + head + question, swapped_lead + head + swapped
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
    parser.add_argument("--full-grid-up-to", type=int, default=64,
                        help="patching: measure every cell at lengths up to this (0: the largest 5%% only)")
    parser.add_argument("--pairs", nargs="+", default=["late", "early"],
                        help="where the corrupted prompt differs: 'late' (2 tokens from the end), 'early' (token 3)")
    args = parser.parse_args()
    model = ni.load("smollm2")
    print(f"{model}; torch threads {torch.get_num_threads()}")
    for n_tokens in args.lengths:
        for pair in args.pairs:
            prompts = make_prompts(model, n_tokens, pair)
            print(f"\n## T={n_tokens}, prompts differing {pair}")
            for name in args.views or sorted(BENCHES):
                # the reference is measured again right before each view: on a shared machine the load moves
                base = baseline(model, prompts, args.repeats)
                print(f"plain HF forward {base.forward_s:.3f} s, forward+backward {base.forward_backward_s:.3f} s")
                if name == "patch":
                    bench_patch(model, prompts, base, full_up_to=args.full_grid_up_to)
                else:
                    BENCHES[name](model, prompts, base)


# ---------------------------------------------------------------- patching (ni.patch)
def bench_patch(model: ni.Model, prompts: Prompts, base: Baseline, full_up_to: int = 64) -> None:
    """The estimated picture (clean forward + corrupted forward + backward) against
    a plain forward + backward; the exact cells: time to the largest 5% (by
    |estimate|), and every cell at T <= `full_up_to`; how far estimate and exact
    disagree over the cells measured."""
    from nbinterp.analysis.patching_sweep import sweep

    clean, corrupted = [prompts.clean], [prompts.corrupted]
    start = time.perf_counter()
    result = sweep(model, torch.tensor(clean), torch.tensor(corrupted), prompts.target, prompts.foil)
    estimate_s = time.perf_counter() - start
    print(f"patch T={base.n_tokens}: estimate of all {sum(v.numel() for v in result.estimates.values())} cells "
          f"{estimate_s:.2f} s = {estimate_s / base.forward_backward_s:.2f}x a forward+backward (target <= 3x)")
    top = -(-result.total // 20)
    start = time.perf_counter()
    reported = False
    for cell in result:
        if result.done >= top and not reported:
            reported = True
            took = time.perf_counter() - start
            print(f"  largest 5% ({top} cells) exact in {took:.1f} s = {took / base.forward_s:.0f} forwards "
                  f"(target {30 if base.n_tokens <= 64 else 60} s)")
        if reported and base.n_tokens > full_up_to:
            break
    if result.finished:
        took = time.perf_counter() - start
        print(f"  all {result.total} cells exact in {took:.1f} s = {took / base.forward_s:.0f} forwards "
              f"(target 240 s at T=64)")
    for kind in result.kinds:
        measured = result.measured(kind)
        exact, estimate = result.effects[kind][measured], result.estimates[kind][measured]
        if exact.numel() > 1:
            corr = float(torch.corrcoef(torch.stack([exact, estimate]))[0, 1])
            print(f"  {kind}: {exact.numel()} measured, |exact - estimate| max {float((exact - estimate).abs().max()):.3f}, "
                  f"correlation {corr:.3f}")


BENCHES["patch"] = bench_patch


# ---------------------------------------------------------------- attribution (ni.attribute)
def bench_attribute(model: ni.Model, prompts: Prompts, base: Baseline) -> None:
    """The default hybrid: the estimated picture (one forward + backward) against
    a plain forward + backward, then every head's ablation and the budgeted
    edges measured, with the time to the last head and to the end (target: the
    whole default call <= 60 s at T=64)."""
    from nbinterp.analysis.attribution import compute_attribution

    start = time.perf_counter()
    att = compute_attribution(model, prompts.clean, prompts.target, prompts.foil, measure=False)
    estimate_s = time.perf_counter() - start
    m = att.measurement
    print(f"attribute T={base.n_tokens}: estimates {estimate_s:.2f} s = {estimate_s / base.forward_backward_s:.2f}x "
          f"a forward+backward; plan: {len(m.heads)} heads + {len(m.edges)} of {len(att.summary.dominant)} dominant "
          f"edges, {m.per_forward} per forward")
    heads_s = None
    for update in att.measure():
        if heads_s is None and update.done >= len(m.heads):
            heads_s = time.perf_counter() - start
    total_s = time.perf_counter() - start
    print(f"  every head measured at {heads_s:.1f} s; whole call {total_s:.1f} s "
          f"= {total_s / base.forward_s:.0f}x a forward (target <= 60 s at T=64)")


BENCHES["attribute"] = bench_attribute


# ---------------------------------------------------------------- logit lens (ni.logit_lens)
def bench_logit_lens(model: ni.Model, prompts: Prompts, base: Baseline) -> None:
    """The first paint (one forward: the output row, every row at the last
    position) against a plain forward (target <= 1.5x at T=256), the whole
    lens streamed, and the former lens of every row inside one trace."""
    from nbinterp.analysis.logit_lens import first_paint
    from nbinterp.engine.plan import Plan

    def whole_in_one_trace() -> None:
        model.execute(torch.tensor([prompts.clean]), Plan(), model.all_layers(["lens"]), logits="none",
                      lens_tokens=(prompts.target,))

    first_s, (lens, rest) = timed(lambda: first_paint(model, prompts.clean, prompts.target), 3)
    start = time.perf_counter()
    rest.run()
    rest_s = time.perf_counter() - start
    one_trace_s, _ = timed(whole_in_one_trace)
    print(f"logit_lens T={base.n_tokens}: first paint {first_s:.2f} s = {first_s / base.forward_s:.2f}x a forward "
          f"(target <= 1.5x at T=256); the other {rest.total} rows in {rest_s:.2f} s "
          f"({rest.rows_per_chunk} a chunk); whole {(first_s + rest_s) / base.forward_s:.2f}x; "
          f"every row in one trace {one_trace_s / base.forward_s:.2f}x")


BENCHES["logit_lens"] = bench_logit_lens




# ------------------------------------------------------------------ why_not
def bench_why_not(model: ni.Model, prompts: Prompts, base: Baseline) -> None:
    """The first answer (trajectory, every component ranked by its gradient
    estimate) against a plain forward + backward; the exact measurements
    streamed after it (the whole call); the restore shares against measuring
    each component by one plain `model.run(patch_from=...)` (a few, largest first)."""
    from nbinterp.analysis.why_not import exact_steps, first_answer

    corrupted, clean = torch.tensor([prompts.corrupted]), torch.tensor([prompts.clean])
    start = time.perf_counter()
    result = first_answer(model, corrupted, prompts.target, references=[clean])
    first_s = time.perf_counter() - start
    print(f"why_not T={base.n_tokens}: first answer {first_s:.2f} s = {first_s / base.forward_backward_s:.2f}x "
          f"a forward+backward (target <= 3x)")
    missing_done = None
    for step in exact_steps(result):
        if step["stage"] == "inhibitors" and missing_done is None:
            missing_done = time.perf_counter() - start
    whole_s = time.perf_counter() - start
    print(f"  restore shares all exact at {missing_done or whole_s:.1f} s; whole call {whole_s:.1f} s "
          f"= {whole_s / base.forward_s:.0f} forwards (target {30 if base.n_tokens <= 64 else 120} s)")
    gap = result.reference_metrics[0] - result.metric
    worst = 0.0
    for m in result.missing[:3]:
        patched = model.run(corrupted, patch_from=clean, patch=[m.component.patch_site(result.position)])
        share = (float(patched.logit_diff(prompts.target, prompts.foil)) - result.metric) / gap
        worst = max(worst, abs(share - m.restore_share))
    print(f"  top-3 restore shares vs plain patching: max |difference| {worst:.2e}; restore(5) together "
          f"{result.restore(5).together_share:.3f}")


BENCHES["why_not"] = bench_why_not


if __name__ == "__main__":
    main()
